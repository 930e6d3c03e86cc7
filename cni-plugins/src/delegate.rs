//! Delegation: run another plugin (an IPAM plugin) found through CNI_PATH, as a runtime would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::Command;
use crate::error::{CniError, ErrorCode};
use crate::ipam::HostLocal;
use crate::result::CniResult;
use crate::skel::{CmdArgs, Plugin};

fn command_name(c: Command) -> &'static str {
    match c {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Status => "STATUS",
        Command::Gc => "GC",
        Command::Version => "VERSION",
    }
}

/// The executable called `plugin` in the first CNI_PATH directory that has it.
pub fn find(plugin: &str, path: &[String]) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        let msg = format!("invalid plugin type {plugin:?}");
        return Err(CniError::new(ErrorCode::InvalidNetworkConfig, msg));
    }
    path.iter().map(|dir| Path::new(dir).join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        let msg = format!("plugin {plugin:?} not found in CNI_PATH {:?}", path.join(":"));
        CniError::new(ErrorCode::InvalidNetworkConfig, msg)
    })
}

/// Runs `plugin` for `command` with our environment (CNI_COMMAND replaced) and `stdin`;
/// returns its stdout JSON (`Null` when empty), or its error with the code it reported.
pub fn exec(plugin: &str, command: Command, path: &[String], stdin: &[u8]) -> Result<Value, CniError> {
    let exe = find(plugin, path)?;
    let io = |what: &str, e: std::io::Error| {
        CniError::new(ErrorCode::Io, format!("{what} delegated plugin {}", exe.display())).with_details(e.to_string())
    };
    let mut child = Process::new(&exe)
        .env("CNI_COMMAND", command_name(command))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io("cannot run", e))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).map_err(|e| io("cannot write to", e))?;
    }
    let out = child.wait_with_output().map_err(|e| io("cannot wait for", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Option<Value> = serde_json::from_str(text.trim()).ok();
    if out.status.success() {
        return Ok(json.unwrap_or(Value::Null));
    }
    let (code, msg, details) = match &json {
        Some(v) => (
            v.get("code").and_then(Value::as_u64).unwrap_or(999) as u32,
            v.get("msg").and_then(Value::as_str).unwrap_or("failed").to_string(),
            v.get("details").and_then(Value::as_str).unwrap_or("").to_string(),
        ),
        None => (999, format!("failed with {} and no error JSON", out.status), text.to_string()),
    };
    let code = match code {
        1 => ErrorCode::IncompatibleVersion,
        2 => ErrorCode::UnsupportedField,
        3 => ErrorCode::UnknownContainer,
        4 => ErrorCode::InvalidEnv,
        5 => ErrorCode::Io,
        6 => ErrorCode::Decode,
        7 => ErrorCode::InvalidNetworkConfig,
        11 => ErrorCode::TryAgainLater,
        50 => ErrorCode::NotAvailable,
        51 => ErrorCode::CannotGc,
        n => ErrorCode::Plugin(n),
    };
    let msg = format!("{plugin} {}: {msg}", command_name(command));
    Err(CniError::new(code, msg).with_details(details))
}

/// The IPAM type served in-process: Berth's own host-local is the same code as the binary, so
/// the bridge plugins call it directly instead of paying for a second process (measured: a
/// process start is over half of an ADD here). Every other type is executed.
pub const IN_PROCESS_IPAM: &str = "berth-host-local";

/// Runs IPAM `plugin` for `command` (in-process for berth-host-local); its stdout JSON.
pub fn ipam(plugin: &str, command: Command, args: &CmdArgs) -> Result<Value, CniError> {
    if plugin != IN_PROCESS_IPAM {
        return exec(plugin, command, &args.env.path, &args.stdin);
    }
    let h = HostLocal;
    match command {
        Command::Add => h.add(args).map(|r| r.to_json(&args.conf.cni_version)),
        Command::Del => h.del(args).map(|()| Value::Null),
        Command::Check => h.check(args).map(|()| Value::Null),
        Command::Status => h.status(args).map(|()| Value::Null),
        Command::Gc => h.gc(args).map(|()| Value::Null),
        Command::Version => Ok(Value::Null),
    }
}

/// ADD through an IPAM plugin, with its result parsed.
pub fn ipam_add(plugin: &str, args: &CmdArgs) -> Result<CniResult, CniError> {
    let v = ipam(plugin, Command::Add, args)?;
    CniResult::from_json(&v).map_err(|e| {
        CniError::new(ErrorCode::Decode, format!("{plugin} ADD returned an unusable result"))
            .with_details(e.to_string())
    })
}
