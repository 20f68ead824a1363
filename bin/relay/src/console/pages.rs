//! The console's pages, rendered here: Overview, Events, one event, Dead letters, Target. Each
//! works without script; `assets/console.js` refreshes figures, draws charts and tails events.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use relay_core::hold::CircuitView;
use relay_core::ops::{EventTrace, Operations, StatusReport};
use relay_core::{AttemptOutcome, DeliveryStatus, now_millis};
use serde::Deserialize;

use super::Console;
use super::api::{self, ApiError, EventsParams, Selection};
use super::history::Sample;
use crate::ops::{relative, timestamp};

pub(super) fn routes() -> axum::Router<Arc<Console>> {
    axum::Router::new()
        .route("/", get(overview))
        .route("/events", get(events))
        .route("/events/{id}", get(event))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/confirm", post(confirm))
        .route("/dead-letters/act", post(act))
        .route("/target", get(target))
        .route("/target/pause", post(pause))
        .route("/target/resume", post(resume))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Events,
    DeadLetters,
    Target,
}

/// Every page's head: its title, and the console's own style sheet, script and icon.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · relay console" }
            link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
            link rel="stylesheet" href="/assets/console.css";
            script src="/assets/console.js" defer {}
        }
    }
}

/// A page without the console's navigation (sign-in).
pub(super) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main { (body) } }
        }
    }
}

fn layout(console: &Console, nav: Nav, title: &str, body: Markup) -> Markup {
    let link = |to: Nav, href: &str, text: &str| {
        html! { a href=(href) aria-current=[(nav == to).then_some("page")] { (text) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/" { "relay" }
                    nav {
                        (link(Nav::Overview, "/", "Overview"))
                        (link(Nav::Events, "/events", "Events"))
                        (link(Nav::DeadLetters, "/dead-letters", "Dead letters"))
                        (link(Nav::Target, "/target", "Target"))
                    }
                    span.place title="where the relay's state is" { (console.place) }
                    form method="post" action="/logout" { button.link type="submit" { "Sign out" } }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A store that cannot be read, said on a page.
fn failed(console: &Console, nav: Nav, title: &str, e: &ApiError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        layout(
            console,
            nav,
            title,
            html! { p.error role="alert" { (e.message()) } },
        ),
    )
        .into_response()
}

/// One figure of the overview.
pub(crate) struct Card {
    pub key: &'static str,
    pub label: &'static str,
    pub text: String,
    /// `ok`, `warn`, `bad` or `` (neutral).
    pub tone: &'static str,
}

fn per_s(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}/s")
    } else {
        format!("{v:.1}/s")
    }
}

fn duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "never at this pace".into();
    }
    humantime::format_duration(Duration::from_secs(secs.round() as u64)).to_string()
}

