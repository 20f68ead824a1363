//! A mock of the rate-limited GraphQL target relay delivers to.
//!
//! Why one file over 700 lines: a test peer is read top to bottom by whoever wonders what a
//! target did; it never imports relay's crates, and its tests live in `tests.rs`.
//!
//! It serves the `createEvent(input: EventInput!)` mutation relay calls by default, limits
//! requests with a token bucket or a fixed window (signalled as HTTP 429 + `Retry-After`, as
//! GraphQL `RATE_LIMITED` errors, or with the remaining budget announced on every answer in one
//! of the usual syntaxes), lets its limit change while it runs, injects faults on cue (503s,
//! latency, permanent errors for chosen event names, an outage switch), keeps every event by id
//! and counts duplicates, so tests can check "delivered once, enriched, unchanged" at the far
//! end.
//!
//! Start it on `127.0.0.1:0` with [`start`] and read [`TargetHandle::stats`] and
//! [`TargetHandle::events`], or run it as `relay target`.

mod schema;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_graphql::http::GraphiQLSource;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use schema::TargetSchema;

/// How the target tells a client it is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    /// HTTP 429 with a `Retry-After` header.
    #[default]
    Http429,
    /// HTTP 200 with a GraphQL error whose `extensions.code` is `RATE_LIMITED`.
    Graphql,
    /// HTTP 429 with `Retry-After`, and every answer announces the budget left, in the syntax
    /// [`TargetConfig::announce`] names.
    Headers,
}

/// How a target in [`LimitMode::Headers`] announces its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Announce {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft 6).
    #[default]
    Draft6,
    /// `RateLimit: "default";r=…;t=…` and `RateLimit-Policy: "default";q=…;w=…` (drafts 8+).
    Draft8,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` with the reset in seconds from now.
    XRatelimit,
    /// The same with the reset as a Unix time in seconds.
    XRatelimitEpoch,
    /// GraphQL cost extensions (`extensions.cost.throttleStatus`), each request costing one
    /// point, refused with a GraphQL `THROTTLED` error; the limiter is then a bucket.
    GraphqlCost,
}

/// The limit, as `PUT /admin/limit` sets it while the target runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Sustained requests per second allowed.
    pub rate: f64,
    /// Bucket size; defaults to one second's worth.
    #[serde(default)]
    pub burst: Option<f64>,
    /// Count requests in fixed windows of this many milliseconds (`rate × window` each)
    /// instead of a token bucket.
    #[serde(default)]
    pub window_ms: Option<u64>,
}

/// Faults that can be changed while the target runs (`PUT /admin/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer every request with 503, as a target that is down.
    pub outage: bool,
    /// Share of requests (0–1) answered with a 503.
    pub fail_rate: f64,
    /// Delay before every answer.
    pub latency_ms: u64,
    /// Events with these names get a permanent GraphQL error (`BAD_USER_INPUT`) on their own
    /// field.
    pub reject_names: Vec<String>,
    /// A request holding an event with one of these names is refused whole, before anything
    /// runs, with a GraphQL error that names no field: as a server that checks variables
    /// against a strict input type does.
    pub refuse_requests_with: Vec<String>,
    /// Misbehaviour for proving verifiers can fail: acknowledge every Nth new event but do not
    /// store it, as a target that loses data would.
    pub drop_every: Option<u64>,
    /// Record every Nth new event as delivered twice, as if the relay had sent it twice.
    pub duplicate_every: Option<u64>,
    /// Answer 401 to requests without this header (`Name: value`), as a target that wants
    /// credentials does.
    pub require_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    /// Sustained requests per second allowed.
    pub rate: f64,
    /// Bucket size; defaults to one second's worth.
    pub burst: Option<f64>,
    /// Count requests per fixed window instead of a token bucket. In [`LimitMode::Headers`]
    /// (other than GraphQL cost) a window of 1 s is used when none is given.
    pub window: Option<Duration>,
    pub mode: LimitMode,
    pub announce: Announce,
    pub faults: Faults,
    /// Declare `createEvent` non-null (`CreatedEvent!`): a refused event nulls the whole
    /// answer's `data`, and in a batch the aliases after it do not run.
    pub non_null_mutations: bool,
    /// At most this many requests in progress (with `latency_ms`, a concurrency limit rather
    /// than a rate): one more is answered 429 at once, without `Retry-After`, as gateways that
    /// limit in-flight requests do.
    pub concurrency: Option<u32>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            rate: 50.0,
            burst: None,
            window: None,
            mode: LimitMode::Http429,
            announce: Announce::default(),
            faults: Faults::default(),
            non_null_mutations: false,
            concurrency: None,
        }
    }
}

