//! Log setup: human-readable by default, JSON for machines; filtered by `RELAY_LOG`.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "RELAY_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    log_format: LogFormat,
    /// Log filter, e.g. `info`, `debug`, `relay_dispatch=debug`.
    #[arg(long, global = true, env = "RELAY_LOG", default_value = "info")]
    log: String,
}

pub(crate) fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!(
            "warning: invalid --log filter {:?} ({e}); using `info`",
            args.log
        );
        EnvFilter::new("info")
    });
    // Colours only on a terminal: a file, a pipe or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
