//! What holds delivery back besides the target's limits: an operator's pause, and the target's
//! circuit breaker.
//!
//! - **Pause.** `relay pause` records who paused, when and why; while it stands the dispatcher
//!   sends nothing, events keep being accepted, and `status` and `trace` say so. `relay
//!   resume` lifts it, and delivery carries on at the pace already learned.
//! - **Circuit breaker.** A target that is down (no connection, timeouts, 5xx) for
//!   [`OPEN_AFTER`] requests in a row opens the circuit: then one probe is sent every few
//!   seconds ([`FIRST_PROBE`], doubling up to [`LAST_PROBE`]) and nothing else. A probe's
//!   failure does not spend its event's attempts. When a probe is answered, the circuit is
//!   half open: requests in flight are allowed 1, 2, 4, … as answers come back, and after
//!   [`CLOSE_AFTER`] answers it is closed. A run of [`OPEN_AFTER`] failures while half open
//!   opens it again, with a longer wait for the next probe. A flaky target (half its answers
//!   503) rarely fails that many times in a row, so it is retried, not cut off.
//!
//! An answer of any kind (delivered, refused, rate limited) shows the target is up: only
//! transient failures (the transport's, and 5xx) count as down.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::UnixMillis;

/// Requests in a row that failed as a down target fails, before the circuit opens.
pub const OPEN_AFTER: u32 = 8;
/// The first wait for a probe, once the circuit opens; it doubles each failed probe.
pub const FIRST_PROBE: Duration = Duration::from_secs(2);
/// The longest wait between probes.
pub const LAST_PROBE: Duration = Duration::from_secs(10);
/// Answers, while half open, that close the circuit.
pub const CLOSE_AFTER: u32 = 5;

/// An operator's pause: when, who, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub since: UnixMillis,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Pause {
    /// `paused since 2026-12-05T10:00:00Z by ana: target migration`, with `at` to show times.
    pub fn describe(&self, at: impl Fn(UnixMillis) -> String) -> String {
        let mut line = format!("paused since {} by {}", at(self.since), self.by);
        if let Some(reason) = &self.reason {
            line.push_str(": ");
            line.push_str(reason);
        }
        line
    }
}

/// The circuit, as reported: open since when (wall clock), or half open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CircuitView {
    Open {
        since: UnixMillis,
        /// The next probe, in ms from the report.
        probe_in_ms: u64,
    },
    HalfOpen {
        since: UnixMillis,
        allowed: u32,
    },
}

/// May a request go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Yes; `probe` when it is the open circuit's probe.
    Send { probe: bool },
    /// Not before this.
    Wait(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        since: UnixMillis,
        probe_at: Instant,
        interval: Duration,
        probing: bool,
    },
    HalfOpen {
        since: UnixMillis,
        allowed: u32,
        answered: u32,
        /// Failures in a row.
        failures: u32,
        interval: Duration,
    },
}

/// A change of the circuit's state, for the dispatcher to log and share with its fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A run of failures opened it.
    Opened,
    /// A probe was answered.
    HalfOpened,
    /// Answers came back in a row.
    Closed,
    /// A failure while half open opened it again.
    Reopened,
}

/// The target's circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Circuit {
    state: State,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            state: State::Closed { failures: 0 },
        }
    }
}

impl Circuit {
    /// Whether a request may go now, with `at_target` requests already in progress there. Only
    /// looks: [`Self::admit`] lets the request go.
    pub fn gate(&self, now: Instant, at_target: u32) -> Gate {
        match self.state {
            State::Closed { .. } => Gate::Send { probe: false },
            // The probe's answer decides; look again shortly.
            State::Open { probing: true, .. } => Gate::Wait(now + Duration::from_millis(100)),
            State::Open { probe_at, .. } if now >= probe_at => Gate::Send { probe: true },
            State::Open { probe_at, .. } => Gate::Wait(probe_at),
            State::HalfOpen { allowed, .. } if at_target < allowed => Gate::Send { probe: false },
            State::HalfOpen { .. } => Gate::Wait(now + Duration::from_millis(20)),
        }
    }

