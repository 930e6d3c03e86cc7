//! `berth up` / `berth down` / `berth install` end to end, each inside a network namespace made
//! here: a cluster from one command, `kubectl run` and the README's examples reaching Running,
//! nothing left behind by `berth down`, and a systemd install run from its units' Exec lines.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_integration::netns::NetNs;
use berth_integration::{bin_path, workspace_root};

/// `berth` inside `ns`, told where the binaries are when the test run pins them.
fn berth(ns: &NetNs) -> Command {
    let mut c = ns.command(bin_path("berth").expect("berth binary (cargo build -p berth-cli)"));
    c.stdin(Stdio::null());
    c
}

fn bin_dir_args() -> Vec<String> {
    match std::env::var(berth_integration::binaries::BIN_DIR_ENV) {
        Ok(d) if !d.is_empty() => vec!["--bin-dir".into(), d],
        _ => Vec::new(),
    }
}

fn kubectl(ns: &NetNs, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = ns.command("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_for(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn phases(ns: &NetNs, kc: &Path) -> String {
    kubectl(ns, kc, &["get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}"])
        .unwrap_or_default()
}

fn all_running(ns: &NetNs, kc: &Path, n: usize) -> bool {
    let p = phases(ns, kc);
    p.split_whitespace().count() == n && p.split_whitespace().all(|x| x.ends_with("=Running"))
}

/// A foreground `berth up` and its output lines.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(ns: &NetNs, data: &Path, run: &Path, cgroup_root: &str) -> anyhow::Result<Up> {
        Up::spawn(ns, "up", data, run, cgroup_root, &["--node-name", "n1"])
    }

    /// `berth up` or `berth join` (`what`) with its own directories, cgroup root and `extra` flags.
    fn spawn(ns: &NetNs, what: &str, data: &Path, run: &Path, cgroup_root: &str, extra: &[&str]) -> anyhow::Result<Up> {
        let mut child = berth(ns)
            .arg(what)
            .arg("--data-dir")
            .arg(data)
            .arg("--run-dir")
            .arg(run)
            .args(["--cgroup-root", cgroup_root])
            .args(extra)
            .args(bin_dir_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        for r in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Ok(Up { child, lines, seen: Vec::new() })
    }

    /// Waits for the "is Ready after N s" line; returns N.
    fn ready(&mut self, timeout: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        while let Ok(l) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(l.clone());
            if let Some(rest) = l.split(" is Ready after ").nth(1) {
                return Ok(rest.split('s').next().unwrap_or("").parse()?);
            }
        }
        bail!("berth up did not report a Ready node:\n{}", self.seen.join("\n"))
    }

    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                self.seen.extend(self.lines.try_iter());
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("berth up did not exit");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling our own child; it tears the node down.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.wait_exit(Duration::from_secs(60));
        }
    }
}

