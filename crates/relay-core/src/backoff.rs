//! Exponential backoff with full jitter, capped. The math is pure (the caller supplies the
//! randomness); [`retry`] is the one loop every "try again later" in relay uses, on tokio's
//! clock, so its tests run on paused time.

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

/// Runs `call` until it succeeds, fails for good, or `tries` calls are spent. A failure that
/// `worth_retrying` says may pass is tried again after [`Backoff::delay`] (jitter from
/// `fastrand`); `on_retry` hears of each, with the attempt that failed and the wait.
pub async fn retry<T, E, F, Fut>(
    backoff: Backoff,
    tries: u32,
    worth_retrying: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(u32, &E, Duration),
    mut call: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < tries && worth_retrying(&e) => {
                let wait = backoff.delay(attempt, fastrand::f64());
                on_retry(attempt, &e, wait);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            done => return done,
        }
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

    #[tokio::test(start_paused = true)]
    async fn retry_tries_again_what_may_pass_and_gives_up_on_what_will_not() {
        let calls = std::cell::Cell::new(0);
        let mut waits = Vec::new();
        let done: Result<u32, &str> = retry(
            B,
            5,
            |e| *e == "busy",
            |n, _, wait| waits.push((n, wait)),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 3 { Err("busy") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(done, Ok(3), "the third call worked");
        assert_eq!(waits.len(), 2);
        assert!(waits.iter().all(|(n, w)| *w <= B.ceiling(*n)), "{waits:?}");

        calls.set(0);
        let refused: Result<(), &str> = retry(
            B,
            5,
            |e| *e == "busy",
            |_, _, _| {},
            || {
                calls.set(calls.get() + 1);
                async { Err("no") }
            },
        )
        .await;
        assert_eq!(
            (refused, calls.get()),
            (Err("no"), 1),
            "a refusal is not tried again"
        );

        calls.set(0);
        let spent: Result<(), &str> = retry(
            B,
            4,
            |_| true,
            |_, _, _| {},
            || {
                calls.set(calls.get() + 1);
                async { Err("busy") }
            },
        )
        .await;
        assert_eq!(
            (spent, calls.get()),
            (Err("busy"), 4),
            "no more than the tries"
        );
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
    async fn retry_waits_between_calls_what_it_reports_and_no_more_than_the_ceilings() {
        let start = tokio::time::Instant::now();
        let calls = std::cell::RefCell::new(Vec::new());
        let mut reported = Vec::new();
        let spent: Result<(), &str> = retry(
            B,
            6,
            |_| true,
            |n, _, wait| reported.push((n, wait)),
            || {
                calls.borrow_mut().push(start.elapsed());
                async { Err("busy") }
            },
        )
        .await;
        assert_eq!(spent, Err("busy"));
        let calls = calls.into_inner();
        assert_eq!(calls.len(), 6);
        assert_eq!(reported.len(), 5, "no wait after the last call");
        for (i, (n, wait)) in reported.iter().enumerate() {
            assert_eq!(*n, i as u32 + 1, "the attempt that failed");
            // tokio's timers tick in whole milliseconds: a sleep ends within one of its wait.
            let gap = calls[i + 1] - calls[i];
            assert!(
                gap >= *wait && gap < *wait + Duration::from_millis(1),
                "call {} came {gap:?} after the previous, not the reported {wait:?}",
                i + 2
            );
            assert!(
                *wait <= B.ceiling(*n),
                "{wait:?} over attempt {n}'s ceiling"
            );
        }
        assert!(
            reported.iter().any(|(n, w)| *w != B.ceiling(*n)),
            "the waits are jittered, not the ceilings: {reported:?}"
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
