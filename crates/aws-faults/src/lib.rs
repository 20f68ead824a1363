//! A fault-injecting HTTP proxy in front of a local AWS API (moto), on loopback: every call of
//! relay's AWS SDK clients goes through it, and a share of them meets a fault.
//!
//! The faults are what AWS and networks really do, in the shapes the SDK reads:
//!
//! - **500**: `InternalServerError` (a 500 the SDK retries);
//! - **throttling**: `ThrottlingException` (400; S3: `503 SlowDown`);
//! - **throughput**: DynamoDB's `ProvisionedThroughputExceededException` (400);
//! - **drop before**: the connection closes before the call reaches AWS;
//! - **drop after**: the call is made, then the connection closes before its answer: the
//!   caller cannot know whether it happened (a conditional write that did land, say);
//! - **slow**: the answer comes after a delay.
//!
//! The SDK retries some of these itself; what outlasts its retries is relay's to handle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

/// The faults one call can meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    InternalError,
    Throttling,
    Throughput,
    DropBefore,
    DropAfter,
    Slow,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::InternalError,
        Fault::Throttling,
        Fault::Throughput,
        Fault::DropBefore,
        Fault::DropAfter,
        Fault::Slow,
    ];
}

/// How often calls meet faults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Share of calls (0–1) that meet one, the kinds taken in turn at random.
    pub rate: f64,
    pub faults: Vec<Fault>,
    /// How long a slow answer waits.
    pub slow: Duration,
    pub seed: u64,
    /// Only calls whose `X-Amz-Target` contains this (`UpdateItem`) can meet a fault.
    pub only: Option<String>,
    /// Only the matching calls from the first to the second (counted from 1) can meet one.
    pub window: Option<(u64, u64)>,
}

impl Config {
    pub fn new(rate: f64) -> Self {
        Config {
            rate,
            faults: Fault::ALL.to_vec(),
            slow: Duration::from_secs(2),
            seed: 1,
            only: None,
            window: None,
        }
    }
}

/// What the proxy saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub calls: u64,
    pub injected: u64,
    pub internal_error: u64,
    pub throttling: u64,
    pub throughput: u64,
    pub drop_before: u64,
    pub drop_after: u64,
    pub slow: u64,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    config: Config,
    rng: Mutex<fastrand::Rng>,
    http: reqwest::Client,
    calls: AtomicU64,
    /// Calls that matched `only`.
    matched: AtomicU64,
    counts: [AtomicU64; 6],
}

/// A running proxy: point the SDK's endpoint at [`Proxy::url`].
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Serves on a free loopback port, forwarding to `upstream` (`http://127.0.0.1:5000`).
    pub async fn start(upstream: &str, config: Config) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            config,
            http,
            calls: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            counts: Default::default(),
        });
        let task = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let shared = Arc::clone(&shared);
                            async move { shared.handle(request).await }
                        });
                        // A dropped connection ends here with the error that dropped it.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Ok(Proxy { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        let c = |f: Fault| self.shared.counts[f as usize].load(Relaxed);
        Stats {
            calls: self.shared.calls.load(Relaxed),
            injected: self.shared.counts.iter().map(|c| c.load(Relaxed)).sum(),
            internal_error: c(Fault::InternalError),
            throttling: c(Fault::Throttling),
            throughput: c(Fault::Throughput),
            drop_before: c(Fault::DropBefore),
            drop_after: c(Fault::DropAfter),
            slow: c(Fault::Slow),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service a call is for, as the SDK names it in `X-Amz-Target` (JSON protocols), or by its
/// shape (S3 and X-Ray are REST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    DynamoDb,
    Sqs,
    S3,
    Other,
}

fn service_of(request: &Request<Incoming>) -> Service {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if target.starts_with("DynamoDB") {
        Service::DynamoDb
    } else if target.starts_with("AmazonSQS") {
        Service::Sqs
    } else if request.uri().path().starts_with("/TraceSegments")
        || request.uri().path().starts_with("/Traces")
    {
        Service::Other
    } else if target.is_empty() {
        Service::S3
    } else {
        Service::Other
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

type Answer = Result<Response<Full<Bytes>>, Dropped>;

impl Shared {
    fn choose(&self, service: Service, target: &str) -> Option<Fault> {
        if self
            .config
            .only
            .as_ref()
            .is_some_and(|only| !target.contains(only.as_str()))
        {
            return None;
        }
        let n = self.matched.fetch_add(1, Relaxed) + 1;
        if self
            .config
            .window
            .is_some_and(|(from, to)| !(from..=to).contains(&n))
        {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if rng.f64() >= self.config.rate {
            return None;
        }
        let kinds: Vec<Fault> = self
            .config
            .faults
            .iter()
            .copied()
            .filter(|f| *f != Fault::Throughput || service == Service::DynamoDb)
            .collect();
        (!kinds.is_empty()).then(|| kinds[rng.usize(..kinds.len())])
    }

    async fn handle(&self, request: Request<Incoming>) -> Answer {
        self.calls.fetch_add(1, Relaxed);
        let service = service_of(&request);
        let target = request
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let fault = self.choose(service, &target);
        if let Some(f) = fault {
            self.counts[f as usize].fetch_add(1, Relaxed);
            tracing::debug!(fault = ?f, ?service, "injecting an AWS fault");
        }
        match fault {
            Some(Fault::InternalError) => Ok(error(service, 500, "InternalServerError")),
            Some(Fault::Throttling) if service == Service::S3 => {
                Ok(error(service, 503, "SlowDown"))
            }
            Some(Fault::Throttling) => Ok(error(service, 400, "ThrottlingException")),
            Some(Fault::Throughput) => Ok(error(
                service,
                400,
                "ProvisionedThroughputExceededException",
            )),
            Some(Fault::DropBefore) => Err(Dropped),
            Some(Fault::DropAfter) => {
                let _ = self.forward(request).await;
                Err(Dropped)
            }
            Some(Fault::Slow) => {
                tokio::time::sleep(self.config.slow).await;
                self.forward(request).await
            }
            None => self.forward(request).await,
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Answer {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = self
            .http
            .request(parts.method.clone(), format!("{}{path}", self.upstream))
            .body(body);
        for (name, value) in &parts.headers {
            if !matches!(
                name.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                out = out.header(name, value);
            }
        }
        let answer = out.send().await.map_err(|_| Dropped)?;
        let mut response = Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            if !matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection"
            ) {
                response = response.header(name, value);
            }
        }
        let body = answer.bytes().await.map_err(|_| Dropped)?;
        response.body(Full::new(body)).map_err(|_| Dropped)
    }
}

/// An AWS error answer the SDK reads: JSON for DynamoDB and SQS, XML for S3.
fn error(service: Service, status: u16, code: &str) -> Response<Full<Bytes>> {
    let message = "injected by the fault proxy";
    let (content_type, body) = match service {
        Service::S3 => (
            "application/xml",
            format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>"),
        ),
        Service::DynamoDb => (
            "application/x-amz-json-1.0",
            format!(
                r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"{message}"}}"#
            ),
        ),
        _ => (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"{message}"}}"#),
        ),
    };
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("x-amzn-errortype", code)
        .header("x-amzn-query-error", format!("{code};Sender"))
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
