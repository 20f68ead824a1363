//! `relay up`: the ingest API and the dispatcher, until SIGTERM/SIGINT: over one embedded store
//! (`--backend local`), or as the AWS handlers in one process against a stack's resources
//! (`--backend aws`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use relay_core::DeliveryPolicy;
use relay_core::backoff::Backoff;
use relay_core::ops::DispatcherReport;
use relay_core::rate::RateConfig;
use relay_dispatch::{
    DEFAULT_DOCUMENT, DispatchConfig, Dispatcher, GraphqlClient, MetricsSnapshot, TargetConfig,
};
use relay_ingest::IngestConfig;
use relay_store::{Durability, FlushStats, SqliteStore, StoreOptions};
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::watch;

use crate::args;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Address to serve the ingest API on (POST /events, GET /health). Port 0 picks a free port.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    #[command(flatten)]
    edge: EdgeArgs,

    /// GraphQL endpoint events are delivered to.
    #[arg(long, env = "RELAY_TARGET_URL", value_parser = args::http_url)]
    target_url: String,

    /// API key clients must send as `x-api-key`. Repeat or comma-separate to accept several
    /// (rotate keys without downtime).
    #[arg(long = "api-key", env = "RELAY_API_KEY", required = true, value_delimiter = ',', hide_env_values = true, value_parser = args::non_empty)]
    api_keys: Vec<String>,

    /// Also require every request to be signed the Standard Webhooks way (`webhook-id`,
    /// `webhook-timestamp` within 5 minutes, `webhook-signature: v1,…`) with this secret
    /// (`whsec_…`). Repeat or comma-separate to accept two during a rotation.
    #[arg(
        long = "signing-secret",
        env = "RELAY_SIGNING_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "WHSEC"
    )]
    signing_secrets: Vec<String>,

    /// Where events are kept: the embedded store in --data-dir (local), or a stack's DynamoDB
    /// table and SQS queues (aws: the receiver, outbox and dispatcher handlers in this process).
    #[arg(long, env = "RELAY_BACKEND", value_enum, default_value = "local")]
    backend: Backend,

    /// Directory of the embedded store; created if missing. One `relay up` per directory.
    /// Required with --backend local.
    #[arg(long, env = "RELAY_DATA_DIR", required_if_eq("backend", "local"))]
    data_dir: Option<PathBuf>,

    #[command(flatten)]
    aws: crate::aws::AwsArgs,

    /// With --backend aws: create the stack's tables, stream and queues when missing (for a
    /// local AWS API; in an account, Terraform owns them).
    #[arg(long, env = "RELAY_CREATE_RESOURCES")]
    create_resources: bool,

    /// Never send more than this many requests/s to the target (with --batch, each request
    /// holds up to that many events). The relay still slows down when the target asks. Without
    /// it, the relay discovers the limit.
    #[arg(long, env = "RELAY_TARGET_RATE", value_parser = args::positive_rate)]
    target_rate: Option<f64>,

    /// Value of the `brand` field added to every event.
    #[arg(long, env = "RELAY_BRAND", default_value = "testBrand")]
    brand: String,

    /// GraphQL document sent for each event (the event is `$input`), or @FILE to read it.
    /// Only with --batch 1: batches are relay's own aliased mutations.
    #[arg(long, env = "RELAY_DOCUMENT", default_value = DEFAULT_DOCUMENT)]
    document: String,

    /// Up to this many events in one request, as aliased mutations (`e0: createEvent(input:
    /// $e0) { id } e1: …`), for one rate token: for targets whose limit counts requests. Each
    /// event's answer is its own: a refused event is dead-lettered alone.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=500))]
    batch: u16,

    /// Extra header on every request to the target, as 'Name: value'; repeatable.
    /// Example: --header 'Authorization: Bearer abc'. In the environment, one header per line.
    #[arg(long = "header", env = "RELAY_HEADERS", value_delimiter = '\n', hide_env_values = true, value_parser = args::header)]
    headers: Vec<(String, String)>,

    /// Headers for the target (credentials) read at start from AWS: secretsmanager:NAME (or
    /// ARN) or ssm:/PARAMETER/NAME. The value is a JSON object ({"Authorization": "Bearer …"})
    /// or one 'Name: value' per line. Uses the AWS options below, with either backend.
    #[arg(long, env = "RELAY_HEADER_SECRET", value_name = "REF", value_parser = clap::value_parser!(relay_aws::secrets::SecretRef))]
    header_secret: Option<relay_aws::secrets::SecretRef>,

    /// Attempts before an event goes to the dead-letter queue. Rate-limited answers do not count.
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,

    /// Oldest an undelivered event may get before it goes to the dead-letter queue.
    #[arg(long, env = "RELAY_MAX_AGE", default_value = "24h", value_parser = args::duration)]
    max_age: Duration,

    /// Timeout of one request to the target.
    #[arg(long, env = "RELAY_TARGET_TIMEOUT", default_value = "10s", value_parser = args::duration)]
    target_timeout: Duration,

    /// Most requests to the target in flight at once.
    #[arg(long, env = "RELAY_MAX_IN_FLIGHT", default_value_t = 256, value_parser = args::positive_count)]
    max_in_flight: usize,

    /// First retry waits up to this long; each further retry doubles it (with jitter).
    #[arg(long, env = "RELAY_BACKOFF_BASE", default_value = "500ms", value_parser = args::duration)]
    backoff_base: Duration,

    /// No retry waits longer than this (unless the target's Retry-After says so).
    #[arg(long, env = "RELAY_BACKOFF_CAP", default_value = "5m", value_parser = args::duration)]
    backoff_cap: Duration,

    /// Longest an ingest request waits for the store before answering 503 (keep it under the
    /// source's budget).
    #[arg(long, env = "RELAY_STORE_TIMEOUT", default_value = "400ms", value_parser = args::duration)]
    store_timeout: Duration,

    /// The same for POST /events/batch (up to 500 events; senders of backlogs, such as relay
    /// import, have no 500 ms budget). Never shorter than --store-timeout.
    #[arg(long, env = "RELAY_BATCH_TIMEOUT", default_value = "5s", value_parser = args::duration)]
    batch_timeout: Duration,

    /// When a 2xx may be sent relative to the flush (fsync) that makes the event survive a
    /// power cut. Either way it is sent only once the event is written, so it survives the
    /// process being killed.
    ///   deadline: wait for the flush up to --flush-wait; if the disk stalls longer, answer
    ///             anyway and count the event as acknowledged before flush (relay status,
    ///             relay trace, the progress log). No event is refused because the disk is slow.
    ///   flush:    never answer before the flush; when the disk stalls past --store-timeout the
    ///             answer is 503, and a source that never retries loses the event.
    #[arg(
        long,
        env = "RELAY_DURABILITY",
        value_enum,
        default_value = "deadline",
        verbatim_doc_comment
    )]
    durability: DurabilityArg,

    /// With --durability deadline, how long a 2xx waits for its flush. Must be under
    /// --store-timeout.
    #[arg(long, env = "RELAY_FLUSH_WAIT", default_value = "50ms", value_parser = args::duration)]
    flush_wait: Duration,

    /// Delivered events older than this (since delivery) move from the live store to
    /// compressed JSON lines under DATA_DIR/archive/, where `relay trace` still finds them.
    /// Dead letters stay until redriven or purged. Duplicates of an id are recognised while it
    /// is in the live store.
    #[arg(long, env = "RELAY_RETENTION", default_value = "7d", value_parser = args::duration)]
    retention: Duration,
}

