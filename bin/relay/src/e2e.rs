//! `relay e2e`: scripted end-to-end scenarios, each verified at the target by event id.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::{Cell, Color};
use relay_core::ops::{DlqFilter, Operations};
use serde::Serialize;
use serde_json::{Value, json};
use source_sim::SourceConfig;
use target_sim::{Faults, LimitMode, TargetConfig, TargetHandle};

use crate::aws::AwsArgs;
use crate::harness::{Backend, RelayProcess, Setup, Verdict, drained, post, post_batch};
use crate::ops::table;

pub(crate) const BRAND: &str = relay_core::DEFAULT_BRAND;
/// Fast retries so outage scenarios recover in seconds.
const FAST_RETRIES: [&str; 4] = ["--backoff-base", "100ms", "--backoff-cap", "1s"];
/// How long a scenario's backlog may take to reach the target before its events count as lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// Steady load into a target with room to spare.
    Steady,
    /// The target is down while events arrive, then recovers.
    Outage,
    /// A burst far above the target's limit, signalled as HTTP 429 + Retry-After.
    Storm429,
    /// The same, signalled as GraphQL RATE_LIMITED errors.
    GraphqlLimits,
    /// Permanent rejections go to the DLQ; after the fix, a redrive delivers them.
    DlqRedrive,
    /// `relay up` is killed with SIGKILL mid-stream and restarted.
    Sigkill,
    /// A backlog through `POST /events/batch` beside live traffic, delivered ten events per
    /// request (`--batch 10`) to a target whose limit counts requests; one refused event in it
    /// is dead-lettered alone.
    Batches,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Inject {
    /// The target acknowledges every 50th event without storing it.
    Drop,
    /// The target records every 50th event twice.
    Duplicate,
}

#[derive(Debug, Args)]
pub(crate) struct E2eArgs {
    /// Which backend to test.
    #[arg(long, value_enum, default_value = "local")]
    backend: Backend,
    #[command(flatten)]
    aws: AwsArgs,
    /// Run only this scenario; repeatable. Default: all of them.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Make the mock target misbehave, to prove the checks catch it: the run must then fail.
    #[arg(long, value_enum)]
    inject: Option<Inject>,
    /// Keep data directories and `relay up` logs here (default: a temporary directory, removed
    /// after a passing run and kept after a failing one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// With --backend aws: send relay's AWS calls through a proxy that makes this share of
    /// them (0 to 0.5) fail: 500s, throttling, dropped connections (before and after the call
    /// is made) and slow answers. Every scenario must still lose nothing.
    #[arg(long, value_name = "SHARE", value_parser = fault_share)]
    aws_faults: Option<f64>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

fn fault_share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(p) if (0.0..=0.5).contains(&p) => Ok(p),
        _ => Err("must be a share of calls from 0 to 0.5, e.g. 0.05".into()),
    }
}

#[derive(Debug, Serialize)]
struct Outcome {
    scenario: Scenario,
    passed: bool,
    seconds: f64,
    #[serde(flatten)]
    verdict: Verdict,
    /// Acknowledgements that took longer than the source's 500 ms budget.
    late_acks: u64,
    /// Rate-limited answers the target gave.
    rate_limited: u64,
    /// What made it fail beyond the verdict (the scenario did not happen as scripted, the relay
    /// did not stop cleanly).
    failures: Vec<String>,
    /// What was notable.
    notes: Vec<String>,
}

