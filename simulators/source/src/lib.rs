//! A mock of the source application: it POSTs each event exactly once, open-loop at a fixed
//! rate (a slow answer never delays the next send), gives each answer a 500 ms budget and never
//! retries, then reports what was acknowledged and how fast.
//!
//! Latency is measured from when each event was *scheduled* to be sent, so a stalled server
//! shows up in the percentiles instead of silently slowing the sender (coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The ingest endpoint, e.g. `http://127.0.0.1:8080/events`.
    pub url: String,
    pub api_key: String,
    /// Events per second.
    pub rps: f64,
    /// How many events to send in all.
    pub count: u64,
    /// An answer later than this is not an acknowledgement.
    pub budget: Duration,
    /// How long to wait for a late answer, to report it as late rather than lost.
    pub patience: Duration,
    /// Sends beyond this many unanswered requests are skipped (and reported) rather than
    /// queued, so an overloaded server cannot make the sender eat the machine.
    pub max_in_flight: u64,
    /// Event ids are `{prefix}-{n}`.
    pub id_prefix: String,
    /// Size of each event's `body` field.
    pub body_bytes: usize,
    /// Keep the acknowledged ids in the report.
    pub keep_ids: bool,
    /// Send over at most this many connections, one request at a time on each, as wrk2 does.
    /// A send waits for a free connection, and that wait counts in its latency (measured from
    /// the scheduled time). `None`: a new connection whenever all are busy.
    pub connections: Option<usize>,
}

impl SourceConfig {
    pub fn new(url: impl Into<String>, api_key: impl Into<String>, rps: f64, count: u64) -> Self {
        SourceConfig {
            url: url.into(),
            api_key: api_key.into(),
            rps,
            count,
            budget: Duration::from_millis(500),
            patience: Duration::from_secs(5),
            max_in_flight: 10_000,
            id_prefix: format!("sim-{:08x}", fastrand::u32(..)),
            body_bytes: 64,
            keep_ids: false,
            connections: None,
        }
    }
}

/// Live counters, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests sent.
    pub sent: u64,
    /// 2xx within the budget: the events the source believes delivered.
    pub acked: u64,
    /// 2xx after the budget: stored, but the source gave up on them.
    pub late: u64,
    /// Non-2xx answers.
    pub rejected: u64,
    /// No answer (connection error or no answer within `patience`).
    pub errors: u64,
    /// Sends skipped because `max_in_flight` requests were unanswered.
    pub skipped: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Latency of 2xx answers, from scheduled send.
    pub latency_ms: Option<LatencyMs>,
    pub elapsed_s: f64,
    /// Acknowledged events per second over the run.
    pub acked_per_s: f64,
    /// Ids acknowledged within budget (only with `keep_ids`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acked_ids: Vec<String>,
    /// The acknowledged events exactly as sent, in the same order (only with `keep_ids`).
    #[serde(skip)]
    pub acked_events: Vec<serde_json::Value>,
}

impl Report {
    /// Everything sent was acknowledged in time.
    pub fn all_acked(&self) -> bool {
        self.acked == self.sent && self.skipped == 0
    }
}

enum Answer {
    Status(u16, Duration),
    Error,
}

/// Sends `config.count` events at `config.rps` and reports. `progress` is updated live.
pub async fn run(config: SourceConfig, progress: Arc<Progress>) -> Result<Report, reqwest::Error> {
    let mut client = reqwest::Client::builder()
        .timeout(config.patience)
        .tcp_nodelay(true);
    // With a fixed number of connections, at most that many requests are ever in flight, so the
    // pool never holds more.
    if let Some(n) = config.connections {
        client = client.pool_max_idle_per_host(n);
    }
    let client = client.build()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Answered>();
    let start = Instant::now();
    let collector = {
        let mut tally = Tally::new(&config, Arc::clone(&progress));
        tokio::spawn(async move {
            while let Some(answered) = rx.recv().await {
                tally.record(answered);
            }
            tally
        })
    };
    let skipped = send_all(&config, &client, &progress, start, tx).await;
    let tally = collector.await.expect("collector never panics");
    Ok(tally.report(
        config.count - skipped,
        skipped,
        start.elapsed().as_secs_f64(),
    ))
}

/// An event's answer: its number, what came back, and the event as sent (with `keep_ids`).
type Answered = (u64, Answer, Option<serde_json::Value>);

/// Sends every event at its scheduled time, open-loop, each answer to `tx`; returns how many
/// sends were skipped for `max_in_flight`.
async fn send_all(
    config: &SourceConfig,
    client: &reqwest::Client,
    progress: &Progress,
    start: Instant,
    tx: mpsc::UnboundedSender<Answered>,
) -> u64 {
    let connections = config
        .connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    let in_flight = Arc::new(AtomicU64::new(0));
    let body = "x".repeat(config.body_bytes);
    let interval = Duration::from_secs_f64(1.0 / config.rps.max(0.001));
    let mut skipped = 0;
    for n in 0..config.count {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled).await;
        if in_flight.load(Relaxed) >= config.max_in_flight {
            skipped += 1;
            continue;
        }
        in_flight.fetch_add(1, Relaxed);
        progress.sent.fetch_add(1, Relaxed);
        let event = json!({
            "id": format!("{}-{n}", config.id_prefix),
            "name": "sim.event",
            "body": body,
            "timestamp": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
        });
        let request = client
            .post(&config.url)
            .header("x-api-key", &config.api_key)
            .header("content-type", "application/json")
            .body(event.to_string());
        let kept = config.keep_ids.then_some(event);
        let (tx, in_flight, connections) =
            (tx.clone(), Arc::clone(&in_flight), connections.clone());
        tokio::spawn(async move {
            let _connection = match connections {
                Some(c) => Some(c.acquire_owned().await.expect("never closed")),
                None => None,
            };
            let answer = match request.send().await {
                Ok(response) => Answer::Status(response.status().as_u16(), scheduled.elapsed()),
                Err(_) => Answer::Error,
            };
            in_flight.fetch_sub(1, Relaxed);
            let _ = tx.send((n, answer, kept));
        });
    }
    skipped
}

