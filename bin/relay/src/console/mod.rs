//! The web console: `relay console` (over a data directory or a stack), or `relay up --console
//! ADDR` (in the relay's own process). Pages rendered here and shipped in the binary, a JSON API
//! under `/api/v1` that the pages and scripts share (docs/openapi/console.json), and `/metrics`.
//!
//! - **Its own listener and its own token.** Never the ingest port, never an ingest key. A
//!   browser signs in once (`/login`, or the `?token=` of the printed URL) and keeps an
//!   HttpOnly, SameSite=Strict cookie; a script sends `Authorization: Bearer TOKEN`.
//! - **No inline script.** The CSP allows scripts and styles from the console alone; the pages
//!   work without script, which only refreshes the figures, draws the charts and tails events.
//! - **One model.** Every page and API call goes through the `Operations` port, so the console
//!   is the same over the embedded store and over AWS.

mod api;
mod auth;
mod history;
mod pages;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use relay_core::StoreError;
use relay_core::ops::StatusReport;
use tokio::sync::watch;

use crate::ops::{LiveStatus, Ops, StoreArgs};
use crate::telemetry::Exporter;

pub(crate) use auth::AdminArgs;

#[derive(Debug, Args)]
pub(crate) struct ConsoleArgs {
    /// Address to serve the console on. The default keeps it on this machine; off loopback,
    /// put it behind a TLS proxy.
    #[arg(long, env = "RELAY_CONSOLE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    store: StoreArgs,
}

/// What every page and API call reads from.
#[derive(Debug)]
pub(crate) struct Console {
    /// The backend, and its status as of at most 1.5 s ago (shared with `/metrics`).
    live: Arc<LiveStatus>,
    auth: auth::Auth,
    history: history::History,
    /// `/metrics`, when this process records them.
    metrics: Option<Arc<Exporter>>,
    /// Where the state is, for the header: `./relay-data`, `stack relay`.
    place: String,
    /// The `brand` the relay adds, when it runs in this process; shown in what the target
    /// receives.
    brand: Option<String>,
}

impl Console {
    pub(crate) fn new(
        live: Arc<LiveStatus>,
        token: &str,
        metrics: Option<Arc<Exporter>>,
        place: String,
        brand: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Console {
            live,
            auth: auth::Auth::new(token),
            history: history::History::default(),
            metrics,
            place,
            brand,
        })
    }

    /// The backend.
    fn ops(&self) -> &Ops {
        self.live.ops()
    }

    /// Runs a call of the port off the runtime's worker ([`Ops::run`]).
    async fn call<F: std::future::Future>(&self, call: F) -> F::Output {
        self.ops().run(call).await
    }

    /// Forgets the last status read: after a change the next page reads it anew.
    async fn changed(&self) {
        self.live.changed().await;
    }

    /// The status, at most [`LiveStatus::FRESH_FOR`] old, with this process's dispatcher's
    /// live figures.
    async fn status(&self) -> Result<StatusReport, StoreError> {
        self.live.get().await
    }
}

/// The console's routes: pages, API, metrics, assets, behind its sign-in and its headers.
pub(crate) fn router(console: Arc<Console>) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(api::routes())
        .route("/metrics", get(metrics_page))
        .route("/assets/{file}", get(asset))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            auth::require_sign_in,
        ))
        .merge(auth::routes())
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

async fn metrics_page(
    axum::extract::State(console): axum::extract::State<Arc<Console>>,
) -> Response {
    match &console.metrics {
        Some(exporter) => (
            [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
            exporter.render().await,
        )
            .into_response(),
        None => api::ApiError::not_found("this console records no metrics").into_response(),
    }
}

/// The script, the style sheet and the icon, shipped in the binary.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static str, &str) = match file.as_str() {
        "console.js" => (
            include_str!("assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.css" => (
            include_str!("assets/console.css"),
            "text/css; charset=utf-8",
        ),
        "icon.svg" => (include_str!("assets/icon.svg"), "image/svg+xml"),
        _ => return api::ApiError::not_found("no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The console's Content Security Policy: its own scripts, styles and images, nothing inline,
/// no framing, forms only to itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // `same-origin`: with `no-referrer` a browser sends `Origin: null` on a form post, and the
        // post could not be told from another site's.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Serves the console on `listener` until `stop`, behind the same edge as ingest (timeouts, a
/// connection cap), and keeps its last hour of figures.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    console: Arc<Console>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(history::sample(console.clone(), stop.clone()));
    let options = relay_ingest::serve::ServeOptions {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        max_connections: 256,
        tls: None,
    };
    tokio::spawn(relay_ingest::serve::serve(
        listener,
        router(console),
        options,
        async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        },
    ))
}

/// Binds the console's listener, warns off loopback, and says where to open it: the URL with
/// the token when relay made the token (it is on this terminal only), without when it was given.
pub(crate) async fn bind(
    addr: SocketAddr,
    admin: &auth::Token,
) -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("console: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "serving the console off loopback over plain HTTP: put it behind a TLS proxy");
    }
    let url = match admin {
        auth::Token::Made(token) => format!("http://{bound}/?token={token}"),
        auth::Token::Given(_) => format!("http://{bound}/"),
    };
    Ok((listener, url))
}

/// `relay console`: the console over a data directory or a stack, until Ctrl-C.
pub(crate) async fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let token = args.admin.token()?;
    let live = LiveStatus::new(args.store.open().await?, None);
    let metrics = crate::telemetry::install(None)?;
    let exporter = Exporter::new(metrics, live.clone());
    let console = Console::new(
        live,
        token.secret(),
        Some(exporter),
        args.store.place(),
        None,
    );
    let (listener, url) = bind(args.listen, &token).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::signals::stop_requested().await;
        let _ = stop_tx.send(true);
    });
    crate::stdout_line(&format!("relay console on {url}"));
    if let auth::Token::Given(_) = token {
        crate::stdout_line("sign in with the admin token (--admin-token or RELAY_ADMIN_TOKEN)");
    }
    serve(listener, console, stop_rx)
        .await?
        .context("the console failed")?;
    Ok(ExitCode::SUCCESS)
}