/// How the ingest server treats its clients: what it takes from slow or broken ones, and TLS.
#[derive(Debug, Args)]
#[command(next_help_heading = "Ingest edge")]
struct EdgeArgs {
    /// Serve HTTPS with this certificate chain (PEM, leaf first). Reloaded with the key on
    /// SIGHUP: renew the files, then `kill -HUP`. Use it whenever --listen is not loopback.
    #[arg(long, env = "RELAY_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "RELAY_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,

    /// Most time a client may take to send a request's head (and a TLS handshake), from
    /// connecting or from the previous answer: also how long an idle connection stays open.
    #[arg(long, env = "RELAY_HEADER_TIMEOUT", default_value = "10s", value_parser = args::duration)]
    header_timeout: Duration,

    /// Most time a client may take to send a request's body, once its head is in; past it the
    /// answer is 408.
    #[arg(long, env = "RELAY_BODY_TIMEOUT", default_value = "30s", value_parser = args::duration)]
    body_timeout: Duration,

    /// Most client connections open at once. At the limit, new connections wait until one
    /// closes, and the log says so.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 4096, value_parser = args::positive_count)]
    max_connections: usize,
}

impl EdgeArgs {
    /// The server's options, with the certificate read: a file that will not do is a usage
    /// error that names it.
    fn options(&self) -> relay_ingest::serve::ServeOptions {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => match relay_ingest::serve::Tls::load(cert, key) {
                Ok(tls) => Some(tls),
                Err(e) => clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!("--tls-cert/--tls-key: {e}\n"),
                )
                .exit(),
            },
            _ => None,
        };
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            conflict("--header-timeout and --body-timeout must be more than zero".into());
        }
        relay_ingest::serve::ServeOptions {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            tls,
        }
    }
}

