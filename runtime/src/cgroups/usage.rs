//! What a cgroup has used, as ListContainerStats and ListPodSandboxStats
//! report it (and cadvisor reads it): CPU time, memory (usage, working set,
//! RSS, page faults, limit), swap, processes, and on v2 the pressure
//! stall information. Read from the cgroup's files on each call; parsing is
//! here, apart from the file access, so that it is tested without a kernel.

use std::collections::HashMap;

/// Counters of one cgroup. None: the kernel (or the hierarchy) does not
/// have it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupUsage {
    /// CPU time of every task, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory charged to it (page cache included).
    pub memory_usage: Option<u64>,
    /// Its memory limit; None: unlimited.
    pub memory_limit: Option<u64>,
    /// Page cache not recently used, which the kernel reclaims first
    /// (working set = usage - inactive file).
    pub inactive_file: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub swap_usage: Option<u64>,
    /// None: unlimited.
    pub swap_limit: Option<u64>,
    pub pids: Option<u64>,
    /// CPU time in user and in kernel mode, nanoseconds.
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    /// CFS bandwidth: periods elapsed, periods throttled, time throttled.
    pub cfs_periods: Option<u64>,
    pub cfs_throttled_periods: Option<u64>,
    pub cfs_throttled_ns: Option<u64>,
    /// Page cache (v1 `total_cache`, v2 `file`) and mapped files.
    pub memory_cache: Option<u64>,
    pub memory_mapped_file: Option<u64>,
    /// The most memory ever charged (v1 `max_usage_in_bytes`, v2
    /// `memory.peak` from 5.19).
    pub memory_max_usage: Option<u64>,
    /// Times the limit was hit (v1 `failcnt`, v2 `memory.events` max).
    pub memory_failcnt: Option<u64>,
    /// Processes the OOM killer killed in it (v1 `oom_control` from 4.13,
    /// v2 `memory.events`).
    pub oom_kills: Option<u64>,
    /// v2 with PSI (CONFIG_PSI, not psi=0).
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

impl CgroupUsage {
    /// Usage minus inactive file, as kubelet's eviction and cadvisor count.
    pub fn working_set(&self) -> Option<u64> {
        self.memory_usage
            .map(|u| u.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

/// One resource's pressure stall information (`cpu.pressure`, …).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    pub some: PressureLine,
    /// Not for cpu on kernels before 5.13 (then all zero).
    pub full: PressureLine,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Microseconds stalled in all.
    pub total_us: u64,
}

/// A v1 limit at or above this is "unlimited" (the kernel shows
/// PAGE_COUNTER_MAX rounded to pages, ~2^63).
const V1_UNLIMITED: u64 = 1 << 62;

/// `key value` lines (memory.stat, cpu.stat).
pub fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// One number, or "max" (v2's unlimited: None).
pub fn single(text: &str) -> Option<Option<u64>> {
    let t = text.trim();
    if t == "max" {
        return Some(None);
    }
    t.parse().ok().map(Some)
}

/// A v1 limit: None when it means unlimited.
pub fn v1_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&v| v < V1_UNLIMITED)
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and `full …`.
pub fn pressure(text: &str) -> Option<Pressure> {
    let mut p = Pressure::default();
    let mut seen = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let which = match f.next() {
            Some("some") => &mut p.some,
            Some("full") => &mut p.full,
            _ => continue,
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            match k {
                "avg10" => which.avg10 = v.parse().ok()?,
                "avg60" => which.avg60 = v.parse().ok()?,
                "avg300" => which.avg300 = v.parse().ok()?,
                "total" => which.total_us = v.parse().ok()?,
                _ => {}
            }
        }
        seen = true;
    }
    seen.then_some(p)
}

