//! berthd: berth's CRI v1 server. See ../shared/DESIGN.md.

mod admin;
mod check;
mod config;
mod convert;
mod image;
mod listing;
mod metrics;
mod pod_metrics;
mod runtime;
mod socket;
mod stats;
mod status;
mod streaming;
mod unknown;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_cri_api::v1::image_service_server::ImageServiceServer;
use berth_cri_api::v1::runtime_service_server::RuntimeServiceServer;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, LogFormat, LogLevel};

/// How long in-flight calls get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// kubelet's own gRPC message limit.
const MAX_MESSAGE: usize = 16 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Kubernetes container runtime (CRI v1)"
)]
struct Args {
    /// Config file (TOML). Default: /etc/berth/berth.toml if it exists, else built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Root directory for images and persistent state (overrides the config).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// State directory for runtime state (overrides the config).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// CRI socket path (overrides the config).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Print the effective configuration (built-in defaults, then the
    /// file, then the flags) as TOML, and exit, as `crio config` does.
    Config,
    /// Check the host's prerequisites (kernel, overlayfs, cgroups, nft or
    /// CNI), each ✔ or ✘ with what to do; exit 1 if a required one fails.
    Check,
    /// Commit a container's file-system changes (its writable layer) as a
    /// new image NAME on top of its image, in the running berthd's store
    /// (found by its state dir, as berthd resolves it); prints the image id.
    Commit {
        /// The container (id or unique prefix).
        container: String,
        /// The new image's name, e.g. registry.example/app:v2.
        name: String,
        /// The history comment of the new layer.
        #[arg(long, default_value = "")]
        comment: String,
        /// Freeze the container's processes during the commit (its cgroup
        /// freezer), so that no file is committed half written.
        #[arg(long)]
        pause: bool,
        /// Push the new image to the registry NAME names (its layers,
        /// config and manifest; the base image's layers are mounted from
        /// or fetched again from the repository they were pulled from).
        #[arg(long)]
        push: bool,
        /// USER:PASSWORD for the push's registry (default: anonymous); `-`
        /// reads that line from stdin, keeping the password off the
        /// command line (which every user can read in /proc).
        #[arg(long, value_name = "USER:PASSWORD", requires = "push")]
        creds: Option<String>,
        /// The admin socket (default: <state>/admin.sock).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
    },
}

