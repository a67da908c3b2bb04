//! ListMetricDescriptors and ListPodSandboxMetrics: cadvisor's container
//! metrics, served by the runtime (KEP-2371), so that kubelet's
//! `/metrics/cadvisor` can come from berth instead of cadvisor
//! (PodAndContainerStatsFromCRI).
//!
//! Names, help texts and label keys follow cadvisor and CRI-O, the runtime
//! that implemented the KEP first: the label keys of every metric start
//! with `id, image, namespace, pod, container`; per-CPU, per-interface and
//! per-kind metrics add one key. Values are CRI's UInt64Value, so seconds
//! are whole seconds, as CRI-O and containerd send them. Network counters
//! are the pod's (its containers share one network namespace), sent in
//! PodSandboxMetrics.metrics with container "POD"; the rest per container.
//! A metric berth cannot read on this node (a v2-only file on v1, PSI
//! off) is left out rather than sent as 0.

use berth_cri_api::v1 as cri;
use berth_runtime::cgroups::CgroupUsage;
use berth_runtime::service::{ContainerStats, PodStats};

const BASE: &[&str] = &["id", "image", "namespace", "pod", "container"];

/// (name, help, extra label key, type).
type Desc = (&'static str, &'static str, Option<&'static str>, Kind);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
}

const NS_PER_S: u64 = 1_000_000_000;

const DESCRIPTORS: &[Desc] = &[
    (
        "container_last_seen",
        "Last time a container was seen by the exporter",
        None,
        Kind::Gauge,
    ),
    (
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        Some("cpu"),
        Kind::Counter,
    ),
    (
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        None,
        Kind::Counter,
    ),
    (
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        None,
        Kind::Counter,
    ),
    (
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        None,
        Kind::Counter,
    ),
    (
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        None,
        Kind::Counter,
    ),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        None,
        Kind::Counter,
    ),
    (
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        None,
        Kind::Gauge,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        None,
        Kind::Gauge,
    ),
    (
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        None,
        Kind::Gauge,
    ),
    (
        "container_memory_swap",
        "Container swap usage in bytes.",
        None,
        Kind::Gauge,
    ),
    (
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        None,
        Kind::Counter,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        None,
        Kind::Gauge,
    ),
    (
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        None,
        Kind::Gauge,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        None,
        Kind::Gauge,
    ),
    (
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        None,
        Kind::Counter,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        None,
        Kind::Gauge,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        None,
        Kind::Gauge,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container in bytes.",
        None,
        Kind::Gauge,
    ),
    (
        "container_spec_cpu_period",
        "CPU period of the container.",
        None,
        Kind::Gauge,
    ),
    (
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        None,
        Kind::Gauge,
    ),
    (
        "container_spec_cpu_shares",
        "CPU share of the container.",
        None,
        Kind::Gauge,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        None,
        Kind::Gauge,
    ),
    (
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        None,
        Kind::Counter,
    ),
    (
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
        None,
        Kind::Counter,
    ),
    (
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        None,
        Kind::Counter,
    ),
    (
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
        None,
        Kind::Counter,
    ),
    (
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        None,
        Kind::Counter,
    ),
    (
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
        None,
        Kind::Counter,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        Some("interface"),
        Kind::Counter,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        Some("interface"),
        Kind::Counter,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        Some("interface"),
        Kind::Counter,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        Some("interface"),
        Kind::Counter,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        Some("interface"),
        Kind::Counter,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        Some("interface"),
        Kind::Counter,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        Some("interface"),
        Kind::Counter,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        Some("interface"),
        Kind::Counter,
    ),
];

fn desc(name: &str) -> &'static Desc {
    DESCRIPTORS
        .iter()
        .find(|d| d.0 == name)
        .unwrap_or_else(|| panic!("{name} has no descriptor"))
}

/// What ListMetricDescriptors answers: every metric ListPodSandboxMetrics
/// can send, with its label keys.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|(name, help, extra, _)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: BASE
                .iter()
                .chain(extra.iter())
                .map(|k| k.to_string())
                .collect(),
        })
        .collect()
}

