//! Netavark's external-plugin protocol (Podman 5 and newer): `info`, `create`, `setup <netns>`
//! and `teardown <netns>`, JSON on stdin and stdout, `{"error": …}` and exit 1 on failure.
//! berth-bridge answers them with the same bridge, IPAM and port-mapping code as CNI ADD/DEL:
//! a request becomes the CNI configuration a conflist `berth-bridge` + `berth-portmap` would
//! get, and runs in-process.

pub mod translate;
pub mod types;

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bridge::Bridge;
use crate::env::{CniEnv, Command};
use crate::error::{source_chain, CniError};
use crate::portmap::Portmap;
use crate::skel::{CmdArgs, Plugin};
use translate::TranslateError;
use types::{Info, PluginExec, StatusBlock};

/// The plugin API version netavark expects in `info`.
pub const API_VERSION: &str = "1.0.0";

/// A netavark subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subcommand {
    Info,
    Create,
    Setup,
    Teardown,
}

impl Subcommand {
    /// The subcommand of an invocation: `argv1` names one and no CNI_COMMAND is set (a CNI
    /// runtime always sets it, netavark never does).
    pub fn detect(argv1: Option<&str>, cni_command: Option<&str>) -> Option<Subcommand> {
        if cni_command.is_some_and(|c| !c.is_empty()) {
            return None;
        }
        match argv1? {
            "info" => Some(Subcommand::Info),
            "create" => Some(Subcommand::Create),
            "setup" => Some(Subcommand::Setup),
            "teardown" => Some(Subcommand::Teardown),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Subcommand::Info => "info",
            Subcommand::Create => "create",
            Subcommand::Setup => "setup",
            Subcommand::Teardown => "teardown",
        }
    }
}