/// The overview's figures, as text, for the page and for `GET /api/v1/overview` alike.
pub(crate) fn cards(status: &StatusReport, now: &Sample) -> Vec<Card> {
    let f = status.forecast();
    let live = status.live_dispatcher();
    let circuit = live.and_then(|d| d.circuit);
    let card = |key, label, text: String, tone| Card {
        key,
        label,
        text,
        tone,
    };
    vec![
        card("ingest", "Ingest", per_s(now.ingest_per_s), ""),
        card("delivered", "Delivered", per_s(now.delivered_per_s), ""),
        card(
            "refused",
            "Refused by the target",
            live.and_then(|d| d.rate_limited)
                .map_or("—".into(), |_| per_s(now.refused_per_s)),
            if now.refused_per_s > 0.0 { "warn" } else { "" },
        ),
        card(
            "rate",
            "Sending at",
            live.map_or("no dispatcher running".into(), |d| per_s(d.rate)),
            if live.is_none() { "bad" } else { "" },
        ),
        card(
            "learned",
            "Learned limit",
            live.and_then(|d| d.estimated_limit)
                .map_or("not learned yet".into(), per_s),
            "",
        ),
        card(
            "concurrency",
            "Learned concurrency",
            live.and_then(|d| d.concurrency_limit)
                .map_or("no limit seen".into(), |c| format!("{c} at once")),
            "",
        ),
        card(
            "backlog",
            "Backlog",
            f.backlog.to_string(),
            if f.backlog > 0 { "warn" } else { "ok" },
        ),
        card(
            "oldest",
            "Oldest waiting",
            f.oldest_age_ms
                .map_or("—".into(), |ms| duration(ms as f64 / 1000.0)),
            if f.passes_max_age { "bad" } else { "" },
        ),
        card(
            "drain",
            "Drains in",
            match f.drain_ms {
                _ if f.backlog == 0 => "nothing waits".into(),
                Some(ms) => duration(ms as f64 / 1000.0),
                None => "never at this pace".into(),
            },
            if f.passes_max_age { "bad" } else { "" },
        ),
        card(
            "dead",
            "Dead letters",
            status.dead.to_string(),
            if status.dead > 0 { "bad" } else { "ok" },
        ),
        card(
            "circuit",
            "Target",
            match circuit {
                Some(CircuitView::Open { .. }) => "DOWN: circuit open".into(),
                Some(CircuitView::HalfOpen { allowed, .. }) => {
                    format!("recovering: {allowed} at once")
                }
                None if live.is_some() => "answering".into(),
                None => "unknown".into(),
            },
            match circuit {
                Some(CircuitView::Open { .. }) => "bad",
                Some(CircuitView::HalfOpen { .. }) => "warn",
                None => "ok",
            },
        ),
        card(
            "paused",
            "Delivery",
            match &status.pause {
                Some(p) => format!("PAUSED by {}", p.by),
                None => "running".into(),
            },
            if status.pause.is_some() { "warn" } else { "ok" },
        ),
    ]
}

/// A chart of the overview: its key, its title, and its series (a field of the history's
/// samples, and its label).
type Chart = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The charts the overview draws from its history.
const CHARTS: &[Chart] = &[
    (
        "throughput",
        "Events per second",
        &[
            ("ingest_per_s", "ingest"),
            ("delivered_per_s", "delivered"),
            ("refused_per_s", "refused"),
        ],
    ),
    (
        "pace",
        "Pace and the learned limit (requests/s)",
        &[("rate", "sending at"), ("learned_rate", "learned limit")],
    ),
    (
        "backlog",
        "Backlog",
        &[("backlog", "waiting"), ("dead_letters", "dead letters")],
    ),
    ("age", "Oldest waiting (s)", &[("oldest_age_s", "age")]),
];

