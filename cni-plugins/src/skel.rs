//! The plugin skeleton: read env and stdin, negotiate the version, call the plugin, print the answer.

use std::io::{Read, Write};

use crate::env::{CniEnv, Command};
use crate::error::{source_chain, CniError, ErrorCode};
use crate::netconf::{Attachment, NetConf};
use crate::netns::{NetNs, NetNsError};
use crate::result::CniResult;
use crate::version::{at_least, negotiate, version_info, CURRENT};
use std::path::Path;

/// What one invocation received.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub env: CniEnv,
    pub conf: NetConf,
    /// The raw configuration, for plugins that re-read it (e.g. to pass it to an IPAM plugin).
    pub stdin: Vec<u8>,
}

impl CmdArgs {
    /// The attachment this invocation is about (CNI_CONTAINERID, CNI_IFNAME).
    pub fn attachment(&self) -> Attachment {
        Attachment { container_id: self.env.container_id.clone(), ifname: self.env.ifname.clone() }
    }

    /// The prevResult, parsed (`None` when absent).
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        let Some(v) = &self.conf.prev_result else {
            return Ok(None);
        };
        CniResult::from_json(v)
            .map(Some)
            .map_err(|e| CniError::new(ErrorCode::Decode, "cannot decode prevResult").with_details(e.to_string()))
    }

    /// The container's network namespace; a missing one is error 4 naming CNI_NETNS.
    pub fn netns(&self) -> Result<NetNs, CniError> {
        NetNs::open(Path::new(&self.env.netns)).map_err(|e| match e {
            NetNsError::NotFound { .. } => CniError::new(
                ErrorCode::InvalidEnv,
                format!("CNI_NETNS {}: network namespace does not exist", self.env.netns),
            ),
            other => CniError::new(ErrorCode::Io, other.to_string()).with_details(source_chain(&other)),
        })
    }
}

/// One CNI plugin: the commands other than VERSION, which the skeleton answers itself.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError>;
    fn del(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn check(&self, args: &CmdArgs) -> Result<(), CniError>;
    /// STATUS (1.1): ready to serve ADD? Default: yes.
    fn status(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    /// GC (1.1): release resources of attachments not in `cni.dev/valid-attachments`.
    fn gc(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
}

/// What the process should print and exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Self { exit_code: 0, stdout }
    }

    fn err(err: &CniError, version: &str) -> Self {
        Self { exit_code: 1, stdout: err.to_json(version) }
    }
}

/// The first command that exists in `version`, if the command is newer than it.
fn minimum_version(command: Command) -> Option<&'static str> {
    match command {
        Command::Check => Some("0.4.0"),
        Command::Status | Command::Gc => Some("1.1.0"),
        _ => None,
    }
}

fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(ErrorCode::Decode, "cannot decode the network configuration on stdin").with_details(e.to_string())
    })
}

/// Runs one invocation without touching the process: pure apart from what the plugin does.
pub fn dispatch(plugin: &impl Plugin, lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let env = match CniEnv::from_lookup(lookup) {
        Ok(env) => env,
        Err(e) => {
            let err = CniError::new(ErrorCode::InvalidEnv, e.to_string()).with_details(source_chain(&e));
            return Outcome::err(&err, CURRENT);
        }
    };
    if env.command == Command::Version {
        #[derive(serde::Deserialize)]
        struct Req {
            #[serde(rename = "cniVersion")]
            cni_version: Option<String>,
        }
        let requested = serde_json::from_slice::<Req>(stdin).ok().and_then(|r| r.cni_version);
        let info = version_info(requested.as_deref());
        return Outcome::ok(serde_json::to_string(&info).unwrap_or_default());
    }
    let conf = match parse_conf(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::err(&e, CURRENT),
    };
    let version = match negotiate(&conf.cni_version) {
        Ok(v) => v,
        Err(e) => return Outcome::err(&e, CURRENT),
    };
    if let Some(min) = minimum_version(env.command) {
        if !at_least(version, min) {
            let msg = format!("{:?} needs cniVersion {min} or later, config has {version}", env.command);
            return Outcome::err(&CniError::new(ErrorCode::IncompatibleVersion, msg), version);
        }
    }
    let args = CmdArgs { env, conf, stdin: stdin.to_vec() };
    let done = match args.env.command {
        Command::Add => plugin.add(&args).map(|r| r.to_json(version).to_string()),
        Command::Del => plugin.del(&args).map(|()| String::new()),
        Command::Check => plugin.check(&args).map(|()| String::new()),
        Command::Status => plugin.status(&args).map(|()| String::new()),
        Command::Gc => plugin.gc(&args).map(|()| String::new()),
        Command::Version => unreachable!("answered above"),
    };
    match done {
        Ok(out) => Outcome::ok(out),
        Err(e) => Outcome::err(&e, version),
    }
}

