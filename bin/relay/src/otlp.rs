//! OpenTelemetry: `relay up --otlp-endpoint URL` exports one trace per event (its receipt,
//! each attempt, each settlement) and the same metrics as `/metrics`, over OTLP/HTTP
//! (protobuf). The standard `OTEL_EXPORTER_OTLP_*` variables apply (headers, timeout,
//! per-signal endpoints), and `OTEL_EXPORTER_OTLP_ENDPOINT` alone turns it on.
//!
//! An event's steps happen at different times, in different tasks (and on AWS, in different
//! processes), so nothing carries a span from one to the next: the trace id and the root span
//! id are derived from the event id (SHA-256), and each step builds its span with its own
//! start and end. The receipt is the root; attempts and settlements are its children.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use relay_core::telemetry::{Step, Steps};
use relay_core::{AttemptOutcome, Settlement};

#[derive(Debug, Args)]
pub(crate) struct OtlpArgs {
    /// Export traces (one per event: its receipt, each attempt, each settlement) and the
    /// metrics over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (to /v1/traces
    /// and /v1/metrics). The OTEL_EXPORTER_OTLP_* variables apply (headers, timeout, per-signal
    /// endpoints); OTEL_EXPORTER_OTLP_ENDPOINT alone turns the export on too.
    #[arg(
        long,
        env = "RELAY_OTLP_ENDPOINT",
        value_name = "URL",
        help_heading = "Telemetry"
    )]
    otlp_endpoint: Option<String>,
}

impl OtlpArgs {
    /// Whether traces and metrics are exported.
    pub(crate) fn on(&self) -> bool {
        self.otlp_endpoint.is_some()
            || [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|e| !e.is_empty()))
    }

    /// The signal's URL, when `--otlp-endpoint` gives it (else the variables decide).
    fn endpoint(&self, signal: &str) -> Option<String> {
        self.otlp_endpoint
            .as_ref()
            .map(|base| format!("{}/v1/{signal}", base.trim_end_matches('/')))
    }
}

/// The exporters, to be shut down (flushed) when relay stops.
#[derive(Debug)]
pub(crate) struct Otlp {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Otlp {
    /// Starts both exporters and installs the trace steps' exporter; returns the metrics'
    /// recorder, to go beside Prometheus's.
    pub(crate) fn start(
        args: &OtlpArgs,
    ) -> anyhow::Result<(Otlp, metrics_exporter_opentelemetry::Recorder)> {
        let resource = Resource::builder()
            .with_service_name("relay")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let mut spans = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(url) = args.endpoint("traces") {
            spans = spans.with_endpoint(url);
        }
        let spans = spans
            .build()
            .context("--otlp-endpoint: cannot build the trace exporter")?;
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_id_generator(EventIds::default())
            .with_resource(resource.clone())
            .build();
        let mut metrics = opentelemetry_otlp::MetricExporter::builder().with_http();
        if let Some(url) = args.endpoint("metrics") {
            metrics = metrics.with_endpoint(url);
        }
        let metrics = metrics
            .build()
            .context("--otlp-endpoint: cannot build the metric exporter")?;
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics)
            .with_resource(resource)
            .build();
        let recorder =
            metrics_exporter_opentelemetry::Recorder::with_meter(meter_provider.meter("relay"));
        let steps = EventSpans {
            tracer: tracer_provider.tracer("relay"),
        };
        if relay_core::telemetry::set_steps(Box::new(steps)).is_err() {
            anyhow::bail!("the trace exporter was installed twice");
        }
        tracing::info!(endpoint = ?args.otlp_endpoint, "exporting traces and metrics over OTLP");
        Ok((
            Otlp {
                tracer_provider,
                meter_provider,
            },
            recorder,
        ))
    }

