//! What a target announces about its remaining budget, read from any answer (2xx or not), so
//! the relay can pace below the limit instead of finding it by being refused:
//!
//! - `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft 6; reset in
//!   seconds);
//! - `RateLimit: limit=100, remaining=50, reset=5` with `RateLimit-Policy: 100;w=60` (draft 7);
//! - `RateLimit: "default";r=50;t=30` with `RateLimit-Policy: "default";q=100;w=60` (drafts 8
//!   and later; several policies: the tightest wins);
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (the reset as seconds
//!   from now, or as a Unix time in seconds or milliseconds);
//! - GraphQL cost (`extensions.cost.throttleStatus`: `currentlyAvailable`, `restoreRate`,
//!   `maximumAvailable`, with `requestedQueryCost` or `actualQueryCost`), a leaky bucket of
//!   points rather than requests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A budget, in requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Budget {
    /// `remaining` more requests until the window resets `reset` from now; then `limit` per
    /// `window`, when the target says.
    Window {
        remaining: f64,
        #[serde(with = "secs")]
        reset: Duration,
        limit: Option<f64>,
        #[serde(with = "opt_secs")]
        window: Option<Duration>,
    },
    /// A bucket holding `available` requests now, refilled at `refill` per second up to `max`.
    Bucket {
        available: f64,
        refill: f64,
        max: f64,
    },
}

impl Budget {
    /// The rate this budget allows over the long run, requests/s, if it says.
    pub fn sustained(&self) -> Option<f64> {
        match *self {
            Budget::Window { limit, window, .. } => {
                Some(limit? / window.filter(|w| !w.is_zero())?.as_secs_f64())
            }
            Budget::Bucket { refill, .. } => Some(refill),
        }
    }
}

/// What the target said, in its own terms.
impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Budget::Window {
                remaining,
                reset,
                limit,
                window,
            } => {
                let per = match (limit, window) {
                    (Some(limit), Some(window)) => {
                        format!(" ({limit:.0} per {})", humantime::format_duration(window))
                    }
                    (Some(limit), None) => format!(" (of {limit:.0})"),
                    _ => String::new(),
                };
                write!(
                    f,
                    "{remaining:.0} requests left{per}, resets in {:.1} s",
                    reset.as_secs_f64()
                )
            }
            Budget::Bucket {
                available,
                refill,
                max,
            } => write!(
                f,
                "{available:.0} of {max:.0} requests available, refilled at {refill:.1}/s (GraphQL cost)"
            ),
        }
    }
}

/// Bounds on what a target can announce. A value past them is read as the bound (and the
/// attempt says what the target said); a value that is not a number, or negative, is ignored.
pub mod bounds {
    /// Longest reset: a later one is read as this, and the next answer says more.
    pub const MAX_RESET_SECS: f64 = 3600.0;
    /// Shortest and longest window a policy can give (`w=`); a shorter one is ignored.
    pub const MIN_WINDOW_SECS: f64 = 0.001;
    pub const MAX_WINDOW_SECS: f64 = 86_400.0;
    /// Most requests (remaining, limit, available, refilled per second) a budget can hold.
    pub const MAX_REQUESTS: f64 = 1_000_000.0;
}

/// What an answer announces: the budget, within [`bounds`], and a note for each value that
/// was out of range, with what the target said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub budget: Option<Budget>,
    pub notes: Vec<String>,
}

impl Reading {
    /// The notes as one clause for an attempt's detail, empty when there are none.
    pub fn said(&self) -> String {
        if self.notes.is_empty() {
            return String::new();
        }
        format!(" (the target announced {})", self.notes.join("; "))
    }
}

/// The budget an answer announces, if any. `headers` are (name, value) pairs; names compare
/// case-insensitively. `now` reads Unix-time resets.
pub fn announced(headers: &[(String, String)], body: &[u8], now: SystemTime) -> Option<Budget> {
    read(headers, body, now).budget
}