/// The v2 counters from the files' texts (`read(name)`: the file's text,
/// None if it is not there).
pub fn v2(read: impl Fn(&str) -> Option<String>) -> CgroupUsage {
    let mut u = CgroupUsage::default();
    if let Some(t) = read("cpu.stat") {
        let c = flat_keyed(&t);
        let ns = |k: &str| c.get(k).map(|us| us.saturating_mul(1000));
        u.cpu_usage_ns = ns("usage_usec");
        u.cpu_user_ns = ns("user_usec");
        u.cpu_system_ns = ns("system_usec");
        u.cfs_periods = c.get("nr_periods").copied();
        u.cfs_throttled_periods = c.get("nr_throttled").copied();
        u.cfs_throttled_ns = ns("throttled_usec");
    }
    u.memory_usage = read("memory.current").and_then(|t| single(&t)).flatten();
    u.memory_limit = read("memory.max").and_then(|t| single(&t)).flatten();
    if let Some(t) = read("memory.stat") {
        let m = flat_keyed(&t);
        u.inactive_file = m.get("inactive_file").copied();
        u.rss = m.get("anon").copied();
        u.page_faults = m.get("pgfault").copied();
        u.major_page_faults = m.get("pgmajfault").copied();
        u.memory_cache = m.get("file").copied();
        u.memory_mapped_file = m.get("file_mapped").copied();
    }
    u.memory_max_usage = read("memory.peak").and_then(|t| single(&t)).flatten();
    if let Some(t) = read("memory.events") {
        let e = flat_keyed(&t);
        u.memory_failcnt = e.get("max").copied();
        u.oom_kills = e.get("oom_kill").copied();
    }
    u.swap_usage = read("memory.swap.current")
        .and_then(|t| single(&t))
        .flatten();
    u.swap_limit = read("memory.swap.max").and_then(|t| single(&t)).flatten();
    u.pids = read("pids.current").and_then(|t| single(&t)).flatten();
    u.cpu_pressure = read("cpu.pressure").and_then(|t| pressure(&t));
    u.memory_pressure = read("memory.pressure").and_then(|t| pressure(&t));
    u.io_pressure = read("io.pressure").and_then(|t| pressure(&t));
    u
}