impl TargetConfig {
    fn limit(&self) -> Limit {
        let window = match (self.window, self.mode, self.announce) {
            (Some(w), ..) => Some(w),
            (None, LimitMode::Headers, a) if a != Announce::GraphqlCost => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        };
        Limit {
            rate: self.rate,
            burst: self.burst,
            window_ms: window.map(|w| w.as_millis() as u64),
        }
    }
}

/// Counters, as `GET /admin/stats` and the `stats` query show them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, async_graphql::SimpleObject,
)]
pub struct Stats {
    /// HTTP requests received on the GraphQL endpoint.
    pub requests: u64,
    /// Distinct events stored.
    pub events: u64,
    /// `createEvent` calls for an id already stored.
    pub duplicates: u64,
    /// Requests refused for the rate limit.
    pub rate_limited: u64,
    /// Requests failed by `fail_rate` or the outage switch.
    pub failed: u64,
    /// `createEvent` calls refused with a permanent error.
    pub rejected: u64,
    /// `createEvent` calls whose `Idempotency-Key` header was missing or not the event id.
    pub bad_idempotency_keys: u64,
    /// Requests refused 401 for lacking the required header.
    pub unauthorized: u64,
}

/// One stored event: what the target received the first time, and how often it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    pub input: Map<String, Value>,
    pub deliveries: u64,
}

/// The budget left after a request, as the target would announce it.
#[derive(Debug, Clone, Copy)]
enum Left {
    Window {
        remaining: f64,
        reset: Duration,
        limit: f64,
        window: Duration,
    },
    Bucket {
        tokens: f64,
        rate: f64,
        burst: f64,
    },
}

#[derive(Debug)]
enum Limiter {
    Bucket {
        rate: f64,
        burst: f64,
        tokens: f64,
        last: Instant,
    },
    Window {
        limit: f64,
        window: Duration,
        start: Instant,
        used: f64,
    },
}

impl Limiter {
    fn new(limit: Limit, now: Instant) -> Self {
        match limit.window_ms {
            Some(ms) if ms > 0 => Limiter::Window {
                limit: (limit.rate * ms as f64 / 1000.0).max(1.0),
                window: Duration::from_millis(ms),
                start: now,
                used: 0.0,
            },
            _ => {
                let burst = limit.burst.unwrap_or(limit.rate).max(1.0);
                Limiter::Bucket {
                    rate: limit.rate,
                    burst,
                    tokens: burst,
                    last: now,
                }
            }
        }
    }

    /// Takes one request's worth, or says how long until there is one; either way, what is left.
    fn take(&mut self, now: Instant) -> (Result<(), Duration>, Left) {
        match self {
            Limiter::Bucket {
                rate,
                burst,
                tokens,
                last,
            } => {
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * *rate).min(*burst);
                *last = now;
                let taken = if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - *tokens) / *rate))
                };
                let left = Left::Bucket {
                    tokens: *tokens,
                    rate: *rate,
                    burst: *burst,
                };
                (taken, left)
            }
            Limiter::Window {
                limit,
                window,
                start,
                used,
            } => {
                while now.duration_since(*start) >= *window {
                    *start += *window;
                    *used = 0.0;
                }
                let reset = (*start + *window).duration_since(now);
                let taken = if *used < *limit {
                    *used += 1.0;
                    Ok(())
                } else {
                    Err(reset)
                };
                let left = Left::Window {
                    remaining: *limit - *used,
                    reset,
                    limit: *limit,
                    window: *window,
                };
                (taken, left)
            }
        }
    }
}

