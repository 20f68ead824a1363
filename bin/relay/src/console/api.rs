//! The console's JSON API, `/api/v1/…`: what the pages show and do, for scripts too. Described
//! by docs/openapi/console.json (served at `/api/v1/openapi.json`); the tests check the two
//! against each other.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use relay_core::hold::Pause;
use relay_core::ops::{
    DeadLetterView, DlqFilter, EventQuery, FieldMatch, Operations, PurgeReport, RedriveReport,
};
use relay_core::{DeliveryStatus, StoreError, UnixMillis};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Console;
use super::history::Sample;

/// Every route of the API, as docs/openapi/console.json must describe it.
#[cfg(test)]
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/overview"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/events/{id}"),
    ("get", "/api/v1/dead-letters"),
    ("get", "/api/v1/dead-letters/groups"),
    ("post", "/api/v1/dead-letters/redrive"),
    ("post", "/api/v1/dead-letters/purge"),
    ("get", "/api/v1/target"),
    ("post", "/api/v1/pause"),
    ("post", "/api/v1/resume"),
    ("get", "/api/v1/openapi.json"),
];

pub(super) fn routes() -> axum::Router<Arc<Console>> {
    axum::Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/{id}", get(event))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/dead-letters/groups", get(groups))
        .route("/api/v1/dead-letters/redrive", post(redrive))
        .route("/api/v1/dead-letters/purge", post(purge))
        .route("/api/v1/target", get(target))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/openapi.json", get(openapi))
        .fallback(|| async { ApiError::not_found("no such route; see /api/v1/openapi.json") })
}

/// `{"error", "message"}`, the shape of every refusal, as ingest's.
#[derive(Debug, Serialize)]
pub(crate) struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => ApiError::invalid(m),
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A time as `--since` takes it: a duration back from now (`30m`) or RFC 3339.
fn time(name: &str, raw: Option<&str>) -> Result<Option<UnixMillis>, ApiError> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(raw) => crate::ops::point_in_time(raw)
            .map(Some)
            .map_err(|e| ApiError::invalid(format!("{name}: {e}"))),
    }
}

fn blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

#[derive(Debug, Serialize)]
pub(crate) struct Overview {
    pub now: UnixMillis,
    pub place: String,
    pub status: relay_core::ops::StatusReport,
    pub forecast: relay_core::ops::Forecast,
    /// The figures the overview's cards show, as text: `{"backlog": "1,204", …}`.
    pub cards: serde_json::Map<String, serde_json::Value>,
    /// The last hour, a sample every 5 s, oldest first; the last one is now.
    pub history: Vec<Sample>,
}

pub(crate) async fn overview_of(console: &Console) -> Result<Overview, ApiError> {
    let status = console.status().await?;
    let mut history = console.history.all();
    let now = Sample::of(&status, history.last());
    history.push(now);
    let cards = super::pages::cards(&status, &now)
        .into_iter()
        .map(|c| (c.key.to_owned(), json!({"text": c.text, "tone": c.tone})))
        .collect();
    Ok(Overview {
        now: status.now,
        place: console.place.clone(),
        forecast: status.forecast(),
        status,
        cards,
        history,
    })
}

async fn overview(State(console): State<Arc<Console>>) -> ApiResult<Overview> {
    Ok(Json(overview_of(&console).await?))
}

/// The query of `GET /api/v1/events` and the Events page.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub(crate) struct EventsParams {
    pub status: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub id_prefix: Option<String>,
    /// `path=value`, a field of the payload.
    pub field: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// Events a page at most.
const MAX_PAGE: usize = 500;

impl EventsParams {
    pub(crate) fn query(&self) -> Result<EventQuery, ApiError> {
        let status = match blank(&self.status) {
            None | Some("any") => None,
            Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status: {s:?} is not one of queued, leased, delivered, dead"
                ))
            })?),
        };
        let field = blank(&self.field)
            .map(FieldMatch::parse)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("field: {e}")))?;
        let limit = self.limit.unwrap_or(50);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit: 1 to {MAX_PAGE}, got {limit}"
            )));
        }
        Ok(EventQuery {
            status,
            since: time("since", self.since.as_deref())?,
            until: time("until", self.until.as_deref())?,
            id_prefix: blank(&self.id_prefix).map(str::to_owned),
            field,
            cursor: blank(&self.cursor).map(str::to_owned),
            limit,
        })
    }
}

