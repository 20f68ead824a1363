//! A mock of the rate-limited GraphQL target relay delivers to.
//!
//! It serves the `createEvent(input: EventInput!)` mutation relay calls by default, limits
//! requests with a token bucket (signalled as HTTP 429 + `Retry-After`, or as GraphQL
//! `RATE_LIMITED` errors), injects faults on cue (503s, latency, permanent errors for chosen
//! event names, an outage switch), keeps every event by id and counts duplicates, so tests can
//! check "delivered once, enriched, unchanged" at the far end.
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
    /// Events with these names get a permanent GraphQL error (`BAD_USER_INPUT`).
    pub reject_names: Vec<String>,
    /// Misbehaviour for proving verifiers can fail: acknowledge every Nth new event but do not
    /// store it, as a target that loses data would.
    pub drop_every: Option<u64>,
    /// Record every Nth new event as delivered twice, as if the relay had sent it twice.
    pub duplicate_every: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    /// Sustained requests per second allowed.
    pub rate: f64,
    /// Bucket size; defaults to one second's worth.
    pub burst: Option<f64>,
    pub mode: LimitMode,
    pub faults: Faults,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            rate: 50.0,
            burst: None,
            mode: LimitMode::Http429,
            faults: Faults::default(),
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
}

/// One stored event: what the target received the first time, and how often it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    pub input: Map<String, Value>,
    pub deliveries: u64,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    mode: LimitMode,
    bucket: Mutex<Bucket>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    events: Mutex<HashMap<String, Received>>,
    /// `createEvent` calls so far, for the every-Nth faults.
    arrivals: std::sync::atomic::AtomicU64,
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
    let shared = Arc::new(Shared {
        mode: config.mode,
        bucket: Mutex::new(Bucket {
            rate: config.rate,
            burst: config.burst.unwrap_or(config.rate).max(1.0),
            tokens: config.burst.unwrap_or(config.rate).max(1.0),
            last: Instant::now(),
        }),
        faults: Mutex::new(config.faults),
        stats: Mutex::new(Stats::default()),
        events: Mutex::new(HashMap::new()),
        arrivals: std::sync::atomic::AtomicU64::new(0),
    });
    let app = router(Arc::clone(&shared));
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
}

fn router(shared: Arc<Shared>) -> Router {
    let state = AppState {
        schema: schema::build(Arc::clone(&shared)),
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

async fn graphql(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let shared = &state.shared;
    shared.count(|s| s.requests += 1);
    let faults = lock(&shared.faults).clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.outage || (faults.fail_rate > 0.0 && fastrand::f64() < faults.fail_rate) {
        shared.count(|s| s.failed += 1);
        let reason = if faults.outage {
            "outage"
        } else {
            "injected failure"
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"errors": [{"message": reason}]})),
        )
            .into_response();
    }
    let limited = lock(&shared.bucket).take(Instant::now());
    if let Err(wait) = limited {
        shared.count(|s| s.rate_limited += 1);
        // Retry-After is whole seconds (RFC 9110); GraphQL clients also get the exact wait.
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let error = json!({"message": "rate limit exceeded", "extensions": {"code": "RATE_LIMITED", "retryAfter": secs}});
        let status = match shared.mode {
            LimitMode::Http429 => StatusCode::TOO_MANY_REQUESTS,
            LimitMode::Graphql => StatusCode::OK,
        };
        let mut response = (status, Json(json!({"data": null, "errors": [error]}))).into_response();
        if shared.mode == LimitMode::Http429 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return response;
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
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = state
        .schema
        .execute(request.data(schema::IdempotencyKey(key)))
        .await;
    Json(response).into_response()
}

#[cfg(test)]
mod tests;