    /// Sends what is still buffered, then stops (the exporters block: off the runtime).
    pub(crate) async fn shutdown(self) {
        let done = tokio::task::spawn_blocking(move || {
            if let Err(e) = self.tracer_provider.shutdown() {
                tracing::warn!(error = %e, "OTLP: the last traces were not sent");
            }
            if let Err(e) = self.meter_provider.shutdown() {
                tracing::warn!(error = %e, "OTLP: the last metrics were not sent");
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
    }
}

/// An event's trace id and the id of its root span (its receipt): from the event id alone, so
/// every step finds its trace without sharing state.
pub(crate) fn event_ids(event_id: &str) -> (TraceId, SpanId) {
    let hash = hmac_sha256::Hash::hash(event_id.as_bytes());
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&hash[..16]);
    span.copy_from_slice(&hash[16..24]);
    (TraceId::from_bytes(trace), SpanId::from_bytes(span))
}

thread_local! {
    /// The ids the next root span built on this thread takes (its receipt's).
    static NEXT_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Random ids, except for a receipt's span, which takes the ids derived from its event.
#[derive(Debug, Default)]
struct EventIds(RandomIdGenerator);

impl IdGenerator for EventIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Builds a span for each step.
#[derive(Debug)]
struct EventSpans {
    tracer: SdkTracer,
}

fn unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

impl EventSpans {
    /// A child of the event's receipt.
    fn child(
        &self,
        event_id: &str,
        name: &'static str,
        kind: SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> opentelemetry_sdk::trace::Span {
        let (trace, root) = event_ids(event_id);
        let parent = SpanContext::new(
            trace,
            root,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(parent);
        self.tracer.build_with_context(
            self.tracer
                .span_builder(name)
                .with_kind(kind)
                .with_start_time(start)
                .with_attributes(attributes),
            &cx,
        )
    }
}

impl Steps for EventSpans {
    fn step(&self, step: Step<'_>) {
        use opentelemetry::trace::Span as _;
        match step {
            Step::Received { event_id, at, took } => {
                let (trace, root) = event_ids(event_id);
                NEXT_TRACE.with(|n| n.set(Some(trace)));
                NEXT_SPAN.with(|n| n.set(Some(root)));
                let mut span = self.tracer.build_with_context(
                    self.tracer
                        .span_builder("relay.receive")
                        .with_kind(SpanKind::Server)
                        .with_start_time(at.checked_sub(took).unwrap_or(at))
                        .with_attributes([KeyValue::new("relay.event_id", event_id.to_owned())]),
                    &Context::new(),
                );
                // In case the SDK did not ask (it always does for a root span).
                NEXT_TRACE.with(Cell::take);
                NEXT_SPAN.with(Cell::take);
                span.end_with_timestamp(at);
            }
            Step::Attempted {
                event_id,
                attempt,
                events_in_request,
            } => {
                let start = unix_ms(attempt.started_at);
                let mut attributes = vec![
                    KeyValue::new("relay.event_id", event_id.to_owned()),
                    KeyValue::new("relay.attempt.outcome", attempt.outcome.as_str()),
                    KeyValue::new("relay.attempt.trigger", attempt.trigger.as_str()),
                    KeyValue::new("relay.attempt.detail", attempt.detail.clone()),
                    KeyValue::new("relay.events_in_request", events_in_request as i64),
                ];
                if let Some(status) = attempt.http_status {
                    attributes.push(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                }
                let mut span = self.child(
                    event_id,
                    "relay.attempt",
                    SpanKind::Client,
                    start,
                    attributes,
                );
                if attempt.outcome != AttemptOutcome::Delivered {
                    span.set_status(Status::error(attempt.outcome.as_str()));
                }
                span.end_with_timestamp(start + Duration::from_millis(attempt.duration_ms));
            }
            Step::Settled {
                event_id,
                settlement,
                at,
                took,
            } => {
                let mut attributes = vec![KeyValue::new("relay.event_id", event_id.to_owned())];
                let what = match settlement {
                    Settlement::Delivered => "delivered",
                    Settlement::Retry { at, .. } => {
                        attributes.push(KeyValue::new("relay.retry_at_ms", *at));
                        "retry"
                    }
                    Settlement::Dead { reason } => {
                        attributes.push(KeyValue::new("relay.dead_reason", reason.clone()));
                        "dead"
                    }
                };
                attributes.push(KeyValue::new("relay.settlement", what));
                let start = at.checked_sub(took).unwrap_or(at);
                let mut span = self.child(
                    event_id,
                    "relay.settle",
                    SpanKind::Internal,
                    start,
                    attributes,
                );
                if what == "dead" {
                    span.set_status(Status::error("dead-lettered"));
                }
                span.end_with_timestamp(at);
            }
        }
    }
}