/// Budget headers in `syntax`, and for GraphQL cost the `extensions.cost` value instead.
fn announce(syntax: Announce, left: Left) -> (Vec<(&'static str, String)>, Option<Value>) {
    let secs = |d: Duration| d.as_secs_f64().ceil() as u64;
    match (syntax, left) {
        (
            Announce::GraphqlCost,
            Left::Bucket {
                tokens,
                rate,
                burst,
            },
        ) => (
            Vec::new(),
            Some(json!({
                "requestedQueryCost": 1, "actualQueryCost": 1,
                "throttleStatus": {"maximumAvailable": burst, "currentlyAvailable": tokens.floor(), "restoreRate": rate}
            })),
        ),
        (
            _,
            Left::Window {
                remaining,
                reset,
                limit,
                window,
            },
        ) => {
            let (remaining, limit, reset_s, window_s) =
                (remaining as u64, limit as u64, secs(reset), secs(window));
            let headers = match syntax {
                Announce::Draft6 => vec![
                    ("ratelimit-limit", format!("{limit}, {limit};w={window_s}")),
                    ("ratelimit-remaining", remaining.to_string()),
                    ("ratelimit-reset", reset_s.to_string()),
                ],
                Announce::Draft8 => vec![
                    (
                        "ratelimit",
                        format!("\"default\";r={remaining};t={reset_s}"),
                    ),
                    (
                        "ratelimit-policy",
                        format!("\"default\";q={limit};w={window_s}"),
                    ),
                ],
                Announce::XRatelimit => vec![
                    ("x-ratelimit-limit", limit.to_string()),
                    ("x-ratelimit-remaining", remaining.to_string()),
                    ("x-ratelimit-reset", reset_s.to_string()),
                ],
                Announce::XRatelimitEpoch | Announce::GraphqlCost => {
                    // The second the window has ended by (rounded up, as servers do: never early).
                    let epoch = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        + reset;
                    vec![
                        ("x-ratelimit-limit", limit.to_string()),
                        ("x-ratelimit-remaining", remaining.to_string()),
                        ("x-ratelimit-reset", epoch.as_secs_f64().ceil().to_string()),
                    ]
                }
            };
            (headers, None)
        }
        // A bucket announced in window terms: what is left, and the time until it is full.
        (
            _,
            Left::Bucket {
                tokens,
                rate,
                burst,
            },
        ) => announce(
            syntax,
            Left::Window {
                remaining: tokens.floor(),
                reset: Duration::from_secs_f64((burst - tokens) / rate),
                limit: burst,
                window: Duration::from_secs_f64(burst / rate),
            },
        ),
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    mode: LimitMode,
    announce: Announce,
    limit: Mutex<(Limit, Limiter)>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    events: Mutex<HashMap<String, Received>>,
    /// `createEvent` calls so far, for the every-Nth faults.
    arrivals: std::sync::atomic::AtomicU64,
    /// Requests in progress, against `concurrency`.
    in_progress: std::sync::atomic::AtomicU32,
    concurrency: Option<u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these cannot leave it half-updated in a way that matters to
    // a test double; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }

    pub(crate) fn rejects(&self, name: &str) -> bool {
        lock(&self.faults).reject_names.iter().any(|n| n == name)
    }

    /// Stores an event (first time) or counts a duplicate; answers whether it was new.
    pub(crate) fn store(&self, id: &str, input: Map<String, Value>) -> bool {
        let (drop_every, duplicate_every) = {
            let faults = lock(&self.faults);
            (faults.drop_every, faults.duplicate_every)
        };
        let mut events = lock(&self.events);
        let nth = self
            .arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if !events.contains_key(id) && drop_every.is_some_and(|n| n > 0 && nth.is_multiple_of(n)) {
            return true;
        }
        if !events.contains_key(id)
            && duplicate_every.is_some_and(|n| n > 0 && nth.is_multiple_of(n))
        {
            events.insert(
                id.to_owned(),
                Received {
                    input,
                    deliveries: 2,
                },
            );
            drop(events);
            self.count(|s| {
                s.events += 1;
                s.duplicates += 1;
            });
            return true;
        }
        let new = match events.get_mut(id) {
            Some(seen) => {
                seen.deliveries += 1;
                false
            }
            None => {
                events.insert(
                    id.to_owned(),
                    Received {
                        input,
                        deliveries: 1,
                    },
                );
                true
            }
        };
        drop(events);
        self.count(|s| {
            if new {
                s.events += 1
            } else {
                s.duplicates += 1
            }
        });
        new
    }

    pub(crate) fn events(&self) -> HashMap<String, Received> {
        lock(&self.events).clone()
    }

    pub(crate) fn stats(&self) -> Stats {
        *lock(&self.stats)
    }
}

/// A running target.
#[derive(Debug)]
pub struct TargetHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TargetHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The GraphQL endpoint relay should deliver to.
    pub fn url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn events(&self) -> HashMap<String, Received> {
        self.shared.events()
    }

    pub fn faults(&self) -> Faults {
        lock(&self.shared.faults).clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Changes the limit now (the bucket starts full, the window empty).
    pub fn set_limit(&self, limit: Limit) {
        *lock(&self.shared.limit) = (limit, Limiter::new(limit, Instant::now()));
    }

    pub fn limit(&self) -> Limit {
        lock(&self.shared.limit).0
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds `listen` and serves the target until [`TargetHandle::stop`].
pub async fn start(listen: SocketAddr, config: TargetConfig) -> std::io::Result<TargetHandle> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let limit = config.limit();
    let shared = Arc::new(Shared {
        mode: config.mode,
        announce: config.announce,
        limit: Mutex::new((limit, Limiter::new(limit, Instant::now()))),
        faults: Mutex::new(config.faults),
        stats: Mutex::new(Stats::default()),
        events: Mutex::new(HashMap::new()),
        arrivals: std::sync::atomic::AtomicU64::new(0),
        in_progress: std::sync::atomic::AtomicU32::new(0),
        concurrency: config.concurrency,
    });
    let app = router(Arc::clone(&shared), config.non_null_mutations);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "target server failed");
        }
    });
    Ok(TargetHandle {
        addr,
        shared,
        stop: Some(stop),
        task,
    })
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    schema: TargetSchema,
    /// With `non_null_mutations`, the schema that executes requests.
    strict: Option<schema::StrictSchema>,
}

