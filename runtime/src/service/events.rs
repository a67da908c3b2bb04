//! Container events (GetContainerEvents).

use super::*;

/// What GetContainerEvents streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub container_id: String,
    pub sandbox_id: String,
    pub kind: EventKind,
    pub at_ns: i64,
    /// Why it exited (ContainerStatus.reason), with Stopped.
    pub reason: String,
}

impl Runtime {
    /// Events of every container, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub(super) fn emit(&self, c: &ContainerRecord, kind: EventKind) {
        let _ = self.inner.events.send(Event {
            container_id: c.id.clone(),
            sandbox_id: c.sandbox_id.clone(),
            kind,
            at_ns: now_ns(),
            reason: if kind == EventKind::Stopped {
                c.reason.clone()
            } else {
                String::new()
            },
        });
    }
}
