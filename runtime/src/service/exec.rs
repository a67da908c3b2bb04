//! ExecSync and ReopenContainerLog: requests served by a running shim.

use super::*;

/// ExecSync's answer.
#[derive(Clone, Debug)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl Runtime {
    /// ExecSync: run a command in the container and collect its output.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<ExecOutput> {
        let rec = self.container(id)?;
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("cmd is required".into()));
        }
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let timeout_ms = (timeout_secs.max(0) as u64) * 1000;
        let deadline =
            (timeout_ms > 0).then(|| std::time::Duration::from_millis(timeout_ms + 10_000));
        let req = Request::Exec {
            args: cmd,
            env: None,
            cwd: None,
            timeout_ms,
        };
        match shim_client::call(&rec.dir, &req, deadline).await? {
            Response::Exec(r) if r.timed_out => Err(Error::DeadlineExceeded(format!(
                "command timed out after {timeout_secs}s and was killed"
            ))),
            Response::Exec(r) => Ok(ExecOutput {
                stdout: r.stdout,
                stderr: r.stderr,
                exit_code: r.exit_code,
            }),
            Response::Error { message } => Err(Error::FailedPrecondition(format!(
                "exec in {}: {message}",
                rec.id
            ))),
            other => Err(Error::Internal(format!(
                "shim answered Exec with {other:?}"
            ))),
        }
    }

    /// ReopenContainerLog (kubelet rotated the file).
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        match shim_client::call(
            &rec.dir,
            &Request::ReopenLog,
            Some(std::time::Duration::from_secs(10)),
        )
        .await?
        {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(Error::FailedPrecondition(message)),
            other => Err(Error::Internal(format!(
                "shim answered ReopenLog with {other:?}"
            ))),
        }
    }
}
