//! The ingest contract's event: parsing and validation of what the source sends, and the
//! enrichment the target expects. Validation names the offending field so clients can fix it.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest accepted event id, in characters (printable ASCII: one byte each).
pub const MAX_ID_CHARS: usize = 256;

/// A validated source event. `payload` is the object exactly as received (key order kept),
/// including fields relay does not know, which are forwarded as-is.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub payload: Map<String, Value>,
}

impl Event {
    /// The payload as compact JSON text, the form the store keeps.
    pub fn payload_json(&self) -> String {
        serde_json::to_string(&self.payload).expect("a map of JSON values always serializes")
    }
}

/// Why a body was refused. `NotJson` maps to 400, `Invalid` to 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    NotJson(String),
    #[error("{message}")]
    Invalid {
        field: Option<&'static str>,
        message: String,
    },
}

impl Rejection {
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Rejection::Invalid {
            field: Some(field),
            message: message.into(),
        }
    }
}

/// Parses and validates one request body against the ingest contract.
pub fn parse_event(body: &[u8]) -> Result<Event, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::NotJson("request body is empty".into()));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::NotJson(format!("request body is not valid JSON: {e}")))?;
    event_from_value(value)
}

/// Validates one already-parsed JSON value against the ingest contract: an item of a batch.
pub fn event_from_value(value: Value) -> Result<Event, Rejection> {
    let Value::Object(payload) = value else {
        return Err(Rejection::Invalid {
            field: None,
            message: format!(
                "expected a JSON object with id, name, body and timestamp, got {}",
                kind(&value)
            ),
        });
    };

    let id = match payload.get("id") {
        None => return Err(Rejection::field("id", "field `id` is required")),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(Rejection::field("id", "field `id` must not be empty"));
        }
        Some(Value::String(s)) => {
            check_id(s)?;
            s.clone()
        }
        Some(other) => {
            return Err(Rejection::field(
                "id",
                format!("field `id` must be a string, got {}", kind(other)),
            ));
        }
    };
    for field in ["name", "body"] {
        match payload.get(field) {
            None => {
                return Err(Rejection::field(
                    field,
                    format!("field `{field}` is required"),
                ));
            }
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(Rejection::field(
                    field,
                    format!("field `{field}` must be a string, got {}", kind(other)),
                ));
            }
        }
    }
    check_timestamp(payload.get("timestamp"))?;
    Ok(Event { id, payload })
}

/// The rules an id must follow to reach the target byte for byte: it is the `Idempotency-Key`
/// HTTP header of every request, and a header value carries only printable ASCII, with no
/// space at either end (a receiver trims them). See [`check_id`].
pub const ID_RULES: &str = "1 to 256 printable ASCII characters (U+0021 to U+007E, and spaces \
     between them)";

/// Whether an id can be delivered exactly as given. The first offending character is named, so
/// a source can fix its ids.
pub fn check_id(id: &str) -> Result<(), Rejection> {
    let refuse = |why: String| {
        Rejection::field(
            "id",
            format!(
                "field `id` {why}: an id must be {ID_RULES}, because the target receives it as \
                 the `Idempotency-Key` header"
            ),
        )
    };
    if id.is_empty() {
        return Err(Rejection::field("id", "field `id` must not be empty"));
    }
    if id.len() > MAX_ID_CHARS {
        return Err(refuse(format!(
            "is {} characters long, more than {MAX_ID_CHARS}",
            id.chars().count()
        )));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| !matches!(c, ' '..='~')) {
        return Err(refuse(format!(
            "holds {c:?} (U+{:04X}) at byte {at}",
            u32::from(c)
        )));
    }
    if id.starts_with(' ') || id.ends_with(' ') {
        return Err(refuse("starts or ends with a space".into()));
    }
    Ok(())
}