/// What a node can leave behind, each as a list of offenders (all empty: clean).
fn leaks(ns: &NetNs, paths: &[&Path], cgroup_root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let needles: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ");
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let in_cg = cg
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|p| p == cgroup_root || p.starts_with(&format!("{cgroup_root}/")));
        if in_cg || needles.iter().any(|n| cmd.contains(n.as_str())) {
            out.push(format!("process {pid}: {cmd}"));
        }
    }
    for l in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if needles.iter().any(|n| l.contains(n.as_str())) {
            out.push(format!("mount: {l}"));
        }
    }
    let links = Command::new("ip").args(["-n", &ns.name, "-o", "link"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines().filter(|l| !l.contains(": lo:")) {
        out.push(format!("link: {l}"));
    }
    let nft = ns.command("nft").args(["list", "tables"]).output().unwrap();
    for l in String::from_utf8_lossy(&nft.stdout).lines().filter(|l| !l.trim().is_empty()) {
        out.push(format!("nft: {l}"));
    }
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let d = e.path().join(cgroup_root.trim_start_matches('/'));
        if d.exists() {
            out.push(format!("cgroup: {}", d.display()));
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn berth_up_runs_kubectl_workloads_and_down_leaves_nothing() -> anyhow::Result<()> {
    let tmp = berth_integration::cri::short_tempdir();
    let (data, run) = (tmp.path().join("d"), tmp.path().join("r"));
    let ns = NetNs::new("bup")?;
    let cg = format!("/berth-up-it-{}", std::process::id());
    let kc = data.join("control/admin.kubeconfig");
    let examples = workspace_root().join("examples");

    let mut up = Up::start(&ns, &data, &run, &cg)?;
    let ready = up.ready(Duration::from_secs(180))?;
    eprintln!("berth up: node Ready after {ready:.1}s");
    kubectl(&ns, &kc, &["run", "hello", "--image=busybox", "--", "sleep", "3600"])?;
    let hello = wait_for(Duration::from_secs(90), "kubectl run to reach Running", || {
        phases(&ns, &kc).contains("hello=Running")
    })?;
    eprintln!("kubectl run busybox → Running in {:.2}s", hello.as_secs_f64());
    kubectl(
        &ns,
        &kc,
        &[
            "apply",
            "-f",
            &examples.join("pod.yaml").display().to_string(),
            "-f",
            &examples.join("deployment.yaml").display().to_string(),
        ],
    )?;
    let apply = wait_for(Duration::from_secs(90), "the examples to run", || all_running(&ns, &kc, 4))
        .with_context(|| phases(&ns, &kc))?;
    eprintln!("kubectl apply -f examples/ → 3 pods Running in {:.2}s", apply.as_secs_f64());
    let ip = kubectl(&ns, &kc, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].status.podIP}"])?;
    let mut last = String::new();
    let answered = wait_for(Duration::from_secs(30), "the web pod to answer", || {
        let out = ns.command("timeout").args(["5", "busybox", "wget", "-qO-", &format!("http://{ip}:8080/")]).output();
        last = out
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_else(|e| e.to_string());
        last.contains("hello from web-")
    });
    answered.with_context(|| format!("wget http://{ip}:8080/: {last}"))?;

    assert!(leaks(&ns, &[&run, &data], &cg).len() > 5, "the leak check sees a running node");

    // Down keeps the data: a second up brings the same workloads back.
    let t = Instant::now();
    let down = berth(&ns).arg("down").arg("--data-dir").arg(&data).output()?;
    assert!(down.status.success(), "berth down: {}", String::from_utf8_lossy(&down.stderr));
    assert!(up.wait_exit(Duration::from_secs(30))?.success(), "{}", up.seen.join("\n"));
    eprintln!("berth down in {:.2}s", t.elapsed().as_secs_f64());
    let left = leaks(&ns, &[&run, &data], &cg);
    assert!(left.is_empty(), "left behind by berth down:\n{}", left.join("\n"));
    assert!(kc.exists() && data.join("control/store").is_dir(), "berth down keeps the data");

    let mut up = Up::start(&ns, &data, &run, &cg)?;
    let again = up.ready(Duration::from_secs(180))?;
    // The API still says Running from before: what shows the pods are back is a web pod answering.
    let back = wait_for(Duration::from_secs(90), "the web pods to answer again", || {
        let ips = kubectl(&ns, &kc, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"])
            .unwrap_or_default();
        !ips.is_empty()
            && ips.split_whitespace().all(|ip| {
                let out = ns
                    .command("timeout")
                    .args(["5", "busybox", "wget", "-qO-", &format!("http://{ip}:8080/")])
                    .output();
                out.map(|o| String::from_utf8_lossy(&o.stdout).contains("hello from web-")).unwrap_or(false)
            })
    })?;
    assert!(all_running(&ns, &kc, 4), "{}", phases(&ns, &kc));
    eprintln!("second berth up: Ready after {again:.1}s, web pods answering again {:.2}s later", back.as_secs_f64());
    let down = berth(&ns).arg("down").arg("--purge").arg("--data-dir").arg(&data).output()?;
    assert!(down.status.success(), "berth down --purge: {}", String::from_utf8_lossy(&down.stderr));
    up.wait_exit(Duration::from_secs(30))?;
    assert!(!data.exists(), "--purge deletes the data dir");
    let left = leaks(&ns, &[&run, &data], &cg);
    assert!(left.is_empty(), "left behind by berth down --purge:\n{}", left.join("\n"));
    Ok(())
}

/// Two hosts (network namespaces joined by a veth pair): `berth up --network vxlan` on one,
/// `berth join --token` with the cluster's bootstrap token and CA on the other. The joined node
/// gets its certificate by TLS bootstrap, turns Ready, and a pod on it answers a pod on the
/// first host over the VXLAN overlay (the agents keep conflist and peers); `berth down` on both
/// leaves nothing.
#[test]
#[ignore = "needs root"]
fn berth_join_with_a_token_adds_a_ready_node_reachable_over_vxlan() -> anyhow::Result<()> {
    let tmp = berth_integration::cri::short_tempdir();
    let pid = std::process::id();
    let (a, b) = (NetNs::new("bja")?, NetNs::new("bjb")?);
    let (va, vb) = (format!("bja{pid}"), format!("bjb{pid}"));
    let ip = |ns: Option<&NetNs>, args: &[&str]| {
        let mut c = ns.map_or_else(|| Command::new("ip"), |ns| ns.command("ip"));
        c.args(args);
        run_ok(c, &format!("ip {}", args.join(" ")))
    };
    ip(None, &["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
    for (ns, link, addr) in [(&a, &va, "192.168.78.1/24"), (&b, &vb, "192.168.78.2/24")] {
        ip(None, &["link", "set", link, "netns", &ns.name])?;
        ip(Some(ns), &["link", "set", link, "name", "eth0"])?;
        ip(Some(ns), &["addr", "add", addr, "dev", "eth0"])?;
        ip(Some(ns), &["link", "set", "eth0", "up"])?;
    }
    let (data_a, run_a, cg_a) = (tmp.path().join("da"), tmp.path().join("ra"), format!("/berth-join-a-{pid}"));
    let (data_b, run_b, cg_b) = (tmp.path().join("db"), tmp.path().join("rb"), format!("/berth-join-b-{pid}"));
    let common = ["--network", "vxlan", "--underlay-device", "eth0"];
    let flags_a =
        [&common[..], &["--node-name", "ja", "--node-ip", "192.168.78.1", "--listen", "0.0.0.0:6443"]].concat();
    let mut up_a = Up::spawn(&a, "up", &data_a, &run_a, &cg_a, &flags_a)?;
    up_a.ready(Duration::from_secs(180))?;
    let kc = data_a.join("control/admin.kubeconfig");

    let token = std::fs::read_to_string(data_a.join("control/pki/bootstrap-token"))?;
    let ca = data_a.join("control/pki/ca.crt").display().to_string();
    let join = [
        &common[..],
        &[
            "--node-name",
            "jb",
            "--node-ip",
            "192.168.78.2",
            "--token",
            token.trim(),
            "--server",
            "https://192.168.78.1:6443",
            "--ca-cert",
            &ca,
        ],
    ]
    .concat();
    let mut up_b = Up::spawn(&b, "join", &data_b, &run_b, &cg_b, &join)?;
    let joined = up_b.ready(Duration::from_secs(180))?;
    eprintln!("berth join --token: node Ready after {joined:.1}s");
    let ready = kubectl(
        &a,
        &kc,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=='Ready')].status} {end}",
        ],
    )?;
    assert_eq!(ready, "ja=True jb=True");
    let issuer = kubectl(&a, &kc, &["get", "csr", "-o", "jsonpath={.items[*].spec.username}"])?;
    assert!(
        issuer.contains("system:bootstrap:"),
        "the joined node's certificate came from a bootstrap-token CSR: {issuer}"
    );

    let pods = tmp.path().join("pods.yaml");
    std::fs::write(
        &pods,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: server}\nspec:\n  nodeName: jb\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'mkdir /w && echo hello-from-jb > /w/index.html && exec httpd -f -p 8080 -h /w']\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  nodeName: ja\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '3600']\n",
    )?;
    kubectl(&a, &kc, &["apply", "-f", &pods.display().to_string()])?;
    wait_for(Duration::from_secs(90), "both pods to run", || all_running(&a, &kc, 2))
        .with_context(|| phases(&a, &kc))?;
    let server_ip = kubectl(&a, &kc, &["get", "pod", "server", "-o", "jsonpath={.status.podIP}"])?;
    let client_ip = kubectl(&a, &kc, &["get", "pod", "client", "-o", "jsonpath={.status.podIP}"])?;
    assert_ne!(
        server_ip.rsplit_once('.').map(|x| x.0),
        client_ip.rsplit_once('.').map(|x| x.0),
        "the pods are on the two nodes' subnets: {server_ip} {client_ip}"
    );
    let mut last = String::new();
    let answered = wait_for(Duration::from_secs(30), "the pod on the joined node to answer across the overlay", || {
        // nc, not wget: Debian's static busybox wget segfaults in a root without /etc files.
        let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server_ip} 8080");
        last = kubectl(&a, &kc, &["exec", "client", "--", "sh", "-c", &get]).unwrap_or_else(|e| e.to_string());
        last.contains("hello-from-jb")
    });
    answered.with_context(|| format!("client → {server_ip}:8080: {last}"))?;

    for (up, ns, data) in [(&mut up_b, &b, &data_b), (&mut up_a, &a, &data_a)] {
        let down = berth(ns).arg("down").arg("--data-dir").arg(data).output()?;
        assert!(down.status.success(), "berth down: {}", String::from_utf8_lossy(&down.stderr));
        assert!(up.wait_exit(Duration::from_secs(60))?.success(), "{}", up.seen.join("\n"));
    }
    for (ns, paths, cg) in [(&a, [&run_a, &data_a], &cg_a), (&b, [&run_b, &data_b], &cg_b)] {
        let left: Vec<String> =
            leaks(ns, &[paths[0], paths[1]], cg).into_iter().filter(|l| !l.contains(" eth0@")).collect();
        assert!(left.is_empty(), "left behind on {}:\n{}", ns.name, left.join("\n"));
    }
    Ok(())
}

