//! X-Ray: one trace per event, from the request that brought it to each call to the target.
//!
//! The receiver takes the trace API Gateway started (the `X-Amzn-Trace-Id` header), or starts
//! one, and stores its id and the receive segment's id on the event's `META` item in the same
//! write that commits it. The forwarder sends each message with the `AWSTraceHeader` system
//! attribute pointing at its own segment (and the same value in the body, since some senders
//! drop system attributes: moto's `SendMessageBatch` does), and a retry re-sends the same
//! header, so every attempt lands in the event's own trace: receive → queue → attempt
//! (→ target), attempt (→ target)…
//!
//! Lambda starts a new trace for each SQS batch and only links it to the events' traces, so the
//! per-event segments are emitted by relay itself, with explicit trace and parent ids. Neither
//! maintained emitter does that: `xray-lite` only adds subsegments to the current invocation,
//! and `opentelemetry-aws` maps OTel spans (and pulls the OTel SDK) where a segment document is
//! all that is needed. So [`Tracer`] writes the documents itself:
//! - to the X-Ray daemon over UDP when `AWS_XRAY_DAEMON_ADDRESS` is set, as in Lambda;
//! - otherwise with `PutTraceSegments`, batched (`relay up --backend aws` outside Lambda).
//!
//! `RELAY_XRAY=off` turns it off. An incoming `Sampled=0` leaves the event untraced.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};

/// A trace to continue: the trace's id and the segment a new one hangs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// `1-5759e988-bd862e3fe1be46a994272793`.
    pub root: String,
    /// A segment's 16 hex digits.
    pub parent: Option<String>,
    /// `Some(false)` when the caller chose not to trace.
    pub sampled: Option<bool>,
}

impl TraceHeader {
    /// Reads `Root=…;Parent=…;Sampled=…` (the `X-Amzn-Trace-Id` header, `AWSTraceHeader`,
    /// `_X_AMZN_TRACE_ID`). Without a well-formed root there is no trace to continue.
    pub fn parse(header: &str) -> Option<Self> {
        let mut root = None;
        let mut parent = None;
        let mut sampled = None;
        for part in header.split(';') {
            match part.trim().split_once('=') {
                Some(("Root", v)) if is_trace_id(v) => root = Some(v.to_owned()),
                Some(("Parent", v)) if is_segment_id(v) => parent = Some(v.to_owned()),
                Some(("Sampled", "1")) => sampled = Some(true),
                Some(("Sampled", "0")) => sampled = Some(false),
                _ => {}
            }
        }
        Some(TraceHeader {
            root: root?,
            parent,
            sampled,
        })
    }

    /// A new trace, started here.
    pub fn start() -> Self {
        TraceHeader {
            root: new_trace_id(),
            parent: None,
            sampled: Some(true),
        }
    }

    /// The same trace, continued under `segment`.
    pub fn under(&self, segment: &str) -> Self {
        TraceHeader {
            root: self.root.clone(),
            parent: Some(segment.to_owned()),
            sampled: self.sampled,
        }
    }

    pub fn is_sampled(&self) -> bool {
        self.sampled != Some(false)
    }
}

impl std::fmt::Display for TraceHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Root={}", self.root)?;
        if let Some(parent) = &self.parent {
            write!(f, ";Parent={parent}")?;
        }
        match self.sampled {
            Some(true) => write!(f, ";Sampled=1"),
            Some(false) => write!(f, ";Sampled=0"),
            None => Ok(()),
        }
    }
}

/// `1-{8 hex: epoch seconds}-{24 hex}`.
fn is_trace_id(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    matches!(parts.as_slice(), ["1", time, unique]
        if time.len() == 8 && unique.len() == 24 && is_hex(time) && is_hex(unique))
}

fn is_segment_id(v: &str) -> bool {
    v.len() == 16 && is_hex(v)
}

