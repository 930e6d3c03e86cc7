//! Test harness: network namespaces made for the test, plugin invocation exactly as a runtime
//! does it (CNI_* environment, config on stdin, result on stdout, run inside a "host" netns),
//! and a small libcni-style conflist runner.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Where cargo put this package's binaries (berth-bridge, berth-host-local …).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_berth-bridge")).parent().expect("bin dir").to_path_buf()
}

/// Debian's reference plugins; their absence is a failure, never a skip.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub fn cni_path() -> String {
    assert!(
        Path::new(REFERENCE_DIR).join("bridge").exists(),
        "the reference plugins are missing: apt-get install containernetworking-plugins (scripts/deps)"
    );
    format!("{}:{REFERENCE_DIR}", bin_dir().display())
}

pub fn plugin_path(name: &str) -> PathBuf {
    let ours = bin_dir().join(name);
    if ours.exists() {
        ours
    } else {
        Path::new(REFERENCE_DIR).join(name)
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Ns {
    pub name: String,
}

pub fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Ns {
    pub fn new(tag: &str) -> anyhow::Result<Ns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("bt-{tag}-{}-{n}", std::process::id());
        sh(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside this namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        sh(self.cmd(program).args(args))
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> anyhow::Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }

    pub fn ping(&self, ip: &str) -> bool {
        self.cmd("ping")
            .args(["-c1", "-W2", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `f` with the calling thread inside this namespace (on a fresh thread).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: valid fd; this thread is ours and ends after f.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

/// A plugin's answer.
#[derive(Debug)]
pub struct Reply {
    pub code: i32,
    pub json: Value,
}

impl Reply {
    pub fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "plugin failed: {}", self.json);
        &self.json
    }

    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got {}", self.json);
        self.json["code"].as_u64().unwrap_or(0)
    }

    pub fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// One invocation's environment.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    /// A directory searched before the usual CNI_PATH.
    pub extra_path: Option<&'a Path>,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str, netns: &'a str) -> Call<'a> {
        Call { command, container_id, netns, ifname: "eth0", args: "", extra_path: None }
    }
}

/// Spawns `plugin` as a runtime does, inside the host namespace `host`.
pub fn spawn(plugin: &Path, host: &Ns, call: &Call, stdin: &[u8]) -> anyhow::Result<Child> {
    let ns = std::fs::File::open(host.path())?;
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env(
            "CNI_PATH",
            match call.extra_path {
                Some(dir) => format!("{}:{}", dir.display(), cni_path()),
                None => cni_path(),
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; fd stays open until after spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {}", plugin.display()))?;
    child.stdin.take().expect("stdin").write_all(stdin)?;
    Ok(child)
}

pub fn invoke(plugin: &Path, host: &Ns, call: &Call, conf: &Value) -> anyhow::Result<Reply> {
    let child = spawn(plugin, host, call, conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8(out.stdout)?;
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("stdout not JSON: {text:?}"))?
    };
    Ok(Reply { code: out.status.code().unwrap_or(-1), json })
}

/// A conflist run the way libcni does: per-plugin config with name, cniVersion, prevResult and
/// the capability args the plugin asked for in runtimeConfig.
pub struct ConfList {
    pub list: Value,
}

impl ConfList {
    pub fn new(name: &str, version: &str, plugins: Value) -> ConfList {
        ConfList { list: json!({"cniVersion": version, "name": name, "plugins": plugins}) }
    }

    pub fn plugin_conf(&self, p: &Value, prev: Option<&Value>, runtime: &Value) -> Value {
        let mut c = p.clone();
        c["name"] = self.list["name"].clone();
        c["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        let mut rc = serde_json::Map::new();
        if let Some(caps) = p.get("capabilities").and_then(Value::as_object) {
            for (k, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = runtime.get(k) {
                        rc.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if !rc.is_empty() {
            c["runtimeConfig"] = Value::Object(rc);
        }
        c
    }

    pub fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// ADD through every plugin; the final result.
    pub fn add(&self, host: &Ns, call: &Call, runtime: &Value) -> anyhow::Result<Reply> {
        let mut prev: Option<Value> = None;
        for p in self.plugins() {
            let conf = self.plugin_conf(&p, prev.as_ref(), runtime);
            let r = invoke(&plugin_path(p["type"].as_str().unwrap_or("")), host, call, &conf)?;
            if r.code != 0 {
                return Ok(r);
            }
            prev = Some(r.json);
        }
        Ok(Reply { code: 0, json: prev.unwrap_or(Value::Null) })
    }

    /// Invokes each plugin in `plugins` with the config `conf` makes for it; the first failure
    /// stops the chain.
    fn chain(
        &self,
        host: &Ns,
        call: &Call,
        plugins: Vec<Value>,
        conf: impl Fn(&Value) -> Value,
    ) -> anyhow::Result<Reply> {
        for p in plugins {
            let path = plugin_path(p["type"].as_str().unwrap_or(""));
            let r = invoke(&path, host, call, &conf(&p))?;
            if r.code != 0 {
                return Ok(r);
            }
        }
        Ok(Reply { code: 0, json: Value::Null })
    }

    /// CHECK or DEL (DEL runs the plugins in reverse), with the cached ADD result.
    pub fn each(&self, host: &Ns, call: &Call, runtime: &Value, prev: Option<&Value>) -> anyhow::Result<Reply> {
        let mut plugins = self.plugins();
        if call.command == "DEL" {
            plugins.reverse();
        }
        self.chain(host, call, plugins, |p| self.plugin_conf(p, prev, runtime))
    }

    /// GC (1.1) with the runtime's valid attachments, to every plugin.
    pub fn gc(&self, host: &Ns, valid: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let list: Vec<Value> = valid.iter().map(|(c, i)| json!({"containerID": c, "ifname": i})).collect();
        self.chain(host, &Call::new("GC", "", ""), self.plugins(), |p| {
            let mut conf = self.plugin_conf(p, None, &Value::Null);
            conf["cni.dev/valid-attachments"] = Value::Array(list.clone());
            conf
        })
    }
}

/// A TCP round trip: a listener in `server` on `listen` echoing what it reads, a client in
/// `client` connecting to `connect` and sending `bytes` bytes; true when all come back.
pub fn tcp_transfer(server: &Ns, listen: &str, client: &Ns, connect: &str, bytes: usize) -> bool {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    // A previous transfer's server socket may linger for a moment: retry the bind briefly.
    let listener = server.within(|| {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(listen) {
                return l;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TcpListener::bind(listen).expect("bind")
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Ok((mut c, _)) = listener.accept() {
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        let stream = client
            .within(|| TcpStream::connect_timeout(&connect.parse().expect("addr"), std::time::Duration::from_secs(5)));
        let Ok(mut stream) = stream else {
            // Unblock the acceptor.
            let _ = server.within(|| TcpStream::connect(listener.local_addr().expect("addr")));
            return false;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; bytes];
        let writer = {
            let mut w = stream.try_clone().expect("clone");
            let data = data.clone();
            s.spawn(move || w.write_all(&data).is_ok())
        };
        let ok = stream.read_exact(&mut back).is_ok();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        writer.join().unwrap_or(false) && ok && back == data
    })
}

/// The number of elements in every set/map of nft table `family table` in `ns` (0 if absent).
pub fn nft_elements(ns: &Ns, family: &str, table: &str) -> usize {
    let out = match ns.run("nft", &["-j", "list", "table", family, table]) {
        Ok(out) => out,
        Err(e) if format!("{e:#}").contains("Error: No such file or directory") => return 0,
        Err(e) => panic!("listing nft table {family} {table}: {e:#}"),
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("set").or_else(|| i.get("map")))
                .map(|s| s["elem"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0)
}

/// How many addresses a host-local data dir (one network's) holds: its files named as IPs.
pub fn addresses_held(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok()))
        .count()
}