fn router(shared: Arc<Shared>, non_null_mutations: bool) -> Router {
    let state = AppState {
        schema: schema::build(Arc::clone(&shared)),
        strict: non_null_mutations.then(|| schema::build_strict(Arc::clone(&shared))),
        shared,
    };
    Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/", get(graphiql).post(graphql))
        .route(
            "/admin/stats",
            get(|State(s): State<AppState>| async move { Json(s.shared.stats()) }),
        )
        .route(
            "/admin/events",
            get(|State(s): State<AppState>| async move { Json(s.shared.events()) }),
        )
        .route(
            "/admin/faults",
            put(put_faults).get(|State(s): State<AppState>| async move {
                Json(lock(&s.shared.faults).clone())
            }),
        )
        .route(
            "/admin/limit",
            put(put_limit)
                .get(|State(s): State<AppState>| async move { Json(lock(&s.shared.limit).0) }),
        )
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(state)
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

async fn put_faults(State(state): State<AppState>, Json(faults): Json<Faults>) -> Json<Faults> {
    *lock(&state.shared.faults) = faults.clone();
    tracing::info!(?faults, "faults changed");
    Json(faults)
}

async fn put_limit(State(state): State<AppState>, Json(limit): Json<Limit>) -> Response {
    if !(limit.rate.is_finite() && limit.rate > 0.0) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "invalid_limit", "message": "rate must be a positive number"})),
        )
            .into_response();
    }
    *lock(&state.shared.limit) = (limit, Limiter::new(limit, Instant::now()));
    tracing::info!(?limit, "limit changed");
    Json(limit).into_response()
}

