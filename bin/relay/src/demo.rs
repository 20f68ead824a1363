//! `relay demo`: the whole story in one command. A mock target with a rate limit, `relay up` on
//! a fresh store, and a bursty source, with live progress and a final report that says whether
//! anything was lost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use comfy_table::{Cell, Color};
use indicatif::{ProgressBar, ProgressStyle};
use relay_core::ops::Operations;
use serde::Serialize;
use source_sim::{Progress, SourceConfig};
use target_sim::TargetConfig;

use crate::args;
use crate::harness::{RelayProcess, Verdict, drained};
use crate::ops::table;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// The mock target's rate limit, requests/s (relay is not told; it finds out).
    #[arg(long, default_value_t = 25.0, value_parser = args::positive_rate)]
    target_rate: f64,
    /// Events per second from the mock source.
    #[arg(long, default_value_t = 100.0, value_parser = args::positive_rate)]
    rps: f64,
    /// How long the source sends for.
    #[arg(long, default_value = "10s", value_parser = args::duration)]
    duration: Duration,
    /// Keep the store here (default: a temporary directory, removed afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the final report as JSON (no live progress).
    #[arg(long)]
    json: bool,
    /// Serve the web console too (at ADDR, default 127.0.0.1:8081): open the URL it prints and
    /// watch the demo happen. The source starts 5 s later, and the console stays up after the
    /// report until Ctrl-C.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:8081"
    )]
    console: Option<std::net::SocketAddr>,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    sent: u64,
    acked_within_500ms: u64,
    ack_p50_ms: Option<f64>,
    ack_p99_ms: Option<f64>,
    delivered: usize,
    duplicates: usize,
    unenriched: usize,
    altered: usize,
    /// Requests beyond one per event: rate-limited answers and retries.
    extra_requests: u64,
    rate_limited_answers: u64,
    dead_lettered: u64,
    /// Acknowledged but not delivered: must be 0.
    lost: usize,
    seconds: f64,
}

