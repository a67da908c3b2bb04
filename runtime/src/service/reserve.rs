//! Pod and container names: taken by an id, or reserved while a
//! RunPodSandbox or CreateContainer makes one.
//!
//! kubelet cancels a call that outlives its runtime-request-timeout and
//! retries it with the same name. The work a call started must not die with
//! it: [`Names::run_once`] runs the creation in a task of its own, which
//! finishes (and records its result, or undoes what it made) whether or not
//! its caller still waits. A retry that comes while it runs waits for it
//! and gets its id, as CRI-O's resourcestore does; one that comes after
//! finds the name taken and gets the same id. Only when the creation failed
//! does a retry try again itself.
//!
//! A [`Reservation`] gives its slot back when it is dropped without an
//! outcome (the task panicked, or the runtime shut down): the slot is
//! removed *before* its waiters wake, so that they find the name free and
//! never a closed reservation to spin on (containerd's registrar releases a
//! name in a defer for the same reason).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::{Error, Result};

/// What waiters on a reservation are told: the id made, or why not.
type Outcome = Option<std::result::Result<String, String>>;

enum Slot {
    InFlight {
        generation: u64,
        rx: watch::Receiver<Outcome>,
    },
    Taken(String),
}

#[derive(Default)]
struct Slots {
    map: HashMap<String, Slot>,
    generation: u64,
}

/// The names of one kind (pods, or containers) and who holds them.
#[derive(Default)]
pub(super) struct Names {
    slots: Mutex<Slots>,
}

/// The right to create `name`; see the module docs.
pub(crate) struct Reservation {
    names: Arc<Names>,
    name: String,
    generation: u64,
    tx: Option<watch::Sender<Outcome>>,
}

enum Claim {
    Taken(String),
    Wait(watch::Receiver<Outcome>),
    Mine(Reservation),
}

fn poisoned() -> Error {
    Error::Internal("name reservations lock poisoned by an earlier panic".into())
}

impl Names {
    /// `name` belongs to `id` (records read at start).
    pub(super) fn take(&self, name: String, id: String) -> Result<()> {
        let mut s = self.slots.lock().map_err(|_| poisoned())?;
        s.map.insert(name, Slot::Taken(id));
        Ok(())
    }

    /// `name` is free again (its pod or container was removed).
    pub(super) fn release(&self, name: &str) -> Result<()> {
        let mut s = self.slots.lock().map_err(|_| poisoned())?;
        if matches!(s.map.get(name), Some(Slot::Taken(_))) {
            s.map.remove(name);
        }
        Ok(())
    }

    /// The id that holds `name`, if one does.
    #[cfg(test)]
    fn holder(&self, name: &str) -> Option<String> {
        match self.slots.lock().ok()?.map.get(name) {
            Some(Slot::Taken(id)) => Some(id.clone()),
            _ => None,
        }
    }

    fn claim(self: &Arc<Self>, name: &str) -> Result<Claim> {
        let mut s = self.slots.lock().map_err(|_| poisoned())?;
        match s.map.get(name) {
            Some(Slot::Taken(id)) => return Ok(Claim::Taken(id.clone())),
            Some(Slot::InFlight { rx, .. }) => {
                if rx.has_changed().is_ok() {
                    return Ok(Claim::Wait(rx.clone()));
                }
                // Its sender is gone but the slot stayed: cannot happen
                // (a reservation removes its slot first); healed, not spun on.
                tracing::warn!(name, "a name reservation was left behind; freeing it");
            }
            None => {}
        }
        s.generation += 1;
        let generation = s.generation;
        let (tx, rx) = watch::channel(None);
        s.map
            .insert(name.to_string(), Slot::InFlight { generation, rx });
        Ok(Claim::Mine(Reservation {
            names: self.clone(),
            name: name.to_string(),
            generation,
            tx: Some(tx),
        }))
    }

    /// The id that holds or gets `name`: the holder's, the one an
    /// in-flight creation of it makes, or else the one `work` makes. `work`
    /// gets the reservation and must report on it
    /// ([`Reservation::succeeded`] or [`Reservation::failed`]); it runs in a
    /// task of its own, which goes on if this call is dropped.
    pub(super) async fn run_once<W, F>(self: &Arc<Self>, name: &str, work: W) -> Result<String>
    where
        W: FnOnce(Reservation) -> F,
        F: Future<Output = Result<String>> + Send + 'static,
    {
        let reservation = loop {
            match self.claim(name)? {
                Claim::Taken(id) => {
                    tracing::info!(name, id = %id, "already made; returning it");
                    return Ok(id);
                }
                Claim::Mine(r) => break r,
                Claim::Wait(mut rx) => {
                    tracing::info!(name, "being made by an earlier call; waiting for it");
                    // Ok(()) once an outcome is there; Err once the sender
                    // is gone without one (its slot is gone already).
                    let outcome = rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|o| o.clone());
                    match outcome {
                        Some(Ok(id)) => return Ok(id),
                        Some(Err(e)) => {
                            tracing::info!(name, error = %e, "the earlier call failed; trying again");
                        }
                        None => {
                            tracing::info!(name, "the earlier call was abandoned; trying again");
                        }
                    }
                }
            }
        };
        use tracing::Instrument;
        tokio::spawn(work(reservation).in_current_span())
            .await
            .map_err(|e| Error::Internal(format!("the task making {name:?} failed: {e}")))?
    }
}

