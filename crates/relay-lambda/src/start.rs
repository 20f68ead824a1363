//! What every function does as it starts: its logs, and its settings, read from the
//! environment as `relay up` reads its flags. Each function's settings are the same typed
//! structs (`AwsSettings`, `DeliverySettings`, `IngestSettings`), so a variable has the
//! flag's default, range and error; a bad or missing one stops the start with a message that
//! names the variable.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, FromArgMatches};
use relay_aws::AwsSettings;
use relay_core::settings::Source;
use relay_dispatch::DeliverySettings;
use relay_dispatch::settings::ReadAtStart;
use relay_ingest::IngestSettings;

/// The dispatcher's settings: where the stack is, and how events are delivered.
#[derive(Debug, Clone, Args)]
pub struct DispatcherSettings {
    #[command(flatten)]
    pub aws: AwsSettings,
    #[command(flatten)]
    pub delivery: DeliverySettings,
}

/// The receiver's (and the authorizer's) settings: where the stack is, and who may send.
#[derive(Debug, Clone, Args)]
pub struct ReceiverSettings {
    #[command(flatten)]
    pub aws: AwsSettings,
    #[command(flatten)]
    pub ingest: IngestSettings,
}

/// The forwarder's settings: where the stack is.
#[derive(Debug, Clone, Args)]
pub struct ForwarderSettings {
    #[command(flatten)]
    pub aws: AwsSettings,
}

/// A setting that stops a function's start, in the words of its variable.
#[derive(thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// The message alone: a `main` that returns the error prints its `Debug`.
impl std::fmt::Debug for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads `T` from the environment alone (no arguments): each field from its `RELAY_*`
/// variable, or its default.
pub fn from_env<T: Args + FromArgMatches>(function: &'static str) -> Result<T, SettingsError> {
    let command = T::augment_args(Command::new(function).no_binary_name(true));
    let matches = command
        .clone()
        .try_get_matches_from(std::iter::empty::<String>())
        .map_err(|e| SettingsError(in_variables(&command, &e)))?;
    T::from_arg_matches(&matches).map_err(|e| SettingsError(in_variables(&command, &e)))
}

/// clap's message, with each flag it names replaced by its variable, and the offending value
/// left out (it may be a secret).
fn in_variables(command: &Command, error: &clap::Error) -> String {
    let variable = |flag: &str| {
        let long = flag
            .trim_start_matches("--")
            .split([' ', '='])
            .next()
            .unwrap_or_default();
        command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map_or_else(|| flag.to_owned(), |env| env.to_string_lossy().into_owned())
    };
    let flags: Vec<String> = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => vec![variable(flag)],
        Some(ContextValue::Strings(flags)) => flags.iter().map(|f| variable(f)).collect(),
        _ => Vec::new(),
    };
    let named = flags.join(", ");
    match error.kind() {
        ErrorKind::MissingRequiredArgument => format!("{named} must be set"),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let why = parser_said(error).unwrap_or_else(|| "not a valid value".into());
            format!("{named} is not valid: {why}")
        }
        _ if !named.is_empty() => format!("{named}: {}", error.kind()),
        _ => error.kind().to_string(),
    }
}

/// What the value parser said, without clap's framing (which repeats the value).
fn parser_said(error: &clap::Error) -> Option<String> {
    std::error::Error::source(error)
        .map(ToString::to_string)
        .or_else(|| match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => Some(format!("expected {}", valid.join(", "))),
            _ => None,
        })
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

/// What stops a start: a setting, or AWS (a secret that cannot be read).
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// The stack's clients, built the first time a start needs them and then shared: a start that
/// reads a secret and then uses the stack builds them once, and one that needs nothing from
/// AWS (`relay up` on the embedded store, without secrets) never does.
#[derive(Debug)]
pub struct LazyAws {
    settings: AwsSettings,
    aws: tokio::sync::OnceCell<relay_aws::Aws>,
}

