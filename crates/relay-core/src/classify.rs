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

/// What one answer to a batch of aliased mutations (`e0: createEvent(…) e1: …`) means for each
/// event in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// One outcome per alias, in order.
    Each(Vec<Outcome>),
    /// The target refused the request as a whole, in a way that may be one event's fault (a 4xx,
    /// a GraphQL error that names no alias): only sending each event alone tells which.
    Refused(Outcome),
}

/// The alias of the `index`th event of a batch.
pub fn alias(index: usize) -> String {
    format!("e{index}")
}

/// Classifies the answer to a batch of `events` aliased mutations. What concerns the request
/// (transport errors, 429, 408, 5xx, a rate-limit error naming no alias) concerns every event;
/// a GraphQL error whose `path` starts with an alias concerns that event alone; an alias with
/// data and no error is delivered; an alias with neither (a non-null error elsewhere nulled the
/// whole `data`) was not shown to be executed and is tried again.
pub fn classify_batch(result: &Result<Answer, TransportError>, events: usize) -> BatchOutcome {
    let whole = classify(result);
    let refused = |outcome: Outcome| match outcome {
        Outcome::Permanent { .. } if events > 1 => BatchOutcome::Refused(outcome),
        outcome => BatchOutcome::Each(vec![outcome; events]),
    };
    let answer = match result {
        Ok(answer) if (200..=299).contains(&answer.status) && events > 1 => answer,
        _ => return refused(whole),
    };
    let Ok(graphql) = serde_json::from_slice::<Value>(&answer.body) else {
        return refused(whole);
    };
    let errors: &[Value] = graphql
        .get("errors")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let aliases: Vec<String> = (0..events).map(alias).collect();
    let alias_of = |error: &Value| -> Option<usize> {
        let first = error.pointer("/path/0")?.as_str()?;
        aliases.iter().position(|a| a == first)
    };
    // Errors about the request rather than one alias decide for all of them.
    if let Some(general) = errors.iter().find(|e| alias_of(e).is_none()) {
        let one = Answer {
            body: serde_json::json!({ "errors": [general] })
                .to_string()
                .into_bytes(),
            ..answer.clone()
        };
        return refused(classify(&Ok(one)));
    }
    let data = graphql.get("data").filter(|d| !d.is_null());
    let outcomes = aliases
        .iter()
        .enumerate()
        .map(|(index, alias)| {
            let own: Vec<&Value> = errors
                .iter()
                .filter(|e| alias_of(e) == Some(index))
                .collect();
            if !own.is_empty() {
                let one = Answer {
                    body: serde_json::json!({ "data": null, "errors": own })
                        .to_string()
                        .into_bytes(),
                    ..answer.clone()
                };
                return classify(&Ok(one));
            }
            match data.and_then(|d| d.get(alias)) {
                Some(result) if !result.is_null() => Outcome::Delivered,
                _ => Outcome::Transient {
                    retry_after: None,
                    reason: format!(
                        "no result for alias {alias} in the batch's answer: {}",
                        excerpt(&answer.body)
                    ),
                },
            }
        })
        .collect();
    BatchOutcome::Each(outcomes)
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

    fn kinds(outcome: BatchOutcome) -> Vec<&'static str> {
        match outcome {
            BatchOutcome::Each(each) => each.iter().map(Outcome::kind).collect(),
            BatchOutcome::Refused(o) => vec!["refused", o.kind()],
        }
    }

    #[test]
    fn a_batch_is_classified_alias_by_alias() {
        let mixed = json!({
            "data": {"e0": {"id": "a"}, "e1": null, "e2": null, "e3": {"id": "d"}},
            "errors": [
                {"message": "name rejected", "path": ["e1"], "extensions": {"code": "BAD_USER_INPUT"}},
                {"message": "slow down", "path": ["e2"], "extensions": {"code": "RATE_LIMITED", "retryAfter": 3}},
            ]
        });
        let outcome = classify_batch(&answer(200, None, mixed), 4);
        assert_eq!(
            kinds(outcome.clone()),
            ["delivered", "permanent", "rate_limited", "delivered"]
        );
        let BatchOutcome::Each(each) = outcome else {
            unreachable!()
        };
        assert_eq!(
            each[1].reason(),
            "GraphQL error BAD_USER_INPUT: name rejected"
        );
        assert_eq!(
            each[2],
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
                reason: "GraphQL RATE_LIMITED: slow down".into()
            }
        );
    }

    #[test]
    fn what_concerns_the_request_concerns_every_alias() {
        let n = 3;
        assert_eq!(
            kinds(classify_batch(&answer(429, Some("2"), json!({})), n)),
            ["rate_limited"; 3]
        );
        assert_eq!(
            kinds(classify_batch(&answer(503, None, json!({})), n)),
            ["transient"; 3]
        );
        assert_eq!(
            kinds(classify_batch(
                &Err(TransportError::Connect("refused".into())),
                n
            )),
            ["transient"; 3]
        );
        let limited = json!({"data": null, "errors": [{"message": "x", "extensions": {"code": "THROTTLED"}}]});
        assert_eq!(
            kinds(classify_batch(&answer(200, None, limited), n)),
            ["rate_limited"; 3]
        );
        // Refusals that may be one event's fault: each goes alone to find out.
        let invalid = json!({"errors": [{"message": "Variable $e1 is invalid", "extensions": {"code": "BAD_USER_INPUT"}}]});
        assert_eq!(
            kinds(classify_batch(&answer(200, None, invalid), n)),
            ["refused", "permanent"]
        );
        assert_eq!(
            kinds(classify_batch(&answer(400, None, json!({})), n)),
            ["refused", "permanent"]
        );
        // One event alone is never "refused": its answer is its own.
        assert_eq!(
            kinds(classify_batch(&answer(400, None, json!({})), 1)),
            ["permanent"]
        );
    }

    #[test]
    fn an_alias_without_data_or_error_is_tried_again() {
        // A non-null field's error nulls all of `data`: the other aliases' fate is unknown.
        let nulled = json!({"data": null, "errors": [{"message": "bad", "path": ["e0"], "extensions": {"code": "BAD_USER_INPUT"}}]});
        assert_eq!(
            kinds(classify_batch(&answer(200, None, nulled), 2)),
            ["permanent", "transient"]
        );
        let short = json!({"data": {"e0": {"id": "a"}}});
        assert_eq!(
            kinds(classify_batch(&answer(200, None, short), 2)),
            ["delivered", "transient"]
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
