//! `relay up`: the ingest API and the dispatcher, until SIGTERM/SIGINT: over one embedded store
//! (`--backend local`), or as the AWS handlers in one process against a stack's resources
//! (`--backend aws`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use relay_dispatch::{DeliverySettings, Dispatcher, GraphqlClient, MetricsSnapshot};
use relay_ingest::{IngestConfig, IngestSettings};
use relay_store::{Durability, FlushStats, SqliteStore, StoreOptions};
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::watch;

use crate::args;
use crate::ops::Ops;
use crate::telemetry;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Address to serve the ingest API on (POST /events, GET /health). Port 0 picks a free port.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    #[command(flatten)]
    edge: EdgeArgs,

    #[command(flatten)]
    ingest: IngestSettings,

    #[command(flatten)]
    delivery: DeliverySettings,

    /// Where events are kept: the embedded store in --data-dir (local), or a stack's DynamoDB
    /// table and SQS queues (aws: the receiver, outbox and dispatcher handlers in this process).
    #[arg(
        long,
        help_heading = "Store",
        env = "RELAY_BACKEND",
        value_enum,
        default_value = "local"
    )]
    backend: Backend,

    /// Directory of the embedded store; created if missing. One `relay up` per directory.
    /// Required with --backend local.
    #[arg(
        long,
        help_heading = "Store",
        env = "RELAY_DATA_DIR",
        required_if_eq("backend", "local")
    )]
    data_dir: Option<PathBuf>,

    #[command(flatten)]
    aws: relay_aws::AwsSettings,

    /// With --backend aws: create the stack's tables, stream and queues when missing (for a
    /// local AWS API; in an account, Terraform owns them).
    #[arg(long, help_heading = "Store", env = "RELAY_CREATE_RESOURCES")]
    create_resources: bool,

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
        help_heading = "Store",
        env = "RELAY_DURABILITY",
        value_enum,
        default_value = "deadline",
        verbatim_doc_comment
    )]
    durability: DurabilityArg,

    /// With --durability deadline, how long a 2xx waits for its flush. Must be under
    /// --store-timeout.
    #[arg(long, help_heading = "Store", env = "RELAY_FLUSH_WAIT", default_value = "50ms", value_parser = args::duration)]
    flush_wait: Duration,

    /// Serve Prometheus metrics on GET /metrics at this address, a listener of its own (for
    /// example 127.0.0.1:9464). No key: keep it on loopback or a private network. The metrics
    /// and their names are in docs/telemetry.md.
    #[arg(
        long,
        help_heading = "Telemetry",
        env = "RELAY_METRICS",
        value_name = "ADDR"
    )]
    metrics: Option<SocketAddr>,

    /// Serve the web console at this address too (for example 127.0.0.1:8081), with /metrics
    /// behind its admin token. Its URL is printed on the second line of stdout.
    #[arg(
        long,
        help_heading = "Console",
        env = "RELAY_CONSOLE",
        value_name = "ADDR"
    )]
    console: Option<SocketAddr>,

    #[command(flatten)]
    admin: crate::console::AdminArgs,

    #[command(flatten)]
    otlp: crate::otlp::OtlpArgs,
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
    let (otlp, otel) = match args.otlp.on() {
        true => {
            let (otlp, recorder) = crate::otlp::Otlp::start(&args.otlp)?;
            (Some(otlp), Some(recorder))
        }
        false => (None, None),
    };
    // Before anything records: the store's first flushes count too.
    let recorder = (args.metrics.is_some() || args.console.is_some() || otlp.is_some())
        .then(|| telemetry::install(otel))
        .transpose()?;
    let start = start(&args).await?;
    let ran = match args.backend {
        Backend::Local => run_local(args, start, recorder).await,
        Backend::Aws => run_aws(args, start, recorder).await,
    };
    if let Some(otlp) = otlp {
        otlp.shutdown().await;
    }
    ran
}