/// Serves `app` at the edge until `stop`; with TLS, SIGHUP reloads the certificate.
async fn serve_edge(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    edge: relay_ingest::serve::ServeOptions,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if let Some(tls) = edge.tls.clone() {
        tokio::spawn(crate::signals::on_hangup(move || match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: cannot reload the TLS certificate; the old one stays in use")
            }
        }));
    }
    relay_ingest::serve::serve(listener, app, edge, stopped(stop)).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// The embedded store in --data-dir.
    Local,
    /// A stack's DynamoDB tables and SQS queues (see the AWS options).
    Aws,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Deadline,
    Flush,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let show = humantime::format_duration;
    if args.backoff_base > args.backoff_cap {
        conflict(format!(
            "--backoff-base ({}) must not exceed --backoff-cap ({})",
            show(args.backoff_base),
            show(args.backoff_cap)
        ));
    }
    if args.flush_wait >= args.store_timeout {
        conflict(format!(
            "--flush-wait ({}) must be under --store-timeout ({}): past the store timeout the answer is 503",
            show(args.flush_wait),
            show(args.store_timeout)
        ));
    }
    if args.batch > 1 && args.document != DEFAULT_DOCUMENT {
        conflict(format!(
            "--document cannot be combined with --batch {}: a batch is relay's own aliased \
             `createEvent` mutations. Use --batch 1 to send your document, one event per request.",
            args.batch
        ));
    }
    let document = match args.document.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --document file {path}"))?,
        None => args.document.clone(),
    };
    let mut headers = args.headers.clone();
    if let Some(secret) = &args.header_secret {
        let aws = relay_aws::Aws::connect(&args.aws.options()).await?;
        let from_secret = relay_aws::secrets::headers(&aws, secret)
            .await
            .with_context(|| format!("cannot read the target's headers from {secret}"))?;
        let names: Vec<&str> = from_secret.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!(%secret, headers = ?names, "target headers read from the secret");
        headers.extend(from_secret);
    }
    let client = GraphqlClient::new(&TargetConfig {
        url: args.target_url.clone(),
        document,
        brand: args.brand.clone(),
        headers,
        timeout: args.target_timeout,
        batch: args.batch.into(),
    })?;
    let dispatch = DispatchConfig {
        rate: RateConfig {
            ceiling: args.target_rate,
            ..RateConfig::default()
        },
        policy: DeliveryPolicy {
            max_attempts: args.max_attempts,
            max_age: args.max_age,
            backoff: Backoff {
                base: args.backoff_base,
                cap: args.backoff_cap,
            },
        },
        max_in_flight: args.max_in_flight,
        ..DispatchConfig::default()
    };
    let edge = args.edge.options();
    if !args.listen.ip().is_loopback() && edge.tls.is_none() {
        tracing::warn!(
            listen = %args.listen,
            "serving plain HTTP off loopback: API keys and events cross the network in clear; \
             add --tls-cert and --tls-key"
        );
    }
    let ingest = IngestConfig {
        api_keys: args.api_keys.clone(),
        store_timeout: args.store_timeout,
        batch_timeout: args.batch_timeout,
        signing_secrets: signing_secrets(&args.signing_secrets),
    };
    if args.backend == Backend::Aws {
        // A claim is a message's visibility: after a crash, that is how long its events wait.
        // Long enough for a request and its settlement, no longer.
        let lease = (args.target_timeout * 3).max(Duration::from_secs(30));
        // An SQS receive takes up to ten messages for the price of one.
        let dispatch = DispatchConfig {
            lease,
            claim_at_least: 10,
            ..dispatch
        };
        return run_aws(args, client, dispatch, ingest, edge).await;
    }
    let data_dir = args
        .data_dir
        .clone()
        .context("--data-dir is required with --backend local")?;
    let store = SqliteStore::open_with(
        &data_dir,
        StoreOptions {
            durability: match args.durability {
                DurabilityArg::Deadline => Durability::Deadline,
                DurabilityArg::Flush => Durability::Flush,
            },
            flush_wait: args.flush_wait,
            retention: Some(args.retention),
            ..StoreOptions::default()
        }
        .with_faults_from_env(),
    )?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;

    let dispatcher = Dispatcher::new(store.clone(), client, dispatch);
    let handle = dispatcher.handle();
    let app = relay_ingest::router(store.clone(), ingest);
    let stop_rx = stop_on_signals();

    // Every 2 s the dispatcher's figures go to the store, where `relay status` reads them from
    // another process; every 10 s they also go to the log.
    let reporter = {
        let (handle, store, mut rx) = (handle.clone(), store.clone(), stop_rx.clone());
        let batch = u32::from(args.batch);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            for n in 0u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|stop| *stop) => break,
                }
                let m = handle.snapshot();
                let report = DispatcherReport {
                    rate: m.rate,
                    estimated_limit: m.estimated_limit,
                    announced: m.announced,
                    in_flight: m.in_flight,
                    reported_at: relay_core::now_millis(),
                    events_per_request: (batch > 1).then_some(batch),
                };
                if let Err(e) = store.publish_dispatcher(&report).await {
                    tracing::debug!(error = %e, "could not publish dispatcher figures");
                }
                if n % 5 == 4 {
                    log_progress(&m, Some(store.flush_stats()));
                }
            }
        })
    };

    tracing::info!(%addr, target = %args.target_url, data_dir = %data_dir.display(), "relay up");
    // One stable line on stdout for scripts and tests that start `relay up` on port 0.
    println!("relay listening on {}://{addr}", scheme(&edge));

    let server = serve_edge(listener, app, edge, stop_rx.clone());
    let (served, ()) = tokio::join!(server, dispatcher.run(stopped(stop_rx)));
    served.context("ingest server failed")?;
    let _ = reporter.await;
    let m = handle.snapshot();
    tracing::info!(
        delivered = m.delivered,
        dead = m.dead,
        attempts = m.attempts,
        "relay stopped cleanly"
    );
    drop(store);
    Ok(ExitCode::SUCCESS)
}

