//! The dispatcher Lambda's handler: an SQS batch into the same delivery logic as everywhere
//! else, with a partial batch response.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use relay_aws::{Received, SqsQueue};
use relay_core::{AttemptRecord, Claim, Settlement, StoreError, WorkQueue};
use relay_dispatch::{DispatchConfig, Dispatcher, DispatcherHandle, GraphqlClient};
use tokio::sync::Notify;

use crate::emf::{Emf, Unit};
use crate::fleet::{self, Fleet};
use crate::start::{self, DispatcherSettings, StartError};

/// The dispatcher of one Lambda instance: its rate control and counters outlive each
/// invocation, so what it learned about the target carries over.
#[derive(Debug)]
pub struct BatchDispatcher {
    queue: SqsQueue,
    client: GraphqlClient,
    config: DispatchConfig,
    handle: DispatcherHandle,
    fleet: Option<Fleet>,
    /// When the fleet was last synced: at most once per [`fleet::PERIOD`], however many
    /// invocations come.
    synced: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Left for giving unstarted work back before the function's deadline.
const MARGIN: Duration = Duration::from_secs(5);

impl BatchDispatcher {
    /// A function instance's dispatcher, from its settings: the stack's queue, the target
    /// (its headers read from `RELAY_HEADER_SECRET`), the delivery policy, in the stack's fleet.
    pub async fn start(settings: &DispatcherSettings) -> Result<Self, StartError> {
        settings.delivery.check()?;
        let aws = start::LazyAws::new(&settings.aws);
        let target = start::target_config(&settings.delivery, &aws).await?;
        let aws = aws.get().await?.clone();
        let queue = SqsQueue::new(aws.clone(), settings.delivery.retention).await?;
        let client = GraphqlClient::new(&target)?;
        Ok(
            BatchDispatcher::new(queue, client, settings.delivery.dispatch_on_queue())
                .in_fleet(aws),
        )
    }

    /// One invocation: the batch, within the function's time left less a margin to give
    /// unstarted work back.
    pub async fn invoke(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, StartError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let deadline = Duration::from_millis(event.context.deadline);
        let budget = deadline.saturating_sub(now).saturating_sub(MARGIN);
        Ok(self.dispatch(event.payload, budget).await)
    }

    pub fn new(queue: SqsQueue, client: GraphqlClient, config: DispatchConfig) -> Self {
        let handle = Dispatcher::new(queue.clone(), client.clone(), config.clone()).handle();
        BatchDispatcher {
            queue,
            client,
            config,
            handle,
            fleet: None,
            synced: tokio::sync::Mutex::default(),
        }
    }

    /// Shares the target's limit with the stack's other dispatchers (the function's other
    /// instances) through the control table, while invocations run.
    pub fn in_fleet(mut self, aws: relay_aws::Aws) -> Self {
        self.fleet = Some(Fleet::new(aws, self.handle.clone()).with_queue(self.queue.clone()));
        self
    }

    /// Syncs with the fleet once a period, for as long as it is polled.
    async fn keep_in_fleet(&self) {
        if self.fleet.is_none() {
            return std::future::pending().await;
        }
        loop {
            self.sync(true).await;
            tokio::time::sleep(fleet::PERIOD).await;
        }
    }

    /// Syncs with the fleet if a period has passed since the last sync; with `wait`, waits for
    /// the period to pass.
    async fn sync(&self, wait: bool) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let mut synced = self.synced.lock().await;
        let due = synced.map_or(tokio::time::Instant::now(), |at| at + fleet::PERIOD);
        if !wait && tokio::time::Instant::now() < due {
            return;
        }
        tokio::time::sleep_until(due).await;
        if let Err(e) = fleet.sync().await {
            tracing::warn!(error = %e, "fleet sync failed; pacing on this instance's own share");
        }
        *synced = Some(tokio::time::Instant::now());
    }

    pub fn handle(&self) -> &DispatcherHandle {
        &self.handle
    }

