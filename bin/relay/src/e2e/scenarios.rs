//! How each scenario drives the relay and its target; `super::judge` then checks what arrived.

use std::sync::Arc;
use std::time::Duration;

use relay_core::ops::{DlqFilter, Operations};
use serde_json::{Value, json};
use source_sim::SourceConfig;
use target_sim::{Faults, LimitMode, TargetConfig};

use super::{
    Driven, FAST_RETRIES, Findings, Run, Scenario, limited, name, roomy, source, start_target,
};
use crate::harness::{Backend, post, post_batch};

/// A steady stream well under the limit.
pub(super) async fn steady(run: &Run<'_>) -> anyhow::Result<Driven> {
    let target = start_target(roomy(), run.inject).await?;
    let relay = run
        .setup
        .start(&name(run.scenario), &run.data, &target.url(), &[])
        .await?;
    let report = source(&relay, 200.0, 600).await?;
    Driven::acked(target, relay, report)
}

/// The target down while events arrive, then back.
pub(super) async fn outage(run: &Run<'_>, found: &mut Findings) -> anyhow::Result<Driven> {
    let target = start_target(roomy(), run.inject).await?;
    let mut faults = target.faults();
    faults.outage = true;
    target.set_faults(faults.clone());
    let relay = run
        .setup
        .start(&name(run.scenario), &run.data, &target.url(), &FAST_RETRIES)
        .await?;
    let report = source(&relay, 100.0, 300).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = target.stats().failed;
    if failed == 0 {
        found.failures.push("the outage was never hit".into());
    }
    faults.outage = false;
    target.set_faults(faults);
    found
        .notes
        .push(format!("{failed} requests failed during the outage"));
    Driven::acked(target, relay, report)
}

/// A limit the relay starts five times above, signalled by 429s or GraphQL errors.
pub(super) async fn storm(run: &Run<'_>) -> anyhow::Result<Driven> {
    let mode = if run.scenario == Scenario::Storm429 {
        LimitMode::Http429
    } else {
        LimitMode::Graphql
    };
    // Through a local AWS API the relay's own pace is moto's (about 35–40 deliveries/s
    // on two cores, with X-Ray segments on): a limit it can barely reach would make no
    // storm. Half of that is a limit it must be pushed down to.
    let limit = if run.setup.backend == Backend::Aws {
        20.0
    } else {
        40.0
    };
    let target = start_target(limited(limit, mode), run.inject).await?;
    // A ceiling five times the real limit: the relay starts there and must be pushed
    // down by the target's answers alone.
    let relay = run
        .setup
        .start(
            &name(run.scenario),
            &run.data,
            &target.url(),
            &["--target-rate", "200"],
        )
        .await?;
    let report = source(&relay, 200.0, 400).await?;
    Driven::acked(target, relay, report)
}

/// Events the target rejects, dead-lettered, then redriven once it takes them.
pub(super) async fn dlq_redrive(run: &Run<'_>, found: &mut Findings) -> anyhow::Result<Driven> {
    let target = start_target(roomy(), run.inject).await?;
    let mut faults = target.faults();
    faults.reject_names = vec!["poison".into()];
    target.set_faults(faults.clone());
    let relay = run
        .setup
        .start(&name(run.scenario), &run.data, &target.url(), &[])
        .await?;
    let report = source(&relay, 100.0, 200).await?;
    let poison: Vec<Value> = (0..10)
            .map(|i| json!({"id": format!("poison-{i}"), "name": "poison", "body": "rejected until fixed", "timestamp": 1_763_800_000 + i}))
            .collect();
    let accepted_poison = post(&relay, &poison).await?;
    let ops = run.setup.ops(&name(run.scenario), &run.data).await?;
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
    found.notes.push(format!(
        "{} dead-lettered, {} redriven",
        ids.len(),
        redriven.redriven.len()
    ));
    let mut sent = report.acked_events.clone();
    sent.extend(accepted_poison);
    Ok(Driven {
        target,
        relay,
        sent,
        report,
    })
}

/// The relay killed mid-stream and restarted on the same data.
pub(super) async fn sigkill(run: &Run<'_>, found: &mut Findings) -> anyhow::Result<Driven> {
    let target = start_target(
        TargetConfig {
            rate: 100.0,
            burst: Some(10.0),
            ..TargetConfig::default()
        },
        run.inject,
    )
    .await?;
    let in_flight = 16;
    found.allowed_duplicates = in_flight;
    let mut relay = run
        .setup
        .start(
            &name(run.scenario),
            &run.data,
            &target.url(),
            &["--max-in-flight", "16"],
        )
        .await?;
    let mut config = SourceConfig::new(relay.events_url(), relay.api_key.clone(), 200.0, 800);
    config.keep_ids = true;
    let sending = tokio::spawn(source_sim::run(config, Arc::default()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.kill().await;
    let delivered_at_kill = target.stats().events;
    // Sends fail while the relay is down, as a real source's would; the restarted relay
    // listens on the same address.
    relay.restart().await?;
    let report = sending.await??;
    found.notes.push(format!(
        "killed mid-stream with {delivered_at_kill} delivered; {} sends failed while down",
        report.errors + report.rejected
    ));
    Driven::acked(target, relay, report)
}

/// A backlog through the batch API beside a live stream, delivered in batches of 10, one poison event dead alone.
pub(super) async fn batches(run: &Run<'_>, found: &mut Findings) -> anyhow::Result<Driven> {
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
        run.inject,
    )
    .await?;
    let relay = run
        .setup
        .start(
            &name(run.scenario),
            &run.data,
            &target.url(),
            &["--batch", "10"],
        )
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
        found.failures.push(format!(
            "{} of {} batch items accepted",
            stored.len(),
            backlog.len()
        ));
    }
    let report = live.await??;
    let ops = run.setup.ops(&name(run.scenario), &run.data).await?;
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
        found.failures.push(format!(
            "expected backlog-123 alone in the DLQ, found {dead_ids:?}"
        ));
    }
    let mut sent = report.acked_events.clone();
    sent.extend(stored.into_iter().filter(|e| e["name"] != "poison"));
    Ok(Driven {
        target,
        relay,
        sent,
        report,
    })
}
