//! A target that limits requests in progress rather than requests per second: one more than it
//! allows is refused at once, whatever the rate. Paced by rate alone, relay cuts its rate at each
//! such refusal and settles below what the target can take (76–81 % of a 4 × 100 ms target).
//!
//! The limit is learned from what relay already knows of each answer: how many of its requests
//! were in flight when the refused (or accepted) one was sent. Against a concurrency limit `K`,
//! a request sent beside `n` others is accepted when `n < K` and refused when `n >= K`, so the
//! refusals and the acceptances separate: a refusal beside more requests than recent
//! acceptances usually had (their 95th percentile) is explained by concurrency. Then relay caps its requests in flight at that count
//! (and does not cut its rate: the cap is the limit), and every [`PROBE_AFTER`] acceptances at
//! the cap it allows one more, to find a limit that rose. A refusal that does not separate (sent
//! beside no more requests than acceptances usually are, and below the cap) is a rate signal,
//! and drops the cap. Against a rate limit with fast answers, requests are rarely in flight
//! together, so no cap forms.

/// Acceptances at the cap before one more request in flight is tried.
pub const PROBE_AFTER: u32 = 100;
/// Acceptances remembered for the separation: about two seconds at 50 requests/s.
const WINDOW: usize = 100;

/// What a refusal meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Beyond the target's concurrency: relay caps its requests in flight, not its rate.
    Concurrency,
    /// A rate (or unknown) limit: the rate controller's to handle.
    Rate,
}

#[derive(Debug, Clone, Default)]
pub struct ConcurrencyLimit {
    cap: Option<u32>,
    /// Requests in flight beside each recent acceptance (oldest first).
    accepted: std::collections::VecDeque<u32>,
    at_cap: u32,
}

impl ConcurrencyLimit {
    /// The most requests to have in flight, when a concurrency limit was learned.
    pub fn cap(&self) -> Option<u32> {
        self.cap
    }

    /// Requests in flight beside the acceptances, at the 95th percentile: relay counts a request
    /// until its answer arrives and the target until it answered, so now and then one is
    /// accepted beside one more than the target had.
    fn usually_accepted(&self) -> Option<u32> {
        let mut seen: Vec<u32> = self.accepted.iter().copied().collect();
        seen.sort_unstable();
        let at = (seen.len() * 95 / 100).min(seen.len().checked_sub(1)?);
        Some(seen[at])
    }

    /// A refused request that was sent beside `others` requests in flight.
    pub fn on_refused(&mut self, others: u32) -> Refusal {
        // Under a cap, requests go beside at most `cap - 1` others: a refusal there is the
        // limit itself (lower than learned, or a probe past it).
        let at_cap = self.cap.is_some_and(|cap| others + 1 >= cap);
        let separated = self.usually_accepted().is_none_or(|usual| others > usual);
        if others >= 1 && (at_cap || separated) {
            self.cap = Some(self.cap.map_or(others, |cap| cap.min(others)));
            self.at_cap = 0;
            Refusal::Concurrency
        } else {
            self.cap = None;
            Refusal::Rate
        }
    }

    /// Takes `cap`, what another dispatcher of the fleet learned, when this one knows no lower
    /// cap: a dispatcher that joins starts under the target's limit instead of finding it by
    /// refusals. It probes upward from there as from its own.
    pub fn adopt(&mut self, cap: u32) {
        if cap >= 1 && self.cap.is_none_or(|own| own > cap) {
            self.cap = Some(cap);
            self.at_cap = 0;
        }
    }

    /// An accepted request that was sent beside `others` requests in flight.
    pub fn on_accepted(&mut self, others: u32) {
        if self.accepted.len() == WINDOW {
            self.accepted.pop_front();
        }
        self.accepted.push_back(others);
        let Some(cap) = self.cap else {
            return;
        };
        if others + 1 >= cap {
            self.at_cap += 1;
            if self.at_cap >= PROBE_AFTER {
                self.cap = Some(cap + 1);
                self.at_cap = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target allowing `limit` in progress, answering each request sent beside `others`.
    fn answer(c: &mut ConcurrencyLimit, limit: u32, others: u32) -> Option<Refusal> {
        if others >= limit {
            Some(c.on_refused(others))
        } else {
            c.on_accepted(others);
            None
        }
    }

    #[test]
    fn a_concurrency_limit_is_learned_from_where_refusals_begin() {
        let mut c = ConcurrencyLimit::default();
        for others in [0, 1, 2, 3, 2, 3] {
            assert_eq!(answer(&mut c, 4, others), None);
        }
        assert_eq!(c.cap(), None, "no refusal yet, no cap");
        assert_eq!(answer(&mut c, 4, 4), Some(Refusal::Concurrency));
        assert_eq!(c.cap(), Some(4));
        assert_eq!(answer(&mut c, 4, 5), Some(Refusal::Concurrency));
        assert_eq!(c.cap(), Some(4), "the lowest refusal is the cap");
    }

    #[test]
    fn the_cap_probes_upward_and_follows_a_limit_that_rose() {
        let mut c = ConcurrencyLimit::default();
        answer(&mut c, 4, 2);
        answer(&mut c, 4, 4);
        assert_eq!(c.cap(), Some(4));
        // The target now allows 6. Sending as many as the cap allows, every PROBE_AFTER
        // acceptances try one more: up to 6, then one refused probe per PROBE_AFTER.
        let mut refused = 0;
        for _ in 0..(PROBE_AFTER * 5) {
            let cap = c.cap().unwrap();
            if answer(&mut c, 6, cap - 1).is_some() {
                refused += 1;
            }
        }
        assert!(
            matches!(c.cap(), Some(6 | 7)),
            "at the new limit, or probing one past it: {:?}",
            c.cap()
        );
        assert!((1..=3).contains(&refused), "{refused} probes refused");
        assert_eq!(answer(&mut c, 6, 6), Some(Refusal::Concurrency));
        assert_eq!(c.cap(), Some(6));
    }

    #[test]
    fn a_fleets_cap_is_adopted_unless_a_lower_one_is_known() {
        let mut c = ConcurrencyLimit::default();
        c.adopt(4);
        assert_eq!(c.cap(), Some(4));
        c.adopt(6);
        assert_eq!(c.cap(), Some(4), "a higher cap is not taken");
        c.adopt(2);
        assert_eq!(c.cap(), Some(2));
        c.adopt(0);
        assert_eq!(c.cap(), Some(2), "no cap of nothing");
    }

    #[test]
    fn refusals_that_do_not_separate_are_a_rate_and_drop_the_cap() {
        let mut c = ConcurrencyLimit::default();
        assert_eq!(c.on_refused(0), Refusal::Rate, "alone: never concurrency");
        c.on_accepted(3);
        assert_eq!(c.on_refused(3), Refusal::Rate, "accepted beside as many");
        assert_eq!(c.on_refused(2), Refusal::Rate, "accepted beside more");
        assert_eq!(c.on_refused(5), Refusal::Concurrency);
        assert_eq!(c.cap(), Some(5));
        assert_eq!(
            c.on_refused(4),
            Refusal::Concurrency,
            "at the cap: the limit itself"
        );
        assert_eq!(c.cap(), Some(4));
        assert_eq!(c.on_refused(1), Refusal::Rate);
        assert_eq!(
            c.cap(),
            None,
            "a refusal well below the cap: a rate limit after all"
        );
    }
}
