//! Egress and ingress bandwidth limits for peer traffic (Kraken's
//! `scheduler.conn.bandwidth`), one token bucket per direction per process.
//!
//! Tokens are KiB, taken in chunks as bytes leave or arrive rather than a whole piece up front,
//! so a limited peer sends smoothly instead of in piece-sized bursts.
//!
//! Each capped direction counts the bytes it passed and the delay it imposed
//! ([`BandwidthLimiter::stats`], and the metrics `kraken_p2p_bandwidth_bytes_total` and
//! `kraken_p2p_bandwidth_wait_seconds` (a histogram: `_sum` is the total delay) by
//! `direction`): the evidence that a configured cap is on the data path, independent of how
//! fast the machine is.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const CELL_BYTES: u64 = 1024;

/// Limits for one process. Cloning shares the buckets.
#[derive(Debug, Clone, Default)]
pub struct BandwidthLimiter {
    egress: Option<Bucket>,
    ingress: Option<Bucket>,
}

/// What one capped direction has done since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectionStats {
    /// The cap, in bits per second.
    pub bits_per_sec: u64,
    /// Bytes that went through the cap.
    pub bytes: u64,
    /// The delay the cap imposed in all: the sum of the waits the token bucket asked for (not
    /// the time slept, which a busy machine stretches).
    pub delay: Duration,
}

/// [`DirectionStats`] of each direction; `None` where it is not capped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandwidthStats {
    pub egress: Option<DirectionStats>,
    pub ingress: Option<DirectionStats>,
}

#[derive(Debug, Clone)]
struct Bucket {
    limiter: Arc<DefaultDirectRateLimiter>,
    burst: u32,
    bits_per_sec: u64,
    direction: &'static str,
    bytes: Arc<AtomicU64>,
    delay_nanos: Arc<AtomicU64>,
}

impl BandwidthLimiter {
    /// No limits.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Limits in bits per second; `None` (or 0) leaves a direction unlimited.
    pub fn new(egress_bits_per_sec: Option<u64>, ingress_bits_per_sec: Option<u64>) -> Self {
        Self {
            egress: egress_bits_per_sec.and_then(|bits| Bucket::new(bits, "egress")),
            ingress: ingress_bits_per_sec.and_then(|bits| Bucket::new(bits, "ingress")),
        }
    }

    /// What each capped direction has passed and imposed so far.
    pub fn stats(&self) -> BandwidthStats {
        BandwidthStats {
            egress: self.egress.as_ref().map(Bucket::stats),
            ingress: self.ingress.as_ref().map(Bucket::stats),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn egress(&self, bytes: usize) {
        if let Some(bucket) = &self.egress {
            bucket.take(bytes as u64).await;
        }
    }

    /// Waits until `bytes` may be received (call as they arrive, before reading more).
    pub async fn ingress(&self, bytes: usize) {
        if let Some(bucket) = &self.ingress {
            bucket.take(bytes as u64).await;
        }
    }
}

impl Bucket {
    fn new(bits_per_sec: u64, direction: &'static str) -> Option<Self> {
        // 0 means "no cap" (the documented meaning), not the 1 KiB/s floor below.
        if bits_per_sec == 0 {
            return None;
        }
        let cells_per_sec = (bits_per_sec / 8 / CELL_BYTES).clamp(1, u64::from(u32::MAX)) as u32;
        let rate = NonZeroU32::new(cells_per_sec)?;
        // A burst of ~50 ms of traffic (at least 64 KiB) keeps large writes moving without
        // letting a sender exceed the rate for long.
        let burst = (cells_per_sec / 20).max(64);
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst)?);
        Some(Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
            burst,
            bits_per_sec,
            direction,
            bytes: Arc::default(),
            delay_nanos: Arc::default(),
        })
    }

    fn stats(&self) -> DirectionStats {
        DirectionStats {
            bits_per_sec: self.bits_per_sec,
            bytes: self.bytes.load(Ordering::Relaxed),
            delay: Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed)),
        }
    }

    async fn take(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("kraken_p2p_bandwidth_bytes_total", "direction" => self.direction)
            .increment(bytes);
        let mut cells = bytes.div_ceil(CELL_BYTES);
        while cells > 0 {
            let n = cells.min(u64::from(self.burst)) as u32;
            cells -= u64::from(n);
            let Some(n) = NonZeroU32::new(n) else { return };
            loop {
                match self.limiter.check_n(n) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
                        self.delay_nanos.fetch_add(nanos, Ordering::Relaxed);
                        metrics::histogram!(
                            "kraken_p2p_bandwidth_wait_seconds",
                            "direction" => self.direction
                        )
                        .record(wait.as_secs_f64());
                        tokio::time::sleep(wait).await;
                    }
                    // n never exceeds the burst; treat the impossible case as "no limit"
                    // rather than spin.
                    Err(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        // On a paused clock any sleep would advance time (and a hang would show as a huge
        // jump), so "no time passed" proves the limiter never waited.
        let started = tokio::time::Instant::now();
        let limiter = BandwidthLimiter::unlimited();
        limiter.egress(usize::MAX / 2).await;
        limiter.ingress(1 << 30).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The same on a limited direction's opposite side.
        let limiter = BandwidthLimiter::new(Some(8_000), None);
        limiter.ingress(1 << 30).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn limited_transfers_take_at_least_size_over_rate() {
        // 8 Mbit/s = 1 MB/s (976 KiB/s): 1 MiB beyond the initial burst needs roughly one
        // second. Only a lower bound is asserted: a limiter can be slowed by a busy machine but
        // never sped up, so this cannot flake.
        let limiter = BandwidthLimiter::new(Some(8_000_000), None);
        let started = Instant::now();
        for _ in 0..16 {
            limiter.egress(64 * 1024).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        // The other direction is unlimited.
        let started = Instant::now();
        limiter.ingress(1 << 30).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
