//! Retry delays: exponential growth up to a cap, with optional jitter.

use std::time::Duration;

/// An exponential backoff policy: `initial`, then × `factor` per attempt, never above `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Growth per attempt; values below 1 (or not finite) mean a constant delay.
    pub factor: f64,
}

impl Backoff {
    /// Doubling from `initial` up to `max`.
    pub fn doubling(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            factor: 2.0,
        }
    }

    /// The delay before retry number `attempt` (1 for the first retry): `initial ×
    /// factor^(attempt-1)`, capped at `max`. Saturates instead of overflowing.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let scaled = self.initial.as_secs_f64() * factor.powi(exponent);
        if !scaled.is_finite() || scaled >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::from_secs_f64(scaled).min(self.max)
    }

    /// [`delay`](Self::delay) spread by ±20 % (`unit` uniform in [0, 1)), so that clients that
    /// failed together during an outage do not all come back at the same instant.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let spread = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
        self.delay(attempt).mul_f64(spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (1..=6).map(|a| backoff.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
        let flat = Backoff {
            factor: f64::NAN,
            ..backoff
        };
        assert_eq!(flat.delay(5), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let backoff = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff.jittered(1, 0.0), Duration::from_millis(800));
        assert_eq!(backoff.jittered(1, 1.0), Duration::from_millis(1200));
        assert_eq!(backoff.jittered(1, 7.0), Duration::from_millis(1200));
    }
}
