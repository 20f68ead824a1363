//! What every function does as it starts: its logs, and the stack it belongs to.

use relay_aws::AwsOptions;

/// The stack a function belongs to, from its environment: `RELAY_STACK` (the names, as
/// Terraform derives them), and the AWS runtime's own variables for the rest.
pub fn options_from_env() -> AwsOptions {
    AwsOptions {
        stack: std::env::var("RELAY_STACK").unwrap_or_else(|_| "relay".into()),
        ..AwsOptions::default()
    }
}

/// JSON logs, as CloudWatch Logs takes them, filtered by `RUST_LOG` (default `info`): one
/// object per line, the event's fields (`event_id` among them) at the top level, and the
/// current span's (`span.event_id` inside a delivery) beside them. EMF metric lines
/// ([`crate::emf`]) go to the same stream.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .init();
}

/// A comma-separated list from the environment (API keys, headers).
pub fn list_from_env(name: &str) -> Result<Vec<String>, String> {
    let raw = std::env::var(name).map_err(|_| format!("{name} is not set"))?;
    let items: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.is_empty() {
        return Err(format!("{name} is empty"));
    }
    Ok(items)
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