    /// [`Self::gate`], and when it lets a request go, that request goes: a probe is the only
    /// one until its answer.
    pub fn admit(&mut self, now: Instant, at_target: u32) -> Gate {
        let gate = self.gate(now, at_target);
        if let (Gate::Send { probe: true }, State::Open { probing, .. }) = (gate, &mut self.state) {
            *probing = true;
        }
        gate
    }

    /// A request's result: whether the target answered (`up`), or failed as a down target
    /// does; `probe` when it was the probe. Returns the change of state, if any.
    pub fn on_result(
        &mut self,
        now: Instant,
        wall: UnixMillis,
        probe: bool,
        up: bool,
    ) -> Option<Transition> {
        let was = std::mem::discriminant(&self.state);
        let half_open = matches!(self.state, State::HalfOpen { .. });
        self.state = match (self.state, up) {
            (State::Closed { .. }, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 >= OPEN_AFTER => {
                open(now, wall, FIRST_PROBE)
            }
            (State::Closed { failures }, false) => State::Closed {
                failures: failures + 1,
            },
            // Answers to requests sent before the circuit opened change nothing.
            (open @ State::Open { .. }, _) if !probe => open,
            (State::Open { interval, .. }, true) => State::HalfOpen {
                since: wall,
                allowed: 1,
                answered: 0,
                failures: 0,
                interval,
            },
            (
                State::Open {
                    since, interval, ..
                },
                false,
            ) => State::Open {
                since,
                probe_at: now + next(interval),
                interval: next(interval),
                probing: false,
            },
            (
                State::HalfOpen {
                    since,
                    allowed,
                    answered,
                    interval,
                    ..
                },
                true,
            ) => {
                if answered + 1 >= CLOSE_AFTER {
                    State::Closed { failures: 0 }
                } else {
                    State::HalfOpen {
                        since,
                        allowed: allowed.saturating_mul(2),
                        answered: answered + 1,
                        failures: 0,
                        interval,
                    }
                }
            }
            (
                State::HalfOpen {
                    failures, interval, ..
                },
                false,
            ) if failures + 1 >= OPEN_AFTER => open(now, wall, next(interval)),
            (State::HalfOpen { failures, .. }, false) => {
                let mut state = self.state;
                if let State::HalfOpen { failures: f, .. } = &mut state {
                    *f = failures + 1;
                }
                state
            }
        };
        if std::mem::discriminant(&self.state) == was {
            return None;
        }
        Some(match self.state {
            State::Open { .. } if half_open => Transition::Reopened,
            State::Open { .. } => Transition::Opened,
            State::HalfOpen { .. } => Transition::HalfOpened,
            State::Closed { .. } => Transition::Closed,
        })
    }

    /// Opens the circuit as another dispatcher of the fleet found it, unless it is open here.
    pub fn follow_open(&mut self, now: Instant, since: UnixMillis) {
        if matches!(self.state, State::Closed { .. }) {
            self.state = open(now, since, FIRST_PROBE);
        }
    }

    /// Half-opens the circuit because another dispatcher's probe was answered.
    pub fn follow_answered(&mut self, wall: UnixMillis) {
        if let State::Open { interval, .. } = self.state {
            self.state = State::HalfOpen {
                since: wall,
                allowed: 1,
                answered: 0,
                failures: 0,
                interval,
            };
        }
    }

    /// Open, or half open, as `status` shows it; `None` when closed.
    pub fn view(&self, now: Instant) -> Option<CircuitView> {
        match self.state {
            State::Closed { .. } => None,
            State::Open {
                since, probe_at, ..
            } => Some(CircuitView::Open {
                since,
                probe_in_ms: probe_at.saturating_duration_since(now).as_millis() as u64,
            }),
            State::HalfOpen { since, allowed, .. } => {
                Some(CircuitView::HalfOpen { since, allowed })
            }
        }
    }
}

fn open(now: Instant, wall: UnixMillis, interval: Duration) -> State {
    State::Open {
        since: wall,
        probe_at: now + interval,
        interval,
        probing: false,
    }
}

fn next(interval: Duration) -> Duration {
    (interval * 2).min(LAST_PROBE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(now: Instant) -> Circuit {
        let mut circuit = Circuit::default();
        for _ in 0..OPEN_AFTER {
            assert_eq!(circuit.admit(now, 0), Gate::Send { probe: false });
            circuit.on_result(now, 1, false, false);
        }
        circuit
    }

    #[test]
    fn a_run_of_failures_opens_the_circuit_and_an_answer_breaks_the_run() {
        let now = Instant::now();
        let mut circuit = Circuit::default();
        for _ in 0..OPEN_AFTER - 1 {
            circuit.on_result(now, 1, false, false);
        }
        circuit.on_result(now, 1, false, true);
        for _ in 0..OPEN_AFTER - 1 {
            circuit.on_result(now, 1, false, false);
        }
        assert_eq!(circuit.view(now), None, "the run was broken by an answer");
        circuit.on_result(now, 1, false, false);
        assert_eq!(
            circuit.view(now),
            Some(CircuitView::Open {
                since: 1,
                probe_in_ms: FIRST_PROBE.as_millis() as u64
            })
        );
    }

    #[test]
    fn an_open_circuit_lets_one_probe_through_per_interval_and_the_interval_doubles() {
        let start = Instant::now();
        let mut circuit = opened(start);
        assert_eq!(circuit.gate(start, 0), Gate::Wait(start + FIRST_PROBE));
        let mut at = start + FIRST_PROBE;
        let mut interval = FIRST_PROBE;
        for _ in 0..6 {
            assert_eq!(
                circuit.gate(at, 0),
                Gate::Send { probe: true },
                "looking lets none go"
            );
            assert_eq!(circuit.admit(at, 0), Gate::Send { probe: true });
            assert!(
                matches!(circuit.admit(at, 1), Gate::Wait(_)),
                "one probe at a time"
            );
            // Late answers to requests sent before it opened change nothing.
            circuit.on_result(at, 2, false, true);
            circuit.on_result(at, 2, true, false);
            interval = (interval * 2).min(LAST_PROBE);
            assert_eq!(circuit.gate(at, 0), Gate::Wait(at + interval));
            at += interval;
        }
        assert_eq!(interval, LAST_PROBE);
    }

    #[test]
    fn an_answered_probe_half_opens_and_the_ramp_closes_or_reopens() {
        let start = Instant::now();
        let mut circuit = opened(start);
        let at = start + FIRST_PROBE;
        assert_eq!(circuit.admit(at, 0), Gate::Send { probe: true });
        assert_eq!(
            circuit.on_result(at, 5, true, true),
            Some(Transition::HalfOpened)
        );
        for allowed in [1, 2, 4, 8] {
            assert_eq!(circuit.gate(at, allowed - 1), Gate::Send { probe: false });
            assert!(matches!(circuit.gate(at, allowed), Gate::Wait(_)));
            circuit.on_result(at, 6, false, true);
        }
        assert!(matches!(
            circuit.view(at),
            Some(CircuitView::HalfOpen { allowed: 16, .. })
        ));
        assert_eq!(
            circuit.on_result(at, 6, false, true),
            Some(Transition::Closed)
        );
        assert_eq!(circuit.view(at), None, "closed after {CLOSE_AFTER} answers");

        let mut again = opened(start);
        assert_eq!(again.admit(at, 0), Gate::Send { probe: true });
        again.on_result(at, 5, true, true);
        for _ in 0..OPEN_AFTER - 1 {
            assert_eq!(again.on_result(at, 6, false, false), None, "a flaky answer");
        }
        assert_eq!(
            again.on_result(at, 6, false, false),
            Some(Transition::Reopened)
        );
        assert_eq!(again.gate(at, 0), Gate::Wait(at + FIRST_PROBE * 2));
    }

    #[test]
    fn a_pause_says_since_when_by_whom_and_why() {
        let pause = Pause {
            since: 0,
            by: "ana".into(),
            reason: Some("target migration".into()),
        };
        assert_eq!(
            pause.describe(|t| t.to_string()),
            "paused since 0 by ana: target migration"
        );
        let json = serde_json::to_value(&pause).unwrap();
        assert_eq!(serde_json::from_value::<Pause>(json).unwrap(), pause);
    }
}
