//! The ingest HTTP API of the contract: `POST /events`, `POST /events/batch` and `GET /health`.
//!
//! [`router`] is generic over the [`Ingest`] port, so the same code answers locally (axum over
//! the embedded store) and in Lambda (over DynamoDB). A 2xx is only ever sent after the port
//! said the event is durable.

mod error;
#[cfg(feature = "server")]
pub mod serve;
pub mod settings;
mod signing;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use relay_core::{
    AcceptOutcome, Event, Ingest, Rejection, event_from_value, parse_event, telemetry,
};
use serde_json::json;
use subtle::ConstantTimeEq;

pub use error::{ApiError, EventId, Refusal};
pub use settings::IngestSettings;
pub use signing::SigningSecret;

/// Largest accepted request body (and batch item).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest accepted batch request body.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most events in one batch request.
pub const MAX_BATCH_ITEMS: usize = 500;
/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Every key that is currently valid. More than one allows rotating keys without downtime.
    pub api_keys: Vec<String>,
    /// How long to wait for the store before answering 503. Keeps every answer inside the
    /// source's 500 ms budget even when the store is stuck.
    pub store_timeout: Duration,
    /// The same for `POST /events/batch`: up to 500 events (on AWS, as many conditional writes)
    /// for senders of backlogs, which have no 500 ms budget. Never shorter than `store_timeout`.
    pub batch_timeout: Duration,
    /// With any, each request must also be signed (Standard Webhooks) under one of them.
    pub signing_secrets: Vec<SigningSecret>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            api_keys: Vec::new(),
            store_timeout: Duration::from_millis(400),
            batch_timeout: Duration::from_secs(5),
            signing_secrets: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct AppState<S> {
    store: S,
    keys: Vec<Vec<u8>>,
    store_timeout: Duration,
    batch_timeout: Duration,
    signing_secrets: Vec<SigningSecret>,
}

/// The ingest API over any store.
pub fn router<S: Ingest>(store: S, config: IngestConfig) -> Router {
    let state = Arc::new(AppState {
        store,
        keys: config
            .api_keys
            .into_iter()
            .map(String::into_bytes)
            .collect(),
        store_timeout: config.store_timeout,
        batch_timeout: config.batch_timeout.max(config.store_timeout),
        signing_secrets: config.signing_secrets,
    });
    Router::new()
        .route("/events", post(post_event::<S>))
        .route("/events/batch", post(post_batch::<S>))
        .route("/health", get(health::<S>))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; try POST /events",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// `200 {"status": "ok"}`, or `503` while the store is failing (it refuses events then), so
/// that a load balancer sends sources elsewhere. The reason stays in the relay's log and
/// `relay status`: this route needs no key.
async fn health<S: Ingest>(State(state): State<Arc<AppState<S>>>) -> Response {
    match state.store.health() {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failing",
                "error": "store_failing",
                "message": "the store cannot make events durable now and refuses them; see `relay status` or the relay's log",
            })),
        )
            .into_response(),
    }
}

/// The 503 for a store that did not take the events, with why as far as a client may know.
fn store_refused(e: &relay_core::StoreError, what: &str) -> ApiError {
    match e {
        relay_core::StoreError::Failing(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_failing",
            format!(
                "the store is failing (it cannot make events durable now), so {what} not acknowledged; try again later"
            ),
        ),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store is unavailable, so {what} not acknowledged"),
        ),
    }
}

async fn post_event<S: Ingest>(
    state: State<Arc<AppState<S>>>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let mut id = None;
    let mut response = accept_event(state, headers, request, &mut id)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(id) = id {
        response.extensions_mut().insert(EventId(id));
    }
    response
}