fn is_hex(v: &str) -> bool {
    v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new trace id, as X-Ray makes them.
pub fn new_trace_id() -> String {
    let secs = relay_core::now_millis() / 1000;
    format!(
        "1-{secs:08x}-{:08x}{:016x}",
        fastrand::u32(..),
        fastrand::u64(..)
    )
}

/// A new segment id.
pub fn new_segment_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn seconds(at_ms: i64) -> f64 {
    at_ms as f64 / 1000.0
}

/// One segment document: a unit of work in an event's trace.
#[derive(Debug, Clone)]
pub struct Segment {
    doc: Map<String, Value>,
}

impl Segment {
    /// A finished segment of `trace`, hanging under its parent, from `start_ms` to `end_ms`.
    pub fn new(name: &str, id: String, trace: &TraceHeader, start_ms: i64, end_ms: i64) -> Self {
        let mut doc = Map::new();
        doc.insert("name".into(), json!(name));
        doc.insert("id".into(), json!(id));
        doc.insert("trace_id".into(), json!(trace.root));
        if let Some(parent) = &trace.parent {
            doc.insert("parent_id".into(), json!(parent));
        }
        doc.insert("start_time".into(), json!(seconds(start_ms)));
        // Always ended: a trace of unfinished segments cannot be read back.
        doc.insert("end_time".into(), json!(seconds(end_ms.max(start_ms))));
        doc.insert("origin".into(), json!("relay"));
        Segment { doc }
    }

    pub fn id(&self) -> &str {
        self.doc.get("id").and_then(Value::as_str).unwrap_or("")
    }

    /// An indexed key: `annotation.event_id = "…"` finds the trace in the console.
    pub fn annotate(mut self, key: &str, value: impl Into<Value>) -> Self {
        let annotations = self.doc.entry("annotations").or_insert_with(|| json!({}));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(key.into(), value.into());
        }
        self
    }

    pub fn metadata(mut self, key: &str, value: impl Into<Value>) -> Self {
        let metadata = self
            .doc
            .entry("metadata")
            .or_insert_with(|| json!({"relay": {}}));
        if let Some(map) = metadata
            .pointer_mut("/relay")
            .and_then(Value::as_object_mut)
        {
            map.insert(key.into(), value.into());
        }
        self
    }

    /// The HTTP exchange this segment stands for.
    pub fn http(mut self, method: &str, url: Option<&str>, status: Option<u16>) -> Self {
        let mut request = json!({ "method": method });
        if let Some(url) = url {
            request["url"] = json!(url);
        }
        let mut http = json!({ "request": request });
        if let Some(status) = status {
            http["response"] = json!({ "status": status });
        }
        self.doc.insert("http".into(), http);
        self
    }

    /// X-Ray's flags: `throttle` (429-like), `error` (4xx-like) or `fault` (5xx-like).
    pub fn flag(mut self, flag: Flag) -> Self {
        let (key, also_error) = match flag {
            Flag::Throttle => ("throttle", true),
            Flag::Error => ("error", false),
            Flag::Fault => ("fault", false),
        };
        self.doc.insert(key.into(), json!(true));
        if also_error {
            self.doc.insert("error".into(), json!(true));
        }
        self
    }

    /// A nested subsegment (`namespace`: `aws` or `remote`).
    pub fn subsegment(mut self, sub: Segment, namespace: &str) -> Self {
        let mut doc = sub.doc;
        doc.remove("trace_id");
        doc.remove("parent_id");
        doc.remove("origin");
        doc.insert("namespace".into(), json!(namespace));
        let subs = self.doc.entry("subsegments").or_insert_with(|| json!([]));
        if let Some(list) = subs.as_array_mut() {
            list.push(Value::Object(doc));
        }
        self
    }

    pub fn to_json(&self) -> String {
        Value::Object(self.doc.clone()).to_string()
    }
}

/// What went wrong in a segment, in X-Ray's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Throttle,
    Error,
    Fault,
}

