//! PortForward's connections: to 127.0.0.1:PORT inside the pod's network
//! namespace (the node's for a host-network pod), as kubelet's streaming
//! server and containerd do.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

/// A connection being made; its error is for the client's error stream.
pub type Connecting = Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>>;

/// How long a connect to the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on the pod's loopback. A socket belongs to the
/// network namespace it was made in, whatever thread uses it later: it is
/// made on a short thread of its own that enters the pod's namespace (a
/// thread of tokio's pool must not change namespaces).
pub fn connector(netns: Option<PathBuf>) -> Arc<dyn Fn(u16) -> Connecting + Send + Sync> {
    Arc::new(move |port| {
        let netns = netns.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("berth-portfwd".into())
                .spawn(move || {
                    let _ = tx.send(connect_in(netns.as_deref(), port));
                })
                .map_err(|e| format!("starting the connect thread: {e}"))?;
            let sock = rx
                .await
                .map_err(|_| "the connect thread ended".to_string())??;
            sock.set_nonblocking(true)
                .map_err(|e| format!("port {port}: {e}"))?;
            let _ = sock.set_nodelay(true);
            TcpStream::from_std(sock).map_err(|e| format!("port {port}: {e}"))
        })
    })
}

fn connect_in(netns: Option<&std::path::Path>, port: u16) -> Result<std::net::TcpStream, String> {
    if let Some(ns) = netns {
        let f = std::fs::File::open(ns)
            .map_err(|e| format!("opening the pod's network namespace {}: {e}", ns.display()))?;
        // This thread only: unshare(CLONE_FS) is not needed for setns of a
        // network namespace, which is per thread.
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
        format!("failed to connect to localhost:{port} inside the pod's network namespace: {e}")
    })
}
