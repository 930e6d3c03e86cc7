//! OCI hooks: run a host program with the container state on stdin, within its timeout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: starting it")]
    Spawn {
        kind: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} hook {path} exited with {status}")]
    Failed { kind: &'static str, path: String, status: String },
    #[error("{kind} hook {path} timed out after {secs} s")]
    Timeout { kind: &'static str, path: String, secs: i64 },
}

/// Runs each hook in order; the first failure stops the list.
pub fn run_all(kind: &'static str, hooks: &[Hook], state_json: &[u8]) -> Result<(), HookError> {
    hooks.iter().try_for_each(|h| run(kind, h, state_json))
}

pub fn run(kind: &'static str, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some((arg0, rest)) = args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for var in hook.env().iter().flatten() {
        if let Some((k, v)) = var.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { kind, path: path.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores its stdin may close it early: that is not an error.
        let _ = stdin.write_all(state_json);
    }
    let deadline = hook.timeout().filter(|t| *t > 0).map(|t| (t, Instant::now() + Duration::from_secs(t as u64)));
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(HookError::Failed { kind, path, status: status.to_string() }),
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { kind, path, source }),
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout { kind, path, secs });
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn passes_state_and_reports_failure_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let ok = hook(&format!(r#"{{"path":"/bin/sh","args":["sh","-c","cat > {}"]}}"#, out.display()));
        run("prestart", &ok, b"{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}");
        let fail = hook(r#"{"path":"/bin/sh","args":["sh","-c","exit 3"]}"#);
        assert!(matches!(run("poststop", &fail, b""), Err(HookError::Failed { .. })));
        let slow = hook(r#"{"path":"/bin/sh","args":["sh","-c","sleep 5"],"timeout":1}"#);
        assert!(matches!(run("poststart", &slow, b""), Err(HookError::Timeout { .. })));
    }
}
