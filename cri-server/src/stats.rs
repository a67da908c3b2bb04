//! berth's container and pod stats in CRI terms (ContainerStats,
//! PodSandboxStats), as kubelet's CRI stats provider reads them.

use std::collections::HashMap;

use berth_cri_api::v1 as cri;
use berth_runtime::cgroups::CgroupUsage;
use berth_runtime::service::{ContainerStats, PodStats};

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn labels(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Pressure stall information as CRI carries it (total in microseconds,
/// the averages in percent), where the kernel has it (cgroup v2, PSI on).
fn psi(p: Option<berth_runtime::cgroups::usage::Pressure>) -> Option<cri::PsiStats> {
    let line = |l: berth_runtime::cgroups::usage::PressureLine| cri::PsiData {
        total: l.total_us,
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    };
    p.map(|p| cri::PsiStats {
        full: Some(line(p.full)),
        some: Some(line(p.some)),
    })
}

pub fn cpu(at: i64, u: &CgroupUsage, nano_cores: Option<u64>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: u64v(u.cpu_usage_ns),
        usage_nano_cores: u64v(nano_cores),
        psi: psi(u.cpu_pressure),
    }
}

pub fn io(at: i64, u: &CgroupUsage) -> Option<cri::IoUsage> {
    u.io_pressure.map(|_| cri::IoUsage {
        timestamp: at,
        psi: psi(u.io_pressure),
    })
}

pub fn memory(at: i64, u: &CgroupUsage) -> cri::MemoryUsage {
    let working_set = u.working_set();
    cri::MemoryUsage {
        timestamp: at,
        working_set_bytes: u64v(working_set),
        // Left before the limit: only where there is one (cadvisor's).
        available_bytes: u64v(
            u.memory_limit
                .zip(working_set)
                .map(|(l, w)| l.saturating_sub(w)),
        ),
        usage_bytes: u64v(u.memory_usage),
        rss_bytes: u64v(u.rss),
        page_faults: u64v(u.page_faults),
        major_page_faults: u64v(u.major_page_faults),
        psi: psi(u.memory_pressure),
    }
}

pub fn container(s: &ContainerStats, mountpoint: &str) -> cri::ContainerStats {
    let r = &s.record;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: r.config.metadata().name,
                attempt: r.config.metadata().attempt,
            }),
            labels: labels(&r.config.labels),
            annotations: labels(&r.config.annotations),
        }),
        cpu: Some(cpu(s.at_ns, &s.cgroup, s.nano_cores)),
        memory: Some(memory(s.at_ns, &s.cgroup)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: s.writable_layer.at_ns,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: mountpoint.to_string(),
            }),
            used_bytes: u64v(Some(s.writable_layer.bytes)),
            inodes_used: u64v(Some(s.writable_layer.inodes)),
        }),
        swap: Some(cri::SwapUsage {
            timestamp: s.at_ns,
            swap_available_bytes: u64v(
                s.cgroup
                    .swap_limit
                    .zip(s.cgroup.swap_usage)
                    .map(|(l, u)| l.saturating_sub(u)),
            ),
            swap_usage_bytes: u64v(s.cgroup.swap_usage),
        }),
        io: io(s.at_ns, &s.cgroup),
    }
}

pub fn pod(s: &PodStats, mountpoint: &str) -> cri::PodSandboxStats {
    let r = &s.record;
    let meta = r.config.metadata();
    let network = s.interfaces.as_ref().map(|ifs| {
        let conv = |i: &berth_runtime::service::InterfaceUsage| cri::NetworkInterfaceUsage {
            name: i.name.clone(),
            rx_bytes: u64v(Some(i.rx_bytes)),
            rx_errors: u64v(Some(i.rx_errors)),
            tx_bytes: u64v(Some(i.tx_bytes)),
            tx_errors: u64v(Some(i.tx_errors)),
        };
        cri::NetworkUsage {
            timestamp: s.at_ns,
            // kubelet's default interface is eth0 (the pod's end of its
            // veth, as berth's bridge plugin and CNI's name it).
            default_interface: ifs.iter().find(|i| i.name == "eth0").map(conv),
            interfaces: ifs.iter().map(conv).collect(),
        }
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: r.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: meta.name,
                uid: meta.uid,
                namespace: meta.namespace,
                attempt: meta.attempt,
            }),
            labels: labels(&r.config.labels),
            annotations: labels(&r.config.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(s.at_ns, &s.cgroup, s.nano_cores)),
            memory: Some(memory(s.at_ns, &s.cgroup)),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: s.at_ns,
                process_count: u64v(s.cgroup.pids),
            }),
            io: io(s.at_ns, &s.cgroup),
            containers: s
                .containers
                .iter()
                .map(|c| container(c, mountpoint))
                .collect(),
        }),
        windows: None,
    }
}
