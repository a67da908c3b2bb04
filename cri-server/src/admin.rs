//! berthd's admin API: operations that are not CRI (a container's commit
//! into an image), on a Unix socket of its own beside the state
//! (`<state>/admin.sock`, mode 0600: root's only), never on the CRI socket.
//! One JSON request line, one JSON answer line per connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The admin socket of a berthd whose state dir is `state`.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join("admin.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Commit a container's writable layer as image `name`.
    Commit {
        container: String,
        name: String,
        #[serde(default)]
        comment: String,
        /// Freeze the container's processes while its layer is read, so
        /// that no file is caught half written; thawed after, whatever
        /// the commit's outcome.
        #[serde(default)]
        pause: bool,
        /// Push the new image to the registry its name names, after the
        /// commit (and the thaw).
        #[serde(default)]
        push: bool,
        /// `user:password` for the push's registry; none: anonymous.
        #[serde(default)]
        creds: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Committed {
        image_id: String,
        name: String,
        /// `registry/repository@digest` of the pushed manifest.
        #[serde(default)]
        pushed: Option<String>,
    },
    Error {
        message: String,
    },
}

/// Serve the admin socket until the task is dropped.
pub fn serve(
    path: &Path,
    runtime: Arc<berth_runtime::service::Runtime>,
    images: Arc<berth_image::ImageService>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt as _;
    // A live one is another berthd's on the same state dir: leave it.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "{} is served by another berthd: one berthd per state dir",
            path.display()
        );
    }
    // Bound in a directory of its own (0700), made 0600 there, then moved
    // into place: never reachable with the umask's mode for a moment.
    use std::os::unix::fs::DirBuilderExt as _;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let private = parent.join(format!(".admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let staged = private.join("sock");
    let bound = (|| -> anyhow::Result<tokio::net::UnixListener> {
        let l = tokio::net::UnixListener::bind(&staged)
            .with_context(|| format!("binding the admin socket {}", staged.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", staged.display()))?;
        // Only a socket is replaced (a stale one of a killed berthd).
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            anyhow::bail!("{} exists and is not a socket", path.display());
        }
        std::fs::rename(&staged, path)
            .with_context(|| format!("moving the admin socket to {}", path.display()))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let (rt, im) = (runtime.clone(), images.clone());
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut line = String::new();
                // A request is one line of at most 64 KiB.
                let mut r = BufReader::new(tokio::io::AsyncReadExt::take(r, 64 << 10));
                let answer = match r.read_line(&mut line).await {
                    Ok(_) => match serde_json::from_str::<Request>(&line) {
                        Ok(req) => handle(req, &rt, &im).await,
                        Err(e) => Answer::Error {
                            message: format!("a malformed request: {e}"),
                        },
                    },
                    Err(e) => Answer::Error {
                        message: format!("reading the request: {e}"),
                    },
                };
                if let Ok(mut out) = serde_json::to_vec(&answer) {
                    out.push(b'\n');
                    let _ = w.write_all(&out).await;
                }
            });
        }
    }))
}

async fn handle(
    req: Request,
    runtime: &berth_runtime::service::Runtime,
    images: &berth_image::ImageService,
) -> Answer {
    let err = |message: String| Answer::Error { message };
    match req {
        Request::Commit {
            container,
            name,
            comment,
            pause,
            push,
            creds,
        } => {
            // Credentials are checked before anything is made.
            let creds = match creds.as_deref().map(|c| c.split_once(':')) {
                None => berth_image::registry::Credentials::Anonymous,
                Some(Some((u, p))) if !u.is_empty() => berth_image::registry::Credentials::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                },
                Some(_) => return err("creds: give them as USER:PASSWORD".into()),
            };
            let berth_runtime::service::CommitSource {
                image_id: image,
                upper,
                shift,
            } = match runtime.commit_source(&container) {
                Ok(x) => x,
                Err(e) => return err(e.to_string()),
            };
            let parent = match image.parse() {
                Ok(d) => d,
                Err(e) => return err(format!("the container's image id {image:?}: {e}")),
            };
            let shift =
                shift.map(|(uid, gid, length)| berth_image::commit::IdShift { uid, gid, length });
            let comment = if comment.is_empty() {
                format!("commit of container {container}")
            } else {
                comment
            };
            let frozen = if pause {
                let cg = match runtime.container_cgroup(&container) {
                    Ok(cg) => cg,
                    Err(e) => return err(e.to_string()),
                };
                let cg2 = cg.clone();
                match tokio::task::spawn_blocking(move || cg2.freeze(true)).await {
                    Ok(Ok(())) => {
                        tracing::info!(container = %container, "froze the container for its commit");
                        Some(cg)
                    }
                    Ok(Err(e)) => {
                        let cg2 = cg.clone();
                        let _ = tokio::task::spawn_blocking(move || cg2.freeze(false)).await;
                        return err(format!("pausing container {container}: {e}"));
                    }
                    Err(e) => return err(format!("pausing container {container}: {e}")),
                }
            } else {
                None
            };
            let r = images.commit(parent, upper, name, comment, shift).await;
            if let Some(cg) = frozen {
                let thawed = tokio::task::spawn_blocking(move || cg.freeze(false)).await;
                if !matches!(thawed, Ok(Ok(()))) {
                    tracing::error!(container = %container, "the container stays frozen after its commit: {thawed:?}");
                }
            }
            match r {
                Ok(c) => {
                    tracing::info!(container = %container, image = %c.name, id = %c.image_id, layer = %c.layer_digest, "committed");
                    let pushed = if push {
                        match images.push(&c.name, creds).await {
                            Ok(p) => Some(p.repo_digest),
                            Err(e) => {
                                return err(format!(
                                    "committed {container} as {} ({}), but the push failed: {e}",
                                    c.name, c.image_id
                                ));
                            }
                        }
                    } else {
                        None
                    };
                    Answer::Committed {
                        image_id: c.image_id.to_string(),
                        name: c.name,
                        pushed,
                    }
                }
                Err(e) => err(e.to_string()),
            }
        }
    }
}

/// `berthd commit`: ask the berthd behind `socket` to commit; the answer.
pub fn request(socket: &Path, req: &Request) -> anyhow::Result<Answer> {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to berthd's admin socket {} (is berthd running with this state dir?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut answer)
        .context("reading berthd's answer")?;
    serde_json::from_str(&answer).with_context(|| format!("berthd answered {answer:?}"))
}
