//! berth-runtime, as root: the OCI lifecycle (create, start, state, exec, pause, kill,
//! delete), hooks, joined namespaces, terminals, and clean failure.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_ok, host_ns, text, CHECK, T};
use serde_json::json;

fn wait_status(t: &T, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if t.state()["status"] == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("container never reached {want}: {}", t.state());
}

#[test]
#[ignore = "needs root"]
fn create_start_exec_pause_kill_delete() {
    let t = T::new("life");
    let spec = t.spec(&["sleep", "1000"]);
    assert_ok(&t.create(&spec));
    let st = t.state();
    assert_eq!(st["status"], "created");
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(!t.cgroup_dirs().is_empty(), "cgroup created");
    // The process must not run the user program before start.
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!cmdline.starts_with("sleep"), "{cmdline}");
    assert_ok(&t.rt(&["start", &t.id]));
    assert_eq!(t.state()["status"], "running");
    let again = t.rt(&["start", &t.id]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("running"), "{}", text(&again));

    let out = t.rt(&["exec", &t.id, "sh", "-c", "echo $$; cat /proc/1/cmdline"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sleep"), "{}", text(&out));
    let code = t.rt(&["exec", &t.id, "sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7));

    let ps = t.rt(&["ps", "--format", "json", &t.id]);
    assert_ok(&ps);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, vec![pid]);

    assert_ok(&t.rt(&["pause", &t.id]));
    assert_eq!(t.state()["status"], "paused");
    assert_ok(&t.rt(&["resume", &t.id]));
    assert_eq!(t.state()["status"], "running");

    let busy = t.rt(&["delete", &t.id]);
    assert!(!busy.status.success(), "delete of a running container must fail without --force");
    assert_ok(&t.rt(&["kill", &t.id, "KILL"]));
    wait_status(&t, "stopped");
    assert_ok(&t.rt(&["delete", &t.id]));
    assert!(t.cgroup_dirs().is_empty(), "cgroup left behind: {:?}", t.cgroup_dirs());
    assert!(!t.root.join(&t.id).exists(), "state left behind");
    let gone = t.rt(&["state", &t.id]);
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("does not exist"),
        "{}",
        text(&gone)
    );
}

#[test]
#[ignore = "needs root"]
fn exit_code_is_returned_by_run() {
    let t = T::new("exit");
    let spec = t.spec(&["sh", "-c", "exit 42"]);
    assert_eq!(t.run(&spec).status.code(), Some(42));
    assert!(!t.root.join(&t.id).exists());
}

#[test]
#[ignore = "needs root"]
fn hooks_run_in_order_with_state() {
    let t = T::new("hooks");
    let log_dir = t.tmp.path().join("hooklog");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log = log_dir.join("log");
    let host_hook = |name: &str| json!({ "path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} $(cat | grep -o '\"status\":\"[a-z]*\"') >> {}", log.display())] });
    let mut spec = t.spec(&["sh", "-c", "echo process >> /hooklog/log"]);
    spec["root"]["readonly"] = json!(false);
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "destination": "/hooklog", "type": "bind", "source": log_dir, "options": ["rbind", "rw"] }));
    spec["hooks"] = json!({
        "prestart": [host_hook("prestart")],
        "createRuntime": [host_hook("createRuntime")],
        "createContainer": [host_hook("createContainer")],
        // startContainer runs inside the container: /bin/sh and /hooklog are the container's.
        "startContainer": [{ "path": "/bin/sh", "args": ["sh", "-c", "echo startContainer >> /hooklog/log"] }],
        "poststart": [host_hook("poststart")],
        "poststop": [host_hook("poststop")]
    });
    assert_ok(&t.create(&spec));
    assert_ok(&t.rt(&["start", &t.id]));
    wait_status(&t, "stopped");
    assert_ok(&t.rt(&["delete", &t.id]));
    let got = std::fs::read_to_string(&log).unwrap();
    let order: Vec<&str> = got.lines().map(|l| l.split_whitespace().next().unwrap_or_default()).collect();
    let pos = |n: &str| order.iter().position(|o| *o == n).unwrap_or_else(|| panic!("{n} missing from {got}"));
    assert!(pos("prestart") < pos("createContainer") && pos("createRuntime") < pos("createContainer"), "{got}");
    assert!(pos("createContainer") < pos("startContainer") && pos("startContainer") < pos("process"), "{got}");
    assert!(pos("poststart") < pos("poststop") && order.last() == Some(&"poststop"), "{got}");
    assert!(got.contains("prestart \"status\":\"creating\""), "{got}");
    assert!(got.contains("poststop \"status\":\"stopped\""), "{got}");
}

#[test]
#[ignore = "needs root"]
fn failing_hook_aborts_create_and_leaves_nothing() {
    let t = T::new("badhook");
    let mut spec = t.spec(&["true"]);
    spec["hooks"] = json!({ "createRuntime": [{ "path": "/bin/sh", "args": ["sh", "-c", "exit 3"] }] });
    let out = t.create(&spec);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("createRuntime"), "{}", text(&out));
    assert!(t.cgroup_dirs().is_empty() && !t.root.join(&t.id).exists());
}

