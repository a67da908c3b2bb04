//! [`Undo`]: steps to take back, run in reverse unless disarmed.

type UndoStep = (&'static str, Box<dyn FnOnce() + Send>);

/// Steps to undo, run in reverse unless disarmed.
#[derive(Default)]
pub struct Undo {
    steps: Vec<UndoStep>,
}

impl Undo {
    pub fn push(&mut self, what: &'static str, f: impl FnOnce() + Send + 'static) {
        self.steps.push((what, Box::new(f)));
    }

    pub fn disarm(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            tracing::debug!(step = what, "undoing");
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn undo_runs_in_reverse_unless_disarmed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut u = Undo::default();
            for i in 0..3 {
                let l = log.clone();
                u.push("step", move || l.lock().unwrap().push(i));
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut u = Undo::default();
        let l = log.clone();
        u.push("step", move || l.lock().unwrap().push(9));
        u.disarm();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
