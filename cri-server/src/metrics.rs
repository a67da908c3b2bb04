//! berthd's own Prometheus metrics (`[metrics] address`): CRI calls by
//! method and gRPC code with their latency, image pulls, pods and
//! containers by state, running shims, container exits by reason and OOM
//! kills, open streaming sessions, network plugin calls, and what a start
//! recovered. The `prometheus-client` crate keeps them and writes the text
//! exposition format; nothing here is hand-encoded.
//!
//! Recording is a few atomic operations on the calling task, so that it
//! never holds up a CRI call; the endpoint reads berthd's in-memory
//! records only when scraped (one scrape at a time), on its own listener.
//! Off unless an address is configured, as in containerd and CRI-O.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to about 33 s (berth's calls take 1–10 ms,
/// a pull or a StopContainer with a grace period seconds).
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: HistogramFamily<MethodLabel>,
    pull_bytes: Counter,
    pull_seconds: Histogram,
    pull_failures: Counter,
    layers_unpacked: Counter,
    pods: Family<StateLabel, Gauge>,
    containers: Family<StateLabel, Gauge>,
    shims: Gauge,
    exits: Family<ReasonLabel, Counter>,
    oom_kills: Counter,
    streams: Family<KindLabel, Gauge>,
    network_seconds: HistogramFamily<OpLabel>,
    recovered: Family<StateLabel, Counter>,
    step_seconds: HistogramFamily<StepLabel>,
    /// One scrape at a time: the state gauges are set, then encoded.
    scrape: Mutex<()>,
}

/// berthd's metrics (made on first use; recorded even with the endpoint
/// off, which costs a few atomics per call).
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The CRI methods berth serves, by their gRPC names: a method label
/// takes only these (anything else is "unknown"), so that a client cannot
/// grow the series without bound.
const METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    "StreamPodSandboxes",
    "StreamContainers",
    "StreamContainerStats",
    "StreamPodSandboxStats",
    "StreamPodSandboxMetrics",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
    "StreamImages",
];

/// The method of a gRPC path (`/runtime.v1.RuntimeService/RunPodSandbox`),
/// or "unknown".
pub fn method_of(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    let known = path.starts_with("/runtime.v1.RuntimeService/")
        || path.starts_with("/runtime.v1.ImageService/");
    METHODS
        .iter()
        .find(|m| known && **m == name)
        .copied()
        .unwrap_or("unknown")
}

/// The gRPC code names, for the `code` label (0–16; others "Unknown").
fn code_name(code: &str) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    code.parse::<usize>()
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("Unknown")
}