/// The line both backends log every 10 s; the local store adds how its flushes go.
fn log_progress(m: &MetricsSnapshot, flush: Option<&FlushStats>) {
    tracing::info!(
        delivered = m.delivered,
        rate_limited = m.rate_limited,
        transient = m.transient,
        dead = m.dead,
        in_flight = m.in_flight,
        rate = format!("{:.1}/s", m.rate),
        estimated_limit = m.estimated_limit.map(|l| format!("{l:.1}/s")),
        acked_before_flush = flush.map(|f| f.acked_before_flush.load(Relaxed)),
        flushes = flush.map(|f| f.flushes.load(Relaxed)),
        longest_flush_ms = flush.map(|f| f.longest_flush_us.load(Relaxed) / 1000),
        "progress"
    );
}

/// Flags that contradict each other: a usage error (exit 2), as clap reports its own.
fn conflict(message: String) -> ! {
    clap::Error::raw(
        clap::error::ErrorKind::ArgumentConflict,
        format!("{message}\n"),
    )
    .exit()
}

/// Watches SIGTERM/SIGINT: the first asks everything to stop cleanly, a second exits at once.
fn stop_on_signals() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::signals::stop_requested().await;
        tracing::info!(
            "shutting down: no new events accepted, finishing work in flight (signal again to force)"
        );
        let _ = stop_tx.send(true);
        crate::signals::stop_requested().await;
        tracing::warn!("second signal: exiting now; leased work is recovered at next start");
        std::process::exit(130);
    });
    stop_rx
}