#[test]
#[ignore = "needs root"]
fn bad_input_is_rejected_and_leaves_nothing() {
    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("process.cwd", Box::new(|s| s["process"]["cwd"] = json!("relative"))),
        (
            "process.rlimits[0]",
            Box::new(|s| s["process"]["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "soft": 9, "hard": 1 }])),
        ),
        (
            "mounts[",
            Box::new(|s| {
                s["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({ "destination": "/x", "type": "bind", "source": "/no/such/dir", "options": ["bind"] }))
            }),
        ),
        ("linux.sysctl.kernel.panic", Box::new(|s| s["linux"]["sysctl"] = json!({ "kernel.panic": "1" }))),
        ("linux.resources.cpu.shares", Box::new(|s| s["linux"]["resources"] = json!({ "cpu": { "shares": 1 } }))),
        ("SCMP_ACT_NOPE", Box::new(|s| s["linux"]["seccomp"] = json!({ "defaultAction": "SCMP_ACT_NOPE" }))),
        ("exec /no/such/program", Box::new(|s| s["process"]["args"] = json!(["/no/such/program"]))),
        ("chdir to /missing", Box::new(|s| s["process"]["cwd"] = json!("/missing"))),
        (
            "CAP_SYS_RESOURCE",
            Box::new(|s| {
                s["process"]["rlimits"] =
                    json!([{ "type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1_099_511_627_776u64 }])
            }),
        ),
    ];
    for (needle, mutate) in cases {
        let t = T::new("bad");
        let mut spec = t.spec(&["true"]);
        mutate(&mut spec);
        let out = t.create(&spec);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "case {needle}: {}", text(&out));
        assert!(t.cgroup_dirs().is_empty(), "case {needle}: cgroup left behind");
        assert!(!t.root.join(&t.id).exists(), "case {needle}: state left behind");
    }
    let t = T::new("badjson");
    std::fs::write(t.bundle.config_path(), "{ not json").unwrap();
    let bundle = t.bundle.dir().to_str().unwrap().to_owned();
    let out = t.rt(&["create", "--bundle", &bundle, &t.id]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("config.json"), "{}", text(&out));
}

#[test]
#[ignore = "needs root"]
fn joins_namespace_by_path() {
    let a = T::new("ns-a");
    assert_ok(&a.create(&a.spec(&["sleep", "100"])));
    let pid = a.state()["pid"].as_i64().unwrap();
    let b = T::new("ns-b");
    let mut spec = b.spec(&[CHECK, "/check.json"]);
    for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = json!(format!("/proc/{pid}/ns/net"));
        }
    }
    let a_net =
        std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    b.expect(&json!({ "namespaces": {
        "net": { "host_inode": a_net, "shared": true },
        "pid": { "host_inode": host_ns("pid"), "shared": false }
    } }));
    assert_ok(&b.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn terminal_goes_to_console_socket() {
    let t = T::new("tty");
    let sock = t.tmp.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut spec = t.spec(&["sh", "-c", "tty; stty size"]);
    spec["process"]["terminal"] = json!(true);
    spec["process"]["consoleSize"] = json!({ "height": 33, "width": 77 });
    t.write(&spec);
    let bundle = t.bundle.dir().to_str().unwrap().to_owned();
    let receiver = std::thread::spawn(move || {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let (stream, _) = listener.accept().unwrap();
        let fd = recv_fd(&stream);
        // SAFETY: recv_fd returned a descriptor we now own.
        let mut master = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let sock_arg = sock.to_str().unwrap().to_owned();
    assert_ok(&t.rt_detached(&["run", "--detach", "--console-socket", &sock_arg, "--bundle", &bundle, &t.id]));
    let output = receiver.join().unwrap();
    assert!(output.contains("/dev/pts/0") && output.contains("33 77"), "{output:?}");
}

fn recv_fd(stream: &std::os::unix::net::UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u8; 64];
    // SAFETY: msghdr is plain data; the buffers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: valid socket and message buffers.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) };
    assert!(n > 0, "recvmsg");
    // SAFETY: the kernel filled one SCM_RIGHTS cmsg with one descriptor.
    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(libc::CMSG_FIRSTHDR(&msg)).cast::<i32>()) }
}

#[test]
#[ignore = "needs root"]
fn sigkill_during_create_is_recoverable() {
    let t = T::new("crash");
    let mut spec = t.spec(&["true"]);
    // Holds create in the middle (namespaces and cgroups exist, init waiting) long enough to kill it.
    spec["hooks"] = json!({ "createRuntime": [{ "path": "/bin/sleep", "args": ["sleep", "3"] }] });
    t.write(&spec);
    let bundle = t.bundle.dir().to_str().unwrap().to_owned();
    let mut child = std::process::Command::new(&t.runtime)
        .arg("--root")
        .arg(&t.root)
        .args(["create", "--bundle", &bundle, &t.id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.cgroup_dirs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!t.cgroup_dirs().is_empty(), "create was killed before it made its cgroup");
    // The init notices its runtime is gone and exits; the record says stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.state()["status"] != "stopped" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(t.state()["status"], "stopped");
    assert_ok(&t.rt(&["delete", "--force", &t.id]));
    assert!(t.cgroup_dirs().is_empty(), "cgroup left behind: {:?}", t.cgroup_dirs());
    assert!(!t.root.join(&t.id).exists(), "state left behind");
}