/// What both backends start from: the settings checked (a contradiction is a usage error),
/// secrets read, the target's client, the edge.
struct Start {
    client: GraphqlClient,
    ingest: IngestConfig,
    edge: relay_ingest::serve::ServeOptions,
    /// The stack's clients, built at most once (for secrets, or for `--backend aws`).
    aws: relay_lambda::start::LazyAws,
}

async fn start(args: &UpArgs) -> anyhow::Result<Start> {
    if let Err(e) = args.delivery.check() {
        conflict(e);
    }
    if args.flush_wait >= args.ingest.store_timeout {
        let show = humantime::format_duration;
        conflict(format!(
            "--flush-wait ({}) must be under --store-timeout ({}): past the store timeout the answer is 503",
            show(args.flush_wait),
            show(args.ingest.store_timeout)
        ));
    }
    // The same start as the Lambda functions': secrets read, the settings' own errors.
    let aws = relay_lambda::start::LazyAws::new(&args.aws);
    let ingest = relay_lambda::start::ingest_config(&args.ingest, &aws)
        .await
        .unwrap_or_else(|e| usage(e.to_string()));
    let target = relay_lambda::start::target_config(&args.delivery, &aws)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let client = GraphqlClient::new(&target)?;
    if let Some(token) = args.admin.given()
        && ingest.api_keys.iter().any(|k| k == token)
    {
        conflict(
            "--admin-token must not be an ingest key (--api-key): the console's token opens \
             the dead letters to whoever holds it"
                .into(),
        );
    }
    let edge = args.edge.options();
    if !args.listen.ip().is_loopback() && edge.tls.is_none() {
        tracing::warn!(
            listen = %args.listen,
            "serving plain HTTP off loopback: API keys and events cross the network in clear; \
             add --tls-cert and --tls-key"
        );
    }
    Ok(Start {
        client,
        ingest,
        edge,
        aws,
    })
}

/// Ingest and the dispatcher over one embedded store.
async fn run_local(
    args: UpArgs,
    start: Start,
    recorder: Option<PrometheusHandle>,
) -> anyhow::Result<ExitCode> {
    let Start {
        client,
        ingest,
        edge,
        ..
    } = start;
    let dispatch = args.delivery.dispatch();
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
            retention: Some(args.delivery.retention),
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

    // A pause stands across restarts: it holds from the first request.
    let reader = relay_store::Reader::open(&data_dir)?;
    handle.set_pause(reader.pause_now()?);
    let reporter = report_to_store(handle.clone(), store.clone(), reader, stop_rx.clone());
    let open = || Ok(Ops::Local(relay_store::Reader::open(&data_dir)?));

    tracing::info!(%addr, target = %args.delivery.target_url, data_dir = %data_dir.display(), "relay up");
    // One stable line on stdout for scripts and tests that start `relay up` on port 0.
    crate::stdout_line(&format!("relay listening on {}://{addr}", scheme(&edge)));
    let metrics = serve_telemetry(&args, recorder, open, &handle, &stop_rx).await?;

    let server = serve_edge(listener, app, edge, stop_rx.clone());
    let (served, ()) = tokio::join!(server, dispatcher.run(stopped(stop_rx)));
    served.context("ingest server failed")?;
    let _ = reporter.await;
    stop_metrics(metrics).await;
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

/// Every second the dispatcher follows the pause `relay pause` and `relay resume` write; every
/// 2 s its figures go to the store, where `relay status` reads them from another process; every
/// 10 s they also go to the log.
fn report_to_store(
    handle: relay_dispatch::DispatcherHandle,
    store: SqliteStore,
    reader: relay_store::Reader,
    mut rx: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for n in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = rx.wait_for(|stop| *stop) => break,
            }
            match reader.pause_now() {
                Ok(pause) => handle.set_pause(pause),
                Err(e) => tracing::debug!(error = %e, "could not read the pause"),
            }
            if n % 2 == 1
                && let Err(e) = store.publish_dispatcher(&handle.report()).await
            {
                tracing::debug!(error = %e, "could not publish dispatcher figures");
            }
            if n % 10 == 9 {
                log_progress(&handle.snapshot(), Some(store.flush_stats()));
            }
        }
    })
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

