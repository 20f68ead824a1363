//! `relay store check` and `relay store backup`: the embedded store's own health, and a copy of
//! it to restore from.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{Cell, Color};
use relay_store::{CheckReport, Severity};

use crate::ops::table;

#[derive(Debug, Args)]
pub(crate) struct StoreCmd {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Check that the store is whole: SQLite's integrity check, the index's rows against each
    /// other, the journal against the index, quarantined bytes, the archive's index.
    ///
    /// Read-only and safe while `relay up` runs. Prints a figure per check; exits 1 if any
    /// shows damage (what to do is in docs/runbook.md, "The store is damaged").
    ///
    /// Example:
    ///   relay store check --data-dir /var/lib/relay
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
    /// Copy the store, consistently, while `relay up` runs: a data directory to restore from.
    ///
    /// Copies the journal, then the index (one SQLite snapshot), then the archive, and checks
    /// the copy. Every event acknowledged before the backup began is in it. PATH must not
    /// exist, or be an empty directory. To restore: stop relay, move the damaged directory
    /// aside, put the backup in its place (or point --data-dir at it), and copy the damaged
    /// directory's newer journal/*.log files into the backup's journal/ (the start replays them).
    ///
    /// Example:
    ///   relay store backup /backups/relay-$(date +%F) --data-dir /var/lib/relay
    #[command(verbatim_doc_comment)]
    Backup(BackupArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Data directory of the relay (the one given to `relay up`).
    #[arg(long, env = "RELAY_DATA_DIR")]
    data_dir: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// Where to write the copy: a new directory.
    path: PathBuf,
    /// Data directory of the relay (the one given to `relay up`).
    #[arg(long, env = "RELAY_DATA_DIR")]
    data_dir: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: StoreCmd) -> anyhow::Result<ExitCode> {
    match cmd.command {
        StoreCommand::Check(args) => {
            let dir = args.data_dir.clone();
            let report = tokio::task::spawn_blocking(move || relay_store::check(&dir))
                .await?
                .with_context(|| {
                    format!("cannot check the store in {}", args.data_dir.display())
                })?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", render(&report, &args.data_dir));
            }
            Ok(if report.damaged() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        StoreCommand::Backup(args) => {
            let spinner = (!args.json).then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_message(format!(
                    "copying {} to {}",
                    args.data_dir.display(),
                    args.path.display()
                ));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            });
            let (from, to) = (args.data_dir.clone(), args.path.clone());
            let done = tokio::task::spawn_blocking(move || relay_store::backup(&from, &to)).await?;
            if let Some(bar) = spinner {
                bar.finish_and_clear();
            }
            let report = done.with_context(|| {
                format!("cannot back up the store in {}", args.data_dir.display())
            })?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let mut t = table();
                for (k, v) in [
                    ("backup", report.path.display().to_string()),
                    ("events in the index", report.events.to_string()),
                    (
                        "index",
                        format!("{:.1} MB", report.index_bytes as f64 / 1e6),
                    ),
                    ("journal segments", report.journal_segments.to_string()),
                    ("archive files", report.archive_files.to_string()),
                    ("took", format!("{:.1} s", report.took.as_secs_f64())),
                ] {
                    t.add_row(vec![k, &v]);
                }
                println!("{t}\nchecked: the copy opens and passes SQLite's quick check.");
                println!(
                    "start from it with: relay up --data-dir {} …",
                    report.path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render(report: &CheckReport, dir: &std::path::Path) -> String {
    let mut t = table();
    t.set_header(vec!["check", "found", "meaning"]);
    for f in &report.findings {
        let color = match f.severity {
            Severity::Ok => Color::Green,
            Severity::Note => Color::Yellow,
            Severity::Damage => Color::Red,
        };
        t.add_row(vec![
            Cell::new(f.check),
            Cell::new(f.count).fg(color),
            Cell::new(&f.detail),
        ]);
    }
    let verdict = if report.damaged() {
        "DAMAGED: see docs/runbook.md, \"The store is damaged\"".to_owned()
    } else {
        format!("ok: {} events in the index", report.events)
    };
    let running = if report.running {
        " (relay up is running on it)"
    } else {
        ""
    };
    format!("store {}{running}\n{t}\n{verdict}", dir.display())
}