/// `berthd --version`: the release, the commit it is built from, and the
/// CRI it speaks.
fn long_version() -> &'static str {
    let v = format!(
        "{} (commit {}, CRI runtime.v1, cri-api {})",
        env!("CARGO_PKG_VERSION"),
        env!("BERTH_GIT_COMMIT"),
        berth_cri_api::CRI_API_VERSION
    );
    // Once, at start-up.
    Box::leak(v.into_boxed_str())
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().version(long_version()).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::Check) = args.command {
        let ok = check::print(&check::run(&config));
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Some(Cmd::Commit {
        container,
        name,
        comment,
        pause,
        push,
        creds,
        admin_socket,
    }) = &args.command
    {
        let socket = admin_socket
            .clone()
            .unwrap_or_else(|| admin::socket_path(&config.state));
        let creds = match creds.as_deref() {
            Some("-") => {
                let mut line = String::new();
                if let Err(e) = std::io::stdin().read_line(&mut line) {
                    eprintln!("berthd commit: reading --creds from stdin: {e}");
                    return ExitCode::FAILURE;
                }
                Some(line.trim_end_matches(['\r', '\n']).to_string())
            }
            other => other.map(str::to_string),
        };
        let req = admin::Request::Commit {
            container: container.clone(),
            name: name.clone(),
            comment: comment.clone(),
            pause: *pause,
            push: *push,
            creds,
        };
        return match admin::request(&socket, &req) {
            Ok(admin::Answer::Committed {
                image_id,
                name,
                pushed,
            }) => {
                eprintln!("committed {container} as {name}");
                if let Some(p) = pushed {
                    eprintln!("pushed {p}");
                }
                println!("{image_id}");
                ExitCode::SUCCESS
            }
            Ok(admin::Answer::Error { message }) => {
                eprintln!("berthd commit: {message}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("berthd commit: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Cmd::Config) = args.command {
        return match toml::to_string(&config) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berthd: writing the config: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(&config);
    if let Err(e) = berth_runtime::kernel::check() {
        eprintln!("berthd: {e}");
        return ExitCode::FAILURE;
    }
    berth_runtime::kernel::raise_memlock_for_bpf();
    if let Err(e) = berth_runtime::failpoint::setup() {
        eprintln!("berthd: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("berthd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// systemd's notify protocol (deploy/berthd.service is Type=notify):
/// READY=1 to $NOTIFY_SOCKET once the CRI socket serves, STOPPING=1 when a
/// signal ends berthd; nothing without it. An abstract socket is named
/// with a leading '@'.
fn notify_systemd(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("{state}\n");
    let msg = msg.as_bytes();
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg, &addr)
            }
            None => sock.send_to(msg, &path),
        }
    });
    match sent {
        Ok(_) => tracing::debug!(state, "told systemd"),
        Err(e) => tracing::warn!(socket = ?path, state, error = %e, "telling systemd"),
    }
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut c = Config::load(args.config.as_deref())?;
    if let Some(r) = &args.root {
        c.root = r.clone();
    }
    if let Some(s) = &args.state {
        c.state = s.clone();
    }
    if let Some(s) = &args.socket {
        c.socket = s.clone();
    }
    c.validate()?;
    Ok(c)
}

fn init_tracing(config: &Config) {
    let level = match config.log.level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn"))
    });
    use tracing_subscriber::prelude::*;
    // The log as configured, and beside it (whatever the log level) the
    // step spans turned into berth_step_duration_seconds.
    // (Targets, not a closure: callsites of other targets are never
    // asked again, and the level hint stays debug.)
    let steps = metrics::StepLayer.with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target(berth_runtime::steps::TARGET, tracing::Level::DEBUG),
    );
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(steps);
    match config.log.format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).init(),
        LogFormat::Json => registry.with(fmt.json().with_filter(filter)).init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shim = shim_path()?;
    std::fs::create_dir_all(&config.state)
        .with_context(|| format!("creating state dir {}", config.state.display()))?;
    let image_config = config.image_service_config();
    let images = tokio::task::spawn_blocking(move || berth_image::ImageService::open(image_config))
        .await
        .context("opening the image store")?
        .context("opening the image store")?;
    let images = Arc::new(images);
    // Before anything is opened or bound: a SIGTERM or SIGINT that comes
    // while berthd starts must end it cleanly once it serves, never kill it
    // by the default action (the socket accepts before the select below).
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Unpinned on every way out of here, errors included.
    let pinned_shim = PinnedShim::new(&shim, &config.state)?;
    let runtime_config = berth_runtime::service::RuntimeConfig {
        root: config.root.clone(),
        state: config.state.clone(),
        shim_exec: pinned_shim.path().to_path_buf(),
        shim,
        cgroup_parent: config.runtime.cgroup_parent.clone(),
        handlers: config.runtime.oci_handlers(&config.state),
    };
    let images2 = images.clone();
    let (net_cfg, root) = (config.network.clone(), config.root.clone());
    let runtime = tokio::task::spawn_blocking(move || {
        let network: Arc<dyn berth_network::Plugin> =
            Arc::new(metrics::TimedPlugin(berth_network::open(&net_cfg, &root)?));
        berth_runtime::service::Runtime::open(runtime_config, images2, network)
    })
    .await
    .context("opening the runtime state")?
    .context("opening the runtime state")?;
    let runtime = Arc::new(runtime);
    runtime.recover().await.context("recovering containers")?;
    // The first container's shim, exec'd ahead (see shim_client).
    berth_runtime::shim_client::prepare_warm(pinned_shim.path());
    let counts = runtime.state_counts()?;
    for (state, n) in ["CREATED", "RUNNING", "EXITED", "UNKNOWN"]
        .into_iter()
        .zip(counts.containers)
    {
        for _ in 0..n {
            metrics::get().recovered(state);
        }
    }
    // Exits by reason (and OOM kills), from the runtime's own events.
    let mut events = runtime.subscribe();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(e) if e.kind == berth_runtime::service::EventKind::Stopped => {
                    // The reason travels with the event: the container may
                    // be removed by the time it is read.
                    metrics::get().exited(&e.reason);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    });
    let _metrics = match config.metrics.address {
        Some(addr) => {
            let rt = runtime.clone();
            let snapshot = Arc::new(move || {
                let c = rt.state_counts().unwrap_or_default();
                metrics::Snapshot {
                    pods: vec![("READY", c.pods_ready), ("NOTREADY", c.pods_not_ready)],
                    containers: ["CREATED", "RUNNING", "EXITED", "UNKNOWN"]
                        .into_iter()
                        .zip(c.containers)
                        .collect(),
                    shims: c.shims,
                }
            });
            let (bound, task) = metrics::serve(addr, snapshot).await?;
            tracing::info!(address = %bound, "serving Prometheus metrics at /metrics");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    // Before the CRI socket: whoever sees that one serving finds this too.
    let admin_path = admin::socket_path(&config.state);
    let _admin = AbortOnDrop(admin::serve(&admin_path, runtime.clone(), images.clone())?);
    let listener = socket::bind(&config.socket)?;
    tracing::info!(
        socket = %config.socket.display(),
        root = %config.root.display(),
        state = %config.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berthd serving CRI v1"
    );

    let handlers: Vec<String> = runtime.handlers().keys().cloned().collect();
    for (name, h) in runtime.handlers() {
        match berth_runtime::handlers::runtime_problem(&h.path) {
            // Not fatal: the other handlers' pods run; this one's are
            // refused with the reason.
            Some(why) => tracing::warn!(
                handler = %name,
                runtime = %h.path.display(),
                "runtime handler's binary cannot run ({why}): its pods are refused"
            ),
            None => {
                tracing::info!(handler = %name, runtime = %h.path.display(), root = %h.root.display(), "runtime handler")
            }
        }
    }
    let streaming = streaming::Server::start(config.streaming.clone(), runtime.clone()).await?;
    let runtime_at_exit = runtime.clone();
    let runtime = RuntimeServiceServer::new(runtime::RuntimeApi::new(runtime, streaming))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let image = ImageServiceServer::new(image::ImageApi::new(images.clone(), handlers))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(unknown::NameUnimplemented::new))
            .add_service(runtime)
            .add_service(image)
            .serve_with_incoming_shutdown(incoming, async move { stopped.notified().await }),
    );

    // The socket accepts (it was bound above) and the server runs.
    notify_systemd("READY=1");

    let result = tokio::select! {
        r = &mut server => Some(r),
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); None }
    };
    let result = match result {
        Some(r) => r,
        None => {
            notify_systemd("STOPPING=1");
            stop.notify_one();
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        "in-flight calls did not finish within {SHUTDOWN_GRACE:?}; exiting anyway"
                    );
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&admin_path);
    berth_runtime::shim_client::discard_warm().await;
    runtime_at_exit.shutdown();
    drop(pinned_shim);
    result.context("server task")?.context("gRPC server")?;
    tracing::info!("berthd stopped");
    Ok(())
}

