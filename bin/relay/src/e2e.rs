//! `relay e2e`: scripted end-to-end scenarios, each verified at the target by event id.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
mod scenarios;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::{Cell, Color};
use serde::Serialize;
use serde_json::{Value, json};
use source_sim::SourceConfig;
use target_sim::{Faults, LimitMode, TargetConfig, TargetHandle};

use crate::aws::AwsArgs;
use crate::harness::{Backend, RelayProcess, Setup, Verdict, drained};
use crate::ops::table;

pub(crate) const BRAND: &str = relay_core::DEFAULT_BRAND;
/// Fast retries so outage scenarios recover in seconds.
const FAST_RETRIES: [&str; 4] = ["--backoff-base", "100ms", "--backoff-cap", "1s"];
/// How long a scenario's backlog may take to reach the target before its events count as lost.
/// On AWS through a faulty API, `sigkill` drains in about 88 s alone (the killed relay's leases
/// and message visibilities run out first, with throttled calls retried), so under a loaded CI
/// machine 90 s called a late event lost: 150 s leaves room for that and still catches a loss.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(150);

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
        outcomes.push(timed(&setup, scenario, &work, args.inject).await);
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
            print_faults(f);
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

/// Runs one scenario in its own directory under `work`, timed; a scenario that cannot run is a
/// failed outcome that says why.
async fn timed(setup: &Setup, scenario: Scenario, work: &Path, inject: Option<Inject>) -> Outcome {
    let started = Instant::now();
    match run_scenario(setup, scenario, &work.join(name(scenario)), inject).await {
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
    }
}

fn print_faults(f: &aws_faults::Stats) {
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

/// Drives one scenario, then judges what reached the target.
async fn run_scenario(
    setup: &Setup,
    scenario: Scenario,
    dir: &Path,
    inject: Option<Inject>,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let run = Run {
        setup,
        scenario,
        data: dir.join("data"),
        inject,
    };
    let mut found = Findings::default();
    let driven = match scenario {
        Scenario::Steady => scenarios::steady(&run).await?,
        Scenario::Outage => scenarios::outage(&run, &mut found).await?,
        Scenario::Storm429 | Scenario::GraphqlLimits => scenarios::storm(&run).await?,
        Scenario::DlqRedrive => scenarios::dlq_redrive(&run, &mut found).await?,
        Scenario::Sigkill => scenarios::sigkill(&run, &mut found).await?,
        Scenario::Batches => scenarios::batches(&run, &mut found).await?,
    };
    judge(&run, driven, found).await
}

/// One scenario's run: where, against what.
struct Run<'a> {
    setup: &'a Setup,
    scenario: Scenario,
    data: PathBuf,
    inject: Option<Inject>,
}

/// What a scenario's drive leaves to judge: the target, the relay, and what was acknowledged.
struct Driven {
    target: TargetHandle,
    relay: RelayProcess,
    sent: Vec<Value>,
    report: source_sim::Report,
}

impl Driven {
    /// What the source had acknowledged is what must arrive.
    fn acked(
        target: TargetHandle,
        relay: RelayProcess,
        report: source_sim::Report,
    ) -> anyhow::Result<Self> {
        Ok(Driven {
            sent: report.acked_events.clone(),
            target,
            relay,
            report,
        })
    }
}

/// What a scenario noticed on the way, failed, and how many duplicates it allows.
#[derive(Debug, Default)]
struct Findings {
    notes: Vec<String>,
    failures: Vec<String>,
    allowed_duplicates: usize,
}

/// Waits for the acknowledged events to reach the target, and judges: every one exactly once
/// (within the duplicates the scenario allows), no late acknowledgement, and what the scenario
/// set out to make happen did happen.
async fn judge(run: &Run<'_>, driven: Driven, found: Findings) -> anyhow::Result<Outcome> {
    let Driven {
        target,
        relay,
        sent,
        report,
    } = driven;
    let Findings {
        mut notes,
        mut failures,
        mut allowed_duplicates,
    } = found;
    let (setup, scenario, data) = (run.setup, run.scenario, &run.data);
    let complete = drained(&sent, &target, data, DRAIN_TIMEOUT).await;
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