async fn graphql(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let shared = &state.shared;
    shared.count(|s| s.requests += 1);
    let Some(_in_progress) = InProgress::enter(shared) else {
        shared.count(|s| s.rate_limited += 1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"errors": [{"message": "too many requests in progress"}]})),
        )
            .into_response();
    };
    let faults = lock(&shared.faults).clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if let Some(refused) = injected_failure(shared, &faults, &headers) {
        return refused;
    }
    let (taken, left) = lock(&shared.limit).1.take(Instant::now());
    let (budget_headers, cost) = match shared.mode {
        LimitMode::Headers => announce(shared.announce, left),
        _ => (Vec::new(), None),
    };
    let with_budget = |mut response: Response| {
        for (name, value) in &budget_headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers_mut().insert(*name, value);
            }
        }
        response
    };
    if let Err(wait) = taken {
        shared.count(|s| s.rate_limited += 1);
        return with_budget(throttled(shared.mode, wait, cost.as_ref()));
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"errors": [{"message": format!("invalid GraphQL request: {e}")}]})),
            )
                .into_response();
        }
    };
    if let Some(name) = refused_variable(&request, &faults.refuse_requests_with) {
        shared.count(|s| s.rejected += 1);
        let message =
            format!("Variable \"${name}\" got an invalid value: events of this name are refused");
        return Json(
            json!({"errors": [{"message": message, "extensions": {"code": "BAD_USER_INPUT"}}]}),
        )
        .into_response();
    }
    let keys = idempotency_keys(&headers, &request);
    let request = request.data(keys);
    let mut response = match &state.strict {
        Some(strict) => {
            let mut response = strict
                .execute(request.data(schema::Halted::default()))
                .await;
            // A non-null field failed: its error nulls the whole `data`.
            if !response.errors.is_empty() {
                response.data = async_graphql::Value::Null;
            }
            response
        }
        None => state.schema.execute(request).await,
    };
    if let Some(cost) = cost.and_then(|c| async_graphql::Value::from_json(c).ok()) {
        response.extensions.insert("cost".into(), cost);
    }
    with_budget(Json(response).into_response())
}

/// A request counted in progress until dropped; `None` (and not counted) past `concurrency`.
struct InProgress<'a>(&'a Shared);

impl<'a> InProgress<'a> {
    fn enter(shared: &'a Shared) -> Option<Self> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_progress.fetch_add(1, SeqCst) + 1;
        if shared.concurrency.is_some_and(|limit| now > limit) {
            shared.in_progress.fetch_sub(1, SeqCst);
            return None;
        }
        Some(InProgress(shared))
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0
            .in_progress
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The answer of a target that is down, failing at random, or missing its required header.
fn injected_failure(shared: &Shared, faults: &Faults, headers: &HeaderMap) -> Option<Response> {
    if faults.outage || (faults.fail_rate > 0.0 && fastrand::f64() < faults.fail_rate) {
        shared.count(|s| s.failed += 1);
        let reason = if faults.outage {
            "outage"
        } else {
            "injected failure"
        };
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"errors": [{"message": reason}]})),
            )
                .into_response(),
        );
    }
    let (name, value) = faults.require_header.as_deref()?.split_once(':')?;
    let sent = headers.get(name.trim()).and_then(|v| v.to_str().ok());
    if sent == Some(value.trim()) {
        return None;
    }
    shared.count(|s| s.unauthorized += 1);
    Some(
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"errors": [{"message": format!("missing or wrong {} header", name.trim())}]})),
        )
            .into_response(),
    )
}

/// A request over the limit: 429 with `Retry-After` (whole seconds, RFC 9110), or, for a
/// GraphQL-style limit, 200 with a `THROTTLED` error; GraphQL clients also get the wait.
fn throttled(mode: LimitMode, wait: Duration, cost: Option<&Value>) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let code = match cost {
        Some(_) => "THROTTLED",
        None => "RATE_LIMITED",
    };
    let error =
        json!({"message": "rate limit exceeded", "extensions": {"code": code, "retryAfter": secs}});
    let status = match (mode, cost) {
        (LimitMode::Graphql, _) | (LimitMode::Headers, Some(_)) => StatusCode::OK,
        _ => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut body = json!({"data": null, "errors": [error]});
    if let Some(cost) = cost {
        body["extensions"] = json!({"cost": cost});
    }
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The request's idempotency keys: the `Idempotency-Key` header, and per alias from the
/// `idempotencyKeys` extension (a batch).
fn idempotency_keys(
    headers: &HeaderMap,
    request: &async_graphql::Request,
) -> schema::IdempotencyKey {
    let header = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let by_alias = request
        .extensions
        .get("idempotencyKeys")
        .and_then(|v| v.clone().into_json().ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default();
    schema::IdempotencyKey { header, by_alias }
}

/// The first variable holding an event whose name is in `names`.
fn refused_variable(request: &async_graphql::Request, names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let variables = request.variables.clone().into_value().into_json().ok()?;
    variables.as_object()?.iter().find_map(|(variable, value)| {
        let name = value.get("name")?.as_str()?;
        names.iter().any(|n| n == name).then(|| variable.clone())
    })
}

#[cfg(test)]
mod tests;
