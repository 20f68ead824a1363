//! Exponential backoff with full jitter, capped. Pure: the caller supplies the randomness, so the
//! math is testable and the dispatcher stays the only place that touches an RNG.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// No delay ever exceeds this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Upper bound of the delay after `attempts` failed attempts (1-based): `base * 2^(n-1)`,
    /// capped.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        self.base
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.cap)
    }

    /// "Full jitter" (AWS Architecture Blog, 2015): uniform in `[0, ceiling]`, which spreads a
    /// thundering herd better than equal or decorrelated jitter. `jitter` is in `[0, 1]`.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        self.ceiling(attempts).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The delay before the next try, never sooner than the target asked for.
    pub fn next_delay(
        &self,
        attempts: u32,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        self.delay(attempts, jitter)
            .max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(10),
    };

    #[test]
    fn ceiling_doubles_then_caps() {
        let ms: Vec<u128> = (1..=9).map(|n| B.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(B.ceiling(0), Duration::from_millis(100));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_spans_zero_to_ceiling() {
        assert_eq!(B.delay(3, 0.0), Duration::ZERO);
        assert_eq!(B.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(B.delay(3, 0.5), Duration::from_millis(200));
        assert_eq!(B.delay(3, 7.0), Duration::from_millis(400));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let asked = Some(Duration::from_secs(30));
        assert_eq!(B.next_delay(2, 1.0, asked), Duration::from_secs(30));
        assert_eq!(
            B.next_delay(9, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_the_delays_takes_the_sum_of_the_ceilings() {
        let start = tokio::time::Instant::now();
        for attempt in 1..=5 {
            tokio::time::sleep(B.delay(attempt, 1.0)).await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(100 + 200 + 400 + 800 + 1600)
        );
    }

    proptest! {
        #[test]
        fn delay_is_bounded(attempts in 0u32..100, jitter in -1.0f64..2.0) {
            let d = B.delay(attempts, jitter);
            prop_assert!(d <= B.cap);
            prop_assert!(d <= B.ceiling(attempts));
        }
    }
}
