//! The ports: what the drivers (ingest, dispatcher, CLI) need from a backend. The embedded store
//! and the AWS services implement them; the same contract tests run against each.

use std::future::Future;
use std::time::Duration;

use crate::UnixMillis;
use crate::delivery::{AttemptRecord, Claim, Settlement};
use crate::event::Event;

/// The result of offering an event to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Newly stored and queued for delivery.
    Accepted,
    /// Already stored with an identical payload; nothing changed.
    Duplicate,
    /// Already stored with a different payload; nothing changed.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not answer in time or is overloaded; the caller may try again.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store cannot keep its promise now (a flush or a write of its storage failed): no
    /// event is acknowledged until it recovers. Worth trying again later.
    #[error("store failing: {0}")]
    Failing(String),
    /// The store answered with an error that trying again will not fix.
    #[error("store failure: {0}")]
    Failed(String),
    /// A settlement arrived for a lease that is no longer held.
    #[error("lease lost for event {0}")]
    LeaseLost(String),
    /// The request cannot be served as asked (a cursor this store did not give).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Failing(_))
    }
}

/// Accepting events: `Ok` means the event is durable.
pub trait Ingest: Clone + Send + Sync + 'static {
    fn accept(
        &self,
        event: Event,
    ) -> impl Future<Output = Result<AcceptOutcome, StoreError>> + Send;

    /// Accepts several events: `Ok` means every one of them is durable, with one outcome per
    /// event, in order (an id given twice is a duplicate or a conflict the second time). `Err`
    /// means none of them is known to be stored; offering the same events again is safe.
    fn accept_batch(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<AcceptOutcome>, StoreError>> + Send;

    /// `Err(reason)` while the store is failing and refuses events (`GET /health` says so).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The work queue the dispatcher drains.
pub trait WorkQueue: Clone + Send + Sync + 'static {
    /// Leases up to `max` deliveries that are due, oldest due first.
    fn claim(
        &self,
        max: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Claim>, StoreError>> + Send;

    /// Records an attempt and moves the delivery on, atomically.
    fn settle(
        &self,
        claim: &Claim,
        attempt: AttemptRecord,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives back leased work without an attempt (shutdown), due at once.
    fn release(&self, claims: Vec<Claim>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives back leased work without an attempt, due at `until`: held back while delivery is
    /// paused or the target's circuit is open. Attempts and tries are unchanged, and on a
    /// queue that counts receives (SQS), none is spent.
    fn defer(
        &self,
        claims: Vec<Claim>,
        until: UnixMillis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Resolves when new work may be due, or after `at_most`.
    fn wait_for_work(&self, at_most: Duration) -> impl Future<Output = ()> + Send;
}

/// Time, as a port, so leases and schedules can be tested without waiting.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> UnixMillis;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        crate::now_millis()
    }
}
