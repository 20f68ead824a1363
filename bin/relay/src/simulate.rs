//! `relay simulate`: the mock source as a command, with live progress and a report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use source_sim::{Progress, Report, SourceConfig};

use crate::args;

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// The relay's base URL (…/events is added) or its full ingest URL.
    #[arg(long, env = "RELAY_URL", value_parser = args::http_url)]
    url: String,
    /// API key sent as `x-api-key`.
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Events per second.
    #[arg(long, value_parser = args::positive_rate)]
    rps: f64,
    /// How long to send for.
    #[arg(long, value_parser = args::duration, conflicts_with = "count", required_unless_present = "count")]
    duration: Option<Duration>,
    /// How many events to send (instead of --duration).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// An answer later than this does not count as acknowledged.
    #[arg(long, default_value = "500ms", value_parser = args::duration)]
    budget: Duration,
    /// Size of each event's `body` field, in bytes.
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Skip sends while this many requests are unanswered (protects the machine when the
    /// relay is overloaded; skipped sends are reported).
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: u64,
    /// Send over exactly this many connections, one request at a time on each (as wrk2 does);
    /// a send that waits for a free connection counts the wait in its latency. Default: open
    /// another connection whenever all are busy.
    #[arg(long, value_parser = args::positive_count)]
    connections: Option<usize>,
    /// Write the acknowledged event ids here, one per line, to check delivery later.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let url = if args.url.trim_end_matches('/').ends_with("/events") {
        args.url.clone()
    } else {
        format!("{}/events", args.url.trim_end_matches('/'))
    };
    let count = match (args.count, args.duration) {
        (Some(count), _) => count,
        (None, Some(duration)) => (duration.as_secs_f64() * args.rps).round().max(1.0) as u64,
        (None, None) => unreachable!("clap requires --count or --duration"),
    };
    let mut config = SourceConfig::new(url, args.api_key, args.rps, count);
    config.budget = args.budget;
    config.body_bytes = args.body_bytes;
    config.max_in_flight = args.max_in_flight;
    config.keep_ids = args.ids_out.is_some();
    config.connections = args.connections;

    let progress = Arc::new(Progress::default());
    let bar = ProgressBar::new(count).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} sent  {msg}",
        )
        .expect("valid template"),
    );
    let ticker = {
        let (bar, progress) = (bar.clone(), Arc::clone(&progress));
        tokio::spawn(async move {
            loop {
                bar.set_position(progress.sent.load(Relaxed));
                bar.set_message(format!(
                    "{} acked, {} failed",
                    progress.acked.load(Relaxed),
                    progress.failed.load(Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let report = source_sim::run(config, progress)
        .await
        .context("cannot build the HTTP client")?;
    ticker.abort();
    bar.finish_and_clear();

    if let Some(path) = &args.ids_out {
        let mut text = report.acked_ids.join("\n");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", table(&report));
    }
    Ok(if report.all_acked() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn table(r: &Report) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(["", "value"]);
    let statuses = r
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut rows = vec![
        ("sent", r.sent.to_string()),
        ("acked within budget", r.acked.to_string()),
        ("late (2xx after budget)", r.late.to_string()),
        ("refused (non-2xx)", r.rejected.to_string()),
        ("no answer", r.errors.to_string()),
        ("skipped (too many in flight)", r.skipped.to_string()),
        ("answers by status", statuses),
        ("acked/s", format!("{:.1}", r.acked_per_s)),
        ("elapsed", format!("{:.1} s", r.elapsed_s)),
    ];
    if let Some(l) = &r.latency_ms {
        rows.push((
            "ack latency p50 / p99 / p99.9 / max",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} ms",
                l.p50, l.p99, l.p999, l.max
            ),
        ));
    }
    for (k, v) in rows {
        t.add_row([k.to_owned(), v]);
    }
    t
}
