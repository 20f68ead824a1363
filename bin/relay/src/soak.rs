//! `relay soak`: a long run of `relay up` on one backend with a source that never stops, a
//! flaky target, a SIGKILL every so often and storage faults (the disk's on the embedded store,
//! a faulty AWS API on AWS), then a clean start and a drain. It ends in one table: acknowledged,
//! delivered, dead-lettered, lost (must be 0), duplicates on the wire.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use comfy_table::{Cell, Color};
use relay_core::ops::{DlqFilter, Operations};
use serde::Serialize;
use serde_json::{Value, json};
use source_sim::SourceConfig;
use target_sim::{Faults, TargetConfig, TargetHandle};

use crate::args;
use crate::aws::AwsArgs;
use crate::harness::{Backend, RelayProcess, Setup, Verdict, drained};
use crate::ops::table;

/// The disk's faults by default: rare enough that the relay gets work done, frequent enough
/// that every kind happens many times in ten minutes.
const DISK_FAULTS: &str = "write.journal=short@p:0.0005, write.journal=error@p:0.0005, \
    flush.journal=error@p:0.002, flush.*=stall:300ms@p:0.002, create.segment=error@p:0.1, \
    write.index=error@p:0.001, flush.index=error@p:0.01";

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Which backend to soak.
    #[arg(long, value_enum, default_value = "local")]
    backend: Backend,
    #[command(flatten)]
    aws: AwsArgs,
    /// How long the source sends for; the drain follows.
    #[arg(long, default_value = "10m", value_parser = args::duration)]
    duration: Duration,
    /// Events per second from the source (default: 50 locally, 15 on AWS, whose local API
    /// delivers a few dozen a second).
    #[arg(long, value_parser = args::positive_rate)]
    rps: Option<f64>,
    /// SIGKILL `relay up` this often, and start it again at once.
    #[arg(long, default_value = "60s", value_parser = args::duration)]
    kill_every: Duration,
    /// The embedded store's fault schedule (RELAY_FAULTS; needs a binary built with
    /// `--features fault-injection`), or `off`.
    #[arg(long, default_value = DISK_FAULTS)]
    disk_faults: String,
    /// With --backend aws: the share of AWS calls that meet a fault (0 to 0.5).
    #[arg(long, default_value_t = 0.03)]
    aws_faults: f64,
    /// Keep the data directory and the relay's log here.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct SoakReport {
    backend: &'static str,
    seconds: f64,
    rps: f64,
    kills: u32,
    sent: u64,
    acked: u64,
    late_acks: u64,
    refused: u64,
    unanswered: u64,
    delivered: usize,
    dead_lettered: usize,
    lost: Vec<String>,
    duplicates_on_the_wire: u64,
    target_failures: u64,
    target_rate_limited: u64,
    storage_faults: u64,
    storage_faults_kind: &'static str,
    notes: Vec<String>,
}