/// What a scrape reads from berthd's records.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Pods by state (READY, NOTREADY).
    pub pods: Vec<(&'static str, i64)>,
    /// Containers by state (CREATED, RUNNING, EXITED, UNKNOWN).
    pub containers: Vec<(&'static str, i64)>,
    /// berth-shim processes: one per container not yet exited and one per
    /// pod's pause.
    pub shims: i64,
}

/// Decrements its stream gauge when dropped.
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("berth"),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(latency),
            pull_bytes: Counter::default(),
            pull_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            pull_failures: Counter::default(),
            layers_unpacked: Counter::default(),
            pods: Family::default(),
            containers: Family::default(),
            shims: Gauge::default(),
            exits: Family::default(),
            oom_kills: Counter::default(),
            streams: Family::default(),
            network_seconds: Family::new_with_constructor(latency),
            recovered: Family::default(),
            // 50 µs to about 6.5 s: steps take tens of µs to a few ms.
            step_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 18))
            }),
            scrape: Mutex::new(()),
        };
        let r = &mut m.registry;
        r.register(
            "cri_requests",
            "CRI calls answered, by method and gRPC code",
            m.calls.clone(),
        );
        r.register_with_unit(
            "cri_request_duration",
            "How long CRI calls took, by method",
            Unit::Seconds,
            m.call_seconds.clone(),
        );
        r.register_with_unit(
            "image_pull",
            "Compressed bytes of the layers image pulls fetched",
            Unit::Bytes,
            m.pull_bytes.clone(),
        );
        r.register_with_unit(
            "image_pull_duration",
            "How long successful image pulls took",
            Unit::Seconds,
            m.pull_seconds.clone(),
        );
        r.register(
            "image_pull_failures",
            "Image pulls that failed",
            m.pull_failures.clone(),
        );
        r.register(
            "image_layers_unpacked",
            "Layers fetched and unpacked by pulls",
            m.layers_unpacked.clone(),
        );
        r.register("pods", "Pod sandboxes, by state", m.pods.clone());
        r.register("containers", "Containers, by state", m.containers.clone());
        r.register(
            "shims_running",
            "berth-shim processes (one per container not yet exited, one per pod pause)",
            m.shims.clone(),
        );
        r.register(
            "container_exits",
            "Container exits seen, by reason (Completed, Error, OOMKilled)",
            m.exits.clone(),
        );
        r.register(
            "container_oom_kills",
            "Containers the kernel's OOM killer ended",
            m.oom_kills.clone(),
        );
        r.register(
            "streams_open",
            "Open exec, attach and port-forward sessions, by kind",
            m.streams.clone(),
        );
        r.register_with_unit(
            "network_plugin_duration",
            "How long network plugin calls took, by operation (setup, teardown)",
            Unit::Seconds,
            m.network_seconds.clone(),
        );
        r.register_with_unit(
            "step_duration",
            "How long each step of the pod and container calls took (berth_step spans: pod.*, container.*, shim.*, init.*, start.*, stop.*, remove.*, stop_pod.*, remove_pod.*)",
            Unit::Seconds,
            m.step_seconds.clone(),
        );
        r.register(
            "recovered_containers",
            "Containers berthd found again when it started, by their state then",
            m.recovered.clone(),
        );
        m
    }

    /// A CRI call answered: its gRPC path, code (a number, as in
    /// grpc-status) and duration.
    pub fn call(&self, path: &str, code: &str, took: Duration) {
        let method = method_of(path).to_string();
        self.calls
            .get_or_create(&CallLabels {
                method: method.clone(),
                code: code_name(code).into(),
            })
            .inc();
        self.call_seconds
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }

    pub fn pulled(&self, bytes: u64, layers: usize, took: Duration) {
        self.pull_bytes.inc_by(bytes);
        self.layers_unpacked.inc_by(layers as u64);
        self.pull_seconds.observe(took.as_secs_f64());
    }

    pub fn pull_failed(&self) {
        self.pull_failures.inc();
    }

    /// A container exited with `reason` (its ContainerStatus reason).
    pub fn exited(&self, reason: &str) {
        let reason = match reason {
            "OOMKilled" => {
                self.oom_kills.inc();
                "OOMKilled"
            }
            "Completed" => "Completed",
            _ => "Error",
        };
        self.exits
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// A streaming session of `kind` opened; closed when the guard drops.
    pub fn stream_opened(&self, kind: &'static str) -> OpenStream {
        let g = self
            .streams
            .get_or_create_owned(&KindLabel { kind: kind.into() });
        g.inc();
        OpenStream(g)
    }

    pub fn network_call(&self, operation: &'static str, took: Duration) {
        self.network_seconds
            .get_or_create(&OpLabel {
                operation: operation.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// A step of a pod or container call took `took`.
    pub fn step(&self, step: &str, took: Duration) {
        self.step_seconds
            .get_or_create(&StepLabel { step: step.into() })
            .observe(took.as_secs_f64());
    }

    /// At start: a container found again, in `state`.
    pub fn recovered(&self, state: &'static str) {
        self.recovered
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .inc();
    }

    /// The exposition text, with the state gauges from `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.pods.clear();
        for (state, n) in &snap.pods {
            self.pods
                .get_or_create(&StateLabel {
                    state: (*state).into(),
                })
                .set(*n);
        }
        self.containers.clear();
        for (state, n) in &snap.containers {
            self.containers
                .get_or_create(&StateLabel {
                    state: (*state).into(),
                })
                .set(*n);
        }
        self.shims.set(snap.shims);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serve `/metrics` on `addr` until the task is dropped; `snapshot` reads
/// berthd's records for each scrape. Returns the address bound (port 0:
/// the one chosen).
pub async fn serve(
    addr: SocketAddr,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use anyhow::Context as _;
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    // One scrape at a time: a busy endpoint answers 503 rather than queue
    // work on the blocking threads CRI calls use.
    let busy = Arc::new(tokio::sync::Semaphore::new(1));
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let snapshot = snapshot.clone();
            let busy = busy.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let snapshot = snapshot.clone();
                    let busy = busy.clone();
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        if req.uri().path() != "/metrics" {
                            *resp.status_mut() = StatusCode::NOT_FOUND;
                            *resp.body_mut() =
                                Full::new(Bytes::from_static(b"only /metrics here\n"));
                        } else if req.method() != hyper::Method::GET {
                            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                        } else if let Ok(permit) = busy.try_acquire_owned() {
                            let started = Instant::now();
                            let text = tokio::task::spawn_blocking(move || {
                                let _one = permit;
                                get().render(&snapshot())
                            })
                            .await
                            .unwrap_or_default();
                            tracing::trace!(
                                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                                "metrics scraped"
                            );
                            resp.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            *resp.body_mut() = Full::new(Bytes::from(text));
                        } else {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            *resp.body_mut() =
                                Full::new(Bytes::from_static(b"a scrape is in progress\n"));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                // A client that sends no request in 10 s is dropped.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Ok((bound, task))
}

/// A network plugin whose setup and teardown are timed into
/// `berth_network_plugin_duration_seconds`.
pub struct TimedPlugin(pub Arc<dyn berth_network::Plugin>);

impl berth_network::Plugin for TimedPlugin {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn readiness(&self) -> berth_network::Readiness {
        self.0.readiness()
    }
    fn setup(
        &self,
        pod: &berth_network::PodRequest,
    ) -> berth_network::Result<berth_network::Attachment> {
        let t = Instant::now();
        let r = self.0.setup(pod);
        get().network_call("setup", t.elapsed());
        r
    }
    fn teardown(
        &self,
        pod: &berth_network::PodRequest,
        att: &berth_network::Attachment,
    ) -> berth_network::Result<()> {
        let t = Instant::now();
        let r = self.0.teardown(pod, att);
        get().network_call("teardown", t.elapsed());
        r
    }
    fn released(&self, pod_id: &str, att: &berth_network::Attachment) {
        self.0.released(pod_id, att)
    }
    fn recover(&self, live: &[(String, berth_network::Attachment)]) -> berth_network::Result<()> {
        self.0.recover(live)
    }
    fn set_pod_cidr(&self, cidr: &str) -> berth_network::Result<()> {
        self.0.set_pod_cidr(cidr)
    }
    fn info(&self) -> serde_json::Value {
        self.0.info()
    }
}

/// The tracing layer that turns berth's step spans (target
/// [`berth_runtime::steps::TARGET`]) into `berth_step_duration_seconds`:
/// a span's wall time from its creation to its close, and the samples the
/// shim reports (events with `step` and `micros`). Installed with a filter
/// of that target only, so it sees nothing else.
pub struct StepLayer;

struct StepStart(Instant);

#[derive(Default)]
struct Sample {
    step: Option<String>,
    micros: Option<u64>,
}

impl tracing::field::Visit for Sample {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "step" {
            self.step = Some(value.to_string());
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "micros" {
            self.micros = Some(value);
        }
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

/// A step name from the shim's start line is kept only if it is one of the
/// shim's kinds, so that series stay few.
fn shim_step_name(step: &str) -> bool {
    step.len() <= 32 && (step.starts_with("shim.") || step.starts_with("init."))
}

impl<S> tracing_subscriber::Layer<S> for StepLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(StepStart(Instant::now()));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(StepStart(t)) = span.extensions().get::<StepStart>()
        {
            get().step(span.name(), t.elapsed());
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut s = Sample::default();
        event.record(&mut s);
        if let (Some(step), Some(micros)) = (s.step, s.micros)
            && shim_step_name(&step)
        {
            get().step(&step, Duration::from_micros(micros));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes_become_bounded_labels() {
        assert_eq!(
            method_of("/runtime.v1.RuntimeService/RunPodSandbox"),
            "RunPodSandbox"
        );
        assert_eq!(method_of("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(
            method_of("/runtime.v1.RuntimeService/NoSuchCall"),
            "unknown"
        );
        assert_eq!(method_of("/other.Service/RunPodSandbox"), "unknown");
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("3"), "InvalidArgument");
        assert_eq!(code_name("16"), "Unauthenticated");
        assert_eq!(code_name("99"), "Unknown");
        assert_eq!(code_name("x"), "Unknown");
    }

    #[test]
    fn the_exposition_names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.call(
            "/runtime.v1.RuntimeService/RunPodSandbox",
            "0",
            Duration::from_millis(2),
        );
        m.call(
            "/runtime.v1.RuntimeService/RunPodSandbox",
            "3",
            Duration::from_millis(1),
        );
        m.pulled(1000, 2, Duration::from_millis(300));
        m.pull_failed();
        m.exited("OOMKilled");
        m.exited("Completed");
        m.network_call("setup", Duration::from_millis(4));
        let open = m.stream_opened("exec");
        let closed = m.stream_opened("portforward");
        drop(closed);
        let text = m.render(&Snapshot {
            pods: vec![("READY", 2)],
            containers: vec![("RUNNING", 3), ("EXITED", 1)],
            shims: 4,
        });
        for want in [
            r#"berth_cri_requests_total{method="RunPodSandbox",code="OK"} 1"#,
            r#"berth_cri_requests_total{method="RunPodSandbox",code="InvalidArgument"} 1"#,
            r#"berth_cri_request_duration_seconds_count{method="RunPodSandbox"} 2"#,
            "berth_image_pull_bytes_total 1000",
            "berth_image_pull_failures_total 1",
            "berth_image_layers_unpacked_total 2",
            "berth_image_pull_duration_seconds_count 1",
            r#"berth_pods{state="READY"} 2"#,
            r#"berth_containers{state="RUNNING"} 3"#,
            "berth_shims_running 4",
            r#"berth_container_exits_total{reason="OOMKilled"} 1"#,
            "berth_container_oom_kills_total 1",
            r#"berth_streams_open{kind="exec"} 1"#,
            r#"berth_streams_open{kind="portforward"} 0"#,
            r#"berth_network_plugin_duration_seconds_count{operation="setup"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        drop(open);
        assert!(
            m.render(&Snapshot::default())
                .contains(r#"berth_streams_open{kind="exec"} 0"#)
        );
        // A state no longer present is dropped, not left at its last value.
        let text = m.render(&Snapshot::default());
        assert!(!text.contains(r#"berth_pods{state="READY"}"#), "{text}");
    }
}
