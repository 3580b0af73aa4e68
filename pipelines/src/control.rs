//! Stopping a running job from outside: drain (read up to the current end, then finish) or
//! stop (finish now, with what was read).

use std::sync::atomic::{AtomicU8, Ordering};

const RUNNING: u8 = 0;
const DRAIN: u8 = 1;
const STOP: u8 = 2;

#[derive(Debug, Default)]
pub struct JobControl {
    state: AtomicU8,
}

impl JobControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Read what is in the partitions now, then finish: every window closes and is written.
    pub fn drain(&self) {
        let _ = self.state.compare_exchange(RUNNING, DRAIN, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Stop reading now; windows still open are closed with what they have and written.
    pub fn stop(&self) {
        self.state.store(STOP, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.state.load(Ordering::Relaxed) == DRAIN
    }

    pub fn stopping(&self) -> bool {
        self.state.load(Ordering::Relaxed) == STOP
    }
}