/// A unit file's `Key=` values, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(String::from).collect()
}

/// A private mount namespace in which the staging root is where the units expect it: the
/// staged usr/local/bin, opt, etc/cni, etc/berth and var/lib/berth bound over the real paths
/// (/etc through an overlay, so nothing is created on the host), tmpfs on /run/berth and
/// /var/log/pods. Held open by a `sleep` that is killed on drop. Mount points missing on a
/// fresh host are made first (empty) and removed on drop.
struct StagedHost {
    holder: Child,
    ns: String,
    made: Vec<&'static Path>,
}

/// Where the units expect Berth's state, logs and runtime files.
const MOUNT_POINTS: [&str; 3] = ["/var/lib/berth", "/var/log/pods", "/run/berth"];

impl StagedHost {
    fn new(ns: &NetNs, staging: &Path, scratch: &Path) -> anyhow::Result<StagedHost> {
        let mut made = Vec::new();
        for p in MOUNT_POINTS.map(Path::new) {
            if !p.exists() {
                std::fs::create_dir_all(p)?;
                made.push(p);
            }
        }
        let s = staging.display();
        let t = scratch.display();
        let script = format!(
            "set -e; mkdir -p {t}/etc-up {t}/etc-work {s}/var/lib/berth\n\
             mount -t overlay overlay -o lowerdir=/etc,upperdir={t}/etc-up,workdir={t}/etc-work /etc\n\
             mkdir -p /etc/berth /etc/cni\n\
             mount --bind {s}/etc/berth /etc/berth; mount --bind {s}/etc/cni /etc/cni\n\
             mount --bind {s}/usr/local/bin /usr/local/bin; mount --bind {s}/opt /opt\n\
             mount --bind {s}/var/lib/berth /var/lib/berth\n\
             mount -t tmpfs tmpfs /run/berth; mount -t tmpfs tmpfs /var/log/pods\n\
             echo ready; exec sleep 100000"
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().expect("stdout")).read_line(&mut line)?;
        let host = StagedHost { holder, ns: ns.name.clone(), made };
        if line.trim() != "ready" {
            bail!("could not set up the staged host's mount namespace");
        }
        Ok(host)
    }