/// [`announced`], with notes on the values read out of range.
pub fn read(headers: &[(String, String)], body: &[u8], now: SystemTime) -> Reading {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let mut r = Reader::default();
    let budget = r
        .structured(header("ratelimit"), header("ratelimit-policy"))
        .or_else(|| {
            r.split(
                "RateLimit",
                header("ratelimit-remaining"),
                header("ratelimit-reset"),
                header("ratelimit-limit"),
                now,
            )
        })
        .or_else(|| {
            r.split(
                "X-RateLimit",
                header("x-ratelimit-remaining"),
                header("x-ratelimit-reset"),
                header("x-ratelimit-limit"),
                now,
            )
        })
        .or_else(|| r.graphql_cost(body));
    Reading {
        budget,
        notes: if budget.is_some() {
            r.notes
        } else {
            Vec::new()
        },
    }
}

/// A non-negative finite number, or nothing.
fn number(raw: &str) -> Option<f64> {
    raw.trim()
        .trim_matches('"')
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
}

fn param_raw<'a>(item: &'a str, key: &str) -> Option<&'a str> {
    item.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == key).then_some(v)
    })
}

/// Reads values within [`bounds`], noting what it had to change.
#[derive(Debug, Default)]
struct Reader {
    notes: Vec<String>,
}