pub(crate) async fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    if args.backend == Backend::Aws && args.aws.endpoint_url.is_none() {
        anyhow::bail!(
            "relay soak --backend aws needs a local AWS API: --endpoint-url http://127.0.0.1:5000"
        );
    }
    let started = Instant::now();
    let rps = args.rps.unwrap_or(match args.backend {
        Backend::Local => 50.0,
        Backend::Aws => 15.0,
    });
    let temp = tempfile::Builder::new().prefix("relay-soak-").tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&work)?;
    let data = work.join("data");
    let mut notes = Vec::new();

    let (setup, proxy) = Setup::new(args.backend, &args.aws, Some(args.aws_faults)).await?;
    let target = flaky_target().await?;
    let mut relay = start_faulty(&args, &setup, &data, &target, &mut notes).await?;

    let (report, kills, prefix) =
        send_under_kills(&args, &mut relay, &target, rps, started).await?;
    // A clean start without faults, and the drain.
    if let Err(e) = relay.stop().await {
        notes.push(format!("the last faulty relay did not stop cleanly: {e:#}"));
    }
    let (complete, dead) = drain_clean(&setup, &data, &target, &report.acked_events).await?;
    if !complete {
        notes.push("not every acknowledged event reached the target".into());
    }
    let verdict = Verdict::of(&report.acked_events, &target, crate::e2e::BRAND);
    let lost: Vec<String> = verdict
        .lost
        .iter()
        .filter(|id| !dead.iter().any(|d| &d.event_id == *id))
        .cloned()
        .collect();
    let strangers = target
        .events()
        .keys()
        .filter(|id| !id.starts_with(&prefix))
        .count();
    if strangers > 0 {
        notes.push(format!("{strangers} events at the target were never sent"));
    }
    let stats = target.stats();
    let (storage_faults, storage_faults_kind) = storage_faults(proxy.as_ref(), &work);
    let soak = SoakReport {
        backend: match args.backend {
            Backend::Local => "local",
            Backend::Aws => "aws",
        },
        seconds: started.elapsed().as_secs_f64(),
        rps,
        kills,
        sent: report.sent,
        acked: report.acked,
        late_acks: report.late,
        refused: report.rejected,
        unanswered: report.errors + report.skipped,
        delivered: verdict.delivered,
        dead_lettered: dead.len(),
        lost,
        duplicates_on_the_wire: stats.duplicates,
        target_failures: stats.failed,
        target_rate_limited: stats.rate_limited,
        storage_faults,
        storage_faults_kind,
        notes,
    };
    let passed = soak.lost.is_empty() && strangers == 0 && verdict.altered.is_empty();
    say(&soak, passed, args.json)?;
    if !passed && args.work_dir.is_none() {
        eprintln!("data and logs kept in {}", temp.keep().display());
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The source sends for `--duration` while the relay is SIGKILLed every `--kill-every`; the
/// source's report, how many kills, and the prefix of the ids it sent.
async fn send_under_kills(
    args: &SoakArgs,
    relay: &mut RelayProcess,
    target: &TargetHandle,
    rps: f64,
    started: Instant,
) -> anyhow::Result<(source_sim::Report, u32, String)> {
    let mut config = SourceConfig::new(
        relay.events_url(),
        relay.api_key.clone(),
        rps,
        (rps * args.duration.as_secs_f64()) as u64,
    );
    config.keep_ids = true;
    config.patience = Duration::from_secs(2);
    let prefix = config.id_prefix.clone();
    let progress = Arc::new(source_sim::Progress::default());
    let sending = tokio::spawn(source_sim::run(config, Arc::clone(&progress)));
    let kills = keep_killing(
        relay,
        &sending,
        args.kill_every,
        (!args.json).then_some((&progress, target, started)),
    )
    .await?;
    Ok((sending.await??, kills, prefix))
}

/// How many faults were injected, and into what: AWS calls through the proxy, or disk calls
/// (counted in the relay's logs).
fn storage_faults(proxy: Option<&aws_faults::Proxy>, work: &Path) -> (u64, &'static str) {
    match proxy {
        Some(p) => (p.stats().injected, "AWS calls"),
        None => (
            count_in_logs(work, "fault injection: failing a call"),
            "disk calls",
        ),
    }
}

/// The relay under its faults (disk faults locally, when built in; the AWS faults proxy is the
/// setup's). A restart listens where the first start did (the harness sees to it).
async fn start_faulty(
    args: &SoakArgs,
    setup: &Setup,
    data: &Path,
    target: &TargetHandle,
    notes: &mut Vec<String>,
) -> anyhow::Result<RelayProcess> {
    let (relay_args, mut env) = setup.relay("soak");
    let disk_faults = args.backend == Backend::Local && args.disk_faults != "off";
    if disk_faults {
        env.push(("RELAY_FAULTS".into(), args.disk_faults.clone()));
    }
    let arg_refs: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    let relay = RelayProcess::start_with(data, &target.url(), &arg_refs, env).await?;
    let disk_faults_on = std::fs::read_to_string(&relay.log)
        .unwrap_or_default()
        .contains("fault injection:");
    if disk_faults && !disk_faults_on {
        notes.push(
            "disk faults are not built into this binary (cargo build --features fault-injection); ran without them"
                .into(),
        );
    }
    Ok(relay)
}

/// The report, as JSON or a table and a verdict line.
fn say(soak: &SoakReport, passed: bool, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"passed": passed, "soak": soak}))?
        );
    } else {
        print_table(soak);
        println!(
            "{}",
            if passed {
                "soak: nothing lost"
            } else {
                "soak: FAILED"
            }
        );
    }
    Ok(())
}