/// `id` is set once the event is parsed: every answer after that is about it.
async fn accept_event<S: Ingest>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    request: Request,
    event_id: &mut Option<String>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    authorize(&state.keys, &headers)?;
    check_content_type(&headers)?;
    let body = read_body(request.into_body(), &headers, MAX_BODY_BYTES).await?;
    signing::verify(&state.signing_secrets, &headers, &body)?;
    let event = parse_event(&body).map_err(|rejection| match rejection {
        Rejection::NotJson(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
        }
        Rejection::Invalid { field, message } => {
            let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", message);
            match field {
                Some(field) => error.with_field(field),
                None => error,
            }
        }
    })?;
    let id = event.id.clone();
    *event_id = Some(id.clone());
    let outcome = tokio::time::timeout(state.store_timeout, state.store.accept(event))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store did not answer in time; the event may not be stored",
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, event_id = ?id, "store refused an event");
            store_refused(&e, "the event was")
        })?;
    // A conflict is counted with the 409 it is answered, by `observe`.
    if outcome != AcceptOutcome::Conflict {
        count_stored(&outcome);
    }
    if outcome == AcceptOutcome::Accepted {
        telemetry::step(telemetry::Step::Received {
            event_id: &id,
            at: std::time::SystemTime::now(),
            took: started.elapsed(),
        });
    }
    Ok(match outcome {
        AcceptOutcome::Accepted => (
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": "accepted"})),
        )
            .into_response(),
        AcceptOutcome::Duplicate => (
            StatusCode::OK,
            Json(json!({"id": id, "status": "duplicate"})),
        )
            .into_response(),
        AcceptOutcome::Conflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "id_conflict",
                format!("an event with id {id:?} was already accepted with a different payload"),
            )
            .with_field("id"));
        }
    })
}

/// `POST /events/batch`: every valid item is committed, all in one go, before the answer; each
/// item gets its own result, in order. Only what concerns the whole request (key, content type,
/// size, not a JSON array, the store) is answered as an error.
async fn post_batch<S: Ingest>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    authorize(&state.keys, &headers)?;
    check_content_type(&headers)?;
    let body = read_body(request.into_body(), &headers, MAX_BATCH_BYTES).await?;
    signing::verify(&state.signing_secrets, &headers, &body)?;
    let items = batch_items(&body)?;
    let mut results: Vec<Option<serde_json::Value>> = Vec::with_capacity(items.len());
    let mut valid: Vec<Event> = Vec::with_capacity(items.len());
    for item in items {
        match check_item(item) {
            Ok(event) => {
                valid.push(event);
                results.push(None);
            }
            Err(refused) => results.push(Some(refused)),
        }
    }
    let ids: Vec<String> = valid.iter().map(|e| e.id.clone()).collect();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        let count = valid.len();
        tokio::time::timeout(state.batch_timeout, state.store.accept_batch(valid))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store did not answer in time; the events may not be stored",
                )
            })?
            .map_err(|e| {
                tracing::error!(error = %e, events = count, "store refused a batch");
                store_refused(&e, "no event of this batch was")
            })?
    };
    outcomes.iter().for_each(count_stored);
    let (at, took) = (std::time::SystemTime::now(), started.elapsed());
    for (id, outcome) in ids.iter().zip(&outcomes) {
        if *outcome == AcceptOutcome::Accepted {
            telemetry::step(telemetry::Step::Received {
                event_id: id,
                at,
                took,
            });
        }
    }
    for refused in results.iter().flatten() {
        let reason = refused["error"].as_str().unwrap_or("invalid_event");
        metrics::counter!(telemetry::REFUSED, "reason" => reason.to_owned()).increment(1);
    }
    let mut stored = ids.into_iter().zip(outcomes).map(|(id, outcome)| match outcome {
        AcceptOutcome::Accepted => json!({"id": id, "status": "accepted"}),
        AcceptOutcome::Duplicate => json!({"id": id, "status": "duplicate"}),
        AcceptOutcome::Conflict => json!({
            "id": id, "status": "conflict", "error": "id_conflict", "field": "id",
            "message": format!("an event with id {id:?} was already accepted with a different payload"),
        }),
    });
    let results: Vec<serde_json::Value> = results
        .into_iter()
        .map(|r| {
            r.or_else(|| stored.next())
                .unwrap_or(serde_json::Value::Null)
        })
        .collect();
    Ok((StatusCode::OK, Json(json!({ "results": results }))).into_response())
}

