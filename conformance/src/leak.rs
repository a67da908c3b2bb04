//! Leak checks: a snapshot of what a scenario can leave behind, taken before
//! and compared after.
//!
//! * mounts whose mount point is under one of the test's directories
//!   (`/proc/self/mountinfo`);
//! * processes named `berthd`, `berth-shim` or `docker-registry` that belong
//!   to this test (their command line or working directory names one of the
//!   test's directories: tests run side by side in one process, so "our
//!   descendants" would catch the neighbours' too);
//! * cgroups below berthd's own parent cgroup (`[runtime] cgroup_parent`,
//!   where every pod of a scenario lives), in every mounted hierarchy;
//! * the files (not directories) under berthd's root and state dir, the
//!   database file(s) excepted; and any temp file (`*.tmp`, or a file inside
//!   a `tmp/` directory near the top of the root).
//!
//! ```no_run
//! # async fn f(env: &berth_conformance::Env) {
//! let before = env.snapshot();
//! // ... a pull that must fail ...
//! env.assert_no_leaks_since(&before).await; // polls a few seconds, then panics with the list
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Process names the harness watches.
pub const WATCHED_PROCESSES: &[&str] =
    &["berthd", "berth-shim", "berth-shim-warm", "docker-registry"];

/// berthd's one shim exec'd ahead, waiting for its next container
/// (`berth-shim --warm`, named berth-shim-warm while it waits): berthd's
/// own while it runs (a new one after each container), not a leak then;
/// gone when berthd stops.
pub fn is_warm_shim(p: &Proc) -> bool {
    p.name == "berth-shim-warm"
}

/// What kind of file an entry is (for listings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// A process the harness cares about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proc {
    pub pid: i32,
    pub name: String,
    pub cmdline: String,
}

/// A snapshot of mounts, processes and files for one test.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The directories this test owns (tempdirs of berthd, registry, …).
    pub dirs: Vec<PathBuf>,
    /// The directories whose files are listed (berthd root and state).
    pub file_roots: Vec<PathBuf>,
    pub mounts: BTreeSet<String>,
    pub processes: BTreeSet<Proc>,
    pub files: BTreeMap<PathBuf, Kind>,
    /// The parent cgroups (relative to each hierarchy's root) whose
    /// subtrees are listed.
    pub cgroup_parents: Vec<String>,
    /// Every cgroup directory below those parents, in every hierarchy.
    pub cgroups: BTreeSet<PathBuf>,
}

/// What appeared between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Leaks {
    pub mounts: Vec<String>,
    pub processes: Vec<Proc>,
    pub files: Vec<PathBuf>,
    pub temp_files: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
            && self.processes.is_empty()
            && self.files.is_empty()
            && self.temp_files.is_empty()
            && self.cgroups.is_empty()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.mounts {
            writeln!(f, "  leaked mount: {m}")?;
        }
        for p in &self.processes {
            writeln!(f, "  leaked process: {} {} ({})", p.pid, p.name, p.cmdline)?;
        }
        const MAX: usize = 60;
        for p in self.files.iter().take(MAX) {
            writeln!(f, "  new file: {}", p.display())?;
        }
        if self.files.len() > MAX {
            writeln!(f, "  ... and {} more new files", self.files.len() - MAX)?;
        }
        for p in &self.temp_files {
            writeln!(f, "  temp file left: {}", p.display())?;
        }
        for c in &self.cgroups {
            writeln!(f, "  leaked cgroup: {}", c.display())?;
        }
        Ok(())
    }
}

impl Snapshot {
    /// Take a snapshot: mounts and processes scoped to `dirs`, files under
    /// `file_roots`, cgroups below `cgroup_parents`.
    pub fn take(dirs: &[PathBuf], file_roots: &[PathBuf], cgroup_parents: &[String]) -> Snapshot {
        let mut files = BTreeMap::new();
        for root in file_roots {
            list_files(root, &mut files);
        }
        let cgroups = cgroup_parents
            .iter()
            .flat_map(|p| cgroup_parent_dirs(p))
            .flat_map(|d| walk_dirs(&d).into_iter().skip(1))
            .collect();
        Snapshot {
            dirs: dirs.to_vec(),
            file_roots: file_roots.to_vec(),
            mounts: mounts_under(dirs),
            processes: processes_for(dirs),
            files,
            cgroup_parents: cgroup_parents.to_vec(),
            cgroups,
        }
    }

    /// Take the same kind of snapshot again (same dirs, roots and cgroups).
    pub fn retake(&self) -> Snapshot {
        Snapshot::take(&self.dirs, &self.file_roots, &self.cgroup_parents)
    }

    /// What `self` (the later snapshot) has that `before` had not, database
    /// files left out; plus every temp file in `self`.
    pub fn leaks_since(&self, before: &Snapshot) -> Leaks {
        Leaks {
            mounts: self.mounts.difference(&before.mounts).cloned().collect(),
            processes: self
                .processes
                .iter()
                .filter(|p| !before.processes.iter().any(|b| b.pid == p.pid))
                .filter(|p| !is_warm_shim(p))
                .cloned()
                .collect(),
            files: self
                .files
                .keys()
                .filter(|p| !before.files.contains_key(*p) && !is_database_file(p))
                .cloned()
                .collect(),
            temp_files: self.temp_files(),
            cgroups: self.cgroups.difference(&before.cgroups).cloned().collect(),
        }
    }

