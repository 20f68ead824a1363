//! Who may send events and how long an answer may wait, as one typed set of settings: the
//! flags of `relay up` and the `RELAY_*` variables of the receiver and authorizer Lambdas are
//! the same fields, with the same defaults, ranges and errors.

use std::time::Duration;

use clap::Args;
use relay_core::settings::{self, SecretRef};

use crate::{IngestConfig, SigningSecret};

/// The ingest API's keys, signatures and time budgets.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Ingest")]
pub struct IngestSettings {
    /// API key clients must send as `x-api-key`. Repeat or comma-separate to accept several
    /// (rotate keys without downtime).
    #[arg(
        long = "api-key",
        env = "RELAY_API_KEY",
        required_unless_present = "api_key_secret",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = settings::non_empty
    )]
    pub api_keys: Vec<String>,

    /// Read the accepted API keys at start from AWS instead (secretsmanager:NAME or
    /// ssm:/PARAMETER/NAME; the value comma-separated or a JSON list). Uses the AWS options.
    #[arg(long, env = "RELAY_API_KEY_SECRET", value_name = "REF", value_parser = clap::value_parser!(SecretRef))]
    pub api_key_secret: Option<SecretRef>,

    /// Also require every request to be signed the Standard Webhooks way (`webhook-id`,
    /// `webhook-timestamp` within 5 minutes, `webhook-signature: v1,…`) with this secret
    /// (`whsec_…`). Repeat or comma-separate to accept two during a rotation.
    #[arg(
        long = "signing-secret",
        env = "RELAY_SIGNING_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "WHSEC"
    )]
    pub signing_secrets: Vec<String>,

    /// Read the signing secrets at start from AWS instead (secretsmanager:NAME or
    /// ssm:/PARAMETER/NAME). Uses the AWS options.
    #[arg(long, env = "RELAY_SIGNING_SECRET_REF", value_name = "REF", value_parser = clap::value_parser!(SecretRef))]
    pub signing_secret_ref: Option<SecretRef>,

    /// Longest an ingest request waits for the store before answering 503 (keep it under the
    /// source's budget).
    #[arg(long, env = "RELAY_STORE_TIMEOUT", default_value = "400ms", value_parser = settings::duration)]
    pub store_timeout: Duration,

    /// The same for POST /events/batch (up to 500 events; senders of backlogs, such as relay
    /// import, have no 500 ms budget). Never shorter than --store-timeout.
    #[arg(long, env = "RELAY_BATCH_TIMEOUT", default_value = "5s", value_parser = settings::duration)]
    pub batch_timeout: Duration,
}

impl IngestSettings {
    /// The API's configuration, with the keys and signing secrets read from
    /// `--api-key-secret` and `--signing-secret-ref` (empty when those are not set). A bad
    /// signing secret is named by its setting, never shown.
    pub fn config(
        &self,
        keys_from_secret: Vec<String>,
        signing_from_secret: Vec<String>,
    ) -> Result<IngestConfig, String> {
        if self.store_timeout.is_zero() {
            return Err("--store-timeout must be more than zero".into());
        }
        let mut api_keys = self.api_keys.clone();
        api_keys.extend(keys_from_secret);
        if api_keys.is_empty() {
            return Err("no API key: set --api-key (RELAY_API_KEY) or --api-key-secret".into());
        }
        let signing_secrets = self
            .signing_secrets
            .iter()
            .map(|s| (s, "--signing-secret (RELAY_SIGNING_SECRET)"))
            .chain(
                signing_from_secret
                    .iter()
                    .map(|s| (s, "--signing-secret-ref (RELAY_SIGNING_SECRET_REF)")),
            )
            .map(|(secret, setting)| SigningSecret::from_setting(secret, setting))
            .collect::<Result<_, _>>()?;
        Ok(IngestConfig {
            api_keys,
            store_timeout: self.store_timeout,
            batch_timeout: self.batch_timeout.max(self.store_timeout),
            signing_secrets,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ingest: IngestSettings,
    }

    fn parse(args: &[&str]) -> Result<IngestSettings, clap::Error> {
        Cli::try_parse_from(std::iter::once("relay").chain(args.iter().copied())).map(|c| c.ingest)
    }

    #[test]
    fn keys_come_from_flags_or_a_secret_and_one_of_them_is_required() {
        assert!(parse(&[]).is_err(), "no key at all");
        let s = parse(&["--api-key", "a,b"]).unwrap();
        assert_eq!(s.config(vec![], vec![]).unwrap().api_keys, ["a", "b"]);
        let s = parse(&["--api-key-secret", "secretsmanager:keys"]).unwrap();
        assert_eq!(s.config(vec!["k".into()], vec![]).unwrap().api_keys, ["k"]);
        assert!(
            s.config(vec![], vec![]).is_err(),
            "an empty secret is no key"
        );
    }

    #[test]
    fn a_bad_signing_secret_is_named_by_its_setting_and_not_shown() {
        let s = parse(&["--api-key", "a", "--signing-secret", "whsec_notbase64!!"]).unwrap();
        let e = s.config(vec![], vec![]).unwrap_err();
        assert!(
            e.starts_with("--signing-secret (RELAY_SIGNING_SECRET)"),
            "{e}"
        );
        assert!(!e.contains("notbase64"), "{e}");
        let e = parse(&["--api-key", "a"])
            .unwrap()
            .config(vec![], vec!["!!not base64!!".into()])
            .unwrap_err();
        assert!(e.starts_with("--signing-secret-ref"), "{e}");
    }

    #[test]
    fn the_batch_budget_is_never_shorter_than_the_single_one() {
        let s = parse(&[
            "--api-key",
            "a",
            "--store-timeout",
            "2s",
            "--batch-timeout",
            "1s",
        ])
        .unwrap();
        assert_eq!(
            s.config(vec![], vec![]).unwrap().batch_timeout,
            Duration::from_secs(2)
        );
    }
}