impl LazyAws {
    pub fn new(settings: &AwsSettings) -> Self {
        LazyAws {
            settings: settings.clone(),
            aws: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn get(&self) -> Result<&relay_aws::Aws, relay_aws::AwsError> {
        self.aws
            .get_or_try_init(|| async { relay_aws::Aws::connect(&self.settings.options()).await })
            .await
    }
}

/// The ingest API's configuration, with the keys and signing secrets that live in AWS read
/// (AWS is reached only when a secret is named).
pub async fn ingest_config(
    ingest: &IngestSettings,
    aws: &LazyAws,
) -> Result<relay_ingest::IngestConfig, StartError> {
    let mut keys = Vec::new();
    let mut signing = Vec::new();
    if let Some(secret) = &ingest.api_key_secret {
        keys = relay_aws::secrets::api_keys(aws.get().await?, secret)
            .await
            .map_err(|e| format!("RELAY_API_KEY_SECRET ({secret}): {e}"))?;
    }
    if let Some(secret) = &ingest.signing_secret_ref {
        signing = relay_aws::secrets::api_keys(aws.get().await?, secret)
            .await
            .map_err(|e| format!("RELAY_SIGNING_SECRET_REF ({secret}): {e}"))?;
    }
    Ok(ingest.config(keys, signing)?)
}

/// The target's configuration, with the headers and the signing secret that live in AWS read
/// (AWS is reached only when `--header-secret` or `--target-signing-secret-ref` names a
/// secret). The names of those headers are logged, never their values. The caller has checked
/// the settings (`DeliverySettings::check`).
pub async fn target_config(
    delivery: &DeliverySettings,
    aws: &LazyAws,
) -> Result<relay_dispatch::TargetConfig, StartError> {
    let mut read = ReadAtStart::default();
    if let Some(secret) = &delivery.header_secret {
        read.headers = relay_aws::secrets::headers(aws.get().await?, secret)
            .await
            .map_err(|e| format!("cannot read the target's headers from {secret}: {e}"))?;
        let names: Vec<&str> = read.headers.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!(%secret, headers = ?names, "target headers read from the secret");
    }
    let secret = |setting| delivery_secret(setting, aws);
    read.signing_secret = secret((
        "RELAY_TARGET_SIGNING_SECRET_REF",
        delivery
            .target_signing_secret_ref
            .clone()
            .map(Source::Secret),
    ))
    .await?;
    read.oauth_client_secret = secret((
        "RELAY_TARGET_OAUTH_CLIENT_SECRET_REF",
        delivery
            .target_oauth_client_secret_ref
            .clone()
            .map(Source::Secret),
    ))
    .await?;
    read.client_cert = secret((
        "RELAY_TARGET_CLIENT_CERT",
        delivery.target_client_cert.clone(),
    ))
    .await?;
    read.client_key = secret((
        "RELAY_TARGET_CLIENT_KEY",
        delivery.target_client_key.clone(),
    ))
    .await?;
    read.ca = secret(("RELAY_TARGET_CA", delivery.target_ca.clone())).await?;
    Ok(delivery.target(read)?)
}

/// The value a delivery setting points at (a file, or a secret in AWS), if it is set; an error
/// names the setting and where it looked, never the value.
async fn delivery_secret(
    (setting, source): (&str, Option<Source>),
    aws: &LazyAws,
) -> Result<Option<String>, StartError> {
    let value = match &source {
        None => return Ok(None),
        Some(Source::File(path)) => std::fs::read_to_string(path).map_err(|e| e.to_string()),
        Some(Source::Secret(secret)) => relay_aws::secrets::read_secret(aws.get().await?, secret)
            .await
            .map_err(|e| e.to_string()),
    };
    let source = source.map(|s| s.to_string()).unwrap_or_default();
    Ok(Some(
        value.map_err(|e| format!("{setting} ({source}): {e}"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same mapping `from_env` applies, exercised with flags (a test cannot set a
    /// process's environment safely): each error names the variable, never the value.
    fn named(args: &[&str]) -> String {
        let command = DispatcherSettings::augment_args(Command::new("t").no_binary_name(true));
        let error = command
            .clone()
            .try_get_matches_from(args)
            .expect_err("refused");
        in_variables(&command, &error)
    }

    #[test]
    fn a_bad_setting_is_named_by_its_variable() {
        assert_eq!(named(&[]), "RELAY_TARGET_URL must be set");
        let url = ["--target-url", "http://127.0.0.1:1/graphql"];
        let e = named(&[&url[..], &["--max-attempts", "0"]].concat());
        assert!(e.starts_with("RELAY_MAX_ATTEMPTS is not valid"), "{e}");
        let e = named(&[&url[..], &["--target-rate", "fast"]].concat());
        assert_eq!(
            e,
            "RELAY_TARGET_RATE is not valid: must be a positive number of requests per second"
        );
        let e = named(&[&url[..], &["--header-secret", "vault:x"]].concat());
        assert!(e.starts_with("RELAY_HEADER_SECRET is not valid"), "{e}");
        let e = named(&["--target-url", "ftp://secret-host"]);
        assert!(!e.contains("secret-host"), "the value is not repeated: {e}");
    }
}