    /// An Exec line of a unit, run on the staged host (network namespace and mounts).
    fn command(&self, line: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--");
        c.args(line.split_whitespace()).stdin(Stdio::null());
        c
    }

    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.holder.id()))
    }
}

impl Drop for StagedHost {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for p in &self.made {
            // Only while still empty: nothing of the host's is removed.
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let f = std::fs::File::create(log)?;
    Ok(cmd.stdout(f.try_clone()?).stderr(f).spawn()?)
}

fn run_ok(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn stop(child: &mut Child) {
    // SAFETY: our own child, as systemd's stop would (SIGTERM to the main process).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[test]
#[ignore = "needs root"]
fn systemd_install_runs_from_its_units_and_containers_survive_a_shim_restart() -> anyhow::Result<()> {
    let tmp = berth_integration::cri::short_tempdir();
    let staging = tmp.path().join("root");
    let ns = NetNs::new("binst")?;
    let cg = format!("/berth-inst-it-{}", std::process::id());
    let out = Command::new(bin_path("berth")?)
        .args([
            "install",
            "--control",
            "--node-name",
            "n1",
            "--listen",
            "127.0.0.1:6443",
            "--cgroup-root",
            &cg,
            "--root",
        ])
        .arg(&staging)
        .args(bin_dir_args())
        .output()?;
    assert!(out.status.success(), "berth install: {}", String::from_utf8_lossy(&out.stderr));
    for f in [
        "usr/local/bin/berth-shim",
        "usr/local/bin/berth-pause",
        "opt/cni/bin/berth-bridge",
        "opt/cni/bin/berth-host-local",
        "etc/berth/shim.toml",
        "etc/berth/agent.yaml",
    ] {
        assert!(staging.join(f).is_file(), "{f} installed");
    }
    let unit = |name: &str| {
        std::fs::read_to_string(staging.join("etc/systemd/system").join(name)).with_context(|| name.to_string())
    };
    let (registry, control, shim, agent) = (
        unit("berth-registry.service")?,
        unit("berth-control.service")?,
        unit("berth-shim.service")?,
        unit("berth-agent.service")?,
    );
    assert_eq!(unit_values(&shim, "KillMode"), ["process"], "containers outlive a shim restart");
    assert_eq!(unit_values(&shim, "Delegate"), ["yes"]);
    assert_eq!(unit_values(&agent, "Requires"), ["berth-shim.service"]);
    assert!(unit_values(&agent, "After")[0].contains("berth-shim.service"));
    for u in [&registry, &control, &shim, &agent] {
        assert_eq!(unit_values(u, "Restart"), ["always"]);
    }

    let host = StagedHost::new(&ns, &staging, tmp.path())?;
    let logs = tmp.path();
    let mut daemons: Vec<(&str, Child)> = Vec::new();
    for (name, u) in [("registry", &registry), ("control", &control), ("shim", &shim)] {
        daemons.push((
            name,
            spawn_logged(host.command(&unit_values(u, "ExecStart")[0]), &logs.join(format!("{name}.log")))?,
        ));
    }
    wait_for(Duration::from_secs(30), "the CRI socket", || host.path("/run/berth/cri.sock").exists())?;
    for pre in unit_values(&agent, "ExecStartPre") {
        run_ok(host.command(&pre), &pre)?;
    }
    daemons.push(("agent", spawn_logged(host.command(&unit_values(&agent, "ExecStart")[0]), &logs.join("agent.log"))?));
    for post in unit_values(&agent, "ExecStartPost") {
        run_ok(host.command(&post), &post)?;
    }
    let kc = staging.join("var/lib/berth/control/admin.kubeconfig");
    let ready = wait_for(Duration::from_secs(120), "node n1 Ready", || {
        kubectl(&ns, &kc, &["get", "node", "n1", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"])
            .map(|s| s == "True")
            .unwrap_or(false)
    });
    ready.with_context(|| berth_integration_tail(&logs.join("agent.log")))?;
    let conflist = std::fs::read_to_string(staging.join("etc/cni/net.d/10-berth.conflist"))
        .context("berth-agent wrote the conflist")?;
    assert!(conflist.contains("berth-bridge") && conflist.contains("10.244."), "{conflist}");
    kubectl(&ns, &kc, &["run", "hi", "--image=busybox", "--", "sleep", "3600"])?;
    wait_for(Duration::from_secs(90), "the pod to run", || phases(&ns, &kc).contains("hi=Running"))?;

    // systemctl restart berth-shim with KillMode=process: the shim alone gets SIGTERM.
    let pod_pids = pids_in_cgroup(&cg);
    assert!(!pod_pids.is_empty(), "the pod's processes are in {cg}");
    let shim_idx = daemons.iter().position(|(n, _)| *n == "shim").expect("shim");
    stop(&mut daemons[shim_idx].1);
    daemons[shim_idx].1 = spawn_logged(host.command(&unit_values(&shim, "ExecStart")[0]), &logs.join("shim2.log"))?;
    std::thread::sleep(Duration::from_secs(3));
    for pid in &pod_pids {
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "pod process {pid} survived the shim restart");
    }
    assert!(phases(&ns, &kc).contains("hi=Running"));
    let restarts =
        kubectl(&ns, &kc, &["get", "pod", "hi", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])?;
    assert_eq!(restarts, "0");

    // Stop the agent, let `berth down` remove the pods through the shim, stop the rest, sweep.
    let agent_idx = daemons.iter().position(|(n, _)| *n == "agent").expect("agent");
    stop(&mut daemons[agent_idx].1);
    run_ok(host.command("/usr/local/bin/berth down --data-dir /var/lib/berth"), "berth down (pods)")?;
    for (_, d) in daemons.iter_mut() {
        stop(d);
    }
    run_ok(host.command("/usr/local/bin/berth down --data-dir /var/lib/berth"), "berth down (sweep)")?;
    drop(host);
    let left = leaks(&ns, &[&staging], &cg);
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    Ok(())
}

fn pids_in_cgroup(root: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .any(|p| p.starts_with(&format!("{root}/")))
        })
        .collect()
}

fn berth_integration_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