/// Where segments go. Cheap to clone; emitting never waits on the network.
#[derive(Debug, Clone)]
pub struct Tracer {
    sink: Arc<Sink>,
}

#[derive(Debug)]
enum Sink {
    Off,
    /// The X-Ray daemon (Lambda's, or a local one): a datagram per segment.
    Daemon {
        socket: UdpSocket,
        to: SocketAddr,
    },
    /// `PutTraceSegments`, a batch of what gathered since the last call.
    Api {
        client: aws_sdk_xray::Client,
        pending: Mutex<Vec<String>>,
        /// One call at a time; a flush waits for the one out.
        sending: tokio::sync::Mutex<()>,
    },
}

/// `PutTraceSegments` takes at most 50 documents per call.
const API_BATCH: usize = 50;

impl Tracer {
    pub fn off() -> Self {
        Tracer {
            sink: Arc::new(Sink::Off),
        }
    }

    /// Segments to the daemon at `to`, over UDP.
    pub fn daemon(to: SocketAddr) -> std::io::Result<Self> {
        let local: SocketAddr = if to.ip().is_loopback() {
            ([127, 0, 0, 1], 0).into()
        } else {
            ([0, 0, 0, 0], 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        Ok(Tracer {
            sink: Arc::new(Sink::Daemon { socket, to }),
        })
    }

    /// Segments to the X-Ray API, sent every 250 ms and on [`Tracer::flush`]. Needs a Tokio
    /// runtime.
    pub fn api(client: aws_sdk_xray::Client) -> Self {
        let tracer = Tracer {
            sink: Arc::new(Sink::Api {
                client,
                pending: Mutex::default(),
                sending: tokio::sync::Mutex::const_new(()),
            }),
        };
        let weak = Arc::downgrade(&tracer.sink);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(sink) = weak.upgrade() else { return };
                Tracer { sink }.flush().await;
            }
        });
        tracer
    }

    /// As the environment says: `RELAY_XRAY=off`, the daemon at `AWS_XRAY_DAEMON_ADDRESS`
    /// (`host:port`, or Lambda's `udp:host:port tcp:host:port`), or else the API.
    pub fn from_env(config: &aws_config::SdkConfig) -> Self {
        if std::env::var("RELAY_XRAY").is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
            return Tracer::off();
        }
        if let Ok(address) = std::env::var("AWS_XRAY_DAEMON_ADDRESS") {
            match daemon_address(&address).map(Tracer::daemon) {
                Some(Ok(tracer)) => return tracer,
                Some(Err(e)) => {
                    tracing::warn!(%address, error = %e, "cannot reach the X-Ray daemon; not tracing")
                }
                None => {
                    tracing::warn!(%address, "AWS_XRAY_DAEMON_ADDRESS is not host:port; not tracing")
                }
            }
            return Tracer::off();
        }
        Tracer::api(aws_sdk_xray::Client::new(config))
    }

    pub fn is_on(&self) -> bool {
        !matches!(*self.sink, Sink::Off)
    }

    /// Sends `segment` (soon, for the API). A lost segment is logged, never an error: tracing
    /// must not fail a delivery.
    pub fn emit(&self, segment: &Segment) {
        match &*self.sink {
            Sink::Off => {}
            Sink::Daemon { socket, to } => {
                let datagram = format!(
                    "{{\"format\": \"json\", \"version\": 1}}\n{}",
                    segment.to_json()
                );
                if let Err(e) = socket.send_to(datagram.as_bytes(), to) {
                    tracing::debug!(error = %e, "an X-Ray segment was not sent");
                }
            }
            Sink::Api { pending, .. } => {
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(segment.to_json());
            }
        }
    }

    /// Sends what is pending, before a Lambda function is frozen or a process ends.
    pub async fn flush(&self) {
        let Sink::Api {
            client,
            pending,
            sending,
        } = &*self.sink
        else {
            return;
        };
        let _one_at_a_time = sending.lock().await;
        let documents = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
        for chunk in documents.chunks(API_BATCH) {
            match client
                .put_trace_segments()
                .set_trace_segment_documents(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(out) if !out.unprocessed_trace_segments().is_empty() => tracing::warn!(
                    refused = out.unprocessed_trace_segments().len(),
                    first = ?out.unprocessed_trace_segments().first(),
                    "X-Ray refused some segments"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %crate::AwsError::from_sdk("X-Ray", e),
                    segments = chunk.len(),
                    "X-Ray segments were not sent"
                ),
            }
        }
    }
}