/// Metrics of one series: the base label values, and the metrics so far.
struct Series {
    base: Vec<String>,
    out: Vec<cri::Metric>,
}

impl Series {
    fn new(base: Vec<String>) -> Self {
        Self {
            base,
            out: Vec::new(),
        }
    }

    /// `name` with `value` (nothing when the node has no such number).
    fn put(&mut self, name: &str, extra: Option<&str>, value: Option<u64>) {
        let Some(value) = value else { return };
        let d = desc(name);
        debug_assert_eq!(d.2.is_some(), extra.is_some(), "{name}'s label keys");
        let mut label_values = self.base.clone();
        label_values.extend(extra.map(str::to_string));
        self.out.push(cri::Metric {
            name: name.to_string(),
            // Gathered live: 0, as api.proto asks.
            timestamp: 0,
            metric_type: match d.3 {
                Kind::Counter => cri::MetricType::Counter as i32,
                Kind::Gauge => cri::MetricType::Gauge as i32,
            },
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

fn secs(ns: Option<u64>) -> Option<u64> {
    ns.map(|n| n / NS_PER_S)
}

fn cgroup_metrics(s: &mut Series, u: &CgroupUsage) {
    s.put(
        "container_cpu_usage_seconds_total",
        Some("total"),
        secs(u.cpu_usage_ns),
    );
    s.put(
        "container_cpu_user_seconds_total",
        None,
        secs(u.cpu_user_ns),
    );
    s.put(
        "container_cpu_system_seconds_total",
        None,
        secs(u.cpu_system_ns),
    );
    s.put("container_cpu_cfs_periods_total", None, u.cfs_periods);
    s.put(
        "container_cpu_cfs_throttled_periods_total",
        None,
        u.cfs_throttled_periods,
    );
    s.put(
        "container_cpu_cfs_throttled_seconds_total",
        None,
        secs(u.cfs_throttled_ns),
    );
    s.put("container_memory_cache", None, u.memory_cache);
    s.put("container_memory_rss", None, u.rss);
    s.put("container_memory_mapped_file", None, u.memory_mapped_file);
    s.put("container_memory_swap", None, u.swap_usage);
    s.put("container_memory_failcnt", None, u.memory_failcnt);
    s.put("container_memory_usage_bytes", None, u.memory_usage);
    s.put("container_memory_max_usage_bytes", None, u.memory_max_usage);
    s.put("container_memory_working_set_bytes", None, u.working_set());
    s.put("container_oom_events_total", None, u.oom_kills);
    s.put("container_processes", None, u.pids);
    // cadvisor: "waiting" is PSI's some, "stalled" its full.
    for (what, p) in [
        ("cpu", u.cpu_pressure),
        ("memory", u.memory_pressure),
        ("io", u.io_pressure),
    ] {
        let Some(p) = p else { continue };
        let us = |t: u64| Some(t / 1_000_000);
        s.put(
            &format!("container_pressure_{what}_stalled_seconds_total"),
            None,
            us(p.full.total_us),
        );
        s.put(
            &format!("container_pressure_{what}_waiting_seconds_total"),
            None,
            us(p.some.total_us),
        );
    }
}

fn container_metrics(c: &ContainerStats, namespace: &str, pod: &str) -> cri::ContainerMetrics {
    let r = &c.record;
    let mut s = Series::new(vec![
        r.id.clone(),
        r.image_name.clone(),
        namespace.to_string(),
        pod.to_string(),
        r.config.metadata().name,
    ]);
    s.put(
        "container_last_seen",
        None,
        u64::try_from(c.at_ns).ok().map(|n| n / NS_PER_S),
    );
    cgroup_metrics(&mut s, &c.cgroup);
    s.put(
        "container_fs_usage_bytes",
        None,
        Some(c.writable_layer.bytes),
    );
    let positive = |v: i64| u64::try_from(v).ok().filter(|&v| v > 0);
    if let Some(res) = r.config.linux.resources.as_ref() {
        s.put(
            "container_spec_memory_limit_bytes",
            None,
            positive(res.memory_limit_in_bytes),
        );
        s.put("container_spec_cpu_period", None, positive(res.cpu_period));
        s.put("container_spec_cpu_quota", None, positive(res.cpu_quota));
        s.put("container_spec_cpu_shares", None, positive(res.cpu_shares));
    }
    s.put(
        "container_start_time_seconds",
        None,
        positive(r.started_at_ns).map(|n| n / NS_PER_S),
    );
    cri::ContainerMetrics {
        container_id: r.id.clone(),
        metrics: s.out,
    }
}

/// One ready pod's metrics: its network at pod level, its running
/// containers' cgroups and writable layers.
pub fn pod(p: &PodStats) -> cri::PodSandboxMetrics {
    let r = &p.record;
    let m = r.config.metadata();
    let mut s = Series::new(vec![
        r.id.clone(),
        String::new(),
        m.namespace.clone(),
        m.name.clone(),
        "POD".to_string(),
    ]);
    for i in p.interfaces.iter().flatten() {
        let n = Some(i.name.as_str());
        s.put("container_network_receive_bytes_total", n, Some(i.rx_bytes));
        s.put(
            "container_network_receive_packets_total",
            n,
            Some(i.rx_packets),
        );
        s.put(
            "container_network_receive_packets_dropped_total",
            n,
            Some(i.rx_dropped),
        );
        s.put(
            "container_network_receive_errors_total",
            n,
            Some(i.rx_errors),
        );
        s.put(
            "container_network_transmit_bytes_total",
            n,
            Some(i.tx_bytes),
        );
        s.put(
            "container_network_transmit_packets_total",
            n,
            Some(i.tx_packets),
        );
        s.put(
            "container_network_transmit_packets_dropped_total",
            n,
            Some(i.tx_dropped),
        );
        s.put(
            "container_network_transmit_errors_total",
            n,
            Some(i.tx_errors),
        );
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: r.id.clone(),
        metrics: s.out,
        container_metrics: p
            .containers
            .iter()
            .map(|c| container_metrics(c, &m.namespace, &m.name))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn descriptors_are_unique_prometheus_names_with_the_base_keys_first() {
        let d = descriptors();
        let names: HashSet<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), d.len(), "a name twice");
        for m in &d {
            assert!(m.name.starts_with("container_"), "{}", m.name);
            assert!(
                m.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                m.name
            );
            assert_eq!(&m.label_keys[..5], BASE, "{}", m.name);
            assert!(!m.help.is_empty());
            // Prometheus conventions: counters end in _total.
            let d = desc(&m.name);
            if d.3 == Kind::Counter && m.name != "container_memory_failcnt" {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            }
        }
        for want in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_network_receive_bytes_total",
        ] {
            assert!(names.contains(want), "{want}");
        }
    }

    #[test]
    fn every_metric_sent_has_as_many_values_as_its_descriptor_keys() {
        let u = CgroupUsage {
            cpu_usage_ns: Some(3_700_000_000),
            memory_usage: Some(100),
            inactive_file: Some(30),
            cpu_pressure: Some(Default::default()),
            ..Default::default()
        };
        let mut s = Series::new(BASE.iter().map(|k| format!("v-{k}")).collect());
        cgroup_metrics(&mut s, &u);
        let d = descriptors();
        for m in &s.out {
            let keys = &d.iter().find(|d| d.name == m.name).unwrap().label_keys;
            assert_eq!(m.label_values.len(), keys.len(), "{}", m.name);
        }
        let get = |n: &str| {
            s.out
                .iter()
                .find(|m| m.name == n)
                .map(|m| m.value.unwrap().value)
        };
        assert_eq!(
            get("container_cpu_usage_seconds_total"),
            Some(3),
            "whole seconds"
        );
        assert_eq!(get("container_memory_working_set_bytes"), Some(70));
        assert_eq!(get("container_memory_rss"), None, "not read: not sent");
        assert_eq!(get("container_pressure_cpu_waiting_seconds_total"), Some(0));
        let cpu = s
            .out
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.label_values.last().unwrap(), "total");
        assert_eq!(cpu.metric_type, cri::MetricType::Counter as i32);
    }
}