/// The answers counted as they come: acknowledged within the budget, late, rejected or lost.
struct Tally {
    budget: Duration,
    keep_ids: bool,
    prefix: String,
    progress: Arc<Progress>,
    hist: Histogram<u64>,
    acked: u64,
    late: u64,
    rejected: u64,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
    kept: Vec<(u64, String, Option<serde_json::Value>)>,
}

impl Tally {
    fn new(config: &SourceConfig, progress: Arc<Progress>) -> Self {
        Tally {
            budget: config.budget,
            keep_ids: config.keep_ids,
            prefix: config.id_prefix.clone(),
            progress,
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds"),
            acked: 0,
            late: 0,
            rejected: 0,
            errors: 0,
            statuses: BTreeMap::new(),
            kept: Vec::new(),
        }
    }

    fn record(&mut self, (n, answer, sent): Answered) {
        let failed = match answer {
            Answer::Status(status, latency) => {
                *self.statuses.entry(status).or_insert(0) += 1;
                if !(200..300).contains(&status) {
                    self.rejected += 1;
                    true
                } else {
                    self.hist.saturating_record(latency.as_micros() as u64);
                    if latency <= self.budget {
                        self.acked += 1;
                        self.progress.acked.fetch_add(1, Relaxed);
                        if self.keep_ids {
                            self.kept.push((n, format!("{}-{n}", self.prefix), sent));
                        }
                        false
                    } else {
                        self.late += 1;
                        true
                    }
                }
            }
            Answer::Error => {
                self.errors += 1;
                true
            }
        };
        if failed {
            self.progress.failed.fetch_add(1, Relaxed);
        }
    }

    fn report(mut self, sent: u64, skipped: u64, elapsed_s: f64) -> Report {
        self.kept.sort_by_key(|(n, _, _)| *n);
        let (acked_ids, acked_events) = self
            .kept
            .into_iter()
            .map(|(_, id, sent)| (id, sent.unwrap_or_default()))
            .unzip();
        let hist = &self.hist;
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Report {
            sent,
            acked: self.acked,
            late: self.late,
            rejected: self.rejected,
            errors: self.errors,
            skipped,
            statuses: self.statuses,
            latency_ms: (!hist.is_empty()).then(|| LatencyMs {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: hist.max() as f64 / 1000.0,
            }),
            elapsed_s,
            acked_per_s: self.acked as f64 / elapsed_s.max(1e-9),
            acked_ids,
            acked_events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use std::sync::Mutex;

    /// A sink that answers 202, except 503 for every fifth event and slowly for every seventh.
    async fn sink(seen: Arc<Mutex<Vec<String>>>) -> String {
        let app = Router::new().route(
            "/events",
            post(move |body: String| {
                let seen = Arc::clone(&seen);
                async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let id = v["id"].as_str().unwrap().to_owned();
                    let n: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
                    seen.lock().unwrap().push(id);
                    if n % 7 == 6 {
                        tokio::time::sleep(Duration::from_millis(700)).await;
                    }
                    if n % 5 == 4 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::ACCEPTED
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/events")
    }

    #[tokio::test]
    async fn sends_each_event_once_and_accounts_for_every_answer() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = sink(Arc::clone(&seen)).await;
        let mut config = SourceConfig::new(url, "k", 200.0, 70);
        config.keep_ids = true;
        config.id_prefix = "t".into();
        let progress = Arc::new(Progress::default());
        let report = run(config, Arc::clone(&progress)).await.unwrap();

        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 70, "each event sent exactly once");
        // n % 5 == 4 → 14 rejected; n % 7 == 6 and not n % 5 == 4 → 10 − 2 = 8 late.
        assert_eq!(
            (
                report.sent,
                report.rejected,
                report.late,
                report.acked,
                report.errors
            ),
            (70, 14, 8, 48, 0)
        );
        assert_eq!(report.statuses[&503], 14);
        assert_eq!(report.acked_ids.len(), 48);
        assert_eq!(report.acked_events.len(), 48);
        assert!(
            report
                .acked_ids
                .iter()
                .zip(&report.acked_events)
                .all(|(id, e)| e["id"] == id.as_str())
        );
        assert!(report.acked_ids.iter().all(|id| {
            let n: u64 = id[2..].parse().unwrap();
            n % 5 != 4 && n % 7 != 6
        }));
        assert_eq!(progress.acked.load(Relaxed), 48);
        assert!(!report.all_acked());
        assert!(
            report.latency_ms.unwrap().max >= 700.0,
            "late answers show in the latency"
        );
    }

    #[tokio::test]
    async fn no_server_means_errors_not_acks() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        drop(listener);
        let report = run(SourceConfig::new(url, "k", 100.0, 5), Arc::default())
            .await
            .unwrap();
        assert_eq!((report.sent, report.acked, report.errors), (5, 0, 5));
        assert!(report.latency_ms.is_none());
    }
}