/// berth-shim is installed next to berthd. Without it no container can
/// start: berthd refuses to serve (rather than report RuntimeReady and fail
/// every CreateContainer) and says how to build it.
fn shim_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating berthd's own binary")?;
    let shim = exe.with_file_name("berth-shim");
    if let Some(problem) = berth_runtime::shim_client::shim_problem(&shim) {
        anyhow::bail!("{problem}");
    }
    Ok(shim)
}

/// The read-only bind of berth-shim that shims are started from
/// (`shim_client::pin_readonly`), taken down when berthd stops serving.
struct PinnedShim {
    path: PathBuf,
    state: PathBuf,
}

impl PinnedShim {
    fn new(shim: &std::path::Path, state: &std::path::Path) -> anyhow::Result<Self> {
        let path = berth_runtime::shim_client::pin_readonly(shim, state).with_context(|| {
            format!(
                "bind-mounting {} read-only at {}",
                shim.display(),
                state.join("berth-shim").display()
            )
        })?;
        Ok(Self {
            path,
            state: state.to_path_buf(),
        })
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for PinnedShim {
    fn drop(&mut self) {
        berth_runtime::shim_client::unpin_readonly(&self.state);
    }
}

/// Ends a background task when dropped (the metrics endpoint, when
/// berthd stops serving).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
