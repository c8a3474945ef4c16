//! Egress and ingress bandwidth limits for peer traffic (Kraken's
//! `scheduler.conn.bandwidth`), one token bucket per direction per process.
//!
//! Tokens are KiB, taken in chunks as bytes leave or arrive rather than a whole piece up front,
//! so a limited peer sends smoothly instead of in piece-sized bursts.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const CELL_BYTES: u64 = 1024;

/// Limits for one process. Cloning shares the buckets.
#[derive(Debug, Clone, Default)]
pub struct BandwidthLimiter {
    egress: Option<Bucket>,
    ingress: Option<Bucket>,
}

#[derive(Debug, Clone)]
struct Bucket {
    limiter: Arc<DefaultDirectRateLimiter>,
    burst: u32,
}

impl BandwidthLimiter {
    /// No limits.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Limits in bits per second; `None` (or 0) leaves a direction unlimited.
    pub fn new(egress_bits_per_sec: Option<u64>, ingress_bits_per_sec: Option<u64>) -> Self {
        Self {
            egress: egress_bits_per_sec.and_then(Bucket::new),
            ingress: ingress_bits_per_sec.and_then(Bucket::new),
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
    fn new(bits_per_sec: u64) -> Option<Self> {
        let cells_per_sec = (bits_per_sec / 8 / CELL_BYTES).clamp(1, u64::from(u32::MAX)) as u32;
        let rate = NonZeroU32::new(cells_per_sec)?;
        // A burst of ~50 ms of traffic (at least 64 KiB) keeps large writes moving without
        // letting a sender exceed the rate for long.
        let burst = (cells_per_sec / 20).max(64);
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst)?);
        Some(Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
            burst,
        })
    }

    async fn take(&self, bytes: u64) {
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