impl DemoReport {
    fn of(
        report: &source_sim::Report,
        verdict: &Verdict,
        status: &relay_core::ops::StatusReport,
        stats: &target_sim::Stats,
        started: Instant,
    ) -> Self {
        DemoReport {
            sent: report.sent,
            acked_within_500ms: report.acked,
            ack_p50_ms: report.latency_ms.as_ref().map(|l| l.p50),
            ack_p99_ms: report.latency_ms.as_ref().map(|l| l.p99),
            delivered: verdict.delivered,
            duplicates: verdict.duplicated.len(),
            unenriched: verdict.unenriched.len(),
            altered: verdict.altered.len(),
            extra_requests: stats.requests.saturating_sub(stats.events),
            rate_limited_answers: stats.rate_limited,
            dead_lettered: status.dead,
            lost: verdict.lost.len(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let temp = tempfile::Builder::new().prefix("relay-demo-").tempdir()?;
    let data = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("data"));
    let count = (args.duration.as_secs_f64() * args.rps).round().max(1.0) as u64;

    let target = target_sim::start(
        "127.0.0.1:0".parse()?,
        TargetConfig {
            rate: args.target_rate,
            ..TargetConfig::default()
        },
    )
    .await
    .context("cannot start the mock target")?;
    let console = args.console.map(|addr| addr.to_string());
    let extra: Vec<&str> = match &console {
        Some(addr) => vec!["--console", addr],
        None => Vec::new(),
    };
    let relay = RelayProcess::start(&data, &target.url(), &extra).await?;
    let ops = relay_store::Reader::open(&data)?;
    if !args.json {
        eprintln!(
            "demo: target {} limited to {}/s · relay {} (data {}) · source {} events at {}/s",
            target.url(),
            args.target_rate,
            relay.url,
            data.display(),
            count,
            args.rps
        );
    }

    if let Some(url) = &relay.console_url {
        // On stdout, one stable line: for a person to open, and for a test to read.
        println!("open the console: {url}");
        if !args.json {
            eprintln!("demo: the source starts in 5 s");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let progress = Arc::new(Progress::default());
    let mut config = SourceConfig::new(relay.events_url(), relay.api_key.clone(), args.rps, count);
    config.keep_ids = true;
    let sending = tokio::spawn(source_sim::run(config, Arc::clone(&progress)));
    let live = Live::new(&args, count, &target, &progress, started);
    while !sending.is_finished() {
        live.show(ops.status().await.ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = sending.await??;
    let sent = report.acked_events.clone();
    let patience = Duration::from_secs_f64((count as f64 / args.target_rate * 3.0).max(60.0));
    let watch = async {
        loop {
            live.show(ops.status().await.ok());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = drained(&sent, &target, &data, patience) => {}
        () = watch => {}
    }
    live.show(ops.status().await.ok());
    live.bar.finish();

    let verdict = Verdict::of(&sent, &target, relay_core::DEFAULT_BRAND);
    let status = ops.status().await?;
    let stats = target.stats();
    let summary = DemoReport::of(&report, &verdict, &status, &stats, started);
    let ok = verdict.passed(0);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print(&summary, ok);
    }
    if let Some(url) = &relay.console_url {
        println!("the console stays up at {url}: Ctrl-C to stop");
        crate::signals::stop_requested().await;
    }
    relay.stop().await?;
    target.stop().await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The live progress: a bar of what the target got, with what the source sent and relay's
/// backlog and pace (hidden with `--json`).
struct Live<'a> {
    bar: ProgressBar,
    target: &'a target_sim::TargetHandle,
    progress: &'a Progress,
    started: Instant,
    count: u64,
    json: bool,
}

impl<'a> Live<'a> {
    fn new(
        args: &DemoArgs,
        count: u64,
        target: &'a target_sim::TargetHandle,
        progress: &'a Progress,
        started: Instant,
    ) -> Self {
        let bar = if args.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(count)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed:>4} delivered {bar:25} {pos}/{len}  {msg}",
            )
            .expect("valid template"),
        );
        Live {
            bar,
            target,
            progress,
            started,
            count,
            json: args.json,
        }
    }

    fn show(&self, status: Option<relay_core::ops::StatusReport>) {
        let stats = self.target.stats();
        self.bar.set_position(stats.events);
        let (backlog, dead, rate) = status.map_or((0, 0, String::new()), |s| {
            let rate = s
                .dispatcher
                .map(|d| format!(" · relay pacing ≤ {:.0}/s", d.rate))
                .unwrap_or_default();
            (s.queued + s.in_flight, s.dead, rate)
        });
        let message = format!(
            "sent {} · acked {} · backlog {backlog} · rate-limited {} · dead {dead}{rate}",
            self.progress.sent.load(Relaxed),
            self.progress.acked.load(Relaxed),
            stats.rate_limited,
        );
        // Without a terminal the bar is invisible; a line every 5 s says the demo is alive.
        let elapsed = self.started.elapsed();
        if self.bar.is_hidden() && !self.json && elapsed.as_millis() % 5000 < 200 {
            eprintln!(
                "[{:>4.0} s] delivered {}/{} · {message}",
                elapsed.as_secs_f64(),
                stats.events,
                self.count
            );
        }
        self.bar.set_message(message);
    }
}

fn print(r: &DemoReport, ok: bool) {
    let mut t = table();
    let ms = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2} ms"));
    let zero_good = |n: usize| Cell::new(n).fg(if n == 0 { Color::Green } else { Color::Red });
    let rows: Vec<(&str, Cell)> = vec![
        ("events sent by the source", Cell::new(r.sent)),
        (
            "acknowledged within 500 ms",
            Cell::new(r.acked_within_500ms),
        ),
        (
            "ack latency p50 / p99",
            Cell::new(format!("{} / {}", ms(r.ack_p50_ms), ms(r.ack_p99_ms))),
        ),
        ("delivered to the target", Cell::new(r.delivered)),
        ("duplicates at the target", zero_good(r.duplicates)),
        ("unenriched or altered", zero_good(r.unenriched + r.altered)),
        ("extra requests (retries)", Cell::new(r.extra_requests)),
        ("rate-limited answers", Cell::new(r.rate_limited_answers)),
        ("dead-lettered", Cell::new(r.dead_lettered)),
        ("LOST", zero_good(r.lost)),
        ("time", Cell::new(format!("{:.1} s", r.seconds))),
    ];
    for (k, v) in rows {
        t.add_row(vec![Cell::new(k), v]);
    }
    println!("{t}");
    println!(
        "{}",
        if ok {
            "every acknowledged event was delivered once, enriched and unchanged"
        } else {
            "FAILED: see the rows in red"
        }
    );
}
