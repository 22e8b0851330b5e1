//! Shared helpers for the shield tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Ready;
use std::sync::{Arc, Mutex};

use backstop_shield::{Completion, Hook, Outcome};

/// A hook that records every completion and finishes without awaiting (an
/// async-path hook: `SYNC` is false).
#[derive(Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Completion>>>,
}

impl Recorder {
    pub fn all(&self) -> Vec<Completion> {
        self.seen.lock().unwrap().clone()
    }

    pub fn outcomes(&self) -> Vec<Outcome> {
        self.all().iter().map(Completion::outcome).collect()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The one completion recorded; fails unless there is exactly one.
    pub fn only(&self) -> Completion {
        let all = self.all();
        assert_eq!(all.len(), 1, "expected exactly one hook, got {all:?}");
        all.into_iter().next().unwrap()
    }
}

impl Hook for Recorder {
    type Future = Ready<()>;

    fn call(&self, done: Completion) -> Ready<()> {
        self.seen.lock().unwrap().push(done);
        std::future::ready(())
    }
}
