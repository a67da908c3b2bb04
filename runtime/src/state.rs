//! Sandbox and container records in berthd's embedded database
//! (`<root>/runtime.redb`), so that berthd can be killed at any moment and
//! rebuild its view on start.
//!
//! Writes are group-committed ([`berth_image::group_commit`]): at
//! concurrency, writers queued behind one another's fsyncs share one.

use std::path::{Path, PathBuf};

use berth_image::group_commit::GroupCommit;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::{ContainerConfig, SandboxConfig};
use crate::namespaces::Pinned;
use crate::rootfs::Rootfs;

use berth_image::group_commit::Table;
const SANDBOXES: Table = TableDefinition::new("sandboxes");
const CONTAINERS: Table = TableDefinition::new("containers");

#[derive(Debug, thiserror::Error)]
#[error("runtime database: {0}")]
pub struct StateError(pub String);

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                StateError(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: SandboxConfig,
    pub runtime_handler: String,
    pub state: SandboxState,
    pub created_at_ns: i64,
    /// `<state>/sandboxes/<id>`.
    pub dir: PathBuf,
    pub namespaces: Pinned,
    /// The pause shim holding the pod's PID namespace, if it has one.
    pub pause: Option<ShimRef>,
    /// The pod cgroup (relative to the cgroup root), if one was made.
    pub cgroup: Option<String>,
    /// The pod's /dev/shm tmpfs, if the pod has its own IPC namespace.
    pub shm: Option<PathBuf>,
    /// The pod's network while it is set up (addresses, host veth, ports);
    /// None for host-network pods and once StopPodSandbox took it down.
    /// Stored in the same transaction as the rest of the record: this is
    /// where IPAM's allocations live.
    #[serde(default)]
    pub network: Option<berth_network::Attachment>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimRef {
    /// The shim's state dir (its bundle).
    pub dir: PathBuf,
    /// The process it runs, in the host PID namespace.
    pub pid: i32,
    /// The cgroup that process is in: berthd kills the pid directly (when
    /// the shim does not answer) only while it is a member, never a pid
    /// reused by another process. None in records older than this field.
    #[serde(default)]
    pub cgroup: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    /// What CreateContainer asked for, the image id and the name it was
    /// resolved by.
    pub image_ref: String,
    pub image_id: String,
    pub image_name: String,
    pub state: ContainerState,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The init's host pid: 0 in the store until StartContainer writes
    /// it (the shim answers after CreateContainer; recovery asks it).
    pub pid: i32,
    /// `<state>/containers/<id>`: the bundle and the shim's files.
    pub dir: PathBuf,
    pub rootfs: Rootfs,
    /// Absolute log path (log_directory + log_path), empty if none.
    pub log_path: String,
    pub cgroup: Option<String>,
    /// The process's credentials, for ContainerStatus.
    #[serde(default)]
    pub user: Option<crate::user::ResolvedUser>,
}

pub struct StateStore {
    db: redb::Database,
    group: GroupCommit,
}

impl StateStore {
    pub fn open(root: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(root)
            .map_err(|e| StateError(format!("creating {}: {e}", root.display())))?;
        let db = redb::Database::create(root.join("runtime.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(SANDBOXES)?;
        tx.open_table(CONTAINERS)?;
        tx.commit()?;
        Ok(Self {
            db,
            group: GroupCommit::new(),
        })
    }

    fn put(
        &self,
        table: Table,
        id: &str,
        v: &impl Serialize,
        durable: bool,
    ) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(v)?;
        self.group
            .put(&self.db, table, id.to_string(), bytes, durable)
            .map_err(StateError)
    }

    fn delete(&self, table: Table, id: &str) -> Result<(), StateError> {
        self.group
            .remove(&self.db, table, vec![id.to_string()], true)
            .map_err(StateError)
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, table: Table) -> Result<Vec<T>, StateError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in tx.open_table(table)?.iter()? {
            let (k, v) = row?;
            match serde_json::from_slice(v.value()) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(id = k.value(), error = %e, "skipping unreadable record"),
            }
        }
        Ok(out)
    }

    pub fn put_sandbox(&self, r: &SandboxRecord) -> Result<(), StateError> {
        self.put(SANDBOXES, &r.id, r, true)
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<(), StateError> {
        self.delete(SANDBOXES, id)
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StateError> {
        self.all(SANDBOXES)
    }

    pub fn put_container(&self, r: &ContainerRecord) -> Result<(), StateError> {
        self.put(CONTAINERS, &r.id, r, true)
    }

    /// A container's record changed in what its shim also keeps (running
    /// since, exited how: its state and exit.json), written without a sync
    /// of its own: a crash may lose it, and recovery asks the shim again
    /// (see `Runtime::recover`). The next durable write makes it durable
    /// too.
    pub fn put_container_rederivable(&self, r: &ContainerRecord) -> Result<(), StateError> {
        self.put(CONTAINERS, &r.id, r, false)
    }

    pub fn delete_container(&self, id: &str) -> Result<(), StateError> {
        self.delete(CONTAINERS, id)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StateError> {
        self.all(CONTAINERS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let rec = SandboxRecord {
            id: "abc".into(),
            config: SandboxConfig::default(),
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            created_at_ns: 1,
            dir: dir.path().join("sb"),
            namespaces: Pinned::default(),
            pause: None,
            cgroup: None,
            shm: None,
            network: Some(berth_network::Attachment {
                plugin: "bridge".into(),
                ips: vec!["10.89.0.2".parse().unwrap()],
                host_veth: Some("bthabc".into()),
                port_mappings: vec![],
                pod: "default/p".into(),
            }),
        };
        {
            let s = StateStore::open(dir.path()).unwrap();
            s.put_sandbox(&rec).unwrap();
        }
        let s = StateStore::open(dir.path()).unwrap();
        let all = s.sandboxes().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, "abc");
        s.delete_sandbox("abc").unwrap();
        assert!(s.sandboxes().unwrap().is_empty());
        s.delete_sandbox("abc").unwrap();
    }

    fn sandbox(id: &str, dir: &Path) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            config: SandboxConfig::default(),
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            created_at_ns: 1,
            dir: dir.join(id),
            namespaces: Pinned::default(),
            pause: None,
            cgroup: None,
            shm: None,
            network: None,
        }
    }

    #[test]
    fn writers_queued_behind_a_commit_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(StateStore::open(dir.path()).unwrap());
        s.put_sandbox(&sandbox("old", dir.path())).unwrap();
        // As if a leader were committing: every writer now queues.
        s.group.hold();
        let before = s.group.commits();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let (s, d) = (s.clone(), dir.path().to_path_buf());
                std::thread::spawn(move || match i {
                    0 => s.delete_sandbox("old"),
                    _ => s.put_sandbox(&sandbox(&format!("p{i}"), &d)),
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while s.group.pending() < 8 {
            assert!(std::time::Instant::now() < deadline, "writers never queued");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(s.group.commits(), before, "nothing committed while held");
        s.group.resume();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(
            s.group.commits() - before,
            1,
            "the eight queued changes went in one transaction"
        );
        drop(s);
        let s = StateStore::open(dir.path()).unwrap();
        let mut ids: Vec<String> = s.sandboxes().unwrap().into_iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, (1..8).map(|i| format!("p{i}")).collect::<Vec<_>>());
    }
}