fn check_timestamp(value: Option<&Value>) -> Result<(), Rejection> {
    const FIELD: &str = "timestamp";
    match value {
        None => Err(Rejection::field(FIELD, "field `timestamp` is required")),
        Some(Value::String(s)) => OffsetDateTime::parse(s, &Rfc3339).map(drop).map_err(|e| {
            Rejection::field(
                FIELD,
                format!("field `timestamp` is not an RFC 3339 date-time ({e}): {s:?}"),
            )
        }),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(()),
        Some(Value::Number(_)) => Err(Rejection::field(
            FIELD,
            "field `timestamp` must be a non-negative integer of epoch seconds or milliseconds",
        )),
        Some(other) => Err(Rejection::field(
            FIELD,
            format!(
                "field `timestamp` must be an RFC 3339 string or epoch integer, got {}",
                kind(other)
            ),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `brand` every event gets unless the operator names another (`--brand`, `RELAY_BRAND`).
pub const DEFAULT_BRAND: &str = "testBrand";

/// The event as the target receives it: the source's object unchanged plus `brand`.
pub fn enrich(payload: &Map<String, Value>, brand: &str) -> Value {
    let mut enriched = payload.clone();
    enriched.insert("brand".to_owned(), Value::String(brand.to_owned()));
    Value::Object(enriched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"id": "e-1", "name": "order.created", "body": "{}", "timestamp": "2026-11-22T10:00:00Z"})
    }

    fn field_of(body: Value) -> Option<&'static str> {
        match parse_event(body.to_string().as_bytes()) {
            Err(Rejection::Invalid { field, .. }) => field,
            other => panic!("expected a 422 rejection, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_contract_shape_and_keeps_unknown_fields_in_order() {
        let mut body = valid();
        body["zeta"] = json!([1, 2]);
        body["alpha"] = json!({"nested": true});
        let event = parse_event(body.to_string().as_bytes()).unwrap();
        assert_eq!(event.id, "e-1");
        let keys: Vec<_> = event.payload.keys().cloned().collect();
        assert_eq!(keys, ["id", "name", "body", "timestamp", "zeta", "alpha"]);
    }

    #[test]
    fn accepts_epoch_seconds_and_millis() {
        for ts in [json!(1_763_800_000), json!(1_763_800_000_123_u64), json!(0)] {
            let mut body = valid();
            body["timestamp"] = ts;
            assert!(parse_event(body.to_string().as_bytes()).is_ok());
        }
    }

    #[test]
    fn empty_and_malformed_bodies_are_not_json() {
        for raw in ["", "   ", "{", "not json", "{\"id\": }"] {
            assert!(
                matches!(parse_event(raw.as_bytes()), Err(Rejection::NotJson(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn wrong_shapes_name_the_field() {
        let cases: Vec<(Value, Option<&str>)> = vec![
            (json!([1, 2]), None),
            (json!("string"), None),
            (
                json!({"name": "n", "body": "b", "timestamp": 1}),
                Some("id"),
            ),
            (
                json!({"id": "", "name": "n", "body": "b", "timestamp": 1}),
                Some("id"),
            ),
            (
                json!({"id": 7, "name": "n", "body": "b", "timestamp": 1}),
                Some("id"),
            ),
            (
                json!({"id": "x".repeat(257), "name": "n", "body": "b", "timestamp": 1}),
                Some("id"),
            ),
            (
                json!({"id": "a", "body": "b", "timestamp": 1}),
                Some("name"),
            ),
            (
                json!({"id": "a", "name": null, "body": "b", "timestamp": 1}),
                Some("name"),
            ),
            (
                json!({"id": "a", "name": "n", "timestamp": 1}),
                Some("body"),
            ),
            (
                json!({"id": "a", "name": "n", "body": {"x": 1}, "timestamp": 1}),
                Some("body"),
            ),
            (
                json!({"id": "a", "name": "n", "body": "b"}),
                Some("timestamp"),
            ),
            (
                json!({"id": "a", "name": "n", "body": "b", "timestamp": "yesterday"}),
                Some("timestamp"),
            ),
            (
                json!({"id": "a", "name": "n", "body": "b", "timestamp": "2026-13-01T00:00:00Z"}),
                Some("timestamp"),
            ),
            (
                json!({"id": "a", "name": "n", "body": "b", "timestamp": -5}),
                Some("timestamp"),
            ),
            (
                json!({"id": "a", "name": "n", "body": "b", "timestamp": 1.5}),
                Some("timestamp"),
            ),
            (
                json!({"id": "a", "name": "n", "body": "b", "timestamp": true}),
                Some("timestamp"),
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(body.clone()), field, "{body}");
        }
    }

    #[test]
    fn ids_the_idempotency_header_cannot_carry_are_refused_with_the_reason() {
        let printable: String = (' '..='~').filter(|c| *c != ' ').collect();
        for ok in ["e-1", "order 42", "a", printable.as_str(), &"x".repeat(256)] {
            let mut body = valid();
            body["id"] = json!(ok);
            assert!(parse_event(body.to_string().as_bytes()).is_ok(), "{ok:?}");
        }
        for (bad, why) in [
            ("ünï", "'ü' (U+00FC) at byte 0"),
            ("é".repeat(128).as_str(), "'é' (U+00E9)"),
            ("a\u{0}b", "'\\0' (U+0000) at byte 1"),
            ("tab\there", "U+0009"),
            ("line\nfeed", "U+000A"),
            ("del\u{7f}", "U+007F"),
            (" lead", "starts or ends with a space"),
            ("trail ", "starts or ends with a space"),
            ("x".repeat(257).as_str(), "more than 256"),
        ] {
            let mut body = valid();
            body["id"] = json!(bad);
            match parse_event(body.to_string().as_bytes()) {
                Err(Rejection::Invalid {
                    field: Some("id"),
                    message,
                }) => {
                    assert!(message.contains(why), "{bad:?}: {message}");
                    assert!(message.contains("Idempotency-Key"), "{message}");
                }
                other => panic!("{bad:?} must be refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn enrich_adds_brand_and_changes_nothing_else() {
        let event = parse_event(valid().to_string().as_bytes()).unwrap();
        let enriched = enrich(&event.payload, "testBrand");
        let mut expected = valid();
        expected["brand"] = json!("testBrand");
        assert_eq!(enriched, expected);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_events_are_valid(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(event) = parse_event(&raw) {
                prop_assert!(!event.id.is_empty());
                prop_assert!(event.payload.get("name").is_some_and(Value::is_string));
            }
        }

        #[test]
        fn any_valid_event_round_trips_through_its_stored_form(id in "[!-~][ -~]{0,62}[!-~]", name in ".*", body in ".*", ts in 0u64..=4_102_444_800_000) {
            let raw = json!({"id": id, "name": name, "body": body, "timestamp": ts}).to_string();
            let event = parse_event(raw.as_bytes()).unwrap();
            let again = parse_event(event.payload_json().as_bytes()).unwrap();
            prop_assert_eq!(event, again);
        }
    }
}
