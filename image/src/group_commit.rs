//! Group commit for a redb database that many threads write to.
//!
//! redb has one writer, and a durable commit waits for its fsync, so at
//! concurrency each write queues behind the others' fsyncs (6 ms for a
//! 0.4 ms write at 10 pods in flight on 2 cores). With [`GroupCommit`], a
//! writer queues its change; whoever finds no commit running becomes the
//! leader and applies every queued change in one transaction (one fsync),
//! then wakes their writers with its result. A change returns only once
//! the transaction that holds it has committed: durable if it asked to be
//! (a batch with one durable change is durable as a whole).
//!
//! Writers that call `begin_write` themselves (pulls, GC) still work: redb
//! serialises them with the leaders.
//!
//! Blocking: call it from a blocking thread, never from an async worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// One change: what it does inside the batch's transaction. An error
/// aborts the whole batch (every writer in it gets the error).
pub type Change = Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), String> + Send>;

/// The tables both of berth's databases keep their records in: key, JSON.
pub type Table = redb::TableDefinition<'static, &'static str, &'static [u8]>;

pub struct GroupCommit {
    queue: Mutex<Queue>,
    /// Signalled when a batch has committed (its writers' results are in
    /// `Queue::done`) and the leader's place is free.
    committed: Condvar,
    /// Transactions committed, for the tests of the grouping.
    commits: AtomicU64,
}

#[derive(Default)]
struct Queue {
    /// Changes waiting for the next transaction: (ticket, change, durable).
    pending: Vec<(u64, Change, bool)>,
    /// A leader is committing a batch now.
    committing: bool,
    /// Results of committed batches, by ticket, until their writer takes
    /// them.
    done: HashMap<u64, Result<(), String>>,
    next: u64,
}

/// The leader's place: freed, with an error for its batch, even if the
/// commit panics (the writers waiting on it would wait for ever).
struct Leading<'a> {
    group: &'a GroupCommit,
    tickets: Vec<u64>,
    result: Option<Result<(), String>>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let r = self
            .result
            .take()
            .unwrap_or_else(|| Err("the commit of this change panicked".into()));
        let mut q = self.group.lock();
        q.committing = false;
        for t in self.tickets.drain(..) {
            q.done.insert(t, r.clone());
        }
        self.group.committed.notify_all();
    }
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupCommit {
    pub fn new() -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            committed: Condvar::new(),
            commits: AtomicU64::new(0),
        }
    }

    /// The queue's lock; nothing panics while holding it, and its state is
    /// consistent at every unlock, so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `change` and return once a committed transaction of `db`
    /// holds it.
    pub fn apply(&self, db: &redb::Database, change: Change, durable: bool) -> Result<(), String> {
        let mut q = self.lock();
        let ticket = q.next;
        q.next += 1;
        q.pending.push((ticket, change, durable));
        loop {
            if let Some(r) = q.done.remove(&ticket) {
                return r;
            }
            if !q.committing {
                // Lead: this batch holds our own change and every one
                // queued since the last commit began.
                q.committing = true;
                let batch = std::mem::take(&mut q.pending);
                drop(q);
                let mut leading = Leading {
                    group: self,
                    tickets: batch.iter().map(|(t, ..)| *t).collect(),
                    result: None,
                };
                leading.result = Some(self.commit(db, batch));
                drop(leading);
                q = self.lock();
                continue;
            }
            q = self.committed.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`GroupCommit::apply`] of one row written into `table`.
    pub fn put(
        &self,
        db: &redb::Database,
        table: Table,
        key: String,
        value: Vec<u8>,
        durable: bool,
    ) -> Result<(), String> {
        let change = Box::new(move |tx: &redb::WriteTransaction| {
            tx.open_table(table)
                .map_err(|e| e.to_string())?
                .insert(key.as_str(), value.as_slice())
                .map_err(|e| e.to_string())?;
            Ok(())
        });
        self.apply(db, change, durable)
    }

    /// [`GroupCommit::apply`] of rows removed from `table`.
    pub fn remove(
        &self,
        db: &redb::Database,
        table: Table,
        keys: Vec<String>,
        durable: bool,
    ) -> Result<(), String> {
        let change = Box::new(move |tx: &redb::WriteTransaction| {
            let mut t = tx.open_table(table).map_err(|e| e.to_string())?;
            for k in &keys {
                t.remove(k.as_str()).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        self.apply(db, change, durable)
    }

    /// One transaction for a batch, in queue order.
    fn commit(&self, db: &redb::Database, batch: Vec<(u64, Change, bool)>) -> Result<(), String> {
        let mut tx = db.begin_write().map_err(|e| e.to_string())?;
        if !batch.iter().any(|(_, _, durable)| *durable) {
            tx.set_durability(redb::Durability::None)
                .map_err(|e| e.to_string())?;
        }
        for (_, change, _) in batch {
            change(&tx)?;
        }
        tx.commit().map_err(|e| e.to_string())?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Changes waiting for the next transaction (tests).
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Hold every writer as if a leader were committing, until
    /// [`GroupCommit::resume`] (tests of the grouping).
    pub fn hold(&self) {
        self.lock().committing = true;
    }

    /// End a [`GroupCommit::hold`]: the next writer to wake leads.
    pub fn resume(&self) {
        self.lock().committing = false;
        self.committed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    use std::sync::Arc;

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn put(k: String, v: u64) -> Change {
        Box::new(move |tx| {
            tx.open_table(T)
                .map_err(|e| e.to_string())?
                .insert(k.as_str(), v)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }

    #[test]
    fn writers_queued_behind_a_commit_share_the_next_one_and_a_failed_batch_fails_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("db")).unwrap());
        let g = Arc::new(GroupCommit::new());
        g.hold();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let (db, g) = (db.clone(), g.clone());
                std::thread::spawn(move || g.apply(&db, put(format!("k{i}"), i), i % 2 == 0))
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while g.pending() < 8 {
            assert!(std::time::Instant::now() < deadline, "writers never queued");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(g.commits(), 0, "nothing committed while held");
        g.resume();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(
            g.commits(),
            1,
            "the eight queued changes went in one transaction"
        );
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 8);
        assert_eq!(t.get("k5").unwrap().unwrap().value(), 5);
        drop((t, tx));

        // One failing change fails its batch, and nothing of it is kept.
        g.hold();
        let (db2, g2) = (db.clone(), g.clone());
        let ok = std::thread::spawn(move || g2.apply(&db2, put("late".into(), 1), true));
        while g.pending() < 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (db3, g3) = (db.clone(), g.clone());
        let bad = std::thread::spawn(move || {
            g3.apply(&db3, Box::new(|_| Err("refused".to_string())), true)
        });
        while g.pending() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        g.resume();
        assert_eq!(bad.join().unwrap(), Err("refused".to_string()));
        assert_eq!(ok.join().unwrap(), Err("refused".to_string()));
        let tx = db.begin_read().unwrap();
        assert!(tx.open_table(T).unwrap().get("late").unwrap().is_none());
    }

    #[test]
    fn concurrent_writes_of_one_key_keep_the_last_of_each_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("db")).unwrap());
        let g = Arc::new(GroupCommit::new());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let (db, g) = (db.clone(), g.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        g.apply(&db, put(format!("t{t}"), i), true).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        for k in 0..4 {
            assert_eq!(
                t.get(format!("t{k}").as_str()).unwrap().unwrap().value(),
                49
            );
        }
    }
}
