//! `relay trace <id>`: one event's timeline.

use relay_core::{AttemptOutcome, DeliveryStatus};
use std::process::ExitCode;

use clap::Args;
use comfy_table::{Cell, Color};
use relay_core::ops::{EventTrace, Operations};

use crate::ops::{StoreArgs, relative, table, timestamp};

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The event id, as the source sent it.
    id: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Print the trace as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let ops = args.store.open().await?;
    let Some(trace) = ops.trace(&args.id).await? else {
        eprintln!("no event with id {:?} {}", args.id, args.store.place());
        return Ok(ExitCode::FAILURE);
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        print(&trace, &args.store.flags());
    }
    Ok(ExitCode::SUCCESS)
}

fn outcome_colour(outcome: AttemptOutcome) -> Color {
    match outcome {
        AttemptOutcome::Delivered => Color::Green,
        AttemptOutcome::RateLimited | AttemptOutcome::Transient => Color::Yellow,
        AttemptOutcome::Permanent => Color::Red,
    }
}

fn print(t: &EventTrace, flags: &str) {
    println!("{}", summary(t));
    print_attempts(t);
    print_dead_letter(t, flags);
    print_segments(t);
    if t.trace_ids.is_empty() {
        println!("trace ids: none (the local backend keeps its own timeline above)");
    } else {
        for r in &t.trace_ids {
            println!("trace id ({}): {}", r.system, r.id);
        }
    }
}

/// The event, where its delivery stands, and how durable and archived it is.
fn summary(t: &EventTrace) -> comfy_table::Table {
    let now = relay_core::now_millis();
    let d = &t.delivery;
    let mut summary = table();
    summary.add_row(vec![Cell::new("event"), Cell::new(&t.event_id)]);
    summary.add_row(vec![
        Cell::new("received"),
        Cell::new(format!(
            "{} ({})",
            timestamp(t.received_at),
            relative(t.received_at, now)
        )),
    ]);
    let status = format!(
        "{} after {} attempt(s), {} counted toward the limit",
        d.status, d.tries, d.attempts
    );
    summary.add_row(vec![
        Cell::new("status"),
        Cell::new(status).fg(match d.status {
            DeliveryStatus::Delivered => Color::Green,
            DeliveryStatus::Dead => Color::Red,
            DeliveryStatus::Queued | DeliveryStatus::Leased => Color::Yellow,
        }),
    ]);
    match (d.status.as_str(), d.due_at) {
        ("queued", Some(at)) => {
            summary.add_row(vec![
                Cell::new("next attempt"),
                Cell::new(format!(
                    "{} ({}, trigger {})",
                    timestamp(at),
                    relative(at, now),
                    d.next_trigger
                )),
            ]);
        }
        ("leased", Some(at)) => {
            summary.add_row(vec![
                Cell::new("in flight"),
                Cell::new(format!("lease until {}", timestamp(at))),
            ]);
        }
        _ => {}
    }
    if let Some(at) = d.delivered_at {
        summary.add_row(vec![Cell::new("delivered"), Cell::new(timestamp(at))]);
    }
    if let Some(error) = &d.last_error {
        summary.add_row(vec![Cell::new("last error"), Cell::new(error)]);
    }
    if let Some(pause) = &t.paused {
        summary.add_row(vec![
            Cell::new("held back"),
            Cell::new(format!(
                "{} — it waits until `relay resume`",
                pause.describe(timestamp)
            ))
            .fg(Color::Yellow),
        ]);
    }
    storage_rows(t, &mut summary);
    summary.add_row(vec![Cell::new("payload"), Cell::new(t.payload.to_string())]);
    summary
}