/// The whole plugin process: returns the exit code for `std::process::exit`.
pub fn run(plugin: &impl Plugin) -> i32 {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => dispatch(plugin, |k| std::env::var(k).ok(), &stdin),
        Err(e) => {
            let err = CniError::new(ErrorCode::Io, "cannot read stdin").with_details(e.to_string());
            Outcome::err(&err, CURRENT)
        }
    };
    let mut out = std::io::stdout().lock();
    let written = out.write_all(outcome.stdout.as_bytes()).and_then(|()| out.flush());
    match (written, outcome.exit_code) {
        (Err(_), 0) => 1,
        (_, code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<Command>>,
    }

    impl Plugin for Recorder {
        fn add(&self, _: &CmdArgs) -> Result<CniResult, CniError> {
            self.calls.borrow_mut().push(Command::Add);
            Ok(CniResult {
                ips: vec![IpConfig { interface: None, address: "10.0.0.2/24".parse().unwrap(), gateway: None }],
                ..Default::default()
            })
        }
        fn del(&self, _: &CmdArgs) -> Result<(), CniError> {
            self.calls.borrow_mut().push(Command::Del);
            Err(CniError::new(ErrorCode::Plugin(123), "nope"))
        }
        fn check(&self, _: &CmdArgs) -> Result<(), CniError> {
            self.calls.borrow_mut().push(Command::Check);
            Ok(())
        }
    }

    fn call(p: &Recorder, cmd: &str, stdin: &str) -> (Outcome, serde_json::Value) {
        let vars: HashMap<&str, String> = [
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c1".into()),
            ("CNI_NETNS", "/run/netns/c1".into()),
            ("CNI_IFNAME", "eth0".into()),
        ]
        .into();
        let out = dispatch(p, |k| vars.get(k).cloned(), stdin.as_bytes());
        let json = serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, json)
    }

    #[test]
    fn add_encodes_requested_version() {
        let p = Recorder::default();
        let (out, v) = call(&p, "ADD", r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#);
        assert_eq!(out.exit_code, 0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(*p.calls.borrow(), vec![Command::Add]);
    }

    #[test]
    fn errors_map_to_codes() {
        let p = Recorder::default();
        let (out, v) = call(&p, "ADD", "{not json");
        assert_eq!((out.exit_code, v["code"].as_u64()), (1, Some(6)));
        let (_, v) = call(&p, "ADD", r#"{"cniVersion":"5.0.0"}"#);
        assert_eq!(v["code"], 1);
        assert!(v["msg"].as_str().unwrap().contains("5.0.0"));
        let (_, v) = call(&p, "DEL", r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!((v["code"].as_u64(), v["cniVersion"].as_str()), (Some(123), Some("1.0.0")));
        let (_, v) = call(&p, "BOGUS", r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn commands_gated_by_version() {
        let p = Recorder::default();
        let (_, v) = call(&p, "CHECK", r#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(v["code"], 1);
        let (_, v) = call(&p, "STATUS", r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["code"], 1);
        let (out, _) = call(&p, "STATUS", r#"{"cniVersion":"1.1.0"}"#);
        assert_eq!((out.exit_code, out.stdout.as_str()), (0, ""));
        let (out, _) = call(&p, "CHECK", r#"{"cniVersion":"1.1.0"}"#);
        assert_eq!(out.exit_code, 0);
    }

    #[test]
    fn version_needs_no_config() {
        let p = Recorder::default();
        let (out, v) = call(&p, "VERSION", "");
        assert_eq!(out.exit_code, 0);
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
        assert!(p.calls.borrow().is_empty());
    }
}