type Served = tokio::task::JoinHandle<std::io::Result<()>>;

/// `--metrics` and `--console`, each on its own listener, over the backend `open` opens.
async fn serve_telemetry(
    args: &UpArgs,
    recorder: Option<PrometheusHandle>,
    open: impl Fn() -> anyhow::Result<Ops>,
    handle: &relay_dispatch::DispatcherHandle,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<Served>> {
    let Some(recorder) = recorder else {
        return Ok(Vec::new());
    };
    // One status read serves `/metrics`, OTLP's gauges and the console alike.
    let live = crate::ops::LiveStatus::new(open()?, Some(handle.clone()));
    let exporter = telemetry::Exporter::new(recorder, live.clone());
    let mut served = Vec::new();
    if args.otlp.on() {
        // No scrape reads the gauges for OTLP: read them as often as it exports.
        let (exporter, mut stop) = (exporter.clone(), stop.clone());
        served.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                exporter.refresh().await;
            }
        }));
    }
    if let Some(addr) = args.metrics {
        served.push(telemetry::serve(addr, exporter.clone(), stop.clone()).await?);
    }
    if let Some(addr) = args.console {
        let token = args.admin.token()?;
        let (listener, url) = crate::console::bind(addr, &token).await?;
        let place = match &args.data_dir {
            Some(dir) => format!("in {}", dir.display()),
            None => format!("in stack {}", args.aws.stack),
        };
        let console = crate::console::Console::new(
            live,
            token.secret(),
            Some(exporter),
            place,
            Some(args.delivery.brand.clone()),
        );
        tracing::info!(%url, "web console");
        // The second stable line on stdout: where to open the console.
        crate::stdout_line(&format!("relay console on {url}"));
        served.push(crate::console::serve(listener, console, stop.clone()));
    }
    Ok(served)
}

/// Waits for the metrics and console listeners, told to stop with the rest, to finish.
async fn stop_metrics(served: Vec<Served>) {
    for server in served {
        if let Ok(Err(e)) = server.await {
            tracing::warn!(error = %e, "a telemetry listener failed");
        }
    }
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

/// A setting that will not do: a usage error (exit 2) that names it.
fn usage(message: String) -> ! {
    clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{message}\n")).exit()
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
    start: Start,
    recorder: Option<PrometheusHandle>,
) -> anyhow::Result<ExitCode> {
    let Start {
        client,
        ingest,
        edge,
        aws,
    } = start;
    let dispatch = args.delivery.dispatch_on_queue();
    let aws = aws.get().await?.clone();
    // A start must not fail on one throttled or dropped call: each is tried a few times.
    if args.create_resources {
        relay_aws::retry_transient("creating the stack's resources", 6, || {
            relay_aws::create_resources(&aws)
        })
        .await
        .context("cannot create the stack's resources")?;
    }
    let queue = relay_aws::retry_transient("the stack's queues", 6, || {
        relay_aws::SqsQueue::new(aws.clone(), args.delivery.retention)
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
    let ops = match recorder {
        Some(_) => Some(
            relay_aws::ops::AwsOps::connect(aws.clone())
                .await
                .with_context(|| format!("cannot reach stack {:?}", aws.stack))?,
        ),
        None => None,
    };
    let open = || {
        ops.clone()
            .map(|ops| Ops::Aws(Box::new(ops)))
            .context("the stack's operations")
    };
    tracing::info!(%addr, target = %args.delivery.target_url, stack = ?aws.stack, "relay up on AWS");
    crate::stdout_line(&format!("relay listening on {}://{addr}", scheme(&edge)));
    let metrics = serve_telemetry(&args, recorder, open, &handle, &stop_rx).await?;
    let server = serve_edge(
        listener,
        relay_lambda::receiver::api_gateway(app),
        edge,
        stop_rx.clone(),
    );
    let (served, ()) = tokio::join!(server, dispatcher.run(stopped(stop_rx)));
    served.context("ingest server failed")?;
    let _ = tokio::join!(outbox, reporter, fleet);
    stop_metrics(metrics).await;
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