/// The secrets, parsed; a bad one is a usage error that does not repeat it (clap's own error
/// would).
fn signing_secrets(given: &[String]) -> Vec<relay_ingest::SigningSecret> {
    given
        .iter()
        .map(|secret| {
            secret.parse().unwrap_or_else(|e| {
                clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!(
                        "--signing-secret (RELAY_SIGNING_SECRET): {e}; the value is not shown\n"
                    ),
                )
                .exit()
            })
        })
        .collect()
}

fn scheme(edge: &relay_ingest::serve::ServeOptions) -> &'static str {
    if edge.tls.is_some() { "https" } else { "http" }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The AWS handlers in one process, against a stack's resources: the receiver behind a local
/// API Gateway stand-in, the outbox fed by a stream poller, the dispatcher by an SQS poller.
async fn run_aws(
    args: UpArgs,
    client: GraphqlClient,
    dispatch: DispatchConfig,
    ingest: IngestConfig,
    edge: relay_ingest::serve::ServeOptions,
) -> anyhow::Result<ExitCode> {
    let aws = relay_aws::Aws::connect(&args.aws.options()).await?;
    // A start must not fail on one throttled or dropped call: each is tried a few times.
    if args.create_resources {
        relay_aws::retry_transient("creating the stack's resources", 6, || {
            relay_aws::create_resources(&aws)
        })
        .await
        .context("cannot create the stack's resources")?;
    }
    let queue = relay_aws::retry_transient("the stack's queues", 6, || {
        relay_aws::SqsQueue::new(aws.clone(), args.retention)
    })
    .await
    .with_context(|| format!("cannot reach stack {:?}", aws.stack))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let dispatcher = Dispatcher::new(queue.clone(), client, dispatch);
    let handle = dispatcher.handle();
    let app = relay_lambda::receiver::with_tracing(
        relay_ingest::router(relay_aws::DynamoIngest::new(aws.clone()), ingest),
        aws.tracer.clone(),
    );
    let stop_rx = stop_on_signals();
    let outbox = tokio::spawn(
        relay_aws::outbox::StreamPoller::new(aws.clone(), queue.queue_url().to_owned())
            .run(stopped(stop_rx.clone())),
    );
    // Other dispatchers of the stack share the target's limit with this one.
    let fleet = tokio::spawn(
        relay_lambda::fleet::Fleet::new(aws.clone(), handle.clone())
            .with_queue(queue.clone())
            .run(stopped(stop_rx.clone())),
    );
    let reporter = {
        let (handle, mut rx) = (handle.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|stop| *stop) => break,
                }
                log_progress(&handle.snapshot(), None);
            }
        })
    };
    tracing::info!(%addr, target = %args.target_url, stack = ?aws.stack, "relay up on AWS");
    println!("relay listening on {}://{addr}", scheme(&edge));
    let server = serve_edge(
        listener,
        relay_lambda::receiver::api_gateway(app),
        edge,
        stop_rx.clone(),
    );
    let (served, ()) = tokio::join!(server, dispatcher.run(stopped(stop_rx)));
    served.context("ingest server failed")?;
    let _ = tokio::join!(outbox, reporter, fleet);
    aws.tracer.flush().await;
    let m = handle.snapshot();
    tracing::info!(
        delivered = m.delivered,
        dead = m.dead,
        attempts = m.attempts,
        "relay stopped cleanly"
    );
    Ok(ExitCode::SUCCESS)
}
