//! The delivery data model and its one decision: given what an attempt's answer meant, is the
//! event delivered, tried again (when), or dead-lettered (why)?
//!
//! Event (immutable) → Delivery (status, attempts, next attempt) → append-only Attempt records.

use std::fmt;
use std::time::Duration;

use crate::UnixMillis;
use crate::backoff::Backoff;
use crate::classify::Outcome;

/// Where a delivery is in its life. `Delivered` and `Dead` are terminal until a redrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt time.
    Queued,
    /// Claimed by a dispatcher until its lease runs out.
    Leased,
    Delivered,
    /// In the dead-letter queue.
    Dead,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 4] = [Self::Queued, Self::Leased, Self::Delivered, Self::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one attempt's answer meant, as the history keeps it: the attempt side of
/// [`Outcome`]. Whether an attempt counts toward `max_attempts` is decided here, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Delivered,
    /// The target asked relay to slow down; the event itself is fine.
    RateLimited,
    Transient,
    Permanent,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 4] = [
        Self::Delivered,
        Self::RateLimited,
        Self::Transient,
        Self::Permanent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RateLimited => "rate_limited",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the attempt spends one of the event's `max_attempts`: every answer but "slow
    /// down", which says nothing about the event.
    pub fn counts_toward_max_attempts(self) -> bool {
        self != Self::RateLimited
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started an attempt: the schedule, or an operator's redrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Scheduled,
    Redrive,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Redrive => "redrive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Scheduled, Self::Redrive]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// A unit of work handed to a dispatcher: one event and its delivery state, under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub event_id: String,
    /// The event as received, compact JSON.
    pub payload: String,
    pub received_at: UnixMillis,
    /// Attempts that count toward the limit (rate-limited answers do not).
    pub attempts: u32,
    /// Every attempt made so far, counted or not.
    pub tries: u32,
    pub trigger: Trigger,
    /// Identifies this lease; settling with a stale lease is refused.
    pub lease: i64,
}

/// One attempt as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub started_at: UnixMillis,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    /// The reason, or an excerpt of the answer.
    pub detail: String,
    pub trigger: Trigger,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    Retry {
        at: UnixMillis,
        /// Whether this attempt counts toward `max_attempts`.
        counted: bool,
    },
    Dead {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub backoff: Backoff,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: 10,
            max_age: Duration::from_secs(24 * 3600),
            backoff: Backoff::default(),
        }
    }
}

/// Decides a delivery's fate. Rate-limited answers never use up attempts (the event is fine, the
/// target is busy), but nothing waits past `max_age`.
pub fn decide(
    outcome: &Outcome,
    claim: &Claim,
    policy: &DeliveryPolicy,
    now: UnixMillis,
    jitter: f64,
) -> Settlement {
    decide_counting(outcome, claim, policy, now, jitter, true)
}

/// [`decide`] for the probe of a target whose circuit is open: its failure is the target's,
/// not the event's, so it does not spend the event's attempts.
pub fn decide_probe(
    outcome: &Outcome,
    claim: &Claim,
    policy: &DeliveryPolicy,
    now: UnixMillis,
    jitter: f64,
) -> Settlement {
    decide_counting(outcome, claim, policy, now, jitter, false)
}

