//! CPU time of a daemon and its descendants from /proc/<pid>/stat.
//!
//! A sample is utime + stime of the process (all its threads), plus cutime +
//! cstime (children it has reaped), plus utime + stime of every live
//! descendant. The difference of two samples is the CPU spent in between by
//! the daemon and anything it ran (e.g. containerd's `unpigz`), as long as
//! descendants that exit are reaped by their parent.

use std::collections::HashMap;
use std::fs;

use anyhow::{Context, Result, anyhow};

/// Clock ticks (USER_HZ) as seconds.
fn ticks_to_secs(t: u64) -> f64 {
    t as f64 / rustix::param::clock_ticks_per_second() as f64
}

#[derive(Clone, Copy, Debug, Default)]
struct Stat {
    ppid: i32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may hold spaces: fields after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), f[1] = ppid (4), f[11..15] = utime stime cutime cstime (14..17)
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: num(11)?,
        stime: num(12)?,
        cutime: num(13)?,
        cstime: num(14)?,
    })
}

/// CPU time (seconds) of a process tree at one moment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CpuSample {
    pub user: f64,
    pub system: f64,
}

impl CpuSample {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// `self - earlier`.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// CPU seconds (utime + stime, all threads) of one process so far; None
/// once it is gone.
pub fn process_cpu(pid: i32) -> Option<f64> {
    let st = read_stat(pid)?;
    Some(ticks_to_secs(st.utime + st.stime))
}

/// utime/stime of `pid` and its reaped children, plus its live descendants.
pub fn sample_tree(pid: u32) -> Result<CpuSample> {
    let pid = i32::try_from(pid).map_err(|_| anyhow!("pid {pid} out of range"))?;
    let me = read_stat(pid).with_context(|| format!("reading /proc/{pid}/stat (process gone?)"))?;
    let mut user = me.utime + me.cutime;
    let mut system = me.stime + me.cstime;

    // Every process's parent, to find the live descendants.
    let mut stats: HashMap<i32, Stat> = HashMap::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                && let Some(st) = read_stat(p)
            {
                stats.insert(p, st);
            }
        }
    }
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (&p, st) in &stats {
            if st.ppid == parent && p != pid {
                user += st.utime;
                system += st.stime;
                frontier.push(p);
            }
        }
    }
    Ok(CpuSample {
        user: ticks_to_secs(user),
        system: ticks_to_secs(system),
    })
}

/// The pid of the process listening on the Unix socket `path` (for
/// `--endpoint`): the socket's inode from /proc/net/unix, then the process
/// holding an fd on it. `None` when it cannot be found (other namespace, no
/// permission).
pub fn pid_listening_on(path: &str) -> Option<u32> {
    let table = fs::read_to_string("/proc/net/unix").ok()?;
    // Num RefCount Protocol Flags Type St Inode Path
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[7] == path && f[3] == "00010000").then(|| f[6].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && wanted.iter().any(|w| target.as_os_str() == w.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time() {
        let s = sample_tree(std::process::id()).expect("own stat");
        assert!(s.total() >= 0.0);
    }
}