impl Reservation {
    /// `id` was made: the name is its, and waiters get it.
    pub(super) fn succeeded(mut self, id: &str) {
        if let Ok(mut s) = self.names.slots.lock()
            && self.ours(&s)
        {
            s.map.insert(self.name.clone(), Slot::Taken(id.to_string()));
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(Ok(id.to_string())));
        }
    }

    /// Nothing was made (and what was, was undone): the name is free, and
    /// waiters try again themselves.
    pub(super) fn failed(mut self, e: &Error) {
        self.free();
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(Err(e.to_string())));
        }
    }

    fn ours(&self, s: &Slots) -> bool {
        matches!(s.map.get(&self.name), Some(Slot::InFlight { generation, .. }) if *generation == self.generation)
    }

    fn free(&self) {
        if let Ok(mut s) = self.names.slots.lock()
            && self.ours(&s)
        {
            s.map.remove(&self.name);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Slot first, then the sender: woken waiters find the name free.
            self.free();
            self.tx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names() -> Arc<Names> {
        Arc::new(Names::default())
    }

    #[tokio::test]
    async fn a_dropped_caller_does_not_stop_the_work_and_a_retry_gets_its_id() {
        let n = names();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let n = n.clone();
            tokio::spawn(async move {
                n.run_once("pod", move |r| async move {
                    let _ = go_rx.await;
                    r.succeeded("id1");
                    Ok("id1".to_string())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort(); // the client's deadline: tonic drops the future
        let _ = first.await;
        // A retry while the work still runs waits for it.
        let retry = {
            let n = n.clone();
            tokio::spawn(async move {
                n.run_once("pod", |_r| async {
                    panic!("a second creation must not run")
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!retry.is_finished());
        go_tx.send(()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), retry)
            .await
            .expect("the retry answers once the work is done")
            .unwrap();
        assert_eq!(got.unwrap(), "id1");
        assert_eq!(n.holder("pod").as_deref(), Some("id1"));
        // And one after it finds the name taken.
        let again = n.run_once("pod", |_r| async { panic!("taken") }).await;
        assert_eq!(again.unwrap(), "id1");
    }

    #[tokio::test]
    async fn a_failure_frees_the_name_and_waiters_try_themselves() {
        let n = names();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let n = n.clone();
            tokio::spawn(async move {
                n.run_once("c", move |r| async move {
                    let _ = go_rx.await;
                    let e = Error::FailedPrecondition("plugin down".into());
                    r.failed(&e);
                    Err(e)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = {
            let n = n.clone();
            tokio::spawn(async move {
                n.run_once("c", |r| async move {
                    r.succeeded("id2");
                    Ok("id2".to_string())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        go_tx.send(()).unwrap();
        assert!(first.await.unwrap().is_err());
        assert_eq!(second.await.unwrap().unwrap(), "id2");
    }

    #[tokio::test]
    async fn a_reservation_dropped_without_an_outcome_frees_the_name_before_waking_waiters() {
        let n = names();
        let r = match n.claim("x").unwrap() {
            Claim::Mine(r) => r,
            _ => panic!("the name is free"),
        };
        let waiter = {
            let n = n.clone();
            tokio::spawn(async move {
                n.run_once("x", |r| async move {
                    r.succeeded("mine");
                    Ok("mine".to_string())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(r); // a panicked or aborted creation
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter must not hang or spin")
            .unwrap();
        assert_eq!(got.unwrap(), "mine");
    }

    #[tokio::test]
    async fn a_panicking_creation_frees_the_name() {
        let n = names();
        let r = n
            .run_once("p", |_r| async { panic!("boom") })
            .await
            .unwrap_err();
        assert!(r.to_string().contains("failed"), "{r}");
        let id = n
            .run_once("p", |r| async move {
                r.succeeded("ok");
                Ok("ok".to_string())
            })
            .await
            .unwrap();
        assert_eq!(id, "ok");
    }

    #[test]
    fn release_frees_only_a_taken_name() {
        let n = names();
        n.take("a".into(), "id".into()).unwrap();
        n.release("a").unwrap();
        assert_eq!(n.holder("a"), None);
    }
}