/// `127.0.0.1:2000`, or Lambda's `udp:169.254.79.129:2000 tcp:…`.
fn daemon_address(address: &str) -> Option<SocketAddr> {
    let udp = address
        .split_whitespace()
        .find_map(|part| part.strip_prefix("udp:"))
        .unwrap_or(address);
    udp.parse().ok()
}

/// The X-Ray trace an event was stored with (its `META` item's `trace_id`), if it has one.
pub async fn trace_id_of(
    aws: &crate::Aws,
    event_id: &str,
) -> Result<Option<String>, crate::AwsError> {
    let item = aws
        .dynamodb
        .get_item()
        .table_name(&aws.stack.events_table)
        .set_key(Some(crate::items::key(event_id, crate::items::META)))
        .projection_expression("trace_id")
        .send()
        .await
        .map_err(|e| crate::AwsError::from_sdk("the events table", e))?
        .item;
    Ok(item.and_then(|i| crate::items::get_s(&i, "trace_id").map(str::to_owned)))
}

/// A trace's segment documents, oldest first (`BatchGetTraces`); empty while X-Ray has none.
pub async fn fetch_trace(aws: &crate::Aws, trace_id: &str) -> Result<Vec<Value>, crate::AwsError> {
    let out = aws
        .xray
        .batch_get_traces()
        .trace_ids(trace_id)
        .send()
        .await
        .map_err(|e| crate::AwsError::from_sdk("X-Ray", e))?;
    let mut segments: Vec<Value> = out
        .traces()
        .iter()
        .flat_map(|t| t.segments())
        .filter_map(|s| serde_json::from_str(s.document()?).ok())
        .collect();
    segments.sort_by(|a, b| {
        let at = |v: &Value| v["start_time"].as_f64().unwrap_or(0.0);
        at(a).total_cmp(&at(b))
    });
    Ok(segments)
}

tokio::task_local! {
    static RECEIVING: Receiving;
}

/// The trace of the request being received, while the ingest router handles it.
#[derive(Debug, Clone)]
pub struct Receiving {
    /// The trace the event is stored with: the caller's root, under the receive segment.
    pub stored: TraceHeader,
    /// The receive segment's parent (API Gateway's segment), if the request came with one.
    pub parent: Option<String>,
    /// When the commit started and ended, for the receive segment's subsegment.
    pub commit: Arc<Mutex<Option<(i64, i64)>>>,
}

impl Receiving {
    /// From a request's `X-Amzn-Trace-Id` header, or a new trace. `None` when the caller
    /// chose not to sample it.
    pub fn from_header(header: Option<&str>) -> Option<Self> {
        let incoming = header
            .and_then(TraceHeader::parse)
            .unwrap_or_else(TraceHeader::start);
        if !incoming.is_sampled() {
            return None;
        }
        Some(Receiving {
            stored: incoming.under(&new_segment_id()),
            parent: incoming.parent.clone(),
            commit: Arc::default(),
        })
    }