/// How durable the event's acknowledgement was, and where it is archived.
fn storage_rows(t: &EventTrace, table: &mut comfy_table::Table) {
    if let Some(early) = &t.acked_before_flush {
        let flushed = early.flushed_at.map_or_else(
            || {
                "its flush was not recorded (the process stopped first; the event survived that)"
                    .into()
            },
            |at| format!("flushed {} ms later", at - early.acked_at),
        );
        table.add_row(vec![
            Cell::new("durability"),
            Cell::new(format!(
                "acknowledged before its flush to disk, at {}; {flushed}",
                timestamp(early.acked_at)
            ))
            .fg(Color::Yellow),
        ]);
    }
    if let Some(a) = &t.archived {
        table.add_row(vec![
            Cell::new("archived"),
            Cell::new(format!(
                "{} ({}) in {}",
                timestamp(a.archived_at),
                match a.why.as_str() {
                    "purged" => "purged from the dead-letter queue",
                    "dead" => "dead-lettered; its items have expired or were purged",
                    "delivered" => "delivered; its items have expired",
                    _ => "delivered longer ago than the retention",
                },
                a.location
            )),
        ]);
    }
}

fn print_attempts(t: &EventTrace) {
    if t.attempts.is_empty() {
        println!("no attempts yet");
    } else {
        let mut attempts = table();
        attempts.set_header(["#", "started", "trigger", "outcome", "HTTP", "ms", "answer"]);
        for a in &t.attempts {
            attempts.add_row(vec![
                Cell::new(a.n),
                Cell::new(timestamp(a.started_at)),
                Cell::new(&a.trigger),
                Cell::new(a.outcome).fg(outcome_colour(a.outcome)),
                Cell::new(a.http_status.map_or("—".into(), |s| s.to_string())),
                Cell::new(a.duration_ms),
                Cell::new(&a.detail),
            ]);
        }
        println!("{attempts}");
    }
}

fn print_dead_letter(t: &EventTrace, flags: &str) {
    if let Some(dl) = &t.dead_letter {
        let mut dead = table();
        dead.set_header(["dead letter", ""]);
        dead.add_row(vec![Cell::new("since"), Cell::new(timestamp(dl.dead_at))]);
        dead.add_row(vec![
            Cell::new("reason"),
            Cell::new(&dl.reason).fg(Color::Red),
        ]);
        dead.add_row(vec![Cell::new("attempts"), Cell::new(dl.attempts)]);
        dead.add_row(vec![
            Cell::new("last answer"),
            Cell::new(dl.last_response.as_deref().unwrap_or("—")),
        ]);
        println!("{dead}");
        if t.archived.is_none() {
            println!(
                "redrive with: relay dlq redrive --id {} {flags}",
                shell_word(&t.event_id)
            );
        }
    }
}

/// The event's trace segments (X-Ray on AWS), each with what it says of itself.
fn print_segments(t: &EventTrace) {
    if !t.segments.is_empty() {
        let mut segments = table();
        segments.set_header(["trace segment", "started", "ms", "parent", "says"]);
        for s in &t.segments {
            let d = &s.detail;
            let mut says: Vec<String> = Vec::new();
            if let Some(a) = d.get("annotations").and_then(|a| a.as_object()) {
                for (k, v) in a.iter().filter(|(k, _)| k.as_str() != "event_id") {
                    says.push(format!(
                        "{k}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    ));
                }
            }
            let status = d
                .pointer("/http/response/status")
                .or_else(|| d.pointer("/subsegments/0/http/response/status"));
            if let Some(status) = status {
                says.push(format!("HTTP {status}"));
            }
            for flag in ["throttle", "fault", "error"] {
                if d.get(flag).and_then(serde_json::Value::as_bool) == Some(true) {
                    says.push(flag.to_owned());
                    break;
                }
            }
            segments.add_row(vec![
                Cell::new(&s.name),
                Cell::new(timestamp(s.start)),
                Cell::new(s.end - s.start),
                Cell::new(s.parent_id.as_deref().unwrap_or("—")),
                Cell::new(says.join(" ")),
            ]);
        }
        println!("{segments}");
    }
}

fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
