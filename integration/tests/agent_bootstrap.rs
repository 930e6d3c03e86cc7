//! TLS bootstrap end to end, no root: berth-control on a free loopback port, a bootstrap
//! kubeconfig from its bootstrap token, then berth-agent's bootstrap function gets a node
//! certificate through an auto-approved CSR; the node kubeconfig it writes is `system:node:NAME`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_agent::bootstrap::{ensure_node_kubeconfig, render_bootstrap_kubeconfig, ClusterInfo, Outcome};

struct Control(Child);

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    let mut input = child.stdin.take().context("kubectl stdin")?;
    input.write_all(stdin.unwrap_or_default().as_bytes())?;
    drop(input);
    Ok(child.wait_with_output()?)
}

fn start_control(dir: &Path) -> anyhow::Result<(Control, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(dir.join("control.log"))?;
    let child = Command::new(berth_integration::bin_path("berth-control")?)
        .arg("--data-dir")
        .arg(dir.join("control"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let control = Control(child);
    let admin = dir.join("control/admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(admin.exists() && kubectl(&admin, &["get", "--raw", "/readyz"], None)?.status.success()) {
        if Instant::now() > deadline {
            bail!(
                "berth-control did not become ready: {}",
                std::fs::read_to_string(dir.join("control.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((control, format!("https://127.0.0.1:{port}")))
}

/// The bootstrap kubeconfig a joining node gets (the control plane's token and CA): its path
/// and the token.
fn write_bootstrap_kubeconfig(dir: &Path, server: String) -> anyhow::Result<(PathBuf, String)> {
    let token = std::fs::read_to_string(dir.join("control/pki/bootstrap-token"))?.trim().to_string();
    let ca_pem = std::fs::read(dir.join("control/pki/ca.crt"))?;
    let boot = dir.join("bootstrap.kubeconfig");
    std::fs::write(&boot, render_bootstrap_kubeconfig(&ClusterInfo { server, ca_pem }, &token))?;
    Ok((boot, token))
}

#[test]
fn bootstrap_token_gets_a_node_kubeconfig_through_an_approved_csr() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let (_control, server) = start_control(dir)?;
    let (boot, token) = write_bootstrap_kubeconfig(dir, server)?;
    let node_kc = dir.join("node/node.kubeconfig");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let outcome = rt.block_on(ensure_node_kubeconfig(&boot, &node_kc, "bn1", Duration::from_secs(60)))?;
    let Outcome::Bootstrapped { csr } = outcome else { bail!("expected a new certificate, got {outcome:?}") };
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&node_kc)?.permissions().mode() & 0o777, 0o600);

    // The node's own credentials: it registers and reads its Node, and is nobody else.
    let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bn1"}}).to_string();
    let o = kubectl(&node_kc, &["create", "-f", "-"], Some(&node))?;
    assert!(o.status.success(), "create node as the node: {}", String::from_utf8_lossy(&o.stderr));
    let o = kubectl(&node_kc, &["get", "node", "bn1", "-o", "name"], None)?;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "node/bn1", "{}", String::from_utf8_lossy(&o.stderr));
    let o = kubectl(&node_kc, &["auth", "can-i", "get", "secrets", "-A"], None)?;
    let answer = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(answer.starts_with("no") && answer.contains("User \"system:node:bn1\""), "{answer}");

    // The CSR is Approved (by the approver, for a bootstrapper) and names the requester.
    let admin = dir.join("control/admin.kubeconfig");
    let o = kubectl(&admin, &["get", "csr", &csr, "-o", "json"], None)?;
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).with_context(|| String::from_utf8_lossy(&o.stderr).into_owned())?;
    assert_eq!(v["status"]["conditions"][0]["type"], "Approved", "{v}");
    assert_eq!(v["spec"]["username"], format!("system:bootstrap:{}", token.split('.').next().unwrap_or_default()));
    assert_eq!(v["spec"]["signerName"], "kubernetes.io/kube-apiserver-client-kubelet");

    // A second start keeps the kubeconfig it has.
    let again = rt.block_on(ensure_node_kubeconfig(&boot, &node_kc, "bn1", Duration::from_secs(60)))?;
    assert_eq!(again, Outcome::Existing);

    // A bootstrap kubeconfig with a wrong token fails creating the CSR, naming it.
    std::fs::remove_file(&node_kc)?;
    let bad = dir.join("bad.kubeconfig");
    std::fs::write(&bad, std::fs::read_to_string(&boot)?.replace(&token, "abcdef.0000000000000000"))?;
    let err = rt.block_on(ensure_node_kubeconfig(&bad, &node_kc, "bn1", Duration::from_secs(5))).unwrap_err();
    assert!(matches!(err, berth_agent::bootstrap::BootstrapError::Create { .. }), "{err:?}");
    assert!(!node_kc.exists());
    Ok(())
}

/// The berth-agent binary with `bootstrapKubeconfig` in its config file bootstraps before it
/// looks for its runtime: with no CRI socket it still leaves a working node kubeconfig, then
/// stops on the missing runtime. (Needs `cargo build -p berth-control -p berth-agent`.)
#[test]
fn berth_agent_binary_bootstraps_from_its_config_before_the_runtime() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let (_control, server) = start_control(dir)?;
    let (boot, _) = write_bootstrap_kubeconfig(dir, server)?;
    let node_kc = dir.join("node.kubeconfig");
    let config = format!(
        "nodeName: bn2\nkubeconfig: {}\nbootstrapKubeconfig: {}\ncontainerRuntimeEndpoint: unix://{}/no-cri.sock\nrootDir: {}/agent\n",
        node_kc.display(),
        boot.display(),
        dir.display(),
        dir.display()
    );
    std::fs::write(dir.join("agent.yaml"), config)?;
    let out = Command::new(berth_integration::bin_path("berth-agent")?)
        .arg("--config")
        .arg(dir.join("agent.yaml"))
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("connecting to the CRI runtime"), "{stderr}");
    assert!(stderr.contains("wrote the node kubeconfig"), "{stderr}");
    let o = kubectl(&node_kc, &["auth", "can-i", "get", "secrets", "-A"], None)?;
    let answer = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(answer.contains("User \"system:node:bn2\""), "{answer}");
    Ok(())
}
