//! What the target's answer means. One pure function maps an answer (or a transport failure) to
//! an [`Outcome`]; the dispatcher acts on outcomes and never inspects answers itself.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// GraphQL `errors[].extensions.code` values that mean "slow down", not "this event is bad".
pub const RATE_LIMIT_CODES: [&str; 2] = ["RATE_LIMITED", "THROTTLED"];

/// How much of an answer's body is kept for the attempt history and the DLQ.
pub const EXCERPT_BYTES: usize = 1024;

/// Longest wait a target can ask for, by `Retry-After` or `extensions.retryAfter`: a longer
/// one (or a date further ahead) is read as this, so that no answer parks an event, or the
/// whole dispatcher, for longer. Past dates are read as no wait; negative, `NaN` or unreadable
/// values are ignored. The attempt's reason keeps what the target said.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Largest answer body read from the target. Past it the attempt fails as "answer too large",
/// which is retried: a target's answer to `createEvent` is a few hundred bytes.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

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
    /// The answer's body was larger than [`MAX_ANSWER_BYTES`]; the rest was not read.
    #[error("answer too large: the target sent more than {} KiB", MAX_ANSWER_BYTES / 1024)]
    TooLarge,
    /// The credentials the target asks for could not be had (its OAuth2 token endpoint
    /// failed or refused); worth trying again.
    #[error("no credentials for the target: {0}")]
    Credentials(String),
    /// The request cannot be built from this event, however often it is tried.
    #[error("the event cannot be sent: {0}")]
    Unsendable(String),
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
    /// What the attempt history keeps of it (and metrics name it by).
    pub fn kind(&self) -> crate::delivery::AttemptOutcome {
        use crate::delivery::AttemptOutcome;
        match self {
            Outcome::Delivered => AttemptOutcome::Delivered,
            Outcome::RateLimited { .. } => AttemptOutcome::RateLimited,
            Outcome::Transient { .. } => AttemptOutcome::Transient,
            Outcome::Permanent { .. } => AttemptOutcome::Permanent,
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
        Err(e @ TransportError::Unsendable(_)) => {
            return Outcome::Permanent {
                reason: e.to_string(),
            };
        }
        Err(e) => {
            return Outcome::Transient {
                retry_after: None,
                reason: e.to_string(),
            };
        }
    };
    let status = answer.status;
    let header_wait = answer
        .retry_after
        .as_deref()
        .and_then(|raw| parse_retry_after(raw, SystemTime::now()));
    // What the target asked for, as it said it: part of every reason that honours it.
    let said = answer
        .retry_after
        .as_deref()
        .map(|raw| what_was_said("Retry-After", raw, header_wait))
        .unwrap_or_default();
    let graphql: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let errors = graphql
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(Value::as_array)
        .filter(|errors| !errors.is_empty());

    if status == 429 {
        return Outcome::RateLimited {
            retry_after: header_wait,
            reason: format!("HTTP 429{}{said}", first_message(errors)),
        };
    }
    if let Some(errors) = errors
        && let Some(limited) = errors
            .iter()
            .find(|e| RATE_LIMIT_CODES.contains(&error_code(e)))
    {
        let raw_body_wait = limited.pointer("/extensions/retryAfter");
        let body_wait = raw_body_wait.and_then(Value::as_f64).and_then(bounded_wait);
        let body_said = raw_body_wait
            .map(|raw| what_was_said("extensions.retryAfter", &raw.to_string(), body_wait))
            .unwrap_or_default();
        return Outcome::RateLimited {
            retry_after: header_wait.max(body_wait),
            reason: format!(
                "GraphQL {}: {}{said}{body_said}",
                error_code(limited),
                limited.get("message").and_then(Value::as_str).unwrap_or("")
            ),
        };
    }
    match status {
        408 | 500..=599 => Outcome::Transient {
            retry_after: header_wait,
            reason: format!("HTTP {status}{said}: {}", excerpt(&answer.body)),
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
/// data and no error is delivered. When a non-null field's error nulled the whole `data`, the
/// aliases before the first failing one ran and succeeded ([`stopped_at`]): delivered; those
/// after it did not run, or cannot be shown to have, and are tried again.
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
    let stopped = stopped_at(&graphql, events);
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
                _ if stopped.is_some_and(|first| index < first) => Outcome::Delivered,
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

/// Where a batch stopped when a non-null field's error nulled the whole `data`: the first alias
/// (in the document's order) with an error of its own. Mutation fields run one after another
/// (GraphQL specification, "Normal and Serial Execution"), so every alias before it ran, and
/// ran without error (its error would be listed); servers stop at the failing field, so those
/// after it did not run. `None` when `data` is there (each alias answers for itself) or no
/// error names an alias.
pub fn stopped_at(graphql: &Value, events: usize) -> Option<usize> {
    if graphql.get("data").is_some_and(|d| !d.is_null()) {
        return None;
    }
    let aliases: Vec<String> = (0..events).map(alias).collect();
    graphql
        .get("errors")?
        .as_array()?
        .iter()
        .filter_map(|e| {
            let first = e.pointer("/path/0")?.as_str()?;
            aliases.iter().position(|a| a == first)
        })
        .min()
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

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3), read within
/// [`MAX_RETRY_AFTER`]: a fraction of a second is kept, a date in the past is no wait, and a
/// negative, `NaN` or unreadable value is no answer at all.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return bounded_wait(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// A wait the target gave in seconds, within `[0, MAX_RETRY_AFTER]`; `None` if it is not a
/// wait at all (negative, `NaN`).
fn bounded_wait(secs: f64) -> Option<Duration> {
    (secs >= 0.0).then(|| Duration::from_secs_f64(secs.clamp(0.0, MAX_RETRY_AFTER.as_secs_f64())))
}

/// ` (Retry-After: "99999", read as 3600 s)`: what the target said and how it was read, when
/// it was not taken as given (out of bounds, or not a wait at all); empty otherwise.
fn what_was_said(name: &str, raw: &str, read: Option<Duration>) -> String {
    let raw: String = raw.chars().take(64).collect();
    let trimmed = raw.trim();
    let exact = trimmed.parse::<f64>().ok();
    let is_date = httpdate::parse_http_date(trimmed).is_ok();
    match read {
        None => format!(" ({name}: {raw:?}, ignored)"),
        Some(wait)
            if wait < MAX_RETRY_AFTER
                && (is_date || exact.is_some_and(|e| e == wait.as_secs_f64())) =>
        {
            String::new()
        }
        Some(wait) if is_date && wait.is_zero() => String::new(),
        Some(wait) => format!(" ({name}: {raw:?}, read as {:.0} s)", wait.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{Just, Strategy};
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
                (classify(&result).kind().as_str(), retry_after)
            }
            other => (other.kind().as_str(), None),
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
            BatchOutcome::Each(each) => each.iter().map(|o| o.kind().as_str()).collect(),
            BatchOutcome::Refused(o) => vec!["refused", o.kind().as_str()],
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
    fn when_an_error_nulls_the_data_the_aliases_before_it_ran_and_those_after_did_not() {
        // e2's non-null field failed: e0 and e1 ran before it, e3 never ran.
        let nulled = json!({
            "data": null,
            "errors": [{"message": "refused", "path": ["e2"], "extensions": {"code": "BAD_USER_INPUT"}}]
        });
        assert_eq!(stopped_at(&nulled, 4), Some(2));
        assert_eq!(
            kinds(classify_batch(&answer(200, None, nulled), 4)),
            ["delivered", "delivered", "permanent", "transient"]
        );
        // The first failing alias decides, whatever order the errors are listed in.
        let two = json!({"data": null, "errors": [
            {"message": "x", "path": ["e3"], "extensions": {"code": "BAD_USER_INPUT"}},
            {"message": "y", "path": ["e1"], "extensions": {"code": "BAD_USER_INPUT"}},
        ]});
        assert_eq!(stopped_at(&two, 4), Some(1));
        assert_eq!(
            kinds(classify_batch(&answer(200, None, two), 4)),
            ["delivered", "permanent", "transient", "permanent"]
        );
        // With data, each alias answers for itself: nothing is inferred.
        let with_data = json!({"data": {"e0": null}, "errors": [{"message": "x", "path": ["e1"]}]});
        assert_eq!(stopped_at(&with_data, 2), None);
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
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after(" 12 ", now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        let future = now + Duration::from_secs(30);
        let wait = parse_retry_after(&httpdate::fmt_http_date(future), now).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn a_target_cannot_ask_for_waits_out_of_range() {
        let now = SystemTime::now();
        let hour = Some(MAX_RETRY_AFTER);
        for (raw, read) in [
            ("1.5", Some(Duration::from_millis(1500))),
            ("18446744073709551615", hour),
            ("1e300", hour),
            ("inf", hour),
            ("-5", None),
            ("NaN", None),
            ("", None),
            ("Fri, 31 Dec 9999 23:59:59 GMT", hour),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
        ] {
            assert_eq!(parse_retry_after(raw, now), read, "{raw:?}");
        }
        // The body's own wait is bounded the same way, and the reason keeps what was said.
        let body = json!({"errors": [{"message": "slow", "extensions": {"code": "THROTTLED", "retryAfter": 1e300}}]});
        match classify(&answer(200, Some("99999999"), body)) {
            Outcome::RateLimited {
                retry_after,
                reason,
            } => {
                assert_eq!(retry_after, hour);
                assert!(
                    reason.contains(r#"(Retry-After: "99999999", read as 3600 s)"#)
                        && reason.contains(r#"(extensions.retryAfter: "1e+300", read as 3600 s)"#),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_that_cannot_be_sent_is_permanent_and_a_huge_answer_is_retried() {
        let unsendable = Err(TransportError::Unsendable("bad header".into()));
        assert_eq!(kind_and_wait(unsendable).0, "permanent");
        assert_eq!(kind_and_wait(Err(TransportError::TooLarge)).0, "transient");
    }

    proptest::proptest! {
        #[test]
        fn no_retry_after_or_retry_after_in_a_body_panics_or_exceeds_the_bound(
            header in proptest::option::of(proptest::prop_oneof![
                "[0-9]{1,30}",
                "-?[0-9]{1,5}\\.[0-9]{1,5}",
                "[ -~]{0,40}",
                proptest::num::f64::ANY.prop_map(|f| f.to_string()),
            ]),
            body_wait in proptest::num::f64::ANY,
            status in proptest::prop_oneof![Just(429u16), Just(200u16), 500u16..=599],
        ) {
            let body = json!({"errors": [{"message": "m", "extensions": {"code": "RATE_LIMITED", "retryAfter": body_wait}}]});
            match classify(&answer(status, header.as_deref(), body)) {
                Outcome::RateLimited { retry_after, .. } | Outcome::Transient { retry_after, .. } => {
                    proptest::prop_assert!(retry_after.is_none_or(|w| w <= MAX_RETRY_AFTER));
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }
}