    /// Delivers an SQS batch. Work not started within `budget` (the function's time left) is
    /// given back to the queue; messages whose state could not be recorded are reported as
    /// batch item failures, and only those: every other outcome (delivered, retried later,
    /// dead-lettered) is recorded in the events table and the queues. Leaves one EMF line on
    /// stdout with what happened.
    pub async fn dispatch(&self, event: SqsEvent, budget: Duration) -> SqsBatchResponse {
        let (response, emf) = self.dispatch_measured(event, budget).await;
        emf.emit();
        response
    }

    /// [`dispatch`](Self::dispatch), with the invocation's metrics (`Function=dispatcher`):
    /// `Delivered`, `Retried`, `RateLimited`, `DeadLettered`, `DeliveryLatency` (received to
    /// delivered, per event), `QueueAge` (sent to the queue to received, per message), and the
    /// batch's `event_ids`.
    pub async fn dispatch_measured(
        &self,
        event: SqsEvent,
        budget: Duration,
    ) -> (SqsBatchResponse, Emf) {
        let now = relay_core::now_millis();
        let queue_ages: Vec<f64> = event
            .records
            .iter()
            .filter_map(|m| m.attributes.get("SentTimestamp")?.parse::<i64>().ok())
            .map(|sent| (now - sent).max(0) as f64)
            .collect();
        let (response, tally) = self.deliver_batch(event, budget).await;
        let emf = Emf::new("dispatcher")
            .count("Delivered", tally.delivered)
            .count("Retried", tally.retried)
            .count("RateLimited", tally.rate_limited)
            .count("DeadLettered", tally.dead)
            .values("DeliveryLatency", Unit::Milliseconds, tally.latencies)
            .values("QueueAge", Unit::Milliseconds, queue_ages)
            .property("event_ids", tally.event_ids);
        (response, emf)
    }

    async fn deliver_batch(&self, event: SqsEvent, budget: Duration) -> (SqsBatchResponse, Tally) {
        let messages: Vec<Received> = event
            .records
            .into_iter()
            .map(|m| Received {
                trace: m.attributes.get("AWSTraceHeader").cloned(),
                message_id: m.message_id.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
            })
            .collect();
        let message_of: HashMap<String, String> = messages
            .iter()
            .filter_map(|m| {
                let v: serde_json::Value = serde_json::from_str(&m.body).ok()?;
                Some((v.get("id")?.as_str()?.to_owned(), m.message_id.clone()))
            })
            .collect();
        // A claim outlasts the invocation that holds it, so no other dispatcher takes its
        // events while this one may still deliver them.
        let lease = self.config.lease.max(budget + MARGIN);
        let (claims, claim_failures) = self.queue.claim_messages(messages, lease).await;
        let mut response = SqsBatchResponse::default();
        for (message_id, error) in claim_failures {
            tracing::warn!(%message_id, %error, "could not claim; the message is returned");
            response.add_failure(message_id);
        }
        if claims.is_empty() {
            return (response, Tally::default());
        }
        // Paused, or the target's circuit open: the batch waits in the queue, no receive spent.
        self.sync(false).await;
        if let Some(at) = self.handle.held_until() {
            let wait = at.saturating_duration_since(tokio::time::Instant::now());
            let until =
                relay_core::now_millis() + wait.max(self.config.hold_at_least).as_millis() as i64;
            let n = claims.len();
            if let Err(e) = self.queue.defer(claims, until).await {
                tracing::warn!(error = %e, "could not defer the held-back batch; it comes back when its lease ends");
            }
            tracing::info!(events = n, pause = ?self.handle.pause(), circuit = ?self.handle.circuit(), "held back: the batch is deferred");
            self.queue.flush_trace().await;
            return (response, Tally::default());
        }
        let batch = Batch {
            queue: self.queue.clone(),
            left: AtomicUsize::new(claims.len()),
            claims: Mutex::new(claims),
            done: Notify::new(),
            unrecorded: Mutex::default(),
            tally: Mutex::default(),
        };
        let batch = std::sync::Arc::new(batch);
        let dispatcher = Dispatcher::with_handle(
            BatchRef(std::sync::Arc::clone(&batch)),
            self.client.clone(),
            self.config.clone(),
            self.handle.clone(),
        );
        let finished = {
            let batch = std::sync::Arc::clone(&batch);
            async move {
                tokio::select! {
                    () = batch.done.notified() => {}
                    () = tokio::time::sleep(budget) => {
                        tracing::warn!("out of time: giving the rest of the batch back");
                    }
                }
            }
        };
        if batch.left.load(SeqCst) > 0 {
            tokio::select! {
                () = dispatcher.run(finished) => {}
                () = self.keep_in_fleet() => {}
            }
        }
        let unrecorded = batch
            .unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for id in unrecorded {
            if let Some(message_id) = message_of.get(&id) {
                response.add_failure(message_id.clone());
            }
        }
        // Before the function is frozen: the settled events to the S3 archive.
        self.queue.flush_archive().await;
        self.queue.flush_trace().await;
        let tally = std::mem::take(&mut *batch.tally.lock().unwrap_or_else(|p| p.into_inner()));
        (response, tally)
    }
}