impl Reader {
    /// `raw` as a number within `[min, max]`: above is read as `max`, below `min` or not a
    /// number at all is ignored. Either way a note says what was said.
    fn bounded(&mut self, name: &str, raw: &str, min: f64, max: f64) -> Option<f64> {
        let trimmed = raw.trim().trim_matches('"');
        let value = trimmed.parse::<f64>().ok().filter(|v| !v.is_nan());
        let shown: String = trimmed.chars().take(40).collect();
        match value {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) if v > max => {
                self.notes.push(format!("{name} {shown:?}, read as {max}"));
                Some(max)
            }
            _ => {
                self.notes.push(format!("{name} {shown:?}, ignored"));
                None
            }
        }
    }

    fn requests(&mut self, name: &str, raw: &str) -> Option<f64> {
        self.bounded(name, raw, 0.0, bounds::MAX_REQUESTS)
    }

    fn window(&mut self, name: &str, item: &str, key: &str) -> Option<Duration> {
        let raw = param_raw(item, key)?;
        self.bounded(name, raw, bounds::MIN_WINDOW_SECS, bounds::MAX_WINDOW_SECS)
            .map(Duration::from_secs_f64)
    }

    /// Separate headers (draft 6, `X-RateLimit-*`).
    fn split(
        &mut self,
        prefix: &str,
        remaining: Option<&str>,
        reset: Option<&str>,
        limit: Option<&str>,
        now: SystemTime,
    ) -> Option<Budget> {
        // Some servers list several windows ("10, 10;w=1, 1000;w=3600"): the first is the one
        // in force.
        fn first(raw: &str) -> Option<&str> {
            raw.split(',').next().and_then(|v| v.split(';').next())
        }
        let remaining = self.requests(&format!("{prefix}-Remaining"), first(remaining?)?)?;
        let reset = self.reset(&format!("{prefix}-Reset"), first(reset?)?, now)?;
        let limit_raw = limit.unwrap_or("");
        let limit = first(limit_raw)
            .filter(|l| !l.trim().is_empty())
            .and_then(|l| self.requests(&format!("{prefix}-Limit"), l));
        // The window: the first item's own `w`, or that of the listed policy with the same
        // quota (`10, 10;w=1, 1000;w=3600`: 10 per second).
        let window = limit_raw
            .split(',')
            .find(|item| {
                let quota = number(item.split(';').next().unwrap_or(""))
                    .map(|q| q.min(bounds::MAX_REQUESTS));
                quota.is_some() && quota == limit && param_raw(item, "w").is_some()
            })
            .and_then(|item| self.window(&format!("{prefix}-Limit w"), item, "w"));
        Some(Budget::Window {
            remaining,
            reset,
            limit,
            window,
        })
    }

    /// A reset given as seconds from now, or as a Unix time in seconds or milliseconds, within
    /// `[0, MAX_RESET_SECS]` (a past time is now).
    fn reset(&mut self, name: &str, raw: &str, now: SystemTime) -> Option<Duration> {
        let value = self.bounded(name, raw, 0.0, f64::MAX)?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let secs = if value > 1e12 {
            value / 1000.0 - now
        } else if value > 1e9 {
            value - now
        } else {
            value
        };
        if secs > bounds::MAX_RESET_SECS {
            let shown: String = raw.trim().chars().take(40).collect();
            self.notes.push(format!(
                "{name} {shown:?}, read as {} s from now",
                bounds::MAX_RESET_SECS
            ));
        }
        Some(Duration::from_secs_f64(
            secs.clamp(0.0, bounds::MAX_RESET_SECS),
        ))
    }

    /// The combined `RateLimit` field (draft 7 dictionary, or draft 8+ list of policies).
    fn structured(&mut self, ratelimit: Option<&str>, policy: Option<&str>) -> Option<Budget> {
        let ratelimit = ratelimit?;
        // Draft 7: `limit=100, remaining=50, reset=5`.
        let member = |key: &str| {
            ratelimit.split(',').find_map(|m| {
                let (k, v) = m.split_once('=')?;
                (k.trim() == key).then(|| v.split(';').next())?
            })
        };
        if let (Some(remaining), Some(reset)) = (member("remaining"), member("reset")) {
            let remaining = self.requests("RateLimit remaining", remaining)?;
            let reset = self.bounded("RateLimit reset", reset, 0.0, bounds::MAX_RESET_SECS)?;
            let policy = policy.and_then(|p| p.split(',').next());
            let limit = match member("limit") {
                Some(limit) => self.requests("RateLimit limit", limit),
                None => policy
                    .and_then(|p| p.split(';').next())
                    .and_then(|q| self.requests("RateLimit-Policy", q)),
            };
            return Some(Budget::Window {
                remaining,
                reset: Duration::from_secs_f64(reset),
                limit,
                window: policy.and_then(|p| self.window("RateLimit-Policy w", p, "w")),
            });
        }
        // Drafts 8+: `"name";r=50;t=30`, one item per policy; the tightest pace wins.
        let mut policies: Vec<(&str, f64, f64)> = Vec::new();
        for item in ratelimit.split(',') {
            let Some(name) = item.split(';').next().map(str::trim) else {
                continue;
            };
            let Some(remaining) =
                param_raw(item, "r").and_then(|r| self.requests("RateLimit r", r))
            else {
                continue;
            };
            let reset = param_raw(item, "t")
                .and_then(|t| self.bounded("RateLimit t", t, 0.0, bounds::MAX_RESET_SECS))
                .unwrap_or(1.0);
            policies.push((name, remaining, reset));
        }
        let (name, remaining, reset) = policies
            .into_iter()
            .min_by(|a, b| (a.1 / a.2.max(0.001)).total_cmp(&(b.1 / b.2.max(0.001))))?;
        let quota = policy.and_then(|p| {
            p.split(',')
                .find(|item| item.split(';').next().map(str::trim) == Some(name))
        });
        Some(Budget::Window {
            remaining,
            reset: Duration::from_secs_f64(reset),
            limit: quota
                .and_then(|q| param_raw(q, "q"))
                .and_then(|q| self.requests("RateLimit-Policy q", q)),
            window: quota.and_then(|q| self.window("RateLimit-Policy w", q, "w")),
        })
    }

    /// GraphQL cost extensions (Shopify's shape): points, turned into requests of this cost.
    fn graphql_cost(&mut self, body: &[u8]) -> Option<Budget> {
        if !body.windows(14).any(|w| w == b"throttleStatus") {
            return None;
        }
        let value: Value = serde_json::from_slice(body).ok()?;
        let cost = value.pointer("/extensions/cost")?;
        let status = cost.get("throttleStatus")?;
        let mut points = |v: &Value, k: &str| -> Option<f64> {
            let raw = v.get(k)?;
            self.bounded(&format!("cost {k}"), &raw.to_string(), 0.0, 1e12)
        };
        let per_request = points(cost, "actualQueryCost")
            .or_else(|| points(cost, "requestedQueryCost"))
            .filter(|c| *c > 0.0)
            .unwrap_or(1.0);
        let available = points(status, "currentlyAvailable")?;
        let refill = points(status, "restoreRate")?;
        let max = points(status, "maximumAvailable")?;
        let requests = |p: f64| (p / per_request).min(bounds::MAX_REQUESTS);
        Some(Budget::Bucket {
            available: requests(available),
            refill: requests(refill),
            max: requests(max),
        })
    }
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs: f64 = serde::Deserialize::deserialize(d)?;
        Ok(Duration::from_secs_f64(secs.clamp(0.0, 1e9)))
    }
}

