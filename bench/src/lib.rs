//! Shared helpers for the benchmark binaries under `src/bin/`. Benchmarks print ratios against a
//! baseline measured in the same run; they never assert on wall-clock time.

pub mod cpu;
pub mod loopback;
pub mod registry;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Runs a command (`args[0]` with the rest as arguments); fails with its stderr if it fails.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let (program, rest) = args.split_first().context("no command to run")?;
    let output = Command::new(program)
        .args(rest)
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The effective user id, from `id -u` rather than libc: the benchmarks avoid unsafe code.
pub fn uid() -> u32 {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX)
}

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
