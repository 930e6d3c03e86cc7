//! ExecSync (through the pod's monitor, which forks into the container's namespaces: no
//! runtime CLI per call), and the URLs of Exec, Attach and PortForward on the streaming server.

use std::sync::Arc;

use berth_proto::runtime::v1 as cri;

use super::{CriError, CriResult, Shim};
use crate::monitor::{Request, Response};

impl Shim {
    /// The container's own process settings (env, user, cwd, capabilities) with `args`.
    pub(super) fn exec_process(&self, id: &str, args: Vec<String>, tty: bool) -> CriResult<oci_spec::runtime::Process> {
        let bundle = self.bundle_dir(id);
        let spec = berth_runtime::spec::load(&bundle)
            .map_err(|e| CriError::Internal(format!("loading {}: {}", bundle.display(), crate::error_chain(&e))))?;
        let mut process =
            spec.process().clone().ok_or_else(|| CriError::Internal(format!("container {id} has no process")))?;
        process.set_args(Some(args));
        process.set_terminal(Some(tty));
        Ok(process)
    }

    pub async fn exec_sync(self: &Arc<Self>, req: cri::ExecSyncRequest) -> CriResult<cri::ExecSyncResponse> {
        if req.cmd.is_empty() {
            return Err(CriError::InvalidArgument("cmd: must not be empty".into()));
        }
        let c = self.running_container(&req.container_id)?;
        let process = self.exec_process(&c.record.id, req.cmd, false)?;
        let timeout_ms = u64::try_from(req.timeout).unwrap_or(0).saturating_mul(1000);
        let answer = self
            .monitor(&c.record.sandbox_id)
            .call(&Request::ExecSync { id: c.record.id.clone(), process: Box::new(process), timeout_ms })
            .await?;
        match answer {
            Response::ExecResult { timed_out: true, .. } => {
                Err(CriError::DeadlineExceeded(format!("command timed out after {}s", req.timeout)))
            }
            Response::ExecResult { exit_code, stdout, stderr, .. } => {
                Ok(cri::ExecSyncResponse { stdout, stderr, exit_code })
            }
            other => Err(CriError::Internal(format!("unexpected monitor answer {other:?}"))),
        }
    }
}
