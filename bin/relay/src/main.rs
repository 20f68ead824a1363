//! `relay`: one binary for the relay itself and the tools around it. Each subcommand parses its
//! flags, builds what it needs once, and calls into the libraries.

mod args;
mod aws;
mod console;
mod demo;
mod dlq;
mod e2e;
mod harness;
mod import;
mod logging;
mod ops;
mod otlp;
mod pause;
mod signals;
mod simulate;
mod soak;
mod status;
mod store;
mod target;
mod telemetry;
mod trace;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Durable, rate-aware event relay: accepts events from a bursty source in milliseconds, stores
/// them durably, and delivers every one to a rate-limited GraphQL target at the pace it allows.
///
/// Start with `relay up --help`. Every flag can also be set by an environment variable (shown
/// as [env: RELAY_…]).
#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept events on the ingest API, store them durably, and deliver them to the target.
    ///
    /// Every event answered 2xx is durable (in --data-dir, or DynamoDB with --backend aws) and
    /// will reach the target, enriched with `brand`, or end in the dead-letter queue with the
    /// reason. Without --target-rate the relay finds the target's limit from its answers (429,
    /// Retry-After, GraphQL RATE_LIMITED), and paces by any budget the target announces.
    ///
    /// Examples:
    ///   relay up --target-url https://api.example.com/graphql --api-key "$KEY" --data-dir /var/lib/relay
    ///   relay up --backend aws --stack relay-dev --region eu-west-1 --target-url … --api-key "$KEY"
    ///   relay up --backend aws --create-resources --endpoint-url http://127.0.0.1:5000 …  # local API
    #[command(verbatim_doc_comment)]
    Up(Box<up::UpArgs>),
    /// See it work: a rate-limited mock target, the relay and a bursty mock source, wired up.
    ///
    /// The source sends 100 events/s for 10 s to a relay on a fresh store; the target takes 25
    /// requests/s, which the relay is not told. Live progress, then a report: acknowledged within
    /// 500 ms, ack latency, delivered, duplicates, retries, rate-limited answers, dead-lettered
    /// and lost (must be 0; the command exits 1 otherwise). About a minute.
    #[command(verbatim_doc_comment)]
    Demo(demo::DemoArgs),
    /// Serve a mock GraphQL target that limits requests with a token bucket and misbehaves on cue.
    ///
    /// It answers `createEvent(input: EventInput!)`, keeps every event by id and counts duplicates.
    /// GraphiQL: GET /graphql. Counters: GET /admin/stats. Events: GET /admin/events.
    /// Change faults while it runs: PUT /admin/faults {"outage": true, "fail_rate": 0.1, ...}.
    /// Change the limit while it runs: PUT /admin/limit {"rate": 50, "burst": 5} (or "window_ms").
    ///
    /// Example, a strict target that announces its budget:
    ///   relay target --rate 50 --mode headers --announce draft8
    #[command(verbatim_doc_comment)]
    Target(target::TargetArgs),
    /// Send events like the real source: open-loop at --rps, each once, 500 ms budget, no retry.
    ///
    /// Reports how many were acknowledged (2xx within the budget), late, refused or unanswered, and
    /// the acknowledgement latency. Exits 1 unless every event was acknowledged in time.
    ///
    /// Example:
    ///   relay simulate --url http://127.0.0.1:8080 --api-key "$KEY" --rps 200 --duration 30s
    #[command(verbatim_doc_comment)]
    Simulate(simulate::SimulateArgs),
    /// Show one event's timeline: received, every attempt with its answer, delivered or dead.
    ///
    /// Works while `relay up` runs. Exits 1 if the id is unknown.
    ///
    /// Example:
    ///   relay trace order-1042 --data-dir /var/lib/relay
    #[command(verbatim_doc_comment)]
    Trace(trace::TraceArgs),
    /// Run scripted end-to-end scenarios and verify every event at the target.
    ///
    /// Scenarios: steady load, a target outage and recovery, a 429 storm, GraphQL-signalled
    /// limits, permanent rejections to the DLQ then redrive, SIGKILL and restart of the relay,
    /// and batches both ways (POST /events/batch, --batch 10, one refused event in a batch).
    /// Each is checked by event id at the mock target: every acknowledged event delivered once,
    /// enriched with brand, fields unchanged, acknowledged within 500 ms. Exits 1 on any failure.
    ///
    /// Example:
    ///   relay e2e                      # all scenarios, about a minute
    ///   relay e2e --scenario sigkill --json
    #[command(verbatim_doc_comment)]
    E2e(e2e::E2eArgs),
    /// Soak `relay up` for a long run: a source that never stops, a flaky target, a SIGKILL
    /// every minute and storage faults, then a clean start and a drain.
    ///
    /// Ends in one table: acknowledged, delivered, dead-lettered, lost (must be 0; exit 1
    /// otherwise) and duplicates on the wire. Storage faults are the disk's on the embedded
    /// store (a binary built with --features fault-injection), a faulty AWS API on AWS.
    /// loadtest/soak.sh runs it on both backends.
    ///
    /// Examples:
    ///   relay soak --duration 10m
    ///   relay soak --backend aws --endpoint-url http://127.0.0.1:5000 --duration 10m
    #[command(verbatim_doc_comment)]
    Soak(soak::SoakArgs),
    /// Inspect and redrive the dead-letter queue.
    Dlq(dlq::DlqArgs),
    /// Send a JSON-lines file of events (or stdin) through the batch API: a backlog in bulk.
    ///
    /// Lines go in batches of up to 500 events (1 MiB), several requests at once; what fails in
    /// a way worth retrying (no answer, 429, 5xx) is tried again, which is safe: an event sent
    /// twice answers `duplicate`. Progress is kept in FILE.relay-import, so an interrupted
    /// import continues with --resume. Ends with a summary and the failed lines (line number,
    /// id, reason); exits 1 if any line failed (invalid, or its id taken by another payload).
    ///
    /// Examples:
    ///   relay import backlog.jsonl --url http://127.0.0.1:8080 --api-key "$KEY"
    ///   relay import backlog.jsonl --url … --api-key "$KEY" --resume
    ///   zcat export.jsonl.gz | relay import - --url … --api-key "$KEY" --errors failed.jsonl
    #[command(verbatim_doc_comment)]
    Import(import::ImportArgs),
    /// Check the embedded store for damage, or back it up while it runs.
    ///
    /// Examples:
    ///   relay store check --data-dir /var/lib/relay
    ///   relay store backup /backups/relay-2026-12-04 --data-dir /var/lib/relay
    #[command(verbatim_doc_comment)]
    Store(store::StoreCmd),
    /// Pause delivery: events are still accepted, nothing is sent until `relay resume`.
    ///
    /// `relay status` and `relay trace` say who paused, since when and why. Works on a running
    /// relay (it stops sending within a second) and on an AWS stack (the whole fleet).
    ///
    /// Examples:
    ///   relay pause --reason "target migration, ticket OPS-311" --data-dir /var/lib/relay
    ///   relay pause --backend aws --stack relay-prod --reason "schema change"
    #[command(verbatim_doc_comment)]
    Pause(pause::PauseArgs),
    /// Lift a pause: what waited is sent at the pace the relay had learned.
    ///
    /// Example:
    ///   relay resume --data-dir /var/lib/relay
    #[command(verbatim_doc_comment)]
    Resume(pause::ResumeArgs),
    /// Show queue depth, in flight, DLQ depth, recent deliveries and the dispatcher's rate.
    ///
    /// Example:
    ///   relay status --data-dir /var/lib/relay --watch
    #[command(verbatim_doc_comment)]
    Status(status::StatusArgs),
    /// Serve the web console: overview, events, one event's timeline, dead letters, the target.
    ///
    /// On its own listener (127.0.0.1:8081), behind its own admin token, never an ingest key.
    /// Without --admin-token relay makes one and prints the URL to open, token included. The
    /// JSON API the pages use is under /api/v1 (docs/openapi/console.json), Prometheus metrics
    /// under /metrics. `relay up --console ADDR` serves it in the relay's own process.
    ///
    /// Examples:
    ///   relay console --data-dir /var/lib/relay
    ///   relay console --backend aws --stack relay-prod --admin-token "$RELAY_ADMIN_TOKEN"
    #[command(verbatim_doc_comment)]
    Console(console::ConsoleArgs),
}

/// One of a server's stable lines on stdout (where it listens, where its console is). A reader
/// that has gone (a script that read the first line and closed the pipe) must not stop the
/// server, as `println!`'s panic would.
pub(crate) fn stdout_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        tracing::debug!(line, "stdout is closed");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(*args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Target(args) => target::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Trace(args) => trace::run(args).await,
            Command::E2e(args) => e2e::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Import(args) => import::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Pause(args) => pause::pause(args).await,
            Command::Resume(args) => pause::resume(args).await,
            Command::Soak(args) => soak::run(args).await,
            Command::Store(args) => store::run(args).await,
            Command::Console(args) => console::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
