//! Shared helpers for the benchmark binaries under `src/bin/`. Benchmarks print ratios against a
//! baseline measured in the same run; they never assert on wall-clock time.

pub mod netns;

use std::time::{Duration, Instant};

/// Runs `work` repeatedly for at least `min_time` and returns the best observed throughput in
/// bytes per second, given that one call processes `bytes` bytes. Best-of-N discards runs
/// disturbed by the other core's activity.
pub fn best_throughput(bytes: u64, min_time: Duration, mut work: impl FnMut()) -> f64 {
    work(); // warm caches and lazy CPU feature detection
    let started = Instant::now();
    let mut best = f64::MIN;
    while started.elapsed() < min_time {
        let run = Instant::now();
        work();
        let rate = bytes as f64 / run.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    best
}

/// Formats bytes per second as MB/s (10^6).
pub fn mb_per_sec(rate: f64) -> String {
    format!("{:.0} MB/s", rate / 1e6)
}
