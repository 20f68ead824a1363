//! `relay target`: the mock rate-limited GraphQL target, as a process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use target_sim::{Announce, Faults, LimitMode, TargetConfig};

use crate::args;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// HTTP 429 with Retry-After.
    Http429,
    /// HTTP 200 with a GraphQL error of code RATE_LIMITED.
    Graphql,
    /// HTTP 429 with Retry-After, and every answer announces the budget left (see --announce).
    Headers,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AnnounceArg {
    /// RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset (IETF draft 6).
    Draft6,
    /// RateLimit: "default";r=N;t=S and RateLimit-Policy: "default";q=N;w=S (drafts 8+).
    Draft8,
    /// X-RateLimit-Limit, -Remaining, -Reset (seconds from now).
    XRatelimit,
    /// X-RateLimit-* with the reset as a Unix time.
    XRatelimitEpoch,
    /// GraphQL cost extensions (extensions.cost.throttleStatus), refusals as THROTTLED errors.
    GraphqlCost,
}

#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// Address to listen on.
    #[arg(long, env = "RELAY_TARGET_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Sustained requests per second allowed. The limit counts requests: a batch of aliased
    /// `createEvent` calls (relay up --batch) takes one token, however many events it holds.
    #[arg(long, value_parser = args::positive_rate)]
    rate: f64,
    /// Requests allowed in a burst (bucket size); default one second's worth.
    #[arg(long, value_parser = args::positive_rate)]
    burst: Option<f64>,
    /// Count requests in fixed windows of this length (--rate × window each) instead of a token
    /// bucket. --mode headers uses 1s unless told otherwise (except with graphql-cost).
    #[arg(long, value_parser = args::duration)]
    window: Option<Duration>,
    /// How the limit is signalled.
    #[arg(long, value_enum, default_value = "http429")]
    mode: Mode,
    /// With --mode headers, the syntax the budget is announced in.
    #[arg(long, value_enum, default_value = "draft6")]
    announce: AnnounceArg,
    /// Share of requests (0–1) answered 503.
    #[arg(long, default_value_t = 0.0, value_parser = args::share)]
    fail_rate: f64,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Refuse events with this name with a permanent GraphQL error; repeatable.
    #[arg(long = "reject-name")]
    reject_names: Vec<String>,
    /// Answer 401 unless each request carries this header, as 'Name: value'.
    /// Example: --require-header 'Authorization: Bearer abc'.
    #[arg(long, value_parser = args::header)]
    require_header: Option<(String, String)>,
    /// Declare `createEvent` non-null (`CreatedEvent!`), as many schemas do: a refused event
    /// nulls the whole answer's `data`, and in a batch the aliases after it do not run.
    #[arg(long)]
    non_null_mutations: bool,
    /// At most N requests in progress (with --latency-ms, a concurrency limit rather than a
    /// rate): one more is answered 429 at once, as gateways that limit in-flight requests do.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
}

pub(crate) async fn run(args: TargetArgs) -> anyhow::Result<ExitCode> {
    let config = TargetConfig {
        rate: args.rate,
        burst: args.burst,
        window: args.window,
        mode: match args.mode {
            Mode::Http429 => LimitMode::Http429,
            Mode::Graphql => LimitMode::Graphql,
            Mode::Headers => LimitMode::Headers,
        },
        announce: match args.announce {
            AnnounceArg::Draft6 => Announce::Draft6,
            AnnounceArg::Draft8 => Announce::Draft8,
            AnnounceArg::XRatelimit => Announce::XRatelimit,
            AnnounceArg::XRatelimitEpoch => Announce::XRatelimitEpoch,
            AnnounceArg::GraphqlCost => Announce::GraphqlCost,
        },
        faults: Faults {
            fail_rate: args.fail_rate,
            latency_ms: args.latency_ms,
            reject_names: args.reject_names,
            require_header: args.require_header.map(|(n, v)| format!("{n}: {v}")),
            ..Faults::default()
        },
        non_null_mutations: args.non_null_mutations,
        concurrency: args.concurrency,
    };
    let target = target_sim::start(args.listen, config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!("target listening on {}", target.url());
    tracing::info!(url = %target.url(), rate = args.rate, "mock target up");
    crate::signals::stop_requested().await;
    let stats = target.stats();
    target.stop().await;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(ExitCode::SUCCESS)
}