    /// Temp files: `*.tmp` anywhere, or any file within a `tmp` (or
    /// `ingest`) directory in the first two levels of a file root.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for path in self.files.keys() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let near_top_tmp = self.file_roots.iter().any(|root| {
                path.strip_prefix(root)
                    .map(|rel| {
                        rel.components()
                            .take(2)
                            .any(|c| matches!(c.as_os_str().to_str(), Some("tmp") | Some("ingest")))
                            && rel.components().count() > 1
                    })
                    .unwrap_or(false)
            });
            if name.ends_with(".tmp") || near_top_tmp {
                out.push(path.clone());
            }
        }
        out
    }

    /// Our live processes right now (all of them, not only new ones).
    pub fn live_processes(&self) -> Vec<Proc> {
        self.processes.iter().cloned().collect()
    }
}

/// berthd's database files are expected to change; they are not leaks.
pub fn is_database_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".redb")
        || name.contains(".redb.")
        || name.ends_with(".db")
        || name.ends_with(".sqlite")
}

fn kind_of(ft: &fs::FileType) -> Option<Kind> {
    if ft.is_dir() {
        None
    } else if ft.is_symlink() {
        Some(Kind::Symlink)
    } else if ft.is_file() {
        Some(Kind::File)
    } else if ft.is_char_device() {
        Some(Kind::CharDevice)
    } else if ft.is_block_device() {
        Some(Kind::BlockDevice)
    } else if ft.is_fifo() {
        Some(Kind::Fifo)
    } else {
        Some(Kind::Socket)
    }
}

/// Every non-directory under `root` (symlinks not followed).
pub fn list_files(root: &Path, out: &mut BTreeMap<PathBuf, Kind>) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for entry in rd.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let path = entry.path();
        match kind_of(&ft) {
            None => list_files(&path, out),
            Some(k) => {
                out.insert(path, k);
            }
        }
    }
}

/// `<hierarchy>/<parent>` for every mounted cgroup hierarchy that has it
/// (the cgroup2 root itself, or each v1 hierarchy and a hybrid host's
/// `unified`).
pub fn cgroup_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out: Vec<PathBuf> = std::iter::once(root.join(parent))
        .chain(
            fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join(parent)),
        )
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `dir` and every directory below it, parents first.
pub fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let d = out[i].clone();
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
            }
        }
        i += 1;
    }
    out
}

/// Decode the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts the harness made itself and removes itself (a berthd state
/// dir's tmpfs, see `berthd::mount_tmpfs`): not leftovers of what is
/// tested, so the checks below do not name them (what is mounted under
/// them still counts).
static HARNESS_MOUNTS: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

/// Record `path` as a mount of the harness's own (see [`HARNESS_MOUNTS`]).
pub fn harness_mount(path: &Path) {
    if let Ok(mut m) = HARNESS_MOUNTS.lock() {
        m.insert(path.display().to_string());
    }
}

/// Mount points under any of `dirs`.
pub fn mounts_under(dirs: &[PathBuf]) -> BTreeSet<String> {
    mounts_of("self", dirs).unwrap_or_default()
}

/// Mount points under any of `dirs` in the mount namespace of process
/// `pid` ("self": ours).
pub fn mounts_of(pid: &str, dirs: &[PathBuf]) -> std::io::Result<BTreeSet<String>> {
    let own = HARNESS_MOUNTS.lock().map(|m| m.clone()).unwrap_or_default();
    Ok(all_mounts_of(pid, dirs)?
        .into_iter()
        .filter(|m| !own.contains(m))
        .collect())
}

/// Every mount point under `dirs` in our mount namespace, the harness's
/// own included (for detaching them all), which are then forgotten.
pub fn all_mounts_under(dirs: &[PathBuf]) -> BTreeSet<String> {
    let all = all_mounts_of("self", dirs).unwrap_or_default();
    if let Ok(mut own) = HARNESS_MOUNTS.lock() {
        own.retain(|m| !all.contains(m));
    }
    all
}

fn all_mounts_of(pid: &str, dirs: &[PathBuf]) -> std::io::Result<BTreeSet<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .collect())
}

/// Watched processes whose command line or working directory names one of `dirs`.
pub fn processes_for(dirs: &[PathBuf]) -> BTreeSet<Proc> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in rd.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let base = entry.path();
        let Ok(comm) = fs::read_to_string(base.join("comm")) else {
            continue;
        };
        let comm = comm.trim().to_string();
        // comm is cut at 15 bytes; "docker-registry" is exactly 15
        if !WATCHED_PROCESSES.contains(&comm.as_str()) {
            continue;
        }
        // zombies still count: they are unreaped children
        let cmdline = fs::read(base.join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let cwd = fs::read_link(base.join("cwd")).unwrap_or_default();
        let ours = dirs.iter().any(|d| {
            let ds = d.display().to_string();
            cmdline.contains(&ds) || cwd.starts_with(d)
        });
        if ours {
            out.insert(Proc {
                pid,
                name: comm,
                cmdline,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\"), "/end\\");
    }

    #[test]
    fn database_and_temp_files() {
        assert!(is_database_file(Path::new("/r/meta.redb")));
        assert!(!is_database_file(Path::new("/r/content/sha256/abc")));
        let mut s = Snapshot {
            file_roots: vec![PathBuf::from("/r")],
            ..Default::default()
        };
        s.files.insert(PathBuf::from("/r/tmp/x"), Kind::File);
        s.files
            .insert(PathBuf::from("/r/content/tmp/y"), Kind::File);
        s.files.insert(PathBuf::from("/r/a/b.tmp"), Kind::File);
        s.files
            .insert(PathBuf::from("/r/snapshots/1/fs/tmp/ok"), Kind::File);
        s.files.insert(PathBuf::from("/r/content/blob"), Kind::File);
        let t = s.temp_files();
        assert_eq!(t.len(), 3, "{t:?}");
    }
}
