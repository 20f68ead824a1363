//! The dispatcher: drains the work queue into the target as fast as the target allows.
//!
//! The loop only claims work, waits for a rate token and a concurrency slot, and hands up to a
//! batch of claims (one request, one token) to [`deliver`]. That function asks the
//! [`GraphqlClient`], classifies the answer for each event (`relay_core::classify_batch`), tells
//! the rate controller, decides each delivery's fate (`relay_core::decide`) and settles it in
//! the store, which records the attempt.

mod client;
mod credentials;
mod metrics;
pub mod settings;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use relay_core::concurrency::{ConcurrencyLimit, Refusal};
use relay_core::hold::{Circuit, Gate, Pause, Transition};
use relay_core::ops::Lesson;
use relay_core::rate::{RateConfig, RateController, Ticket};
use relay_core::{
    Answer, AttemptRecord, BatchOutcome, Claim, DeliveryPolicy, Outcome, Settlement,
    TransportError, UnixMillis, WorkQueue, classify_batch, decide, decide_probe, now_millis,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

pub use client::{
    ClientError, DEFAULT_DOCUMENT, GraphqlClient, MAX_BATCH, TargetConfig, batch_document,
    parse_header,
};
pub use credentials::{OAuthClient, TargetTls};
pub use metrics::{Metrics, MetricsSnapshot};
pub use settings::DeliverySettings;

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub rate: RateConfig,
    pub policy: DeliveryPolicy,
    /// Most requests in flight at once: enough that a slow target is still driven to its limit.
    pub max_in_flight: usize,
    /// How long a claim is held. Only matters if this process dies; a new owner of the data
    /// directory recovers leases at once.
    pub lease: Duration,
    /// How often to look for work that became due (retries) when nothing signals new work.
    pub poll: Duration,
    /// How long shutdown waits for requests in flight before leaving them to lease recovery.
    pub drain_timeout: Duration,
    /// Claim at least this many at once, where each claim is a round trip worth filling (an
    /// SQS receive takes up to 10 messages).
    pub claim_at_least: usize,
    /// Claimed work held back (paused, or the circuit open) is deferred at least this long:
    /// on SQS each deferral is a message sent again, so not every second.
    pub hold_at_least: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            rate: RateConfig::default(),
            policy: DeliveryPolicy::default(),
            max_in_flight: 256,
            lease: Duration::from_secs(300),
            poll: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(15),
            claim_at_least: 1,
            hold_at_least: Duration::ZERO,
        }
    }
}

/// What a dispatcher shares with whoever watches it.
#[derive(Debug, Clone)]
pub struct DispatcherHandle {
    pub metrics: Arc<Metrics>,
    rate: Arc<Mutex<RateController>>,
    /// The target's concurrency limit, when its refusals show one.
    concurrency: Arc<Mutex<ConcurrencyLimit>>,
    /// Requests sent whose answer has not come back: in progress at the target (a request
    /// still being settled holds its place in flight, but no longer the target's).
    at_target: Arc<AtomicU32>,
    /// How it sends: most events in one request, and the oldest an event may get.
    pub events_per_request: u32,
    pub max_age: Duration,
    /// An operator's pause, and the target's circuit breaker.
    hold: Arc<Mutex<Hold>>,
    /// What taught it the target's limits, newest first.
    lessons: Arc<Mutex<Lessons>>,
}

/// The last few answers that taught the dispatcher something of the target's limits.
#[derive(Debug, Default)]
struct Lessons {
    newest_first: std::collections::VecDeque<Lesson>,
    /// When a budget reading was last kept: a target that announces its budget in every
    /// answer would push out every refusal.
    budget_kept_at: Option<UnixMillis>,
}

/// Lessons kept for `relay status` and the console.
const LESSONS_KEPT: usize = 20;
/// At most one budget reading kept per this long.
const BUDGET_LESSON_EVERY_MS: i64 = 10_000;

impl Lessons {
    fn learned(&mut self, lesson: Lesson) {
        if lesson.kind == "budget" {
            if self
                .budget_kept_at
                .is_some_and(|at| lesson.at - at < BUDGET_LESSON_EVERY_MS)
            {
                return;
            }
            self.budget_kept_at = Some(lesson.at);
        }
        self.newest_first.push_front(lesson);
        self.newest_first.truncate(LESSONS_KEPT);
    }
}

