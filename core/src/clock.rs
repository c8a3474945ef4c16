//! Wall-clock time, injectable so time-dependent logic (a store's idle cleanup, a tracker's
//! Redis windows) is tested without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time. Wall-clock rather than monotonic because the times it gives
/// are persisted or shared between processes and must still mean something after a restart.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; clones share the same time. For tests, here and in
/// the crates that embed a store.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.now);
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *lock(&self.now) = to;
    }
}

impl Default for ManualClock {
    /// Starts at a fixed, recent date so persisted times look plausible.
    fn default() -> Self {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *lock(&self.now)
    }
}