/// A flaky target with a limit to find: 5 % of requests fail, each answer takes 20 ms.
async fn flaky_target() -> anyhow::Result<TargetHandle> {
    Ok(target_sim::start(
        "127.0.0.1:0".parse()?,
        TargetConfig {
            rate: 200.0,
            burst: Some(20.0),
            faults: Faults {
                fail_rate: 0.05,
                latency_ms: 20,
                ..Faults::default()
            },
            ..TargetConfig::default()
        },
    )
    .await?)
}

/// SIGKILLs the relay every `every` and restarts it where it listened, until the source is
/// done; with `say`, a line on stderr each time. Returns how many kills.
async fn keep_killing<T>(
    relay: &mut RelayProcess,
    sending: &tokio::task::JoinHandle<T>,
    every: Duration,
    say: Option<(&Arc<source_sim::Progress>, &TargetHandle, Instant)>,
) -> anyhow::Result<u32> {
    let mut kills = 0;
    while !sending.is_finished() {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = wait_for(sending) => break,
        }
        if sending.is_finished() {
            break;
        }
        relay.kill().await;
        kills += 1;
        relay.restart().await?;
        if let Some((progress, target, started)) = say {
            eprintln!(
                "{:>5.0} s: SIGKILL #{kills}; {} sent, {} delivered so far",
                started.elapsed().as_secs_f64(),
                progress.sent.load(std::sync::atomic::Ordering::Relaxed),
                target.stats().events
            );
        }
    }
    Ok(kills)
}

/// Starts the relay again without faults and waits for `acked` to drain; whether all did,
/// and the dead letters.
async fn drain_clean(
    setup: &Setup,
    data: &Path,
    target: &TargetHandle,
    acked: &[Value],
) -> anyhow::Result<(bool, Vec<relay_core::ops::DeadLetterView>)> {
    let clean = Setup {
        relay_endpoint: None,
        ..setup.clone()
    };
    let (clean_args, clean_env) = clean.relay("soak");
    let clean_refs: Vec<&str> = clean_args.iter().map(String::as_str).collect();
    let relay = RelayProcess::start_with(data, &target.url(), &clean_refs, clean_env).await?;
    let complete = drained(acked, target, data, Duration::from_secs(600)).await;
    let ops = clean.ops("soak", data).await?;
    let dead = ops.dead_letters(&DlqFilter::default()).await?;
    drop(ops);
    relay.stop().await?;
    Ok((complete, dead))
}

async fn wait_for<T>(task: &tokio::task::JoinHandle<T>) {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lines with `text` in every log under `dir`.
fn count_in_logs(dir: &std::path::Path, text: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(text))
                .count() as u64
        })
        .sum()
}

fn print_table(s: &SoakReport) {
    let mut t = table();
    let bad = |n: usize| Cell::new(n).fg(if n > 0 { Color::Red } else { Color::Green });
    let rows: Vec<(&str, Cell)> = vec![
        ("backend", Cell::new(s.backend)),
        (
            "ran",
            Cell::new(format!("{:.0} s at {} events/s", s.seconds, s.rps)),
        ),
        ("SIGKILLs", Cell::new(s.kills)),
        (
            "storage faults injected",
            Cell::new(format!("{} {}", s.storage_faults, s.storage_faults_kind)),
        ),
        (
            "target failures (503) / 429s",
            Cell::new(format!("{} / {}", s.target_failures, s.target_rate_limited)),
        ),
        ("sent", Cell::new(s.sent)),
        ("acknowledged (2xx within 500 ms)", Cell::new(s.acked)),
        (
            "late 2xx / refused / unanswered",
            Cell::new(format!(
                "{} / {} / {}",
                s.late_acks, s.refused, s.unanswered
            )),
        ),
        ("delivered", Cell::new(s.delivered)),
        ("dead-lettered", Cell::new(s.dead_lettered)),
        ("lost", bad(s.lost.len())),
        (
            "duplicates on the wire",
            Cell::new(s.duplicates_on_the_wire),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![Cell::new(k), v]);
    }
    println!("{t}");
    for n in &s.notes {
        println!("note: {n}");
    }
    if !s.lost.is_empty() {
        println!(
            "lost: {}",
            s.lost
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}
