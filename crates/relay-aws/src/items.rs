//! The events table's items. An event's partition `EVT#<id>` holds `META` (the event as
//! received, written once by the commit) and `STATE` (its delivery state: small, so the many
//! updates of claims and settlements cost one write unit each, whatever the payload's size).

use std::collections::HashMap;
use std::fmt::Display;

use aws_sdk_dynamodb::types::AttributeValue;
use relay_core::ops::{AttemptView, DeadLetterView};
use relay_core::{AttemptRecord, DeliveryStatus, UnixMillis};

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) const META: &str = "META";
pub(crate) const STATE: &str = "STATE";

pub(crate) fn pk(id: &str) -> String {
    format!("EVT#{id}")
}

pub(crate) fn key(id: &str, sk: &str) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk(id))),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

pub(crate) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// An attempt as `STATE.history` keeps it.
pub(crate) fn attempt_item(n_: u32, attempt: &AttemptRecord) -> AttributeValue {
    let mut m = HashMap::from([
        ("n".to_owned(), n(n_)),
        ("trigger".to_owned(), s(attempt.trigger.as_str())),
        ("started_at".to_owned(), n(attempt.started_at)),
        ("duration_ms".to_owned(), n(attempt.duration_ms)),
        ("outcome".to_owned(), s(attempt.outcome.as_str())),
        ("detail".to_owned(), s(attempt.detail.clone())),
    ]);
    if let Some(status) = attempt.http_status {
        m.insert("http_status".into(), n(status));
    }
    AttributeValue::M(m)
}

fn attempt_view(v: &AttributeValue) -> Option<AttemptView> {
    let m = v.as_m().ok()?;
    Some(AttemptView {
        n: get_n(m, "n")?,
        trigger: get_s(m, "trigger")?.to_owned(),
        started_at: get_n(m, "started_at")?,
        duration_ms: get_n(m, "duration_ms")?,
        outcome: relay_core::AttemptOutcome::parse(get_s(m, "outcome")?)?,
        http_status: get_n(m, "http_status"),
        detail: get_s(m, "detail").unwrap_or_default().to_owned(),
    })
}

/// A `STATE` item, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct State {
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
    pub(crate) tries: u32,
    pub(crate) due_at: Option<UnixMillis>,
    pub(crate) lease_until: Option<UnixMillis>,
    pub(crate) next_trigger: String,
    pub(crate) last_error: Option<String>,
    pub(crate) delivered_at: Option<UnixMillis>,
    pub(crate) history: Vec<AttemptView>,
    pub(crate) dead: Option<DeadLetterView>,
}

impl State {
    pub(crate) fn read(id: &str, item: &Item) -> State {
        let status = get_s(item, "status")
            .and_then(DeliveryStatus::parse)
            .unwrap_or(DeliveryStatus::Queued);
        let attempts = get_n(item, "attempts").unwrap_or(0);
        State {
            status,
            attempts,
            tries: get_n(item, "tries").unwrap_or(0),
            due_at: get_n(item, "due_at"),
            lease_until: get_n(item, "lease_until"),
            next_trigger: get_s(item, "next_trigger")
                .unwrap_or("scheduled")
                .to_owned(),
            last_error: get_s(item, "last_error").map(str::to_owned),
            delivered_at: get_n(item, "delivered_at"),
            history: item
                .get("history")
                .and_then(|h| h.as_l().ok())
                .map(|l| l.iter().filter_map(attempt_view).collect())
                .unwrap_or_default(),
            dead: (status == DeliveryStatus::Dead).then(|| DeadLetterView {
                event_id: id.to_owned(),
                reason: get_s(item, "reason").unwrap_or_default().to_owned(),
                attempts,
                last_response: get_s(item, "last_response").map(str::to_owned),
                dead_at: get_n(item, "dead_at").unwrap_or(0),
            }),
        }
    }
}
