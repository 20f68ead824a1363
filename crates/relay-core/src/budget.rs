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

/// The budget an answer announces, if any. `headers` are (name, value) pairs; names compare
/// case-insensitively. `now` reads Unix-time resets.
pub fn announced(headers: &[(String, String)], body: &[u8], now: SystemTime) -> Option<Budget> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    structured(header("ratelimit"), header("ratelimit-policy"))
        .or_else(|| {
            split(
                header("ratelimit-remaining"),
                header("ratelimit-reset"),
                header("ratelimit-limit"),
                now,
            )
        })
        .or_else(|| {
            split(
                header("x-ratelimit-remaining"),
                header("x-ratelimit-reset"),
                header("x-ratelimit-limit"),
                now,
            )
        })
        .or_else(|| graphql_cost(body))
}

fn number(raw: &str) -> Option<f64> {
    raw.trim()
        .trim_matches('"')
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
}

/// Separate headers (draft 6, `X-RateLimit-*`).
fn split(
    remaining: Option<&str>,
    reset: Option<&str>,
    limit: Option<&str>,
    now: SystemTime,
) -> Option<Budget> {
    // Some servers list several windows ("10, 10;w=1, 1000;w=3600"): the first is the one in
    // force.
    let first = |raw: &str| {
        raw.split(',')
            .next()
            .and_then(|v| number(v.split(';').next()?))
    };
    let remaining = first(remaining?)?;
    let reset = reset_from(first(reset?)?, now);
    let limit_raw = limit.unwrap_or("");
    let limit = first(limit_raw);
    // The window: the first item's own `w`, or that of the listed policy with the same quota
    // (`10, 10;w=1, 1000;w=3600`: 10 per second).
    let window = limit_raw
        .split(',')
        .filter(|item| number(item.split(';').next().unwrap_or("")) == limit)
        .find_map(|item| param(item, "w"))
        .map(Duration::from_secs_f64);
    Some(Budget::Window {
        remaining,
        reset,
        limit,
        window,
    })
}

/// A reset given as seconds from now, or as a Unix time in seconds or milliseconds.
fn reset_from(value: f64, now: SystemTime) -> Duration {
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
    Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))
}

fn param(item: &str, key: &str) -> Option<f64> {
    item.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == key).then(|| number(v))?
    })
}

/// The combined `RateLimit` field (draft 7 dictionary, or draft 8+ list of policies).
fn structured(ratelimit: Option<&str>, policy: Option<&str>) -> Option<Budget> {
    let ratelimit = ratelimit?;
    // Draft 7: `limit=100, remaining=50, reset=5`.
    let member = |key: &str| {
        ratelimit.split(',').find_map(|m| {
            let (k, v) = m.split_once('=')?;
            (k.trim() == key).then(|| number(v.split(';').next()?))?
        })
    };
    if let (Some(remaining), Some(reset)) = (member("remaining"), member("reset")) {
        let policy = policy.and_then(|p| p.split(',').next());
        return Some(Budget::Window {
            remaining,
            reset: Duration::from_secs_f64(reset.min(86_400.0)),
            limit: member("limit").or_else(|| policy.and_then(|p| number(p.split(';').next()?))),
            window: policy
                .and_then(|p| param(p, "w"))
                .map(Duration::from_secs_f64),
        });
    }
    // Drafts 8+: `"name";r=50;t=30`, one item per policy; the tightest pace wins.
    let policies: Vec<(&str, f64, f64)> = ratelimit
        .split(',')
        .filter_map(|item| {
            let name = item.split(';').next()?.trim();
            Some((name, param(item, "r")?, param(item, "t").unwrap_or(1.0)))
        })
        .collect();
    let (name, remaining, reset) = policies
        .into_iter()
        .min_by(|a, b| (a.1 / a.2.max(0.001)).total_cmp(&(b.1 / b.2.max(0.001))))?;
    let quota = policy.and_then(|p| {
        p.split(',')
            .find(|item| item.split(';').next().map(str::trim) == Some(name))
    });
    Some(Budget::Window {
        remaining,
        reset: Duration::from_secs_f64(reset.min(86_400.0)),
        limit: quota.and_then(|q| param(q, "q")),
        window: quota
            .and_then(|q| param(q, "w"))
            .map(Duration::from_secs_f64),
    })
}

/// GraphQL cost extensions (Shopify's shape): points, turned into requests of this cost.
fn graphql_cost(body: &[u8]) -> Option<Budget> {
    if !body.windows(14).any(|w| w == b"throttleStatus") {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let cost = value.pointer("/extensions/cost")?;
    let status = cost.get("throttleStatus")?;
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let per_request = get(cost, "actualQueryCost")
        .or_else(|| get(cost, "requestedQueryCost"))
        .filter(|c| *c > 0.0)
        .unwrap_or(1.0);
    Some(Budget::Bucket {
        available: get(status, "currentlyAvailable")? / per_request,
        refill: get(status, "restoreRate")? / per_request,
        max: get(status, "maximumAvailable")? / per_request,
    })
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs: f64 = serde::Deserialize::deserialize(d)?;
        Ok(Duration::from_secs_f64(secs.max(0.0)))
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
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
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
