//! What the operator commands share: opening the backend, and showing times and tables.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use relay_core::hold::Pause;
use relay_core::ops::{
    DeadLetterGroup, DeadLetterView, DlqFilter, EventPage, EventQuery, EventTrace, Operations,
    PurgeReport, RedriveReport, StatusReport,
};
use relay_core::{StoreError, UnixMillis};
use relay_store::Reader;

use crate::up::Backend;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where the relay's state lives: the embedded store, or a stack on AWS.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The embedded store in --data-dir (local), or a stack's tables and queues (aws, with the
    /// AWS options below).
    #[arg(long, env = "RELAY_BACKEND", value_enum, default_value = "local")]
    pub(crate) backend: Backend,
    /// Data directory of the relay (the one given to `relay up`). Required with --backend local.
    #[arg(long, env = "RELAY_DATA_DIR", required_if_eq("backend", "local"))]
    pub(crate) data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) aws: crate::aws::AwsArgs,
}

/// An open backend: the `Operations` port over either.
#[derive(Debug)]
pub(crate) enum Ops {
    Local(Reader),
    Aws(Box<relay_aws::ops::AwsOps>),
}

impl StoreArgs {
    /// Opens the backend for operations; safe while `relay up` (or the stack) runs.
    pub(crate) async fn open(&self) -> anyhow::Result<Ops> {
        match self.backend {
            Backend::Local => {
                let Some(dir) = self.data_dir.as_ref() else {
                    // A usage error (exit 2), as clap reports its own.
                    clap::Error::raw(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "--data-dir (or RELAY_DATA_DIR) is required with --backend local; \
                         use --backend aws for a stack\n",
                    )
                    .exit()
                };
                Ok(Ops::Local(Reader::open(dir).context(
                    "cannot open the relay's state (is --data-dir the directory `relay up` uses?)",
                )?))
            }
            Backend::Aws => {
                let aws = relay_aws::Aws::connect(&self.aws.options()).await?;
                let ops = relay_aws::ops::AwsOps::connect(aws)
                    .await
                    .with_context(|| format!("cannot reach stack {:?}", self.aws.stack))?;
                Ok(Ops::Aws(Box::new(ops)))
            }
        }
    }

    /// Where the state is, for messages: `in ./relay-data`, `in stack relay`.
    pub(crate) fn place(&self) -> String {
        match (self.backend, &self.data_dir) {
            (Backend::Local, Some(dir)) => format!("in {}", dir.display()),
            (Backend::Local, None) => "locally".into(),
            (Backend::Aws, _) => match &self.aws.stack_outputs {
                Some(file) => format!("in the stack of {}", file.display()),
                None => format!("in stack {}", self.aws.stack),
            },
        }
    }

    /// The flags that name this backend again, for a command to suggest.
    pub(crate) fn flags(&self) -> String {
        match (self.backend, &self.data_dir) {
            (Backend::Local, Some(dir)) => format!("--data-dir {}", dir.display()),
            (Backend::Local, None) => "--data-dir …".into(),
            (Backend::Aws, _) => match &self.aws.stack_outputs {
                Some(file) => format!("--backend aws --stack-outputs {}", file.display()),
                None => format!("--backend aws --stack {}", self.aws.stack),
            },
        }
    }
}

impl Operations for Ops {
    async fn trace(&self, id: &str) -> Result<Option<EventTrace>, StoreError> {
        match self {
            Ops::Local(r) => r.trace(id).await,
            Ops::Aws(a) => a.trace(id).await,
        }
    }

    async fn status(&self) -> Result<StatusReport, StoreError> {
        match self {
            Ops::Local(r) => r.status().await,
            Ops::Aws(a) => a.status().await,
        }
    }

    async fn dead_letters(&self, filter: &DlqFilter) -> Result<Vec<DeadLetterView>, StoreError> {
        match self {
            Ops::Local(r) => r.dead_letters(filter).await,
            Ops::Aws(a) => a.dead_letters(filter).await,
        }
    }

    async fn redrive(&self, ids: &[String], spread: Duration) -> Result<RedriveReport, StoreError> {
        match self {
            Ops::Local(r) => r.redrive(ids, spread).await,
            Ops::Aws(a) => a.redrive(ids, spread).await,
        }
    }

    async fn purge(&self, filter: &DlqFilter, dry_run: bool) -> Result<PurgeReport, StoreError> {
        match self {
            Ops::Local(r) => r.purge(filter, dry_run).await,
            Ops::Aws(a) => a.purge(filter, dry_run).await,
        }
    }

