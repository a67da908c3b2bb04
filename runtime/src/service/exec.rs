//! ExecSync, the streaming Exec and Attach, PortForward's target, and
//! ReopenContainerLog: requests served by a running shim (or the pod's
//! network namespace).

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
        // Any i64 a request holds: a negative one is none, a huge one
        // saturates (it must not overflow here nor in the shim).
        let timeout_ms = u64::try_from(timeout_secs)
            .unwrap_or(0)
            .saturating_mul(1000);
        let deadline = (timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(timeout_ms.saturating_add(10_000)));
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

    /// Checks a streaming Exec or Attach before any URL is handed out:
    /// the container exists and runs, and the streams asked for make sense
    /// (as the reference cri-streaming server validates them).
    pub fn check_stream(&self, id: &str, s: &StreamAsk) -> Result<ContainerRecord> {
        if s.tty && s.stderr {
            return Err(Error::InvalidArgument(
                "tty and stderr cannot both be true: a terminal has one output stream".into(),
            ));
        }
        if !(s.stdin || s.stdout || s.stderr) {
            return Err(Error::InvalidArgument(
                "one of stdin, stdout and stderr must be true".into(),
            ));
        }
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}, not running",
                rec.id, rec.state
            )));
        }
        Ok(rec)
    }

    /// A streaming Exec: the process runs, its stdio comes back as
    /// descriptors (see `Request::ExecStream`).
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        s: &StreamAsk,
        size: Option<(u16, u16)>,
    ) -> Result<shim_client::ShimStream> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("cmd is required".into()));
        }
        let rec = self.check_stream(id, s)?;
        let req = Request::ExecStream {
            args: cmd,
            env: None,
            cwd: None,
            tty: s.tty,
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
            size,
        };
        self.open_stream(&rec, &req).await
    }

    /// Attach to the container's own stdio (see `Request::Attach`).
    pub async fn attach(&self, id: &str, s: &StreamAsk) -> Result<shim_client::ShimStream> {
        let rec = self.check_stream(id, s)?;
        let req = Request::Attach {
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
        };
        self.open_stream(&rec, &req).await
    }

    async fn open_stream(
        &self,
        rec: &ContainerRecord,
        req: &Request,
    ) -> Result<shim_client::ShimStream> {
        let st = shim_client::open_stream(&rec.dir, req).await?;
        match &st.answer {
            Response::Streaming { .. } | Response::Attached { .. } => Ok(st),
            Response::Error { message } => Err(Error::FailedPrecondition(format!(
                "container {}: {message}",
                rec.id
            ))),
            other => Err(Error::Internal(format!(
                "shim answered a stream request with {other:?}"
            ))),
        }
    }

    /// Attach's resize: the container's pty gets the size.
    pub async fn resize(&self, id: &str, width: u16, height: u16) -> Result<()> {
        let rec = self.container(id)?;
        match shim_client::call(
            &rec.dir,
            &Request::Resize { width, height },
            Some(std::time::Duration::from_secs(5)),
        )
        .await?
        {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(Error::FailedPrecondition(message)),
            other => Err(Error::Internal(format!(
                "shim answered Resize with {other:?}"
            ))),
        }
    }

    /// PortForward's target: the pod's network namespace (None: the
    /// node's, for a host-network pod). The pod must be ready.
    pub fn port_forward_netns(&self, pod_id: &str) -> Result<Option<PathBuf>> {
        let sb = self.sandbox(pod_id)?;
        if sb.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        Ok(sb.namespaces.net.clone())
    }
}

/// The streams a streaming Exec or Attach asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamAsk {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}
