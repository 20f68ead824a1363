//! Prometheus metrics: the recorder that the libraries' `metrics` calls land in, and `GET
//! /metrics` on a listener of its own (`relay up --metrics ADDR`).
//!
//! Counters and histograms are recorded where things happen (ingest, dispatcher, journal).
//! Gauges are set at scrape time from the same status report `relay status` shows (backlog,
//! oldest age, forecast, dead letters), with the live dispatcher's figures when it runs in this
//! process: one read of it, shared with the console, at most 1.5 s old.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use relay_core::telemetry;
use tokio::sync::watch;

use crate::ops::LiveStatus;

/// The exposition format Prometheus scrapes (text, 0.0.4).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds, in seconds, for each histogram: an ingest 2xx is milliseconds (a flush),
/// a target's answer tens to thousands of milliseconds, a flush sub-millisecond to seconds when
/// the disk stalls.
const ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const ATTEMPT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const FLUSH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Installs the process's recorder: Prometheus's, and beside it `also` (OpenTelemetry's, with
/// `--otlp-endpoint`); from here on the libraries' metrics count.
pub(crate) fn install(
    also: Option<metrics_exporter_opentelemetry::Recorder>,
) -> anyhow::Result<PrometheusHandle> {
    use metrics_exporter_prometheus::Matcher::Full;
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Full(telemetry::ACK_SECONDS.into()), ACK_BUCKETS)?
        .set_buckets_for_metric(Full(telemetry::ATTEMPT_SECONDS.into()), ATTEMPT_BUCKETS)?
        .set_buckets_for_metric(Full(telemetry::FLUSH_SECONDS.into()), FLUSH_BUCKETS)?
        .build_recorder();
    let handle = prometheus.handle();
    let installed = match also {
        Some(otel) => metrics::set_global_recorder(
            metrics_util::layers::FanoutBuilder::default()
                .add_recorder(prometheus)
                .add_recorder(otel)
                .build(),
        )
        .map_err(|e| e.to_string()),
        None => metrics::set_global_recorder(prometheus).map_err(|e| e.to_string()),
    };
    installed
        .map_err(anyhow::Error::msg)
        .context("cannot install the metrics recorder")?;
    telemetry::describe();
    Ok(handle)
}

/// What `/metrics` shows: the recorder's figures, and where the gauges are read from (the
/// same status the console shows, one read shared).
#[derive(Debug)]
pub(crate) struct Exporter {
    handle: PrometheusHandle,
    status: Arc<LiveStatus>,
}

impl Exporter {
    pub(crate) fn new(handle: PrometheusHandle, status: Arc<LiveStatus>) -> Arc<Self> {
        Arc::new(Exporter { handle, status })
    }

    /// The page, with the gauges as of the last status read (at most
    /// [`LiveStatus::FRESH_FOR`] old). A store that cannot be read leaves the gauges as they
    /// were and says so in the log; the counters are shown either way.
    pub(crate) async fn render(&self) -> String {
        self.refresh().await;
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Sets the gauges from the status: at each scrape, and every few seconds for OTLP, which
    /// no scrape drives.
    pub(crate) async fn refresh(&self) {
        match self.status.get().await {
            Ok(report) => telemetry::record_status(&report),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the backlog's figures"),
        }
    }
}

/// `GET /metrics`, for the console's router and the metrics listener alike.
pub(crate) fn routes(exporter: Arc<Exporter>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_page))
        .with_state(exporter)
}

async fn metrics_page(State(exporter): State<Arc<Exporter>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        exporter.render().await,
    )
        .into_response()
}

/// Serves `/metrics` on `addr` until `stop`, behind the same edge as ingest (header and body
/// timeouts, a connection cap): a scraper needs few connections.
pub(crate) async fn serve(
    addr: SocketAddr,
    exporter: Arc<Exporter>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "serving /metrics off loopback: anyone who reaches it reads the relay's figures");
    }
    tracing::info!(url = %format!("http://{bound}/metrics"), "Prometheus metrics");
    let options = relay_ingest::serve::ServeOptions {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        max_connections: 64,
        tls: None,
    };
    Ok(tokio::spawn(relay_ingest::serve::serve(
        listener,
        routes(exporter),
        options,
        async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        },
    )))
}