fn decide_counting(
    outcome: &Outcome,
    claim: &Claim,
    policy: &DeliveryPolicy,
    now: UnixMillis,
    jitter: f64,
    may_count: bool,
) -> Settlement {
    let (retry_after, counted) = match outcome {
        Outcome::Delivered => return Settlement::Delivered,
        Outcome::Permanent { reason } => {
            return Settlement::Dead {
                reason: format!("permanent failure: {reason}"),
            };
        }
        Outcome::RateLimited { retry_after, .. } | Outcome::Transient { retry_after, .. } => (
            *retry_after,
            may_count && outcome.kind().counts_toward_max_attempts(),
        ),
    };
    let attempts = claim.attempts + u32::from(counted);
    if attempts >= policy.max_attempts {
        return Settlement::Dead {
            reason: format!(
                "attempts exhausted ({attempts} of {}): {}",
                policy.max_attempts,
                outcome.reason()
            ),
        };
    }
    let backoff_attempts = if counted { attempts } else { claim.tries + 1 };
    let delay = policy
        .backoff
        .next_delay(backoff_attempts, jitter, retry_after);
    let at = now.saturating_add(delay.as_millis() as i64);
    let deadline = claim
        .received_at
        .saturating_add(policy.max_age.as_millis() as i64);
    if at > deadline {
        return Settlement::Dead {
            reason: format!(
                "max age {} exceeded after {attempts} attempts: {}",
                humanize(policy.max_age),
                outcome.reason()
            ),
        };
    }
    Settlement::Retry { at, counted }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        _ => format!("{:?}", d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempts_outcome_reads_back_as_written_and_only_slow_down_is_free() {
        for outcome in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(outcome.as_str()), Some(outcome));
            let json = serde_json::to_value(outcome).unwrap();
            assert_eq!(
                json,
                serde_json::json!(outcome.as_str()),
                "the JSON output's word"
            );
        }
        assert_eq!(AttemptOutcome::parse("refused"), None);
        let free: Vec<_> = AttemptOutcome::ALL
            .into_iter()
            .filter(|o| !o.counts_toward_max_attempts())
            .collect();
        assert_eq!(free, [AttemptOutcome::RateLimited]);
    }

    fn claim(attempts: u32, tries: u32) -> Claim {
        Claim {
            event_id: "e".into(),
            payload: "{}".into(),
            received_at: 0,
            attempts,
            tries,
            trigger: Trigger::Scheduled,
            lease: 1,
        }
    }

    fn transient(wait: Option<u64>) -> Outcome {
        Outcome::Transient {
            retry_after: wait.map(Duration::from_secs),
            reason: "HTTP 503".into(),
        }
    }

    const POLICY: DeliveryPolicy = DeliveryPolicy {
        max_attempts: 3,
        max_age: Duration::from_secs(3600),
        backoff: Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        },
    };

    #[test]
    fn delivered_and_permanent_are_final() {
        assert_eq!(
            decide(&Outcome::Delivered, &claim(0, 0), &POLICY, 10, 0.5),
            Settlement::Delivered
        );
        let permanent = Outcome::Permanent {
            reason: "HTTP 400: bad".into(),
        };
        assert_eq!(
            decide(&permanent, &claim(0, 0), &POLICY, 10, 0.5),
            Settlement::Dead {
                reason: "permanent failure: HTTP 400: bad".into()
            }
        );
    }

    #[test]
    fn a_probes_failure_does_not_spend_the_events_attempts() {
        // Its last attempt: a counted failure would dead-letter it.
        let last = claim(POLICY.max_attempts - 1, 7);
        assert!(matches!(
            decide(&transient(None), &last, &POLICY, 10, 0.5),
            Settlement::Dead { .. }
        ));
        assert!(matches!(
            decide_probe(&transient(None), &last, &POLICY, 10, 0.5),
            Settlement::Retry { counted: false, .. }
        ));
    }

    #[test]
    fn transient_retries_with_backoff_until_attempts_run_out() {
        assert_eq!(
            decide(&transient(None), &claim(0, 0), &POLICY, 10_000, 1.0),
            Settlement::Retry {
                at: 11_000,
                counted: true
            }
        );
        assert_eq!(
            decide(&transient(None), &claim(1, 1), &POLICY, 10_000, 1.0),
            Settlement::Retry {
                at: 12_000,
                counted: true
            }
        );
        let Settlement::Dead { reason } =
            decide(&transient(None), &claim(2, 2), &POLICY, 10_000, 1.0)
        else {
            panic!("third failure must dead-letter")
        };
        assert_eq!(reason, "attempts exhausted (3 of 3): HTTP 503");
    }

    #[test]
    fn retry_after_is_honoured() {
        assert_eq!(
            decide(&transient(Some(30)), &claim(0, 0), &POLICY, 0, 1.0),
            Settlement::Retry {
                at: 30_000,
                counted: true
            }
        );
    }

    #[test]
    fn rate_limits_never_use_up_attempts() {
        let limited = Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
            reason: "HTTP 429".into(),
        };
        assert_eq!(
            decide(&limited, &claim(2, 40), &POLICY, 0, 0.0),
            Settlement::Retry {
                at: 2_000,
                counted: false
            }
        );
    }

    #[test]
    fn nothing_waits_past_max_age() {
        let Settlement::Dead { reason } =
            decide(&transient(Some(10)), &claim(0, 0), &POLICY, 3_595_000, 0.0)
        else {
            panic!("a retry past max age must dead-letter")
        };
        assert!(
            reason.starts_with("max age 1h exceeded after 1 attempts"),
            "{reason}"
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(Trigger::parse("redrive"), Some(Trigger::Redrive));
    }
}