mod opt_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let secs: Option<f64> = serde::Deserialize::deserialize(d)?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn window(remaining: f64, reset: f64, limit: Option<f64>, window: Option<f64>) -> Budget {
        Budget::Window {
            remaining,
            reset: Duration::from_secs_f64(reset),
            limit,
            window: window.map(Duration::from_secs_f64),
        }
    }

    #[test]
    fn every_syntax_reads_the_same_budget() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        type Row = (Vec<(String, String)>, &'static str, Option<Budget>);
        let table: Vec<Row> = vec![
            (
                headers(&[
                    ("RateLimit-Limit", "100"),
                    ("RateLimit-Remaining", "42"),
                    ("RateLimit-Reset", "7"),
                ]),
                "",
                Some(window(42.0, 7.0, Some(100.0), None)),
            ),
            (
                headers(&[
                    ("ratelimit-limit", "10, 10;w=1, 1000;w=3600"),
                    ("ratelimit-remaining", "3"),
                    ("ratelimit-reset", "1"),
                ]),
                "",
                Some(window(3.0, 1.0, Some(10.0), Some(1.0))),
            ),
            (
                headers(&[
                    ("RateLimit", "limit=100, remaining=50, reset=5"),
                    ("RateLimit-Policy", "100;w=60"),
                ]),
                "",
                Some(window(50.0, 5.0, Some(100.0), Some(60.0))),
            ),
            (
                headers(&[
                    ("RateLimit", "\"burst\";r=9;t=1, \"daily\";r=900;t=3600"),
                    (
                        "RateLimit-Policy",
                        "\"burst\";q=10;w=1, \"daily\";q=1000;w=86400",
                    ),
                ]),
                "",
                // 900 over the next hour (0.25/s) is tighter than 9 in the next second.
                Some(window(900.0, 3600.0, Some(1000.0), Some(86_400.0))),
            ),
            (
                headers(&[("X-RateLimit-Remaining", "12"), ("X-RateLimit-Reset", "2")]),
                "",
                Some(window(12.0, 2.0, None, None)),
            ),
            (
                headers(&[
                    ("X-RateLimit-Remaining", "12"),
                    ("X-RateLimit-Reset", "1800000003"),
                    ("X-RateLimit-Limit", "60"),
                ]),
                "",
                Some(window(12.0, 3.0, Some(60.0), None)),
            ),
            (
                headers(&[
                    ("X-RateLimit-Remaining", "12"),
                    ("X-RateLimit-Reset", "1800000000500"),
                ]),
                "",
                Some(window(12.0, 0.5, None, None)),
            ),
            (
                vec![],
                r#"{"data":{},"extensions":{"cost":{"requestedQueryCost":10,"actualQueryCost":5,
                   "throttleStatus":{"maximumAvailable":1000.0,"currentlyAvailable":500,"restoreRate":50.0}}}}"#,
                Some(Budget::Bucket {
                    available: 100.0,
                    refill: 10.0,
                    max: 200.0,
                }),
            ),
            (headers(&[("Retry-After", "1")]), "{}", None),
            (headers(&[("RateLimit-Remaining", "soon")]), "", None),
        ];
        for (headers, body, expected) in table {
            assert_eq!(
                announced(&headers, body.as_bytes(), now),
                expected,
                "{headers:?} {body}"
            );
        }
    }

    #[test]
    fn the_sustained_rate_is_what_the_target_says_it_allows() {
        assert_eq!(
            window(3.0, 1.0, Some(100.0), Some(60.0)).sustained(),
            Some(100.0 / 60.0)
        );
        assert_eq!(window(3.0, 1.0, Some(100.0), None).sustained(), None);
        let bucket = Budget::Bucket {
            available: 1.0,
            refill: 5.0,
            max: 10.0,
        };
        assert_eq!(bucket.sustained(), Some(5.0));
    }
}