/// One invocation's claims, as a work queue the dispatcher drains.
#[derive(Debug)]
struct Batch {
    queue: SqsQueue,
    claims: Mutex<Vec<Claim>>,
    left: AtomicUsize,
    done: Notify,
    /// Events whose last settlement could not be recorded.
    unrecorded: Mutex<HashSet<String>>,
    tally: Mutex<Tally>,
}

/// What one invocation's settlements were.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    retried: u64,
    rate_limited: u64,
    dead: u64,
    /// Received to delivered, ms, per delivered event.
    latencies: Vec<f64>,
    event_ids: Vec<String>,
}

impl Batch {
    fn finished(&self, n: usize) {
        if self.left.fetch_sub(n, SeqCst) <= n {
            self.done.notify_one();
        }
    }
}

#[derive(Debug, Clone)]
struct BatchRef(std::sync::Arc<Batch>);

impl WorkQueue for BatchRef {
    async fn claim(&self, max: usize, _lease: Duration) -> Result<Vec<Claim>, StoreError> {
        let mut claims = self.0.claims.lock().unwrap_or_else(|p| p.into_inner());
        let n = max.min(claims.len());
        Ok(claims.drain(..n).collect())
    }

    async fn settle(
        &self,
        claim: &Claim,
        attempt: AttemptRecord,
        settlement: Settlement,
    ) -> Result<(), StoreError> {
        let rate_limited = attempt.outcome == relay_core::AttemptOutcome::RateLimited;
        let kind = match &settlement {
            Settlement::Delivered => 0,
            Settlement::Retry { .. } => 1,
            Settlement::Dead { .. } => 2,
        };
        let settled = self.0.queue.settle(claim, attempt, settlement).await;
        if settled.is_ok() {
            let mut tally = self.0.tally.lock().unwrap_or_else(|p| p.into_inner());
            match kind {
                0 => {
                    tally.delivered += 1;
                    let latency = relay_core::now_millis() - claim.received_at;
                    tally.latencies.push(latency.max(0) as f64);
                }
                1 => tally.retried += 1,
                _ => tally.dead += 1,
            }
            tally.rate_limited += u64::from(rate_limited);
            tally.event_ids.push(claim.event_id.clone());
        }
        {
            let mut unrecorded = self.0.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
            match &settled {
                Err(e) if e.is_retryable() => {
                    unrecorded.insert(claim.event_id.clone());
                }
                _ => {
                    unrecorded.remove(&claim.event_id);
                }
            }
        }
        // The dispatcher tries a few times on a retryable error; count each claim once.
        if !matches!(&settled, Err(e) if e.is_retryable()) {
            self.0.finished(1);
        }
        settled
    }

    async fn release(&self, claims: Vec<Claim>) -> Result<(), StoreError> {
        let n = claims.len();
        let released = self.0.queue.release(claims).await;
        if n > 0 {
            self.0.finished(n);
        }
        released
    }

    async fn defer(&self, claims: Vec<Claim>, until: i64) -> Result<(), StoreError> {
        let n = claims.len();
        let deferred = self.0.queue.defer(claims, until).await;
        if n > 0 {
            self.0.finished(n);
        }
        deferred
    }

    async fn wait_for_work(&self, at_most: Duration) {
        // Nothing more comes in this invocation.
        tokio::time::sleep(at_most).await;
    }
}