#[derive(Debug, Default)]
struct Hold {
    pause: Option<Pause>,
    circuit: Circuit,
    /// Changes of the circuit not yet shared with the fleet, with when they happened.
    changes: Vec<(Transition, UnixMillis)>,
}

impl DispatcherHandle {
    /// The rate controller, for what shares it with other dispatchers (a fleet of Lambda
    /// instances) or watches it.
    pub fn with_rate<R>(&self, f: impl FnOnce(&mut RateController) -> R) -> R {
        f(&mut lock(&self.rate))
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let rate = lock(&self.rate);
        self.metrics
            .snapshot(rate.rate(), rate.estimate(), rate.announced())
    }

    /// Takes the concurrency limit other dispatchers of the fleet learned, unless this one
    /// knows a lower one.
    pub fn adopt_concurrency_limit(&self, cap: u32) {
        lock(&self.concurrency).adopt(cap);
    }

    /// The most requests in flight the target allows, when its refusals have shown it.
    pub fn concurrency_limit(&self) -> Option<u32> {
        lock(&self.concurrency).cap()
    }

    /// Pauses delivery (or lifts the pause): the host reads it from the backend, where `relay
    /// pause` and `relay resume` write it.
    pub fn set_pause(&self, pause: Option<Pause>) {
        let mut hold = lock(&self.hold);
        if hold.pause.is_none() && pause.is_some() {
            tracing::warn!(pause = ?pause, "delivery paused: nothing is sent until it is resumed");
        } else if hold.pause.is_some() && pause.is_none() {
            tracing::info!("delivery resumed");
        }
        hold.pause = pause;
    }

    pub fn pause(&self) -> Option<Pause> {
        lock(&self.hold).pause.clone()
    }

    /// The circuit, when it is not closed.
    pub fn circuit(&self) -> Option<relay_core::hold::CircuitView> {
        lock(&self.hold).circuit.view(tokio::time::Instant::now())
    }

    /// The circuit's changes since the last call, for the fleet.
    pub fn take_circuit_changes(&self) -> Vec<(Transition, UnixMillis)> {
        std::mem::take(&mut lock(&self.hold).changes)
    }

    /// Follows what another dispatcher of the fleet found: the circuit opened at `opened`, or
    /// its probe was answered at `answered`.
    pub fn follow_circuit(&self, opened: Option<UnixMillis>, answered: Option<UnixMillis>) {
        let mut hold = lock(&self.hold);
        match (opened, answered) {
            (Some(opened), answered) if answered.is_none_or(|a| a < opened) => {
                hold.circuit
                    .follow_open(tokio::time::Instant::now(), opened);
            }
            (_, Some(answered)) => hold.circuit.follow_answered(answered),
            _ => {}
        }
    }

    /// Until when sending is held back (paused: for as long as the pause stands; the circuit
    /// open: until its next probe), if it is, for at least [`HOLD_BACK`]. A host whose work is
    /// handed to it (a Lambda's SQS batch) defers that work at once rather than hold it.
    pub fn held_until(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        match self.gate(false) {
            Gate::Wait(at) if at.saturating_duration_since(now) >= HOLD_BACK => Some(at),
            _ => None,
        }
    }

    /// Whether a request may go now: not while paused; under the circuit's gate otherwise.
    /// With `admit`, asked for a request that holds its place at the target, and when it may,
    /// it goes (a probe is then the only one until its answer).
    fn gate(&self, admit: bool) -> Gate {
        let now = tokio::time::Instant::now();
        let mut hold = lock(&self.hold);
        if hold.pause.is_some() {
            return Gate::Wait(now + PAUSE_RECHECK);
        }
        let at_target = self.at_target.load(SeqCst);
        if admit {
            // The request to admit holds its place at the target already.
            hold.circuit.admit(now, at_target.saturating_sub(1))
        } else {
            hold.circuit.gate(now, at_target)
        }
    }

    /// What `relay status` shows of this dispatcher, as of now.
    pub fn report(&self) -> relay_core::ops::DispatcherReport {
        let m = self.snapshot();
        relay_core::ops::DispatcherReport {
            rate: m.rate,
            estimated_limit: m.estimated_limit,
            announced: m.announced,
            in_flight: m.in_flight,
            reported_at: now_millis(),
            events_per_request: (self.events_per_request > 1).then_some(self.events_per_request),
            max_age_ms: Some(self.max_age.as_millis() as i64),
            concurrency_limit: self.concurrency_limit(),
            circuit: self.circuit(),
            rate_limited: Some(m.rate_limited),
            lessons: self.lessons(LESSONS_KEPT),
        }
    }

