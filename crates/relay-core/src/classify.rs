//! What the target's answer means. One pure function maps an answer (or a transport failure) to
//! an [`Outcome`]; the dispatcher acts on outcomes and never inspects answers itself.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// GraphQL `errors[].extensions.code` values that mean "slow down", not "this event is bad".
pub const RATE_LIMIT_CODES: [&str; 2] = ["RATE_LIMITED", "THROTTLED"];

/// How much of an answer's body is kept for the attempt history and the DLQ.
pub const EXCERPT_BYTES: usize = 1024;

/// An HTTP answer from the target, reduced to what classification needs.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The raw `Retry-After` header value, if any.
    pub retry_after: Option<String>,
    /// Headers that announce a rate-limit budget (`RateLimit*`, `X-RateLimit-*`), for
    /// [`crate::budget::announced`].
    pub budget_headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// Whether a header name announces a budget, and so belongs in `budget_headers`.
    pub fn is_budget_header(name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        name.starts_with("ratelimit") || name.starts_with("x-ratelimit")
    }
}

/// A failure before any answer arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("timed out after {0:?} waiting for the target")]
    Timeout(Duration),
    #[error("could not connect to the target: {0}")]
    Connect(String),
    #[error("request to the target failed: {0}")]
    Other(String),
}

/// What an answer means for the event that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The target asked us to slow down; the event itself is fine.
    RateLimited {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Worth trying again later (the target may say when).
    Transient {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// Trying again will not help: dead-letter now.
    Permanent {
        reason: String,
    },
}

impl Outcome {
    /// Short machine-friendly name, used in the attempt history and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Transient { .. } => "transient",
            Outcome::Permanent { .. } => "permanent",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Delivered => "",
            Outcome::RateLimited { reason, .. }
            | Outcome::Transient { reason, .. }
            | Outcome::Permanent { reason } => reason,
        }
    }
}

/// Classifies the result of one delivery request, per the contract's table.
pub fn classify(result: &Result<Answer, TransportError>) -> Outcome {
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => {
            return Outcome::Transient {
                retry_after: None,
                reason: e.to_string(),
            };
        }
    };
    let status = answer.status;
    let header_wait = answer.retry_after.as_deref().and_then(parse_retry_after);
    let graphql: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let errors = graphql
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(Value::as_array)
        .filter(|errors| !errors.is_empty());

    if status == 429 {
        return Outcome::RateLimited {
            retry_after: header_wait,
            reason: format!("HTTP 429{}", first_message(errors)),
        };
    }
    if let Some(errors) = errors
        && let Some(limited) = errors
            .iter()
            .find(|e| RATE_LIMIT_CODES.contains(&error_code(e)))
    {
        let body_wait = limited
            .pointer("/extensions/retryAfter")
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        return Outcome::RateLimited {
            retry_after: header_wait.max(body_wait),
            reason: format!(
                "GraphQL {}: {}",
                error_code(limited),
                limited.get("message").and_then(Value::as_str).unwrap_or("")
            ),
        };
    }
    match status {
        408 | 500..=599 => Outcome::Transient {
            retry_after: header_wait,
            reason: format!("HTTP {status}: {}", excerpt(&answer.body)),
        },
        200..=299 => match (errors, graphql.as_ref().and_then(|v| v.get("data"))) {
            (Some(errors), _) => Outcome::Permanent {
                reason: format!(
                    "GraphQL error {}:{}",
                    error_code(&errors[0]),
                    first_message(Some(errors))
                ),
            },
            (None, Some(data)) if !data.is_null() => Outcome::Delivered,
            _ => Outcome::Permanent {
                reason: format!(
                    "HTTP {status} without GraphQL data: {}",
                    excerpt(&answer.body)
                ),
            },
        },
        _ => Outcome::Permanent {
            reason: format!("HTTP {status}: {}", excerpt(&answer.body)),
        },
    }
}

fn error_code(error: &Value) -> &str {
    error
        .pointer("/extensions/code")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN")
}

fn first_message(errors: Option<&Vec<Value>>) -> String {
    errors
        .and_then(|e| e.first())
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(|m| format!(" {m}"))
        .unwrap_or_default()
}

/// The first [`EXCERPT_BYTES`] of a body as lossy UTF-8, for humans reading a DLQ entry.
pub fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(EXCERPT_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(
        status: u16,
        retry_after: Option<&str>,
        body: Value,
    ) -> Result<Answer, TransportError> {
        Ok(Answer {
            status,
            retry_after: retry_after.map(str::to_owned),
            budget_headers: Vec::new(),
            body: body.to_string().into_bytes(),
        })
    }

    fn kind_and_wait(result: Result<Answer, TransportError>) -> (&'static str, Option<Duration>) {
        match classify(&result) {
            Outcome::RateLimited { retry_after, .. } | Outcome::Transient { retry_after, .. } => {
                (classify(&result).kind(), retry_after)
            }
            other => (other.kind(), None),
        }
    }

    #[test]
    fn the_contract_table() {
        let ok = json!({"data": {"createEvent": {"id": "e"}}});
        let limited = json!({"data": null, "errors": [{"message": "slow down", "extensions": {"code": "RATE_LIMITED", "retryAfter": 2}}]});
        let throttled = json!({"errors": [{"message": "x", "extensions": {"code": "THROTTLED"}}]});
        let bad = json!({"data": null, "errors": [{"message": "name rejected", "extensions": {"code": "BAD_USER_INPUT"}}]});
        let secs = |s| Some(Duration::from_secs(s));
        type Row = (
            Result<Answer, TransportError>,
            (&'static str, Option<Duration>),
        );
        let table: Vec<Row> = vec![
            (answer(200, None, ok.clone()), ("delivered", None)),
            (answer(201, None, ok), ("delivered", None)),
            (answer(429, Some("3"), json!({})), ("rate_limited", secs(3))),
            (answer(429, None, json!("")), ("rate_limited", None)),
            (answer(200, None, limited), ("rate_limited", secs(2))),
            (answer(400, Some("5"), throttled), ("rate_limited", secs(5))),
            (answer(408, None, json!({})), ("transient", None)),
            (answer(500, None, json!({})), ("transient", None)),
            (answer(503, Some("7"), json!({})), ("transient", secs(7))),
            (
                Err(TransportError::Timeout(Duration::from_secs(10))),
                ("transient", None),
            ),
            (
                Err(TransportError::Connect("refused".into())),
                ("transient", None),
            ),
            (answer(400, None, json!({})), ("permanent", None)),
            (answer(401, None, json!({})), ("permanent", None)),
            (answer(404, None, json!({})), ("permanent", None)),
            (answer(200, None, bad), ("permanent", None)),
            (
                answer(200, None, json!({"data": null})),
                ("permanent", None),
            ),
            (answer(200, None, json!("<html>")), ("permanent", None)),
            (answer(302, None, json!({})), ("permanent", None)),
        ];
        for (result, expected) in table {
            let shown = format!("{result:?}");
            assert_eq!(kind_and_wait(result), expected, "{shown}");
        }
    }

    #[test]
    fn permanent_reasons_carry_the_target_message() {
        let bad = json!({"errors": [{"message": "name rejected", "extensions": {"code": "BAD_USER_INPUT"}}]});
        let outcome = classify(&answer(200, None, bad));
        assert_eq!(
            outcome.reason(),
            "GraphQL error BAD_USER_INPUT: name rejected"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("soon"), None);
        let future = SystemTime::now() + Duration::from_secs(30);
        let wait = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
    }
}
