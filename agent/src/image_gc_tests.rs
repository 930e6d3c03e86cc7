use berth_proto::runtime::v1 as cri;

use super::*;
use crate::pod::fake::FakeRuntime;

fn image(tag: &str, size: u64, pinned: bool) -> cri::Image {
    cri::Image {
        id: format!("sha256:{tag}"),
        repo_tags: vec![format!("reg/{tag}:1")],
        size,
        pinned,
        ..Default::default()
    }
}

async fn container_using(rt: &FakeRuntime, tag: &str, start: bool) -> String {
    let sb = cri::PodSandboxConfig::default();
    let id = rt.run_pod_sandbox(sb.clone()).await.unwrap();
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: tag.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: format!("reg/{tag}:1"), ..Default::default() }),
        ..Default::default()
    };
    let c = rt.create_container(&id, cfg, sb).await.unwrap();
    if start {
        rt.start_container(&c).await.unwrap();
    }
    c
}

#[test]
fn thresholds_decide_how_much_to_free() {
    let p = Policy { high_percent: 85, low_percent: 80, min_age: Duration::ZERO };
    assert_eq!(p.to_free(1000, 200), 0, "80% used is below the high threshold");
    assert_eq!(p.to_free(1000, 150), 50, "85% used: down to 80%");
    assert_eq!(p.to_free(1000, 0), 200);
    assert_eq!(p.to_free(0, 0), 0);
    let always = Policy { high_percent: 1, low_percent: 0, min_age: Duration::ZERO };
    assert_eq!(always.to_free(1000, 900), 100, "all that is used");
}

#[tokio::test]
async fn unused_images_go_least_recently_used_first_and_never_one_in_use() {
    let rt = FakeRuntime::default();
    let fs = cri::FilesystemUsage {
        fs_id: Some(cri::FilesystemIdentifier { mountpoint: "/images".into() }),
        ..Default::default()
    };
    {
        let mut st = rt.state.lock().unwrap();
        st.image_fs = vec![fs];
        st.image_list =
            vec![image("a", 500, false), image("b", 50, false), image("c", 60, false), image("d", 70, true)];
    }
    container_using(&rt, "a", true).await;
    let exited_b = container_using(&rt, "b", false).await;
    let gc = ImageGc::default();
    let policy = Policy { high_percent: 85, low_percent: 80, min_age: Duration::from_secs(60) };
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let half_full = |m: &str| {
        assert_eq!(m, "/images");
        Some((1000, 500))
    };
    assert!(gc.run_once(&rt, &policy, half_full, t0).await.unwrap().is_empty(), "below the threshold");
    // b's container goes; a young image e appears; the disk fills to 90%.
    rt.remove_container(&exited_b).await.unwrap();
    rt.state.lock().unwrap().image_list.push(image("e", 80, false));
    assert!(gc.run_once(&rt, &policy, |_| Some((1000, 500)), t0 + Duration::from_secs(30)).await.unwrap().is_empty());
    let removed = gc.run_once(&rt, &policy, |_| Some((1000, 100)), t0 + Duration::from_secs(80)).await.unwrap();
    // 100 bytes to free: c (never used) first, then b (last used at t0); e is too young, d
    // pinned, a in use.
    assert_eq!(removed, ["sha256:c", "sha256:b"]);
    assert_eq!(rt.state.lock().unwrap().removed_images, ["sha256:c", "sha256:b"]);
    let left: Vec<String> = rt.state.lock().unwrap().image_list.iter().map(|i| i.id.clone()).collect();
    assert_eq!(left, ["sha256:a", "sha256:d", "sha256:e"]);
    // Forced thresholds (the e2e test's): everything unused and old enough goes, still not a.
    let all = Policy { high_percent: 1, low_percent: 0, min_age: Duration::ZERO };
    assert_eq!(
        gc.run_once(&rt, &all, |_| Some((1000, 100)), t0 + Duration::from_secs(90)).await.unwrap(),
        ["sha256:e"]
    );
}