async fn overview(State(console): State<Arc<Console>>) -> Response {
    let o = match api::overview_of(&console).await {
        Ok(o) => o,
        Err(e) => return failed(&console, Nav::Overview, "Overview", &e),
    };
    let now = o.history.last().copied().unwrap_or_default();
    let cards = cards(&o.status, &now);
    let body = html! {
        section data-live="overview" {
            @if let Some(p) = &o.status.pause {
                p.banner.warn role="status" { "Delivery is paused: " (p.describe(timestamp)) ". " a href="/target" { "Resume on the Target page" } }
            }
            div.cards {
                @for c in &cards {
                    div.card data-tone=(c.tone) data-card=(c.key) {
                        span.label { (c.label) }
                        span.value data-k=(c.key) { (c.text) }
                    }
                }
            }
            p.muted { "Updated every 2 s. " span #updated { "As of " (timestamp(o.now)) } }
            div.charts {
                @for (key, title, series) in CHARTS {
                    figure.chart {
                        figcaption { (title) }
                        svg data-chart=(key) data-series=(series.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(",")) viewBox="0 0 600 160" preserveAspectRatio="none" role="img" aria-label=(title) {}
                        ul.legend {
                            @for (i, (_, label)) in series.iter().enumerate() {
                                li data-series-index=(i) { (label) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(&console, Nav::Overview, "Overview", body).into_response()
}

fn status_badge(status: DeliveryStatus) -> Markup {
    html! { span.badge data-status=(status.as_str()) { (status.as_str()) } }
}

/// `?k=v&…` of the events query, with the cursor replaced.
fn events_link(params: &EventsParams, cursor: Option<&str>) -> String {
    let mut p = params.clone();
    p.cursor = cursor.map(str::to_owned);
    let query = serde_urlencoded_like(&p);
    format!("/events?{query}")
}

fn serde_urlencoded_like(p: &EventsParams) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("status", &p.status),
        ("since", &p.since),
        ("until", &p.until),
        ("id_prefix", &p.id_prefix),
        ("field", &p.field),
        ("cursor", &p.cursor),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            s.append_pair(k, v);
        }
    }
    if let Some(limit) = p.limit {
        s.append_pair("limit", &limit.to_string());
    }
    s.finish()
}

async fn events(
    State(console): State<Arc<Console>>,
    Query(params): Query<EventsParams>,
) -> Response {
    let query = params.query();
    let page = match &query {
        Ok(q) => console
            .call(console.ops().events(q))
            .await
            .map_err(ApiError::from),
        Err(_) => Ok(Default::default()),
    };
    let now = now_millis();
    let selected = |v: &str| params.status.as_deref() == Some(v);
    let body = html! {
        form.filters method="get" action="/events" {
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in ["queued", "leased", "delivered", "dead"] {
                        option value=(s) selected[selected(s)] { (s) }
                    }
                }
            }
            label { "Received since" input type="text" name="since" placeholder="30m or 2026-12-05T10:00:00Z" value=[params.since.as_deref()]; }
            label { "until" input type="text" name="until" placeholder="RFC 3339 or 5m" value=[params.until.as_deref()]; }
            label { "Id starts with" input type="text" name="id_prefix" value=[params.id_prefix.as_deref()]; }
            label { "Payload field" input type="text" name="field" placeholder="name=order.created" value=[params.field.as_deref()]; }
            button type="submit" { "Filter" }
            a href="/events" { "Clear" }
        }
        @match (&query, &page) {
            (Err(e), _) | (_, Err(e)) => p.error role="alert" { (e.message()) },
            (Ok(_), Ok(page)) => {
                div.tail {
                    label { input #tail type="checkbox" data-tail=(format!("/api/v1/events?{}", serde_urlencoded_like(&EventsParams { cursor: None, ..params.clone() }))); " Live tail (new events appear on top)" }
                }
                table.events data-live="events" {
                    thead { tr { th { "Event" } th { "Name" } th { "Status" } th { "Received" } th { "Tries" } th { "Last error" } } }
                    tbody {
                        @for e in &page.events {
                            tr data-id=(e.event_id) {
                                td { a href=(format!("/events/{}", urlencode(&e.event_id))) { code { (e.event_id) } } }
                                td { (e.name.as_deref().unwrap_or("")) }
                                td { (status_badge(e.status)) }
                                td title=(timestamp(e.received_at)) { (relative(e.received_at, now)) }
                                td.num { (e.tries) }
                                td.error-text { (e.last_error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                @if page.events.is_empty() {
                    p.muted { "No event here." @if page.next.is_some() { " (Searched " (page.scanned) " events; go on for older ones.)" } }
                }
                p.pager {
                    @if params.cursor.is_some() { a href=(events_link(&params, None)) { "← Newest" } " " }
                    @if let Some(next) = &page.next { a rel="next" href=(events_link(&params, Some(next))) { "Older →" } }
                }
            }
        }
    };
    layout(&console, Nav::Events, "Events", body).into_response()
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn outcome_tone(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Delivered => "ok",
        AttemptOutcome::RateLimited | AttemptOutcome::Transient => "warn",
        AttemptOutcome::Permanent => "bad",
    }
}

async fn event(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let trace = match console.call(console.ops().trace(&id)).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                layout(
                    &console,
                    Nav::Events,
                    "No such event",
                    html! {
                        p { "No event with id " code { (id) } " " (console.place) "." }
                        p { a href="/events" { "Back to the events" } }
                    },
                ),
            )
                .into_response();
        }
        Err(e) => return failed(&console, Nav::Events, "Event", &e.into()),
    };
    let body = timeline(&trace, console.brand.as_deref());
    layout(&console, Nav::Events, &format!("Event {id}"), body).into_response()
}

/// The same story `relay trace` tells, as a timeline.
fn timeline(t: &EventTrace, brand: Option<&str>) -> Markup {
    let d = &t.delivery;
    let now = now_millis();
    let mut sent = t.payload.clone();
    if let (Some(brand), Some(obj)) = (brand, sent.as_object_mut()) {
        obj.insert("brand".into(), brand.into());
    }
    html! {
        div.summary {
            p { (status_badge(d.status)) " after " (d.tries) " attempt(s), " (d.attempts) " counted toward the limit" }
            @if let Some(p) = &t.paused { p.banner.warn { "Held back: " (p.describe(timestamp)) } }
            @if d.status == DeliveryStatus::Dead {
                form method="post" action="/dead-letters/confirm" {
                    input type="hidden" name="action" value="redrive";
                    input type="hidden" name="ids" value=(t.event_id);
                    button type="submit" { "Redrive this event…" }
                }
            }
            @for r in &t.trace_ids { p { "Trace id (" (r.system) "): " code.trace-id { (r.id) } } }
        }
        ol.timeline {
            li data-tone="" {
                time datetime=(timestamp(t.received_at)) { (timestamp(t.received_at)) }
                strong { "Received" }
                @if let Some(early) = &t.acked_before_flush {
                    span.muted { " — answered before its flush to disk" @if let Some(at) = early.flushed_at { ", flushed " (timestamp(at)) } }
                }
            }
            @for a in &t.attempts {
                li data-tone=(outcome_tone(a.outcome)) data-attempt=(a.n) {
                    time datetime=(timestamp(a.started_at)) { (timestamp(a.started_at)) }
                    strong { "Attempt " (a.n) ": " (a.outcome.as_str()) }
                    span.muted { " · " (a.duration_ms) " ms · trigger " (a.trigger) @if let Some(s) = a.http_status { " · HTTP " (s) } }
                    div.detail { (a.detail) }
                }
            }
            @match d.status {
                DeliveryStatus::Delivered => li data-tone="ok" {
                    @if let Some(at) = d.delivered_at { time datetime=(timestamp(at)) { (timestamp(at)) } }
                    strong { "Delivered" }
                },
                DeliveryStatus::Dead => li data-tone="bad" {
                    @if let Some(dl) = &t.dead_letter {
                        time datetime=(timestamp(dl.dead_at)) { (timestamp(dl.dead_at)) }
                        strong { "Dead-lettered" }
                        div.detail { (dl.reason) }
                        @if let Some(last) = &dl.last_response { div.detail.muted { "Last answer: " (last) } }
                    } @else { strong { "Dead-lettered" } }
                },
                DeliveryStatus::Queued => li data-tone="warn" {
                    strong { "Waiting" }
                    @if let Some(at) = d.due_at { span.muted { " — next attempt " (relative(at, now)) " (" (d.next_trigger) ")" } }
                },
                DeliveryStatus::Leased => li data-tone="warn" { strong { "Being sent now" } },
            }
        }
        @if !t.segments.is_empty() {
            h2 { "Trace segments" }
            table {
                thead { tr { th { "Segment" } th { "Start" } th { "Took" } th { "Detail" } } }
                tbody { @for s in &t.segments {
                    tr { td { (s.name) } td { (timestamp(s.start)) } td.num { (s.end - s.start) " ms" } td { code { (s.detail.to_string()) } } }
                } }
            }
        }
        @if let Some(a) = &t.archived { p.muted { "Archived (" (a.why) ") at " (a.location) } }
        h2 { "What the target receives" }
        @if brand.is_some() {
            p.muted { "The event as received, with " code { "brand" } ", as " code { "createEvent(input: …)" } "'s input." }
        } @else {
            p.muted { "The event as received; the relay adds " code { "brand" } " (its " code { "--brand" } ") and sends it as " code { "createEvent(input: …)" } "'s input." }
        }
        pre.payload { (serde_json::to_string_pretty(&sent).unwrap_or_default()) }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeadLetterPage {
    reason: Option<String>,
}

async fn dead_letters(
    State(console): State<Arc<Console>>,
    Query(q): Query<DeadLetterPage>,
) -> Response {
    let groups = match console.call(console.ops().dead_letter_groups()).await {
        Ok(g) => g,
        Err(e) => return failed(&console, Nav::DeadLetters, "Dead letters", &e.into()),
    };
    let reason = q.reason.filter(|r| !r.is_empty());
    let listed = Selection {
        reason: reason.clone(),
        ..Selection::default()
    };
    let letters = match &reason {
        Some(_) => listed.resolve(&console).await,
        None => console
            .call(console.ops().dead_letters(&relay_core::ops::DlqFilter {
                limit: Some(200),
                ..Default::default()
            }))
            .await
            .map_err(ApiError::from),
    };
    let letters = match letters {
        Ok(l) => l,
        Err(e) => return failed(&console, Nav::DeadLetters, "Dead letters", &e),
    };
    let body = html! {
        @if groups.is_empty() { p.banner.ok { "No dead letters." } }
        @else {
            h2 { "By reason" }
            table.groups {
                thead { tr { th { "Reason" } th { "Dead letters" } th { "First" } th { "Last" } th { "All with this reason, dead since…" } } }
                tbody { @for g in &groups {
                    tr {
                        td { a href=(format!("/dead-letters?reason={}", urlencode(&g.reason))) { (g.reason) } }
                        td.num { (g.count) }
                        td { (timestamp(g.first_at)) }
                        td { (timestamp(g.last_at)) }
                        td {
                            form.inline method="post" action="/dead-letters/confirm" {
                                input type="hidden" name="reason" value=(g.reason);
                                input type="text" name="since" placeholder="any time (or 1h, RFC 3339)" aria-label="since";
                                button name="action" value="redrive" type="submit" { "Redrive…" }
                                button.danger name="action" value="purge" type="submit" { "Purge…" }
                            }
                        }
                    }
                } }
            }
            h2 { @if let Some(r) = &reason { "Dead letters: " (r) } @else { "Newest dead letters" } }
            form method="post" action="/dead-letters/confirm" {
                table.letters {
                    thead { tr { th { input #select-all type="checkbox" aria-label="select all"; } th { "Event" } th { "Reason" } th { "Attempts" } th { "Dead at" } th { "Last answer" } } }
                    tbody { @for l in &letters {
                        tr {
                            td { input type="checkbox" name="ids" value=(l.event_id) aria-label=(format!("select {}", l.event_id)); }
                            td { a href=(format!("/events/{}", urlencode(&l.event_id))) { code { (l.event_id) } } }
                            td { (l.reason) }
                            td.num { (l.attempts) }
                            td { (timestamp(l.dead_at)) }
                            td.error-text { (l.last_response.as_deref().unwrap_or("")) }
                        }
                    } }
                }
                p {
                    button name="action" value="redrive" type="submit" { "Redrive selected…" }
                    " "
                    button.danger name="action" value="purge" type="submit" { "Purge selected…" }
                }
            }
        }
    };
    layout(&console, Nav::DeadLetters, "Dead letters", body).into_response()
}

/// A form's fields, repeated ones (`ids`) included.
fn fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

fn selection_of(fields: &[(String, String)]) -> Selection {
    Selection {
        ids: fields
            .iter()
            .filter(|(k, _)| k == "ids")
            .map(|(_, v)| v.clone())
            .collect(),
        reason: field(fields, "reason").map(str::to_owned),
        since: field(fields, "since").map(str::to_owned),
        before: None,
    }
}

/// What a redrive or purge will take, before it is done.
async fn confirm(State(console): State<Arc<Console>>, body: Bytes) -> Response {
    let fields = fields(&body);
    let action = field(&fields, "action").unwrap_or("");
    let selection = selection_of(&fields);
    let title = match action {
        "redrive" => "Redrive dead letters?",
        "purge" => "Purge dead letters?",
        _ => return ApiError::invalid("action: redrive or purge").into_response(),
    };
    let letters = match selection.resolve(&console).await {
        Ok(l) => l,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                layout(
                    &console,
                    Nav::DeadLetters,
                    title,
                    html! {
                        p.error role="alert" { (e.message()) }
                        p { a href="/dead-letters" { "Back to the dead letters" } }
                    },
                ),
            )
                .into_response();
        }
    };
    let what = match (&selection.reason, &selection.since) {
        (Some(r), Some(s)) => format!("every dead letter with the reason “{r}”, dead since {s}"),
        (Some(r), None) => format!("every dead letter with the reason “{r}”"),
        _ => "the selected dead letters".into(),
    };
    let body = html! {
        p.confirm-what { "This takes " strong data-count=(letters.len()) { (letters.len()) " dead letter(s)" } ": " (what) "." }
        @if action == "redrive" {
            p { "Each goes back in the queue with a fresh attempt budget, triggered " code { "redrive" } "." }
        } @else {
            p.warn { "Each is copied to the archive, then removed from the store: it will not be delivered." }
        }
        ul.ids { @for l in letters.iter().take(20) { li { code { (l.event_id) } " — " (l.reason) } } @if letters.len() > 20 { li { "… and " (letters.len() - 20) " more" } } }
        form method="post" action="/dead-letters/act" {
            input type="hidden" name="action" value=(action);
            // The selection as it stands now, by id: what was confirmed is what is done.
            @for l in &letters { input type="hidden" name="ids" value=(l.event_id); }
            button.danger[action == "purge"] type="submit" disabled[letters.is_empty()] {
                @if action == "redrive" { "Redrive " (letters.len()) } @else { "Purge " (letters.len()) }
            }
            " "
            a href="/dead-letters" { "Cancel" }
        }
    };
    layout(&console, Nav::DeadLetters, title, body).into_response()
}

/// Does the confirmed redrive or purge, and says what it did.
async fn act(State(console): State<Arc<Console>>, body: Bytes) -> Response {
    let fields = fields(&body);
    let selection = selection_of(&fields);
    let result = match field(&fields, "action") {
        Some("redrive") => api::redrive_selection(&console, &selection, Duration::ZERO)
            .await
            .map(|r| {
                tracing::info!(redriven = r.redriven.len(), "console: dead letters redriven");
                html! {
                    p.banner.ok role="status" data-done="redrive" { "Redrove " (r.redriven.len()) " dead letter(s): they are queued again." }
                    @if !r.skipped.is_empty() { p.warn { "Skipped " (r.skipped.len()) " that were no longer dead letters: " (r.skipped.join(", ")) } }
                    @if !r.archived.is_empty() { p.warn { (r.archived.len()) " were purged earlier; their copies are in the archive." } }
                    ul.ids { @for id in &r.redriven { li { a href=(format!("/events/{}", urlencode(id))) { code { (id) } } } } }
                }
            }),
        Some("purge") => api::purge_selection(&console, &selection, false)
            .await
            .map(|r| {
                tracing::info!(purged = r.purged.len(), "console: dead letters purged");
                html! {
                    p.banner.ok role="status" data-done="purge" { "Purged " (r.purged.len()) " dead letter(s)." }
                    @if let Some(archive) = &r.archive { p { "Their copies are in " code { (archive) } "." } }
                }
            }),
        _ => Err(ApiError::invalid("action: redrive or purge")),
    };
    let body = match result {
        Ok(done) => done,
        Err(e) => html! { p.error role="alert" { (e.message()) } },
    };
    let body = html! { (body) p { a href="/dead-letters" { "Back to the dead letters" } } };
    layout(&console, Nav::DeadLetters, "Done", body).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct Said {
    said: Option<String>,
}

async fn target(State(console): State<Arc<Console>>, Query(said): Query<Said>) -> Response {
    let t = match api::target_of(&console).await {
        Ok(t) => t,
        Err(e) => return failed(&console, Nav::Target, "Target", &e),
    };
    let d = t.dispatcher.as_ref().filter(|_| t.running);
    let said = match said.said.as_deref() {
        Some("paused") => Some("Paused: nothing is sent until you resume."),
        Some("resumed") => Some("Resumed: the backlog goes at the pace relay had learned."),
        _ => None,
    };
    let body = html! {
        @if let Some(said) = said { p.banner.ok role="status" { (said) } }
        section.health {
            h2 { "Health" }
            @match d.and_then(|d| d.circuit) {
                Some(CircuitView::Open { since, probe_in_ms }) => p.banner.bad data-circuit="open" {
                    "The target looks down: circuit open since " (timestamp(since)) ". Next probe in " (probe_in_ms / 1000) " s; nothing else is sent, nothing is lost."
                },
                Some(CircuitView::HalfOpen { since, allowed }) => p.banner.warn data-circuit="half_open" {
                    "Recovering since " (timestamp(since)) ": " (allowed) " request(s) at once, more as it answers."
                },
                None if d.is_some() => p.banner.ok data-circuit="closed" { "The target answers." },
                None => p.banner.warn { "No dispatcher has reported in the last 10 s: is " code { "relay up" } " running?" },
            }
        }
        section.limits {
            h2 { "What relay has learned" }
            dl {
                dt { "Sending at" } dd { (d.map_or("—".into(), |d| per_s(d.rate))) }
                dt { "Learned limit" } dd { (d.and_then(|d| d.estimated_limit).map_or("not learned yet".into(), per_s)) }
                dt { "Concurrency" } dd { (d.and_then(|d| d.concurrency_limit).map_or("no limit seen".into(), |c| format!("{c} at once"))) }
                dt { "In flight" } dd { (d.map_or(0, |d| d.in_flight)) }
                dt { "Announced budget" } dd { (d.and_then(|d| d.announced).map_or("none announced".into(), |b| b.to_string())) }
                dt { "Refused since start" } dd { (d.and_then(|d| d.rate_limited).map_or("—".into(), |n| n.to_string())) }
            }
            h3 { "What taught it" }
            @let lessons = d.map(|d| d.lessons.as_slice()).unwrap_or_default();
            @if lessons.is_empty() { p.muted { "Nothing yet: no refusal, no announced budget." } }
            @else {
                table.lessons {
                    thead { tr { th { "When" } th { "What" } th { "The answer" } th { "Learned limit after" } } }
                    tbody { @for l in lessons {
                        tr { td { (timestamp(l.at)) } td { (l.kind) } td { (l.detail) } td { (l.learned_rate.map_or("—".into(), per_s)) } }
                    } }
                }
            }
        }
        section.pause {
            h2 { "Pause and resume" }
            @match &t.pause {
                Some(p) => {
                    p.banner.warn data-paused="yes" { "Delivery is " (p.describe(timestamp)) "." }
                    form method="post" action="/target/resume" { button type="submit" { "Resume delivery" } }
                },
                None => {
                    p data-paused="no" { "Delivery runs. A pause holds every event back (they are still accepted) until you resume, across restarts." }
                    form method="post" action="/target/pause" {
                        label { "Why " input type="text" name="reason" placeholder="target migration, OPS-311"; }
                        label { "Who " input type="text" name="by" placeholder="console"; }
                        button type="submit" { "Pause delivery" }
                    }
                },
            }
        }
    };
    layout(&console, Nav::Target, "Target", body).into_response()
}

async fn pause(State(console): State<Arc<Console>>, body: Bytes) -> Response {
    let fields = fields(&body);
    let body = api::PauseBody {
        reason: field(&fields, "reason").map(str::to_owned),
        by: field(&fields, "by").map(str::to_owned),
    };
    match api::pause_now(&console, body).await {
        Ok(_) => Redirect::to("/target?said=paused").into_response(),
        Err(e) => failed(&console, Nav::Target, "Target", &e),
    }
}

async fn resume(State(console): State<Arc<Console>>) -> Response {
    match api::resume_now(&console).await {
        Ok(_) => Redirect::to("/target?said=resumed").into_response(),
        Err(e) => failed(&console, Nav::Target, "Target", &e),
    }
}
