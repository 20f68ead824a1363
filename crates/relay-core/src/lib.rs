//! relay's domain logic, free of I/O: what an event is, how it is enriched, what the target's
//! answer means, when to try again, how fast to send, and the ports the adapters implement.
//!
//! Every adapter (the embedded store, AWS) and every driver (ingest, dispatcher, CLI) speaks in
//! these types, so the rules live in exactly one place.

pub mod backoff;
pub mod budget;
pub mod classify;
pub mod concurrency;
#[cfg(feature = "contract")]
pub mod contract;
pub mod delivery;
pub mod event;
pub mod hold;
pub mod ops;
pub mod ports;
pub mod rate;
pub mod settings;
pub mod signing;
pub mod telemetry;

pub use classify::{Answer, BatchOutcome, Outcome, TransportError, classify, classify_batch};
pub use delivery::{
    AttemptOutcome, AttemptRecord, Claim, DeliveryPolicy, DeliveryStatus, Settlement, Trigger,
    decide, decide_probe,
};
pub use event::{DEFAULT_BRAND, Event, Rejection, enrich, event_from_value, parse_event};
pub use ports::{AcceptOutcome, Ingest, StoreError, WorkQueue};

/// Milliseconds since the Unix epoch: the one timestamp representation relay stores.
pub type UnixMillis = i64;

/// Current wall-clock time in Unix milliseconds.
pub fn now_millis() -> UnixMillis {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as UnixMillis
}