/// A failed netavark request; its text (with causes) becomes the `error` netavark shows.
#[derive(Debug, thiserror::Error)]
pub enum NetavarkError {
    #[error("cannot read stdin")]
    Stdin {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode the {subcommand} request on stdin")]
    Decode {
        subcommand: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{subcommand} needs the container's network namespace path as its argument")]
    MissingNetns { subcommand: &'static str },
    #[error("invalid network definition")]
    Invalid {
        #[source]
        source: TranslateError,
    },
    #[error("{}{}", .source.msg, details(&.source.details))]
    Cni { source: CniError },
    #[error("teardown could not remove everything: {}", .errors.join("; "))]
    Teardown { errors: Vec<String> },
}

fn details(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

impl From<TranslateError> for NetavarkError {
    fn from(source: TranslateError) -> Self {
        NetavarkError::Invalid { source }
    }
}

impl From<CniError> for NetavarkError {
    fn from(source: CniError) -> Self {
        NetavarkError::Cni { source }
    }
}

fn decode<T: DeserializeOwned>(sub: Subcommand, stdin: &[u8]) -> Result<T, NetavarkError> {
    serde_json::from_slice(stdin).map_err(|source| NetavarkError::Decode { subcommand: sub.name(), source })
}

/// The in-process CNI invocation for one plugin configuration of `exec`.
fn cmd_args(command: Command, exec: &PluginExec, netns: &str, conf: &Value) -> Result<CmdArgs, NetavarkError> {
    let text = conf.to_string();
    let conf =
        serde_json::from_str(&text).map_err(|source| NetavarkError::Decode { subcommand: "generated CNI", source })?;
    let env = CniEnv {
        command,
        container_id: exec.container_id.clone(),
        netns: netns.to_string(),
        ifname: exec.network_options.interface_name.clone(),
        args: Vec::new(),
        path: Vec::new(),
    };
    Ok(CmdArgs { env, conf, stdin: text.into_bytes() })
}

/// `setup`: bridge ADD, then the port mappings; a failed port mapping undoes the bridge.
fn setup(exec: &PluginExec, netns: &str) -> Result<StatusBlock, NetavarkError> {
    let bridge_conf = translate::bridge_conf(exec)?;
    let add = cmd_args(Command::Add, exec, netns, &bridge_conf)?;
    let result = Bridge.add(&add)?;
    let prev = result.to_json(crate::version::CURRENT);
    if let Some(pm) = translate::portmap_conf(exec, &prev)? {
        let mapped = cmd_args(Command::Add, exec, netns, &pm).and_then(|a| Ok(Portmap.add(&a)?));
        if let Err(e) = mapped {
            let undo = cmd_args(Command::Del, exec, netns, &bridge_conf)?;
            let _ = Bridge.del(&undo);
            return Err(e);
        }
    }
    Ok(translate::status_block(&result, &exec.network_options.interface_name))
}

/// `teardown`: port mappings and bridge DEL, both tried whatever the other did (a missing
/// netns is fine).
fn teardown(exec: &PluginExec, netns: &str) -> Result<(), NetavarkError> {
    let mut errors = Vec::new();
    let ports = translate::portmap_conf(exec, &Value::Null).map_err(NetavarkError::from).and_then(|pm| match pm {
        Some(pm) => Ok(Portmap.del(&cmd_args(Command::Del, exec, netns, &pm)?)?),
        None => Ok(()),
    });
    if let Err(e) = ports {
        errors.push(with_causes(&e));
    }
    let conf = translate::bridge_conf(exec)?;
    if let Err(e) = Bridge.del(&cmd_args(Command::Del, exec, netns, &conf)?) {
        errors.push(with_causes(&NetavarkError::from(e)));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(NetavarkError::Teardown { errors })
    }
}

/// Answers one request; the JSON to print on success (empty for teardown).
pub fn handle(sub: Subcommand, netns: Option<&str>, stdin: &[u8]) -> Result<String, NetavarkError> {
    let netns = || netns.filter(|p| !p.is_empty()).ok_or(NetavarkError::MissingNetns { subcommand: sub.name() });
    match sub {
        Subcommand::Info => {
            Ok(json(&Info { version: env!("CARGO_PKG_VERSION"), api_version: API_VERSION, cni_plugin: "berth-bridge" }))
        }
        Subcommand::Create => Ok(json(&translate::complete(decode(sub, stdin)?)?)),
        Subcommand::Setup => {
            let path = netns()?;
            Ok(json(&setup(&decode(sub, stdin)?, path)?))
        }
        Subcommand::Teardown => {
            let path = netns()?;
            teardown(&decode(sub, stdin)?, path).map(|()| String::new())
        }
    }
}

/// The error with its causes, as netavark shows it to the user.
fn with_causes(e: &NetavarkError) -> String {
    let chain = source_chain(e);
    if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The whole netavark-mode process: reads stdin, prints the answer or `{"error": …}`, and
/// returns the exit code. `info` needs no input but still drains a piped stdin, so a caller
/// that writes one (netavark writes its request and then closes) never meets a closed pipe; a
/// terminal is left alone.
pub fn run(sub: Subcommand, netns: Option<&str>) -> i32 {
    use std::io::IsTerminal;
    let mut stdin = Vec::new();
    let input = std::io::stdin();
    let read =
        if sub == Subcommand::Info && input.is_terminal() { Ok(0) } else { input.lock().read_to_end(&mut stdin) };
    let outcome = match read {
        Ok(_) => handle(sub, netns, &stdin),
        Err(source) => Err(NetavarkError::Stdin { source }),
    };
    let (code, text) = match outcome {
        Ok(text) => (0, text),
        Err(e) => (1, serde_json::json!({ "error": with_causes(&e) }).to_string()),
    };
    let mut out = std::io::stdout().lock();
    match (out.write_all(text.as_bytes()).and_then(|()| out.flush()), code) {
        (Err(_), 0) => 1,
        (_, code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_subcommands_only_without_cni_command() {
        assert_eq!(Subcommand::detect(Some("setup"), None), Some(Subcommand::Setup));
        assert_eq!(Subcommand::detect(Some("info"), Some("")), Some(Subcommand::Info));
        assert_eq!(Subcommand::detect(Some("setup"), Some("ADD")), None);
        assert_eq!(Subcommand::detect(Some("bogus"), None), None);
        assert_eq!(Subcommand::detect(None, None), None);
    }

    #[test]
    fn info_create_and_errors() {
        let info: Value = serde_json::from_str(&handle(Subcommand::Info, None, b"").unwrap()).unwrap();
        assert_eq!(info["api_version"], "1.0.0");
        let net = br#"{"name":"n","id":"abc","driver":"berth-bridge","subnets":[{"subnet":"10.1.0.0/24"}]}"#;
        let out: Value = serde_json::from_str(&handle(Subcommand::Create, None, net).unwrap()).unwrap();
        assert_eq!(out["subnets"][0]["gateway"], "10.1.0.1");
        let e = handle(Subcommand::Create, None, b"{").unwrap_err();
        assert!(matches!(e, NetavarkError::Decode { subcommand: "create", .. }));
        let e = handle(Subcommand::Setup, None, b"{}").unwrap_err();
        assert!(e.to_string().contains("network namespace path"), "{e}");
    }
}