/// The batch's items: a JSON array of at most [`MAX_BATCH_ITEMS`], or the error that refuses
/// the whole batch.
fn batch_items(body: &[u8]) -> Result<Vec<serde_json::Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "request body is empty",
        ));
    }
    let items = match serde_json::from_slice(body) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_batch",
                "expected a JSON array of events",
            ));
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("request body is not valid JSON: {e}"),
            ));
        }
    };
    if items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_too_large",
            format!(
                "a batch holds at most {MAX_BATCH_ITEMS} events, got {}; split it",
                items.len()
            ),
        ));
    }
    Ok(items)
}

/// One batch item: the event, or its `invalid` result.
fn check_item(item: serde_json::Value) -> Result<Event, serde_json::Value> {
    let id = item
        .get("id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let invalid = |error: &str, message: String, field: Option<&str>| {
        let mut result = json!({"status": "invalid", "error": error, "message": message});
        if let Some(id) = &id {
            result["id"] = json!(id);
        }
        if let Some(field) = field {
            result["field"] = json!(field);
        }
        result
    };
    let size = serde_json::to_vec(&item).map_or(0, |v| v.len());
    if size > MAX_BODY_BYTES {
        return Err(invalid(
            "payload_too_large",
            format!("event exceeds {} KiB", MAX_BODY_BYTES / 1024),
            None,
        ));
    }
    event_from_value(item).map_err(|rejection| match rejection {
        Rejection::NotJson(message) => invalid("invalid_json", message, None),
        Rejection::Invalid { field, message } => invalid("invalid_event", message, field),
    })
}

/// Whether `given` is one of `keys`. Every key is compared, each in constant time, so timing
/// tells nothing about which key (or how much of one) matched. The API Gateway authorizer uses
/// it too.
pub fn key_matches<K: AsRef<[u8]>>(keys: &[K], given: &[u8]) -> bool {
    keys.iter()
        .fold(0u8, |acc, key| acc | key.as_ref().ct_eq(given).unwrap_u8())
        == 1
}

fn authorize(keys: &[Vec<u8>], headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get(API_KEY_HEADER).map(|v| v.as_bytes());
    if given.is_some_and(|given| key_matches(keys, given)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("missing or wrong `{API_KEY_HEADER}` header"),
        ))
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            // What the client sent is not echoed back: an answer never repeats a header value.
            "Content-Type must be application/json",
        ))
    }
}

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {} KiB", limit / 1024),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) if is_body_timeout(e.as_ref()) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Logs every error answer once, here, rather than wherever it was raised, and counts it by
/// its code; times every 2xx to an ingest route.
async fn observe(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    if let Some(error) = response.extensions().get::<error::Refusal>() {
        let status = response.status().as_u16();
        metrics::counter!(telemetry::REFUSED, "reason" => error.code).increment(1);
        if response.status().is_server_error() {
            tracing::warn!(%method, ?path, status, code = error.code, "request failed");
        } else {
            tracing::debug!(%method, ?path, status, code = error.code, "request refused");
        }
    } else if response.status().is_success() {
        let route = match path.as_str() {
            "/events" => "/events",
            "/events/batch" => "/events/batch",
            _ => return response,
        };
        metrics::histogram!(telemetry::ACK_SECONDS, "route" => route).record(started.elapsed());
    }
    response
}

/// Counts what the store did with each event it was given.
fn count_stored(outcome: &AcceptOutcome) {
    match outcome {
        AcceptOutcome::Accepted => metrics::counter!(telemetry::ACCEPTED).increment(1),
        AcceptOutcome::Duplicate => metrics::counter!(telemetry::DUPLICATES).increment(1),
        AcceptOutcome::Conflict => {
            metrics::counter!(telemetry::REFUSED, "reason" => "id_conflict").increment(1);
        }
    }
}

/// What a request body read fails with once the edge's deadline for it passed (`serve`'s
/// body timeout); the router answers it with `408 body_timeout`.
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within {:?}", self.0)
    }
}

impl std::error::Error for BodyTimeout {}

/// Whether `error`, or what caused it, is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<BodyTimeout>())
}

#[cfg(test)]
mod tests;