/// The v1 counters: `read(controller, file)` reads the cgroup's file in
/// that controller's hierarchy.
pub fn v1(read: impl Fn(&str, &str) -> Option<String>) -> CgroupUsage {
    let mut u = CgroupUsage {
        cpu_usage_ns: read("cpuacct", "cpuacct.usage").and_then(|t| t.trim().parse().ok()),
        memory_usage: read("memory", "memory.usage_in_bytes").and_then(|t| t.trim().parse().ok()),
        memory_limit: read("memory", "memory.limit_in_bytes").and_then(|t| v1_limit(&t)),
        ..Default::default()
    };
    if let Some(t) = read("memory", "memory.stat") {
        let m = flat_keyed(&t);
        u.inactive_file = m.get("total_inactive_file").copied();
        u.rss = m.get("total_rss").copied();
        u.page_faults = m.get("total_pgfault").copied();
        u.major_page_faults = m.get("total_pgmajfault").copied();
        u.memory_cache = m.get("total_cache").copied();
        u.memory_mapped_file = m.get("total_mapped_file").copied();
    }
    let number = |c: &str, f: &str| read(c, f).and_then(|t| t.trim().parse::<u64>().ok());
    u.cpu_user_ns = number("cpuacct", "cpuacct.usage_user");
    u.cpu_system_ns = number("cpuacct", "cpuacct.usage_sys");
    if let Some(t) = read("cpu", "cpu.stat") {
        let c = flat_keyed(&t);
        u.cfs_periods = c.get("nr_periods").copied();
        u.cfs_throttled_periods = c.get("nr_throttled").copied();
        u.cfs_throttled_ns = c.get("throttled_time").copied();
    }
    u.memory_max_usage = number("memory", "memory.max_usage_in_bytes");
    u.memory_failcnt = number("memory", "memory.failcnt");
    u.oom_kills =
        read("memory", "memory.oom_control").and_then(|t| flat_keyed(&t).get("oom_kill").copied());
    // Swap is memory+swap less memory, where swap is accounted.
    if let (Some(memsw), Some(mem)) = (
        read("memory", "memory.memsw.usage_in_bytes").and_then(|t| t.trim().parse::<u64>().ok()),
        u.memory_usage,
    ) {
        u.swap_usage = Some(memsw.saturating_sub(mem));
        u.swap_limit = read("memory", "memory.memsw.limit_in_bytes")
            .and_then(|t| v1_limit(&t))
            .zip(u.memory_limit)
            .map(|(sw, m)| sw.saturating_sub(m));
    }
    u.pids = read("pids", "pids.current").and_then(|t| t.trim().parse().ok());
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_files_become_counters() {
        let files: HashMap<&str, &str> = [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 30\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 6\noom 2\noom_kill 1\n"),
            ("memory.peak", "20971520\n"),
            ("memory.current", "10485760\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 4096\nfile 8192\ninactive_file 2048\npgfault 7\npgmajfault 1\n"),
            ("memory.swap.current", "0\n"),
            ("memory.swap.max", "1048576\n"),
            ("pids.current", "3\n"),
            (
                "memory.pressure",
                "some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=56\n",
            ),
        ]
        .into();
        let u = v2(|f| files.get(f).map(|s| s.to_string()));
        assert_eq!(u.cpu_usage_ns, Some(1_500_000));
        assert_eq!(u.memory_usage, Some(10 << 20));
        assert_eq!(u.memory_limit, None, "max is unlimited");
        assert_eq!(u.working_set(), Some((10 << 20) - 2048));
        assert_eq!(
            (u.rss, u.page_faults, u.major_page_faults),
            (Some(4096), Some(7), Some(1))
        );
        assert_eq!(
            (u.swap_usage, u.swap_limit, u.pids),
            (Some(0), Some(1 << 20), Some(3))
        );
        let p = u.memory_pressure.unwrap();
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.some.total_us, 1234);
        assert_eq!(p.full.total_us, 56);
        assert_eq!(u.cpu_pressure, None, "no file, no pressure");
        assert_eq!(
            (u.cpu_user_ns, u.cpu_system_ns),
            (Some(1_000_000), Some(500_000))
        );
        assert_eq!(
            (u.cfs_periods, u.cfs_throttled_periods, u.cfs_throttled_ns),
            (Some(10), Some(4), Some(30_000))
        );
        assert_eq!((u.memory_cache, u.memory_mapped_file), (Some(8192), None));
        assert_eq!(u.memory_max_usage, Some(20 << 20));
        assert_eq!((u.memory_failcnt, u.oom_kills), (Some(6), Some(1)));
    }

    #[test]
    fn v1_files_become_counters() {
        let files: HashMap<(&str, &str), &str> = [
            (("cpuacct", "cpuacct.usage"), "123456789\n"),
            (("memory", "memory.usage_in_bytes"), "20971520\n"),
            (("memory", "memory.limit_in_bytes"), "9223372036854771712\n"),
            (
                ("memory", "memory.stat"),
                "cache 1\nrss 2\ntotal_cache 8192\ntotal_mapped_file 512\ntotal_rss 4096\ntotal_inactive_file 1024\ntotal_pgfault 9\ntotal_pgmajfault 2\n",
            ),
            (("cpuacct", "cpuacct.usage_user"), "100000000\n"),
            (("cpuacct", "cpuacct.usage_sys"), "23456789\n"),
            (
                ("cpu", "cpu.stat"),
                "nr_periods 7\nnr_throttled 3\nthrottled_time 999\n",
            ),
            (("memory", "memory.max_usage_in_bytes"), "31457280\n"),
            (("memory", "memory.failcnt"), "4\n"),
            (
                ("memory", "memory.oom_control"),
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            (("memory", "memory.memsw.usage_in_bytes"), "20975616\n"),
            (("memory", "memory.memsw.limit_in_bytes"), "9223372036854771712\n"),
            (("pids", "pids.current"), "5\n"),
        ]
        .into();
        let u = v1(|c, f| files.get(&(c, f)).map(|s| s.to_string()));
        assert_eq!(u.cpu_usage_ns, Some(123_456_789));
        assert_eq!(u.memory_limit, None, "PAGE_COUNTER_MAX is unlimited");
        assert_eq!(u.working_set(), Some(20_971_520 - 1024));
        assert_eq!(u.rss, Some(4096));
        assert_eq!(u.swap_usage, Some(4096));
        assert_eq!(u.swap_limit, None);
        assert_eq!(u.pids, Some(5));
        assert_eq!(
            (u.cpu_user_ns, u.cpu_system_ns),
            (Some(100_000_000), Some(23_456_789))
        );
        assert_eq!(
            (u.cfs_periods, u.cfs_throttled_periods, u.cfs_throttled_ns),
            (Some(7), Some(3), Some(999))
        );
        assert_eq!(
            (u.memory_cache, u.memory_mapped_file),
            (Some(8192), Some(512))
        );
        assert_eq!(u.memory_max_usage, Some(30 << 20));
        assert_eq!((u.memory_failcnt, u.oom_kills), (Some(4), Some(2)));
        let limited = v1(|c, f| match (c, f) {
            ("memory", "memory.limit_in_bytes") => Some("67108864\n".into()),
            _ => None,
        });
        assert_eq!(limited.memory_limit, Some(64 << 20));
    }

    #[test]
    fn garbage_gives_nothing_rather_than_wrong_numbers() {
        assert_eq!(pressure("nonsense"), None);
        assert_eq!(pressure("some avg10=x total=1"), None);
        assert_eq!(single("12abc"), None);
        let u = v2(|_| Some("garbage\n".into()));
        assert_eq!(u.memory_usage, None);
        assert_eq!(u.cpu_usage_ns, None);
    }
}