    async fn pause(&self, pause: Pause) -> Result<Option<Pause>, StoreError> {
        match self {
            Ops::Local(r) => r.pause(pause).await,
            Ops::Aws(a) => a.pause(pause).await,
        }
    }

    async fn events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        match self {
            Ops::Local(r) => r.events(query).await,
            Ops::Aws(a) => a.events(query).await,
        }
    }

    async fn dead_letter_groups(&self) -> Result<Vec<DeadLetterGroup>, StoreError> {
        match self {
            Ops::Local(r) => r.dead_letter_groups().await,
            Ops::Aws(a) => a.dead_letter_groups().await,
        }
    }

    async fn resume(&self) -> Result<Option<Pause>, StoreError> {
        match self {
            Ops::Local(r) => r.resume().await,
            Ops::Aws(a) => a.resume().await,
        }
    }
}

pub(crate) fn table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

pub(crate) fn timestamp(ms: UnixMillis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// "3.2 s ago" / "in 4 s".
pub(crate) fn relative(ms: UnixMillis, now: UnixMillis) -> String {
    let d = (now - ms) as f64 / 1000.0;
    let text = |s: f64| match s {
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => format!("{:.1} min", s / 60.0),
        s if s < 86_400.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86_400.0),
    };
    if d >= 0.0 {
        format!("{} ago", text(d))
    } else {
        format!("in {}", text(-d))
    }
}

/// A point in time, as a duration back from now (`90m`, `7d`) or an RFC 3339 time; what
/// `--since` and `--before` take.
pub(crate) fn point_in_time(raw: &str) -> Result<UnixMillis, String> {
    if let Ok(d) = humantime::parse_duration(raw) {
        return Ok(relay_core::now_millis() - d.as_millis() as i64);
    }
    OffsetDateTime::parse(raw, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| "expected a duration back from now (30m, 2h) or an RFC 3339 time".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(0, 3_200), "3.2 s ago");
        assert_eq!(relative(10_000, 6_000), "in 4.0 s");
        assert_eq!(relative(0, 7_200_000), "2.0 h ago");
    }

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(point_in_time("2026-11-22T00:00:00Z"), Ok(1_795_305_600_000));
        let an_hour_ago = point_in_time("1h").unwrap();
        assert!((relay_core::now_millis() - an_hour_ago - 3_600_000).abs() < 5_000);
        assert!(point_in_time("yesterday-ish").is_err());
    }
}

impl Ops {
    /// Runs a call of the port from a server's task. The embedded store answers synchronously
    /// inside its `async fn`s, so its calls leave the runtime's worker to others (ingest among
    /// them) while they read SQLite.
    pub(crate) async fn run<F: std::future::Future>(&self, call: F) -> F::Output {
        match self {
            Ops::Local(_) => {
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(call))
            }
            Ops::Aws(_) => call.await,
        }
    }
}

/// The status as a server shows it (the console, `/metrics`): one read serves every caller for
/// [`LiveStatus::FRESH_FOR`] (over a backlog of a million events a read takes about half a
/// second), with the live figures of the dispatcher in this process, if one runs here.
#[derive(Debug)]
pub(crate) struct LiveStatus {
    ops: Ops,
    dispatcher: Option<relay_dispatch::DispatcherHandle>,
    last: tokio::sync::Mutex<Option<(std::time::Instant, StatusReport)>>,
}

impl LiveStatus {
    pub(crate) const FRESH_FOR: Duration = Duration::from_millis(1500);

    pub(crate) fn new(
        ops: Ops,
        dispatcher: Option<relay_dispatch::DispatcherHandle>,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(LiveStatus {
            ops,
            dispatcher,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The backend, for the calls that are not the status.
    pub(crate) fn ops(&self) -> &Ops {
        &self.ops
    }

    pub(crate) async fn get(&self) -> Result<StatusReport, StoreError> {
        let mut last = self.last.lock().await;
        let mut status = match last.as_ref() {
            Some((at, status)) if at.elapsed() < Self::FRESH_FOR => status.clone(),
            _ => {
                let status = self.ops.run(self.ops.status()).await?;
                *last = Some((std::time::Instant::now(), status.clone()));
                status
            }
        };
        drop(last);
        if let Some(handle) = &self.dispatcher {
            status.dispatcher = Some(handle.report());
        }
        Ok(status)
    }

    /// Forgets the last read: after a change the next caller reads anew.
    pub(crate) async fn changed(&self) {
        *self.last.lock().await = None;
    }
}
