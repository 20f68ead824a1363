//! `relay dlq list`, `redrive` and `purge`: inspect, re-queue and remove dead letters.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use comfy_table::{Cell, Color};
use relay_core::UnixMillis;
use relay_core::ops::{DlqFilter, Operations};

use crate::args;
use crate::ops::{StoreArgs, point_in_time, relative, table, timestamp};

#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, newest first, with the reason and the last answer.
    List(ListArgs),
    /// Put dead letters back in the queue, with a fresh attempt budget.
    ///
    /// Redriven events are delivered by the running `relay up` at the pace the target allows,
    /// like any other work, so a redrive cannot flood the target; --spread also staggers when
    /// they become due. Each redriven event's next attempt shows trigger `redrive` in
    /// `relay trace`.
    #[command(verbatim_doc_comment)]
    Redrive(RedriveArgs),
    /// Remove old dead letters, keeping a copy of each in the archive.
    ///
    /// Each purged event (payload, attempts, reason, last answer) goes to a compressed
    /// JSON-lines file under DATA_DIR/archive/ first; `relay trace` still finds it there. A
    /// purged event cannot be redriven; its payload is in the archive to send again.
    ///
    /// Example:
    ///   relay dlq purge --before 30d --dry-run --data-dir /var/lib/relay
    #[command(verbatim_doc_comment)]
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
struct Filter {
    /// Only dead letters from this recent (`30m`, `2h`) or since this RFC 3339 time.
    #[arg(long, value_parser = point_in_time)]
    since: Option<UnixMillis>,
    /// Only dead letters whose reason contains this text (case-insensitive), e.g. `503`.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    filter: Filter,
    /// Show at most this many.
    #[arg(long, default_value_t = 100, value_parser = args::positive_count)]
    limit: usize,
    #[command(flatten)]
    store: StoreArgs,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["ids", "all", "since", "reason"])))]
struct RedriveArgs {
    /// Redrive this event; repeatable.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Redrive every dead letter (or every one matching --since/--reason).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    filter: Filter,
    /// Show what would be redriven, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Stagger the redriven events' due times evenly over this long.
    #[arg(long, default_value = "0s", value_parser = args::duration)]
    spread: Duration,
    #[command(flatten)]
    store: StoreArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PurgeArgs {
    /// Purge dead letters from before this: a duration back from now (`30d`) or an RFC 3339
    /// time.
    #[arg(long, value_parser = point_in_time)]
    before: UnixMillis,
    /// Only dead letters whose reason contains this text (case-insensitive).
    #[arg(long)]
    reason: Option<String>,
    /// Show what would be purged, change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    store: StoreArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Redrive(args) => redrive(args).await,
        DlqCommand::Purge(args) => purge(args).await,
    }
}

async fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let ops = args.store.open().await?;
    let filter = DlqFilter {
        before: Some(args.before),
        reason: args.reason,
        ..DlqFilter::default()
    };
    let report = ops.purge(&filter, args.dry_run).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.dry_run {
        println!(
            "would purge {} dead letter(s){}",
            report.purged.len(),
            list_ids(&report.purged)
        );
    } else {
        println!(
            "purged {} dead letter(s){}",
            report.purged.len(),
            list_ids(&report.purged)
        );
        if let Some(file) = &report.archive {
            println!("copies kept in {file}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let ops = args.store.open().await?;
    let filter = DlqFilter {
        since: args.filter.since,
        reason: args.filter.reason,
        limit: Some(args.limit),
        ..DlqFilter::default()
    };
    let letters = ops.dead_letters(&filter).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        let filtered = filter.since.is_some() || filter.reason.is_some();
        println!(
            "the dead-letter queue is empty{}",
            if filtered { " for this filter" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = relay_core::now_millis();
    let mut t = table();
    t.set_header([
        "event id",
        "dead since",
        "attempts",
        "reason",
        "last answer",
    ]);
    for d in &letters {
        t.add_row(vec![
            Cell::new(&d.event_id),
            Cell::new(format!(
                "{} ({})",
                timestamp(d.dead_at),
                relative(d.dead_at, now)
            )),
            Cell::new(d.attempts),
            Cell::new(&d.reason).fg(Color::Red),
            Cell::new(truncate(d.last_response.as_deref().unwrap_or("—"), 120)),
        ]);
    }
    println!("{t}");
    println!("{} shown (limit {})", letters.len(), args.limit);
    Ok(ExitCode::SUCCESS)
}

async fn redrive(args: RedriveArgs) -> anyhow::Result<ExitCode> {
    let ops = args.store.open().await?;
    let ids = if args.ids.is_empty() {
        let filter = DlqFilter {
            since: args.filter.since,
            reason: args.filter.reason.clone(),
            ..DlqFilter::default()
        };
        ops.dead_letters(&filter)
            .await?
            .into_iter()
            .map(|d| d.event_id)
            .collect()
    } else {
        args.ids.clone()
    };
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::json!({"would_redrive": ids}));
        } else {
            println!("would redrive {} event(s): {}", ids.len(), ids.join(" "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = ops.redrive(&ids, args.spread).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "redriven {} event(s){}",
            report.redriven.len(),
            list_ids(&report.redriven)
        );
        if !report.skipped.is_empty() {
            eprintln!(
                "not in the dead-letter queue (unknown id, or not dead): {}",
                report.skipped.join(" ")
            );
        }
        for a in &report.archived {
            eprintln!(
                "{} was archived (purged, or delivered past the retention) and cannot be redriven; its payload is in {}: send it again to the ingest API",
                a.id, a.location
            );
        }
    }
    // Asking for a specific event that is not a dead letter is a failure the caller should see.
    Ok(if report.skipped.is_empty() && report.archived.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn list_ids(ids: &[String]) -> String {
    match ids.len() {
        0 => String::new(),
        n if n <= 20 => format!(": {}", ids.join(" ")),
        n => format!(": {} … and {} more", ids[..20].join(" "), n - 20),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}
