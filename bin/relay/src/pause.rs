//! `relay pause` and `relay resume`: hold delivery back while the target is worked on, on
//! either backend. Events keep being accepted; nothing is sent until the resume.

use std::process::ExitCode;

use clap::Args;
use relay_core::hold::Pause;
use relay_core::ops::Operations;

use crate::ops::{StoreArgs, timestamp};

#[derive(Debug, Args)]
pub(crate) struct PauseArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Why, for whoever looks at `relay status` or `relay trace` meanwhile.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Who pauses (default: $USER).
    #[arg(
        long,
        value_name = "NAME",
        env = "USER",
        hide_env_values = true,
        default_value = "unknown"
    )]
    by: String,
    /// Print as JSON: `{"pause": {...}, "already": bool}`.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print as JSON: `{"resumed": {...} or null, "waiting": N}`.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn pause(args: PauseArgs) -> anyhow::Result<ExitCode> {
    let ops = args.store.open().await?;
    let pause = Pause {
        since: relay_core::now_millis(),
        by: args.by,
        reason: args.reason.filter(|r| !r.trim().is_empty()),
    };
    let standing = ops.pause(pause.clone()).await?;
    if args.json {
        let json = serde_json::json!({
            "pause": standing.as_ref().unwrap_or(&pause),
            "already": standing.is_some(),
        });
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    match standing {
        None => println!(
            "{} {}. Events are still accepted; nothing is sent until `relay resume {}`.",
            pause.describe(timestamp),
            args.store.place(),
            args.store.flags(),
        ),
        Some(standing) => println!(
            "already {} {}; left as it is.",
            standing.describe(timestamp),
            args.store.place()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn resume(args: ResumeArgs) -> anyhow::Result<ExitCode> {
    let ops = args.store.open().await?;
    let lifted = ops.resume().await?;
    let status = ops.status().await?;
    let waiting = status.queued + status.in_flight;
    if args.json {
        let json = serde_json::json!({ "resumed": lifted, "waiting": waiting });
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    match lifted {
        Some(lifted) => println!(
            "resumed {}: it had been {}. {waiting} event(s) wait; they go at the pace the relay learned.",
            args.store.place(),
            lifted.describe(timestamp),
        ),
        None => println!("not paused {}; nothing to do.", args.store.place()),
    }
    Ok(ExitCode::SUCCESS)
}
