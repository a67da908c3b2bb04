//! RuntimeClass handlers as berthd sees them: another OCI runtime (runc,
//! crun, …) that makes a pod's containers under berth-shim
//! ([`crate::shim::oci`]). berthd itself calls the runtime only for what
//! happens outside the shim: `update` (UpdateContainerResources) and a
//! last `delete --force` when a container is removed (its shim may have
//! been killed before it could delete).

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::shim::protocol::OciRuntimeConfig;

/// Why the runtime binary at `path` cannot run, if it cannot.
pub fn runtime_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Some(format!("not found ({e})")),
        Ok(md) if !md.is_file() => Some("not a regular file".into()),
        Ok(md)
            if md.permissions().mode() & 0o111 == 0
                || nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() =>
        {
            Some(format!(
                "not executable (mode {:o})",
                md.permissions().mode() & 0o7777
            ))
        }
        Ok(_) => None,
    }
}

fn command(rt: &OciRuntimeConfig, sub: &str) -> Command {
    let mut c = Command::new(&rt.path);
    c.arg("--root").arg(&rt.root).args(&rt.args).arg(sub);
    c
}

/// How long berthd waits for a runtime call before it kills it.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Runs `cmd` (stdout discarded, stderr kept) to its end, bounded, with
/// `input` on its stdin.
fn run(rt: &OciRuntimeConfig, what: &str, mut cmd: Command, input: &[u8]) -> Result<(), String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", rt.path.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A runtime that does not read its stdin fails the write, not us.
        let _ = stdin.write_all(input);
    }
    let status = crate::shim::oci::wait_bounded(&mut child, CALL_LIMIT)
        .map_err(|e| format!("waiting for {}: {e}", rt.path.display()))?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = (&mut e).take(8192).read_to_string(&mut err);
    }
    let mut err = err.trim().to_string();
    if err.len() > 2000 {
        let mut end = 2000;
        while !err.is_char_boundary(end) {
            end -= 1;
        }
        err.truncate(end);
    }
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{} {what} failed ({s}): {err}", rt.name)),
        None => Err(format!(
            "{} {what} took longer than {CALL_LIMIT:?}: killed",
            rt.name
        )),
    }
}

/// `update --resources -`: the container's new resources (OCI
/// `linux.resources` JSON), applied by the runtime that made its cgroup.
pub fn update(rt: &OciRuntimeConfig, id: &str, resources: &[u8]) -> Result<(), String> {
    let mut cmd = command(rt, "update");
    cmd.args(["--resources", "-", id]);
    run(rt, "update", cmd, resources)
}

/// `delete --force`, if the runtime still has a record of `id` (the shim
/// deletes it when the container exits; this is for a shim that was
/// killed first).
pub fn delete(rt: &OciRuntimeConfig, id: &str) -> Result<(), String> {
    if !rt.root.join(id).exists() {
        return Ok(());
    }
    let mut cmd = command(rt, "delete");
    cmd.args(["--force", id]);
    match run(rt, "delete", cmd, b"") {
        Err(_) if !rt.root.join(id).exists() => Ok(()),
        r => r,
    }
}