async fn events(
    State(console): State<Arc<Console>>,
    Query(params): Query<EventsParams>,
) -> ApiResult<relay_core::ops::EventPage> {
    let query = params.query()?;
    Ok(Json(console.call(console.ops().events(&query)).await?))
}

async fn event(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
) -> ApiResult<relay_core::ops::EventTrace> {
    match console.call(console.ops().trace(&id)).await? {
        Some(trace) => Ok(Json(trace)),
        None => Err(ApiError::not_found(format!("no event with id {id:?}"))),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeadLetterParams {
    pub reason: Option<String>,
    pub since: Option<String>,
    pub before: Option<String>,
    pub limit: Option<usize>,
}

async fn dead_letters(
    State(console): State<Arc<Console>>,
    Query(params): Query<DeadLetterParams>,
) -> ApiResult<Vec<DeadLetterView>> {
    let filter = DlqFilter {
        since: time("since", params.since.as_deref())?,
        before: time("before", params.before.as_deref())?,
        reason: blank(&params.reason).map(str::to_owned),
        limit: Some(params.limit.unwrap_or(100).min(10_000)),
        ..DlqFilter::default()
    };
    Ok(Json(
        console.call(console.ops().dead_letters(&filter)).await?,
    ))
}

async fn groups(
    State(console): State<Arc<Console>>,
) -> ApiResult<Vec<relay_core::ops::DeadLetterGroup>> {
    Ok(Json(
        console.call(console.ops().dead_letter_groups()).await?,
    ))
}

/// Which dead letters a redrive or purge takes: these ids, or all with exactly this reason
/// (dead-lettered since, and before, a time). Never everything by omission.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub(crate) struct Selection {
    #[serde(default)]
    pub ids: Vec<String>,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub before: Option<String>,
}

impl Selection {
    /// The dead letters it takes, as they are now.
    pub(crate) async fn resolve(&self, console: &Console) -> Result<Vec<DeadLetterView>, ApiError> {
        let reason = blank(&self.reason);
        if self.ids.is_empty() && reason.is_none() {
            return Err(ApiError::invalid(
                "say which dead letters: `ids`, or a `reason` (with `since`/`before` if you like)",
            ));
        }
        let filter = DlqFilter {
            since: time("since", self.since.as_deref())?,
            before: time("before", self.before.as_deref())?,
            reason: reason.map(str::to_owned),
            ids: (!self.ids.is_empty()).then(|| self.ids.clone()),
            limit: None,
        };
        let mut letters = console.call(console.ops().dead_letters(&filter)).await?;
        // The store matches a reason as a part; a group is its exact reason.
        if let Some(reason) = reason {
            letters.retain(|l| l.reason == reason);
        }
        Ok(letters)
    }
}

#[derive(Debug, Deserialize)]
struct RedriveBody {
    #[serde(flatten)]
    selection: Selection,
    /// Spread the redriven events' first attempts over this long (`10s`, `5m`).
    spread: Option<String>,
}

pub(crate) async fn redrive_selection(
    console: &Console,
    selection: &Selection,
    spread: Duration,
) -> Result<RedriveReport, ApiError> {
    let letters = selection.resolve(console).await?;
    let mut ids: Vec<String> = letters.into_iter().map(|l| l.event_id).collect();
    // Ids asked for by name that are not dead letters are said to be skipped.
    for id in &selection.ids {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let report = console.call(console.ops().redrive(&ids, spread)).await?;
    console.changed().await;
    Ok(report)
}

async fn redrive(
    State(console): State<Arc<Console>>,
    Json(body): Json<RedriveBody>,
) -> ApiResult<RedriveReport> {
    let spread = match blank(&body.spread) {
        None => Duration::ZERO,
        Some(s) => {
            humantime::parse_duration(s).map_err(|e| ApiError::invalid(format!("spread: {e}")))?
        }
    };
    let report = redrive_selection(&console, &body.selection, spread).await?;
    tracing::info!(
        redriven = report.redriven.len(),
        skipped = report.skipped.len(),
        "console: dead letters redriven"
    );
    Ok(Json(report))
}

#[derive(Debug, Deserialize)]
struct PurgeBody {
    #[serde(flatten)]
    selection: Selection,
    #[serde(default)]
    dry_run: bool,
}

pub(crate) async fn purge_selection(
    console: &Console,
    selection: &Selection,
    dry_run: bool,
) -> Result<PurgeReport, ApiError> {
    let ids: Vec<String> = selection
        .resolve(console)
        .await?
        .into_iter()
        .map(|l| l.event_id)
        .collect();
    if ids.is_empty() {
        return Ok(PurgeReport::default());
    }
    let filter = DlqFilter {
        ids: Some(ids),
        ..DlqFilter::default()
    };
    let report = console.call(console.ops().purge(&filter, dry_run)).await?;
    console.changed().await;
    Ok(report)
}

async fn purge(
    State(console): State<Arc<Console>>,
    Json(body): Json<PurgeBody>,
) -> ApiResult<PurgeReport> {
    let report = purge_selection(&console, &body.selection, body.dry_run).await?;
    if !body.dry_run {
        tracing::info!(purged = report.purged.len(), archive = ?report.archive, "console: dead letters purged");
    }
    Ok(Json(report))
}

#[derive(Debug, Serialize)]
pub(crate) struct Target {
    /// Whether a dispatcher reported in the last 10 s.
    pub running: bool,
    /// Its last report: pace, learned limits, the circuit, what taught it.
    pub dispatcher: Option<relay_core::ops::DispatcherReport>,
    pub pause: Option<Pause>,
}

pub(crate) async fn target_of(console: &Console) -> Result<Target, ApiError> {
    let status = console.status().await?;
    Ok(Target {
        running: status.live_dispatcher().is_some(),
        dispatcher: status.dispatcher,
        pause: status.pause,
    })
}

async fn target(State(console): State<Arc<Console>>) -> ApiResult<Target> {
    Ok(Json(target_of(&console).await?))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PauseBody {
    pub reason: Option<String>,
    pub by: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Paused {
    pub pause: Pause,
    /// It was paused already: this is the pause that stands.
    pub already: bool,
}

pub(crate) async fn pause_now(console: &Console, body: PauseBody) -> Result<Paused, ApiError> {
    let pause = Pause {
        since: relay_core::now_millis(),
        by: blank(&body.by).unwrap_or("console").to_owned(),
        reason: blank(&body.reason).map(str::to_owned),
    };
    let before = console.call(console.ops().pause(pause.clone())).await?;
    console.changed().await;
    if before.is_none() {
        tracing::warn!(by = %pause.by, reason = ?pause.reason, "console: delivery paused");
    }
    Ok(match before {
        Some(standing) => Paused {
            pause: standing,
            already: true,
        },
        None => Paused {
            pause,
            already: false,
        },
    })
}

async fn pause(
    State(console): State<Arc<Console>>,
    body: Option<Json<PauseBody>>,
) -> ApiResult<Paused> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    Ok(Json(pause_now(&console, body).await?))
}

pub(crate) async fn resume_now(console: &Console) -> Result<Option<Pause>, ApiError> {
    let lifted = console.call(console.ops().resume()).await?;
    console.changed().await;
    if lifted.is_some() {
        tracing::warn!("console: delivery resumed");
    }
    Ok(lifted)
}

async fn resume(State(console): State<Arc<Console>>) -> Result<Response, ApiError> {
    let lifted = resume_now(&console).await?;
    Ok(Json(json!({ "resumed": lifted })).into_response())
}

/// The API's own description.
pub(crate) const OPENAPI: &str = include_str!("../../../../docs/openapi/console.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    /// The document lists every route the API serves, and no other.
    #[test]
    fn the_openapi_document_describes_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap_or_default();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .into_iter()
                    .flatten()
                    .map(move |(method, _)| (method.clone(), path.clone()))
            })
            .collect();
        documented.sort();
        let mut routes: Vec<(String, String)> = super::ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