    /// Runs `work` with this as the current request's trace.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        RECEIVING.scope(self, work).await
    }

    /// The current request's trace, inside [`Receiving::scope`].
    pub fn current() -> Option<Self> {
        RECEIVING.try_with(Clone::clone).ok()
    }

    pub fn record_commit(&self, started: i64, ended: i64) {
        *self.commit.lock().unwrap_or_else(|p| p.into_inner()) = Some((started, ended));
    }

    /// The receive segment of an accepted event.
    pub fn segment(&self, event_id: &str, started: i64, ended: i64, status: u16) -> Segment {
        let mut at_root = self.stored.clone();
        at_root.parent = self.parent.clone();
        let id = self.stored.parent.clone().unwrap_or_else(new_segment_id);
        let mut segment = Segment::new("relay-receiver", id, &at_root, started, ended)
            .annotate("event_id", event_id)
            .http("POST", Some("/events"), Some(status));
        let commit = *self.commit.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((from, to)) = commit {
            let put = Segment::new("DynamoDB", new_segment_id(), &at_root, from, to)
                .metadata("operation", "PutItem");
            segment = segment.subsegment(put, "aws");
        }
        segment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_and_writes_back_the_same() {
        let text = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let header = TraceHeader::parse(text).unwrap();
        assert_eq!(header.root, "1-5759e988-bd862e3fe1be46a994272793");
        assert_eq!(header.parent.as_deref(), Some("53995c3f42cd8ad8"));
        assert!(header.is_sampled());
        assert_eq!(header.to_string(), text);
    }

    #[test]
    fn a_header_without_a_well_formed_root_is_no_trace() {
        assert_eq!(
            TraceHeader::parse("Parent=53995c3f42cd8ad8;Sampled=1"),
            None
        );
        assert_eq!(TraceHeader::parse("Root=1-xyz-abc"), None);
        assert_eq!(TraceHeader::parse(""), None);
        // Unknown keys (Lineage, Self) are ignored, a bad parent is dropped.
        let h =
            TraceHeader::parse("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=zz;Lineage=a:1")
                .unwrap();
        assert_eq!(h.parent, None);
    }

    #[test]
    fn new_ids_have_x_rays_shapes() {
        for _ in 0..100 {
            assert!(is_trace_id(&new_trace_id()), "{}", new_trace_id());
            assert!(is_segment_id(&new_segment_id()));
        }
        assert_ne!(new_trace_id(), new_trace_id());
    }

    #[test]
    fn an_unsampled_request_is_not_traced() {
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0";
        assert!(Receiving::from_header(Some(header)).is_none());
        let traced = Receiving::from_header(None).unwrap();
        assert!(
            traced.stored.parent.is_some(),
            "stored under the receive segment"
        );
    }

    #[test]
    fn lambdas_daemon_address_is_read() {
        assert_eq!(
            daemon_address("udp:169.254.79.129:2000 tcp:169.254.79.129:2000"),
            Some("169.254.79.129:2000".parse().unwrap())
        );
        assert_eq!(
            daemon_address("127.0.0.1:2000"),
            Some("127.0.0.1:2000".parse().unwrap())
        );
        assert_eq!(daemon_address("nowhere"), None);
    }

    #[test]
    fn a_segment_is_ended_and_its_subsegments_nested() {
        let trace = TraceHeader::start().under("53995c3f42cd8ad8");
        let target = Segment::new("target", new_segment_id(), &trace, 1_000, 1_050);
        let doc: Value = serde_json::from_str(
            &Segment::new("relay-dispatcher", new_segment_id(), &trace, 1_000, 1_060)
                .annotate("event_id", "e-1")
                .flag(Flag::Throttle)
                .subsegment(target, "remote")
                .to_json(),
        )
        .unwrap();
        assert_eq!(doc["trace_id"], json!(trace.root));
        assert_eq!(doc["parent_id"], json!("53995c3f42cd8ad8"));
        assert_eq!(doc["end_time"], json!(1.06));
        assert_eq!(doc["annotations"]["event_id"], json!("e-1"));
        assert_eq!(doc["throttle"], json!(true));
        assert_eq!(doc["subsegments"][0]["namespace"], json!("remote"));
        assert!(doc["subsegments"][0].get("trace_id").is_none());
    }
}