    /// The last `n` answers that taught it the target's limits, newest first.
    pub fn lessons(&self, n: usize) -> Vec<Lesson> {
        lock(&self.lessons)
            .newest_first
            .iter()
            .take(n)
            .cloned()
            .collect()
    }
}

/// How often a paused dispatcher looks whether it was resumed.
const PAUSE_RECHECK: Duration = Duration::from_secs(1);

/// A wait this long or longer gives claimed work back rather than holding it.
const HOLD_BACK: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Dispatcher<Q> {
    queue: Q,
    client: GraphqlClient,
    config: DispatchConfig,
    handle: DispatcherHandle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<Q: WorkQueue> Dispatcher<Q> {
    pub fn new(queue: Q, client: GraphqlClient, config: DispatchConfig) -> Self {
        let rate = RateController::new(config.rate, tokio::time::Instant::now());
        let handle = DispatcherHandle {
            metrics: Arc::default(),
            rate: Arc::new(Mutex::new(rate)),
            concurrency: Arc::default(),
            at_target: Arc::default(),
            events_per_request: client.batch() as u32,
            max_age: config.policy.max_age,
            hold: Arc::default(),
            lessons: Arc::default(),
        };
        Dispatcher {
            queue,
            client,
            config,
            handle,
        }
    }

    /// A dispatcher that carries on with `handle`'s rate control and counters: a Lambda
    /// instance keeps what it learned about the target from one invocation to the next.
    pub fn with_handle(
        queue: Q,
        client: GraphqlClient,
        config: DispatchConfig,
        handle: DispatcherHandle,
    ) -> Self {
        Dispatcher {
            queue,
            client,
            config,
            handle,
        }
    }

    pub fn handle(&self) -> DispatcherHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` resolves, then stops claiming, gives back claimed work it has not
    /// started, and waits (up to `drain_timeout`) for requests in flight to be settled.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Dispatcher {
            queue,
            client,
            config,
            handle,
        } = self;
        let places = Places::new(config.max_in_flight);
        let mut buffer: VecDeque<Claim> = VecDeque::new();
        let mut in_flight = JoinSet::new();
        tokio::pin!(shutdown);
        let per_request = client.batch();
        tracing::info!(
            target = client.url(),
            max_in_flight = config.max_in_flight,
            batch = per_request,
            "dispatcher started"
        );

        'run: loop {
            while in_flight.try_join_next().is_some() {}
            if let Gate::Wait(at) = handle.gate(false) {
                hold_back(&queue, &mut buffer, at, &config).await;
                tokio::select! {
                    () = tokio::time::sleep_until(at.min(tokio::time::Instant::now() + PAUSE_RECHECK)) => {}
                    () = places.answered.notified() => {}
                    () = &mut shutdown => break 'run,
                }
                continue;
            }
            if buffer.is_empty() {
                let want = (claim_size(lock(&handle.rate).rate(), config.max_in_flight)
                    * per_request)
                    .max(config.claim_at_least);
                match queue.claim(want, config.lease).await {
                    Ok(claims) => buffer.extend(claims),
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming work failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break 'run,
                        }
                    }
                }
                if buffer.is_empty() {
                    tokio::select! {
                        () = queue.wait_for_work(config.poll) => {}
                        () = &mut shutdown => break 'run,
                    }
                    continue;
                }
            }
            let ticket = tokio::select! {
                ticket = next_ticket(&handle) => ticket,
                () = &mut shutdown => break 'run,
            };
            let (slot, at_target) = tokio::select! {
                place = places.enter(&handle) => place,
                () = &mut shutdown => break 'run,
            };
            // Paused, or the circuit opened, while this request waited for its turn.
            let probe = match handle.gate(true) {
                Gate::Send { probe } => probe,
                Gate::Wait(_) => continue,
            };
            if probe {
                tracing::info!("the target's circuit is open: sending a probe");
            }
            // What is claimed already, up to a batch: never waiting for more.
            let claims: Vec<Claim> = buffer.drain(..per_request.min(buffer.len())).collect();
            let span = match claims.as_slice() {
                [claim] => {
                    tracing::info_span!("deliver", event_id = ?claim.event_id, attempt = claim.tries + 1)
                }
                _ => tracing::info_span!("deliver", events = claims.len()),
            };
            let (queue, client, handle, policy) =
                (queue.clone(), client.clone(), handle.clone(), config.policy);
            let answered = Arc::clone(&places.answered);
            in_flight.spawn(
                async move {
                    let sent = (ticket, at_target, probe);
                    deliver(&queue, &client, &handle, &policy, claims, sent, &answered).await;
                    drop(slot);
                }
                .instrument(span),
            );
        }

        wind_down(&queue, buffer, in_flight, config.drain_timeout).await;
    }
}

/// While sending is held back until `at`: claimed work goes back to the queue when the wait is
/// long, due when sending may resume (and no sooner than `hold_at_least`), so that it is not held
/// past its lease; a short wait keeps it.
async fn hold_back<Q: WorkQueue>(
    queue: &Q,
    buffer: &mut VecDeque<Claim>,
    at: tokio::time::Instant,
    config: &DispatchConfig,
) {
    let wait = at.saturating_duration_since(tokio::time::Instant::now());
    if buffer.is_empty() || wait < HOLD_BACK {
        return;
    }
    let until = now_millis() + wait.max(config.hold_at_least).as_millis() as i64;
    let held: Vec<Claim> = buffer.drain(..).collect();
    let n = held.len();
    if let Err(e) = queue.defer(held, until).await {
        tracing::warn!(error = %e, "could not give held-back work back; it comes back when its lease ends");
    } else {
        tracing::debug!(events = n, "held back: given back until sending resumes");
    }
}

/// Places for requests in flight: at most `max_in_flight`, and no more than the target's learned
/// concurrency limit.
struct Places {
    slots: Arc<Semaphore>,
    /// Told each time an answer comes back, for a sender waiting under the concurrency limit.
    answered: Arc<Notify>,
}

impl Places {
    fn new(max: usize) -> Self {
        Places {
            slots: Arc::new(Semaphore::new(max)),
            answered: Arc::default(),
        }
    }

    /// A place for one more request, under the learned concurrency limit; it counts at the
    /// target from here, so that requests let go together are all counted.
    async fn enter(&self, handle: &DispatcherHandle) -> (OwnedSemaphorePermit, AtTarget) {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        while let Some(cap) = handle.concurrency_limit()
            && handle.at_target.load(SeqCst) >= cap
        {
            // An answer is told even if it came first; the timeout covers a cap that rose.
            let _ = tokio::time::timeout(Duration::from_millis(20), self.answered.notified()).await;
        }
        (slot, AtTarget::enter(handle, &self.answered))
    }
}

/// A request in progress at the target, from the moment it is let go until its answer (or its
/// abort: a Lambda instance's handle outlives an invocation cut short).
struct AtTarget {
    count: Arc<AtomicU32>,
    answered: Arc<Notify>,
    /// Requests in progress beside this one when it was let go.
    others: u32,
}

impl AtTarget {
    fn enter(handle: &DispatcherHandle, answered: &Arc<Notify>) -> Self {
        let others = handle.at_target.fetch_add(1, SeqCst);
        AtTarget {
            count: Arc::clone(&handle.at_target),
            answered: Arc::clone(answered),
            others,
        }
    }
}

impl Drop for AtTarget {
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
        self.answered.notify_one();
    }
}

/// How a request went out: its rate ticket, and how many other requests were in progress at the
/// target beside it (what the concurrency limit is learned from).
#[derive(Debug, Clone, Copy)]
struct Sent {
    ticket: Ticket,
    others: u32,
}

/// At shutdown: gives back the claimed work not started, and waits up to `drain_timeout` for
/// the requests in flight (abandoned ones come back when their lease ends).
async fn wind_down<Q: WorkQueue>(
    queue: &Q,
    buffer: VecDeque<Claim>,
    mut in_flight: JoinSet<()>,
    drain_timeout: Duration,
) {
    let unstarted = buffer.len();
    if let Err(e) = queue.release(buffer.into()).await {
        tracing::warn!(error = %e, "could not release claimed work; it comes back when its lease ends");
    }
    let waiting = in_flight.len();
    tracing::info!(unstarted, in_flight = waiting, "dispatcher stopping");
    let drained = tokio::time::timeout(drain_timeout, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            abandoned = in_flight.len(),
            "requests still in flight at shutdown; their work is recovered at next start"
        );
        in_flight.abort_all();
    }
}

/// How many requests' worth to claim at once: about a quarter second of sending, so claimed work
/// never waits long.
fn claim_size(rate: f64, max_in_flight: usize) -> usize {
    ((rate / 4.0).ceil() as usize).clamp(1, max_in_flight.max(1))
}

/// One request for the claims (one event, or a batch), from request to settled states. A batch
/// the target refuses as a whole, in a way that may be one event's fault, is sent again one
/// event per request (each with its own rate token), so only that event is dead-lettered.
async fn deliver<Q: WorkQueue>(
    queue: &Q,
    client: &GraphqlClient,
    handle: &DispatcherHandle,
    policy: &DeliveryPolicy,
    claims: Vec<Claim>,
    sent: (Ticket, AtTarget, bool),
    answered: &Arc<Notify>,
) {
    if claims.is_empty() {
        return;
    }
    let Some(refused) = attempt(queue, client, handle, policy, claims, sent).await else {
        return;
    };
    tracing::warn!(
        events = refused.len(),
        "the target refused a batch as a whole; sending its events one by one"
    );
    for claim in refused {
        let ticket = next_ticket(handle).await;
        let sent = (ticket, AtTarget::enter(handle, answered), false);
        attempt(queue, client, handle, policy, vec![claim], sent).await;
    }
}

/// Waits for the rate controller's next token.
async fn next_ticket(handle: &DispatcherHandle) -> Ticket {
    loop {
        let acquired = lock(&handle.rate).try_acquire(tokio::time::Instant::now());
        match acquired {
            Ok(ticket) => return ticket,
            Err(at) => tokio::time::sleep_until(at).await,
        }
    }
}

/// Sends the claims in one request and settles each; gives them back unsettled if the target
/// refused the batch as a whole ([`BatchOutcome::Refused`], never for one event).
async fn attempt<Q: WorkQueue>(
    queue: &Q,
    client: &GraphqlClient,
    handle: &DispatcherHandle,
    policy: &DeliveryPolicy,
    claims: Vec<Claim>,
    (ticket, at_target, probe): (Ticket, AtTarget, bool),
) -> Option<Vec<Claim>> {
    let metrics = &handle.metrics;
    let n = claims.len();
    for _ in &claims {
        metrics.started();
    }
    let started_at = now_millis();
    let clock = Instant::now();
    let events: Vec<(&str, &str)> = claims
        .iter()
        .map(|c| (c.event_id.as_str(), c.payload.as_str()))
        .collect();
    let result = client.send_batch(&events).await;
    let sent = Sent {
        ticket,
        others: at_target.others,
    };
    drop(at_target);
    let duration = clock.elapsed();
    ::metrics::histogram!(relay_core::telemetry::ATTEMPT_SECONDS).record(duration);
    on_result(handle, &result, probe);
    let outcomes = match classify_batch(&result, n) {
        BatchOutcome::Each(outcomes) => outcomes,
        BatchOutcome::Refused(outcome) => {
            tracing::debug!(reason = outcome.reason(), "batch refused");
            metrics.gave_back(n);
            return Some(claims);
        }
    };
    let said = learn(handle, sent, &result, &outcomes);
    // A batch's answer, once, for each delivered alias's own result in its attempt's detail
    // (or, when an error nulled its data, where it stopped).
    let answer = match &result {
        Ok(answer) if n > 1 => serde_json::from_slice::<serde_json::Value>(&answer.body).ok(),
        _ => None,
    };
    let stopped = answer
        .as_ref()
        .and_then(|a| relay_core::classify::stopped_at(a, n));
    let data = answer.and_then(|mut v| v.get_mut("data").map(serde_json::Value::take));
    let settles = claims
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(i, (claim, outcome))| {
            let settlement = if probe {
                decide_probe(&outcome, claim, policy, now_millis(), fastrand::f64())
            } else {
                decide(&outcome, claim, policy, now_millis(), fastrand::f64())
            };
            let (http_status, detail) =
                attempt_detail(&result, &outcome, &said, (i, n, stopped), data.as_ref());
            let attempt = AttemptRecord {
                started_at,
                duration_ms: duration.as_millis() as u64,
                outcome: outcome.kind(),
                http_status,
                detail,
                trigger: claim.trigger,
            };
            let _span =
                (n > 1).then(|| tracing::info_span!("event", event_id = ?claim.event_id).entered());
            log_settlement(&outcome, &settlement, attempt.duration_ms);
            metrics.finished(&outcome, &settlement);
            async move {
                let event_id = claim.event_id.as_str();
                let step = relay_core::telemetry::step;
                step(relay_core::telemetry::Step::Attempted {
                    event_id,
                    attempt: &attempt,
                    events_in_request: n,
                });
                let started = Instant::now();
                settle(queue, claim, &attempt, &settlement).await;
                step(relay_core::telemetry::Step::Settled {
                    event_id,
                    settlement: &settlement,
                    at: std::time::SystemTime::now(),
                    took: started.elapsed(),
                });
            }
        });
    futures_util::future::join_all(settles).await;
    None
}

/// What a request's result tells the circuit breaker: an answer of any kind shows the target
/// up; no connection, a timeout or a 5xx shows it down. An event relay cannot send says nothing.
fn on_result(handle: &DispatcherHandle, result: &Result<Answer, TransportError>, probe: bool) {
    let up = match result {
        Ok(answer) => answer.status < 500,
        Err(TransportError::Unsendable(_)) => return,
        Err(TransportError::TooLarge) => true,
        Err(_) => false,
    };
    let wall = now_millis();
    let mut hold = lock(&handle.hold);
    let change = hold
        .circuit
        .on_result(tokio::time::Instant::now(), wall, probe, up);
    if let Some(change) = change {
        match change {
            Transition::Opened => tracing::warn!(
                failures = relay_core::hold::OPEN_AFTER,
                "the target looks down: circuit open, one probe every few seconds"
            ),
            Transition::Reopened => {
                tracing::warn!("the target failed again while half open: circuit open")
            }
            Transition::HalfOpened => {
                tracing::info!("the target answered the probe: circuit half open")
            }
            Transition::Closed => {
                tracing::info!("the target is answering again: circuit closed")
            }
        }
        hold.changes.push((change, wall));
    }
}

/// What one answer teaches the rate controller: an announced budget, a refusal for the rate
/// (one request, one signal, however many of its events were refused), or a delivery. Returns
/// what the target said of its budget, for the attempts' details (values out of bounds are
/// read within them; the attempt keeps what the target said).
fn learn(
    handle: &DispatcherHandle,
    Sent { ticket, others }: Sent,
    result: &Result<Answer, TransportError>,
    outcomes: &[Outcome],
) -> String {
    let reading = result
        .as_ref()
        .map(|answer| {
            relay_core::budget::read(
                &answer.budget_headers,
                &answer.body,
                std::time::SystemTime::now(),
            )
        })
        .unwrap_or_default();
    let mut rate = lock(&handle.rate);
    let now = tokio::time::Instant::now();
    if let Some(budget) = reading.budget {
        rate.on_budget(now, ticket, budget);
    }
    let limited = outcomes.iter().find_map(|o| match o {
        Outcome::RateLimited { retry_after, .. } => Some(*retry_after),
        _ => None,
    });
    let kind = match limited {
        // A refusal that says nothing of when to come back may be the target's concurrency
        // limit: then relay holds fewer requests in flight, and its rate stands.
        Some(None)
            if reading.budget.is_none()
                && lock(&handle.concurrency).on_refused(others) == Refusal::Concurrency =>
        {
            Some("concurrency")
        }
        Some(retry_after) => {
            rate.on_rate_limited(now, ticket, retry_after);
            Some("rate_limited")
        }
        None if outcomes.contains(&Outcome::Delivered) => {
            rate.on_delivered(now, ticket);
            lock(&handle.concurrency).on_accepted(others);
            reading.budget.map(|_| "budget")
        }
        None => reading.budget.map(|_| "budget"),
    };
    if let Some(kind) = kind {
        let lesson = Lesson {
            at: now_millis(),
            kind: kind.to_owned(),
            detail: lesson_detail(result, limited.flatten(), reading.budget, others),
            learned_rate: rate.estimate(),
        };
        drop(rate);
        lock(&handle.lessons).learned(lesson);
    }
    reading.said()
}

/// What an answer that taught something said, in a line.
fn lesson_detail(
    result: &Result<Answer, TransportError>,
    retry_after: Option<Duration>,
    budget: Option<relay_core::budget::Budget>,
    others: u32,
) -> String {
    let mut said = match result {
        Ok(answer) => format!("HTTP {}", answer.status),
        Err(e) => e.to_string(),
    };
    if let Some(after) = retry_after {
        said.push_str(&format!(
            ", retry after {}",
            humantime::format_duration(after)
        ));
    } else if budget.is_none() {
        said.push_str(&format!(
            ", no Retry-After, with {} other request(s) in flight",
            others
        ));
    }
    if let Some(budget) = budget {
        said.push_str(&format!("; announced {budget}"));
    }
    said
}

/// An attempt's HTTP status and detail: the answer's excerpt or the reason, what the target
/// said of its budget, and in a batch of `n`, the event's alias (with its own result when
/// delivered, or what its delivery was inferred from when the batch `stopped` at an error that
/// nulled its data).
fn attempt_detail(
    result: &Result<Answer, TransportError>,
    outcome: &Outcome,
    said: &str,
    (i, n, stopped): (usize, usize, Option<usize>),
    data: Option<&serde_json::Value>,
) -> (Option<u16>, String) {
    let (http_status, mut detail) = match result {
        Ok(answer) if *outcome == Outcome::Delivered => (
            Some(answer.status),
            relay_core::classify::excerpt(&answer.body),
        ),
        Ok(answer) => (Some(answer.status), outcome.reason().to_owned()),
        Err(_) => (None, outcome.reason().to_owned()),
    };
    detail.push_str(said);
    if n > 1 {
        let alias = relay_core::classify::alias(i);
        detail = match outcome {
            Outcome::Delivered => {
                let own = match (data.and_then(|d| d.get(&alias)), stopped) {
                    (Some(result), _) => format!(": {result}"),
                    (None, Some(first)) => format!(
                        " (inferred: it ran before {}, whose error nulled the answer's data; \
                         mutation fields run in order)",
                        relay_core::classify::alias(first)
                    ),
                    (None, None) => String::new(),
                };
                format!("delivered in a batch of {n} as {alias}{own}")
            }
            _ => format!("in a batch of {n} as {alias}: {detail}"),
        };
    }
    (http_status, detail)
}

fn log_settlement(outcome: &Outcome, settlement: &Settlement, duration_ms: u64) {
    match settlement {
        Settlement::Delivered => tracing::debug!(ms = duration_ms, "delivered"),
        Settlement::Retry { at, .. } => {
            tracing::debug!(
                outcome = outcome.kind().as_str(),
                reason = outcome.reason(),
                in_ms = at - now_millis(),
                "will retry"
            )
        }
        Settlement::Dead { reason } => tracing::warn!(%reason, "dead-lettered"),
    }
}

/// Settles, retrying briefly if the store is busy. If it never succeeds, the claim is given
/// back (so whoever waits for it, such as a Lambda invocation, is not kept waiting) and the
/// event is sent again later: at-least-once, with the idempotency key to dedupe.
async fn settle<Q: WorkQueue>(
    queue: &Q,
    claim: &Claim,
    attempt: &AttemptRecord,
    settlement: &Settlement,
) {
    for wait_ms in [0, 50, 250, 1000] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        match queue
            .settle(claim, attempt.clone(), settlement.clone())
            .await
        {
            Ok(()) => return,
            Err(e) if e.is_retryable() => tracing::warn!(error = %e, "settling failed; retrying"),
            Err(e) => {
                tracing::error!(error = %e, "settling failed");
                return;
            }
        }
    }
    tracing::error!(
        "settling failed repeatedly; the claim is given back and the event is sent again later"
    );
    if let Err(e) = queue.release(vec![claim.clone()]).await {
        tracing::warn!(error = %e, "could not give the claim back either; it comes back when its lease ends");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_a_quarter_second_of_sending_within_bounds() {
        assert_eq!(claim_size(0.5, 256), 1);
        assert_eq!(claim_size(50.0, 256), 13);
        assert_eq!(claim_size(10_000.0, 256), 256);
        assert_eq!(claim_size(10.0, 0), 1);
    }
}