pub(crate) async fn run(args: E2eArgs) -> anyhow::Result<ExitCode> {
    if args.backend == Backend::Aws && args.aws.endpoint_url.is_none() {
        anyhow::bail!(
            "relay e2e --backend aws creates a stack for each scenario: point it at a local AWS API with --endpoint-url (e.g. .venv-moto/bin/moto_server -p 5000, then --endpoint-url http://127.0.0.1:5000)"
        );
    }
    if args.aws_faults.is_some() && args.backend != Backend::Aws {
        anyhow::bail!("--aws-faults needs --backend aws: it stands between relay and the AWS API");
    }
    let (setup, proxy) = Setup::new(args.backend, &args.aws, args.aws_faults).await?;
    let requested = if args.scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        args.scenarios.clone()
    };
    let scenarios = requested;
    let temp = tempfile::Builder::new()
        .prefix("relay-e2e-")
        .tempdir()
        .context("cannot create a work directory")?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    let mut outcomes = Vec::new();
    for scenario in scenarios {
        if !args.json {
            eprintln!("running {} …", name(scenario));
        }
        let started = Instant::now();
        let outcome =
            match run_scenario(&setup, scenario, &work.join(name(scenario)), args.inject).await {
                Ok(mut o) => {
                    o.seconds = started.elapsed().as_secs_f64();
                    o
                }
                Err(e) => Outcome {
                    scenario,
                    passed: false,
                    seconds: started.elapsed().as_secs_f64(),
                    verdict: Verdict::default(),
                    late_acks: 0,
                    rate_limited: 0,
                    failures: vec![format!("scenario could not run: {e:#}")],
                    notes: Vec::new(),
                },
            };
        outcomes.push(outcome);
    }

    let passed = outcomes.iter().all(|o| o.passed);
    let faults = proxy.as_ref().map(aws_faults::Proxy::stats);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"passed": passed, "scenarios": outcomes, "aws_faults": faults})
            )?
        );
    } else {
        print_table(&outcomes);
        if let Some(f) = &faults {
            println!(
                "AWS faults injected: {} of {} calls ({} 500s, {} throttled, {} throughput, {} dropped before, {} dropped after, {} slow)",
                f.injected,
                f.calls,
                f.internal_error,
                f.throttling,
                f.throughput,
                f.drop_before,
                f.drop_after,
                f.slow
            );
        }
        println!(
            "{}",
            if passed {
                "e2e: every scenario passed"
            } else {
                "e2e: FAILED"
            }
        );
    }
    if !passed && args.work_dir.is_none() {
        let kept = temp.keep();
        eprintln!("data directories and relay logs kept in {}", kept.display());
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn name(s: Scenario) -> String {
    s.to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

async fn start_target(
    config: TargetConfig,
    inject: Option<Inject>,
) -> anyhow::Result<TargetHandle> {
    let target = target_sim::start("127.0.0.1:0".parse()?, config)
        .await
        .context("cannot start the mock target")?;
    let mut faults = target.faults();
    match inject {
        Some(Inject::Drop) => faults.drop_every = Some(50),
        Some(Inject::Duplicate) => faults.duplicate_every = Some(50),
        None => {}
    }
    target.set_faults(faults);
    Ok(target)
}

/// Sends `count` events open-loop at `rps` and returns the report.
async fn source(relay: &RelayProcess, rps: f64, count: u64) -> anyhow::Result<source_sim::Report> {
    let mut config = SourceConfig::new(relay.events_url(), relay.api_key.clone(), rps, count);
    config.keep_ids = true;
    Ok(source_sim::run(config, Arc::default()).await?)
}

/// A target with room to spare: 1,000 requests/s.
fn roomy() -> TargetConfig {
    TargetConfig {
        rate: 1000.0,
        ..TargetConfig::default()
    }
}

/// A limited target 100 ms away: enough requests are in flight when the limit bites for the
/// rate-limit answers to come as a storm, not one at a time.
fn limited(rate: f64, mode: LimitMode) -> TargetConfig {
    TargetConfig {
        rate,
        burst: Some(5.0),
        mode,
        faults: Faults {
            latency_ms: 100,
            ..Faults::default()
        },
        ..TargetConfig::default()
    }
}

async fn run_scenario(
    setup: &Setup,
    scenario: Scenario,
    dir: &Path,
    inject: Option<Inject>,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("data");
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let mut allowed_duplicates = 0;
    let (target, relay, sent, report) = match scenario {
        Scenario::Steady => {
            let target = start_target(roomy(), inject).await?;
            let relay = setup
                .start(&name(scenario), &data, &target.url(), &[])
                .await?;
            let report = source(&relay, 200.0, 600).await?;
            (target, relay, report.acked_events.clone(), report)
        }
        Scenario::Outage => {
            let target = start_target(roomy(), inject).await?;
            let mut faults = target.faults();
            faults.outage = true;
            target.set_faults(faults.clone());
            let relay = setup
                .start(&name(scenario), &data, &target.url(), &FAST_RETRIES)
                .await?;
            let report = source(&relay, 100.0, 300).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let failed = target.stats().failed;
            if failed == 0 {
                failures.push("the outage was never hit".into());
            }
            faults.outage = false;
            target.set_faults(faults);
            notes.push(format!("{failed} requests failed during the outage"));
            (target, relay, report.acked_events.clone(), report)
        }
        Scenario::Storm429 | Scenario::GraphqlLimits => {
            let mode = if scenario == Scenario::Storm429 {
                LimitMode::Http429
            } else {
                LimitMode::Graphql
            };
            // Through a local AWS API the relay's own pace is moto's (about 35–40 deliveries/s
            // on two cores, with X-Ray segments on): a limit it can barely reach would make no
            // storm. Half of that is a limit it must be pushed down to.
            let limit = if setup.backend == Backend::Aws {
                20.0
            } else {
                40.0
            };
            let target = start_target(limited(limit, mode), inject).await?;
            // A ceiling five times the real limit: the relay starts there and must be pushed
            // down by the target's answers alone.
            let relay = setup
                .start(
                    &name(scenario),
                    &data,
                    &target.url(),
                    &["--target-rate", "200"],
                )
                .await?;
            let report = source(&relay, 200.0, 400).await?;
            (target, relay, report.acked_events.clone(), report)
        }
        Scenario::DlqRedrive => {
            let target = start_target(roomy(), inject).await?;
            let mut faults = target.faults();
            faults.reject_names = vec!["poison".into()];
            target.set_faults(faults.clone());
            let relay = setup
                .start(&name(scenario), &data, &target.url(), &[])
                .await?;
            let report = source(&relay, 100.0, 200).await?;
            let poison: Vec<Value> = (0..10)
                .map(|i| json!({"id": format!("poison-{i}"), "name": "poison", "body": "rejected until fixed", "timestamp": 1_763_800_000 + i}))
                .collect();
            let accepted_poison = post(&relay, &poison).await?;
            let ops = setup.ops(&name(scenario), &data).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while ops.dead_letters(&DlqFilter::default()).await?.len() < accepted_poison.len() {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the rejected events never reached the DLQ"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            faults.reject_names.clear();
            target.set_faults(faults);
            let ids: Vec<String> = accepted_poison
                .iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect();
            let redriven = ops.redrive(&ids, Duration::ZERO).await?;
            notes.push(format!(
                "{} dead-lettered, {} redriven",
                ids.len(),
                redriven.redriven.len()
            ));
            let mut sent = report.acked_events.clone();
            sent.extend(accepted_poison);
            (target, relay, sent, report)
        }
        Scenario::Sigkill => {
            let target = start_target(
                TargetConfig {
                    rate: 100.0,
                    burst: Some(10.0),
                    ..TargetConfig::default()
                },
                inject,
            )
            .await?;
            let in_flight = 16;
            allowed_duplicates = in_flight;
            let mut relay = setup
                .start(
                    &name(scenario),
                    &data,
                    &target.url(),
                    &["--max-in-flight", "16"],
                )
                .await?;
            let mut config =
                SourceConfig::new(relay.events_url(), relay.api_key.clone(), 200.0, 800);
            config.keep_ids = true;
            let sending = tokio::spawn(source_sim::run(config, Arc::default()));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            relay.kill().await;
            let delivered_at_kill = target.stats().events;
            // Sends fail while the relay is down, as a real source's would; the restarted relay
            // listens on the same address.
            relay.restart().await?;
            let report = sending.await??;
            notes.push(format!(
                "killed mid-stream with {delivered_at_kill} delivered; {} sends failed while down",
                report.errors + report.rejected
            ));
            (target, relay, report.acked_events.clone(), report)
        }
        Scenario::Batches => {
            let target = start_target(
                TargetConfig {
                    rate: 20.0,
                    burst: Some(20.0),
                    faults: Faults {
                        reject_names: vec!["poison".into()],
                        ..Faults::default()
                    },
                    ..TargetConfig::default()
                },
                inject,
            )
            .await?;
            let relay = setup
                .start(&name(scenario), &data, &target.url(), &["--batch", "10"])
                .await?;
            let live = tokio::spawn({
                let (url, key) = (relay.events_url(), relay.api_key.clone());
                async move {
                    let mut config = SourceConfig::new(url, key, 100.0, 200);
                    config.keep_ids = true;
                    source_sim::run(config, Arc::default()).await
                }
            });
            let mut backlog: Vec<Value> = (0..400)
                .map(|i| json!({"id": format!("backlog-{i:03}"), "name": "order.imported", "body": format!("line {i}"), "timestamp": 1_763_800_000 + i, "batch": {"part": i / 200}}))
                .collect();
            backlog[123]["name"] = json!("poison");
            let mut stored = Vec::new();
            for part in backlog.chunks(200) {
                stored.extend(post_batch(&relay, part).await?);
            }
            if stored.len() != backlog.len() {
                failures.push(format!(
                    "{} of {} batch items accepted",
                    stored.len(),
                    backlog.len()
                ));
            }
            let report = live.await??;
            let ops = setup.ops(&name(scenario), &data).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let dead = loop {
                let dead = ops.dead_letters(&DlqFilter::default()).await?;
                if !dead.is_empty() || tokio::time::Instant::now() > deadline {
                    break dead;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let dead_ids: Vec<&str> = dead.iter().map(|d| d.event_id.as_str()).collect();
            if dead_ids != ["backlog-123"] {
                failures.push(format!(
                    "expected backlog-123 alone in the DLQ, found {dead_ids:?}"
                ));
            }
            let mut sent = report.acked_events.clone();
            sent.extend(stored.into_iter().filter(|e| e["name"] != "poison"));
            (target, relay, sent, report)
        }
    };

    let complete = drained(&sent, &target, &data, DRAIN_TIMEOUT).await;
    if !complete {
        notes.push("not every acknowledged event reached the target".into());
    }
    let verdict = Verdict::of(&sent, &target, BRAND);
    let stats = target.stats();
    // Proof that the scenario reached the target's limit. Locally the relay overshoots a
    // starting ceiling five times the limit; through moto its pace is moto's, and a controller
    // that cuts on the first answers may see only a few.
    let storm = if setup.backend == Backend::Aws { 1 } else { 5 };
    if matches!(scenario, Scenario::Storm429 | Scenario::GraphqlLimits)
        && stats.rate_limited < storm
    {
        failures.push(format!(
            "the storm never happened ({} rate-limited answers)",
            stats.rate_limited
        ));
    }
    if scenario == Scenario::Batches {
        let per_request = stats.events as f64 / stats.requests.max(1) as f64;
        notes.push(format!(
            "{} events in {} requests ({per_request:.1} per request)",
            stats.events, stats.requests
        ));
        if per_request < 2.0 {
            failures.push("the events were not batched".into());
        }
    }
    if scenario == Scenario::Sigkill && !verdict.duplicated.is_empty() {
        notes.push(format!(
            "{} resent after the crash (same idempotency key)",
            verdict.duplicated.len()
        ));
    }
    // Through a faulty AWS API a settlement can fail for good after the target took the
    // event; the event is then sent again, under the same idempotency key. At-least-once
    // allows that, within reason; losing one never.
    if setup.relay_endpoint.is_some() {
        allowed_duplicates = allowed_duplicates.max(verdict.acked / 50);
        if scenario != Scenario::Sigkill && !verdict.duplicated.is_empty() {
            notes.push(format!(
                "{} sent again after a settlement AWS failed (same idempotency key)",
                verdict.duplicated.len()
            ));
        }
    }
    if let Err(e) = relay.stop().await {
        failures.push(format!("clean stop failed: {e:#}"));
    }
    if verdict.acked == 0 {
        failures.push("nothing was acknowledged".into());
    }
    let passed = verdict.passed(allowed_duplicates) && report.late == 0 && failures.is_empty();
    target.stop().await;
    Ok(Outcome {
        scenario,
        passed,
        seconds: 0.0,
        verdict,
        late_acks: report.late,
        rate_limited: stats.rate_limited,
        failures,
        notes,
    })
}

fn print_table(outcomes: &[Outcome]) {
    let mut t = table();
    t.set_header([
        "scenario",
        "result",
        "acked",
        "delivered",
        "lost",
        "duplicated",
        "unenriched",
        "altered",
        "late acks",
        "429s",
        "time",
        "notes",
    ]);
    for o in outcomes {
        let v = &o.verdict;
        let bad = |n: usize| Cell::new(n).fg(if n > 0 { Color::Red } else { Color::Reset });
        t.add_row(vec![
            Cell::new(name(o.scenario)),
            if o.passed {
                Cell::new("pass").fg(Color::Green)
            } else {
                Cell::new("FAIL").fg(Color::Red)
            },
            Cell::new(v.acked),
            Cell::new(v.delivered),
            bad(v.lost.len()),
            bad(v.duplicated.len()),
            bad(v.unenriched.len()),
            bad(v.altered.len()),
            bad(o.late_acks as usize),
            Cell::new(o.rate_limited),
            Cell::new(format!("{:.1} s", o.seconds)),
            Cell::new(
                o.failures
                    .iter()
                    .chain(&o.notes)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ]);
    }
    println!("{t}");
    for o in outcomes.iter().filter(|o| !o.passed) {
        for (what, ids) in [
            ("lost", &o.verdict.lost),
            ("duplicated", &o.verdict.duplicated),
            ("altered", &o.verdict.altered),
        ] {
            if !ids.is_empty() {
                let shown: Vec<_> = ids.iter().take(10).cloned().collect();
                println!(
                    "{}: {what}: {}{}",
                    name(o.scenario),
                    shown.join(" "),
                    if ids.len() > 10 { " …" } else { "" }
                );
            }
        }
    }
}
