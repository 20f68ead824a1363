//! How events are delivered, as one typed set of settings: the flags of `relay up` and the
//! `RELAY_*` variables of the dispatcher Lambda are the same fields, with the same defaults,
//! ranges and errors (`docs/configuration.md` lists them, with their Terraform variables).

use std::time::Duration;

use clap::Args;
use relay_core::DeliveryPolicy;
use relay_core::backoff::Backoff;
use relay_core::rate::RateConfig;
use relay_core::settings::{self, SecretRef, Source};
use relay_core::signing::SigningSecret;

use crate::{DEFAULT_DOCUMENT, DispatchConfig, OAuthClient, TargetConfig, TargetTls};

/// The target, and how hard and how long relay tries it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliverySettings {
    /// GraphQL endpoint events are delivered to.
    #[arg(long, env = "RELAY_TARGET_URL", value_parser = settings::http_url)]
    pub target_url: String,

    /// Never send more than this many requests/s to the target (with --batch, each request
    /// holds up to that many events). The relay still slows down when the target asks. Without
    /// it, the relay discovers the limit.
    #[arg(long, env = "RELAY_TARGET_RATE", value_parser = settings::positive_rate)]
    pub target_rate: Option<f64>,

    /// Value of the `brand` field added to every event.
    #[arg(long, env = "RELAY_BRAND", default_value = relay_core::DEFAULT_BRAND)]
    pub brand: String,

    /// GraphQL document sent for each event (the event is `$input`), or @FILE to read it.
    /// Only with --batch 1: batches are relay's own aliased mutations.
    #[arg(long, env = "RELAY_DOCUMENT", default_value = DEFAULT_DOCUMENT)]
    pub document: String,

    /// Up to this many events in one request, as aliased mutations (`e0: createEvent(input:
    /// $e0) { id } e1: …`), for one rate token: for targets whose limit counts requests. Each
    /// event's answer is its own: a refused event is dead-lettered alone.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub batch: u16,

    /// Extra header on every request to the target, as 'Name: value'; repeatable.
    /// Example: --header 'Authorization: Bearer abc'. In the environment, one header per line.
    #[arg(long = "header", env = "RELAY_HEADERS", value_delimiter = '\n', hide_env_values = true, value_parser = header)]
    pub headers: Vec<(String, String)>,

    /// Headers for the target (credentials) read at start from AWS: secretsmanager:NAME (or
    /// ARN) or ssm:/PARAMETER/NAME. The value is a JSON object ({"Authorization": "Bearer …"})
    /// or one 'Name: value' per line. Uses the AWS options, with either backend.
    #[arg(long, env = "RELAY_HEADER_SECRET", value_name = "REF", value_parser = clap::value_parser!(SecretRef))]
    pub header_secret: Option<SecretRef>,

    /// Sign every request to the target the Standard Webhooks way with this `whsec_` secret:
    /// `webhook-id` (the event id; a batch's is `batch_` and a digest of its ids),
    /// `webhook-timestamp` and `webhook-signature`, so that the target can refuse requests
    /// that are not relay's.
    #[arg(
        long,
        env = "RELAY_TARGET_SIGNING_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        conflicts_with = "target_signing_secret_ref"
    )]
    pub target_signing_secret: Option<String>,

    /// Read the target signing secret at start from AWS instead: secretsmanager:NAME (or ARN)
    /// or ssm:/PARAMETER/NAME. Uses the AWS options, with either backend.
    #[arg(long, env = "RELAY_TARGET_SIGNING_SECRET_REF", value_name = "REF", value_parser = clap::value_parser!(SecretRef))]
    pub target_signing_secret_ref: Option<SecretRef>,

    /// Get an OAuth2 access token for the target from this token endpoint (the client
    /// credentials grant) and send it as `Authorization: Bearer …`. The token is kept until
    /// shortly before it expires, and fetched again once if the target answers 401.
    #[arg(long, env = "RELAY_TARGET_OAUTH_TOKEN_URL", value_name = "URL", value_parser = settings::http_url, requires = "target_oauth_client_id")]
    pub target_oauth_token_url: Option<String>,

    /// The OAuth2 client id (sent with the secret as HTTP Basic, as RFC 6749 asks).
    #[arg(
        long,
        env = "RELAY_TARGET_OAUTH_CLIENT_ID",
        value_name = "ID",
        requires = "target_oauth_token_url"
    )]
    pub target_oauth_client_id: Option<String>,

    /// The OAuth2 client secret.
    #[arg(
        long,
        env = "RELAY_TARGET_OAUTH_CLIENT_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        conflicts_with = "target_oauth_client_secret_ref"
    )]
    pub target_oauth_client_secret: Option<String>,

    /// Read the OAuth2 client secret at start from AWS instead: secretsmanager:NAME (or ARN)
    /// or ssm:/PARAMETER/NAME.
    #[arg(long, env = "RELAY_TARGET_OAUTH_CLIENT_SECRET_REF", value_name = "REF", value_parser = clap::value_parser!(SecretRef))]
    pub target_oauth_client_secret_ref: Option<SecretRef>,

    /// The scopes to ask the token endpoint for, space-separated ('events:write audit').
    #[arg(long, env = "RELAY_TARGET_OAUTH_SCOPES", value_name = "SCOPES")]
    pub target_oauth_scopes: Option<String>,

    /// Client certificate for a target that asks for one (mTLS): PEM, the chain and, unless
    /// --target-client-key is given, the private key. A file, or secretsmanager:NAME or
    /// ssm:/PARAMETER/NAME.
    #[arg(long, env = "RELAY_TARGET_CLIENT_CERT", value_name = "PEM", value_parser = clap::value_parser!(Source))]
    pub target_client_cert: Option<Source>,

    /// The client certificate's private key (PEM), when not in --target-client-cert: a file,
    /// or secretsmanager:NAME or ssm:/PARAMETER/NAME.
    #[arg(long, env = "RELAY_TARGET_CLIENT_KEY", value_name = "PEM", value_parser = clap::value_parser!(Source), requires = "target_client_cert")]
    pub target_client_key: Option<Source>,

    /// CA certificates (PEM) to trust for the target and its token endpoint, beside the
    /// system's: for a private target. A file, or secretsmanager:NAME or ssm:/PARAMETER/NAME.
    #[arg(long, env = "RELAY_TARGET_CA", value_name = "PEM", value_parser = clap::value_parser!(Source))]
    pub target_ca: Option<Source>,

    /// Attempts before an event goes to the dead-letter queue. Rate-limited answers do not count.
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Oldest an undelivered event may get before it goes to the dead-letter queue.
    #[arg(long, env = "RELAY_MAX_AGE", default_value = "24h", value_parser = settings::duration)]
    pub max_age: Duration,

    /// Timeout of one request to the target.
    #[arg(long, env = "RELAY_TARGET_TIMEOUT", default_value = "10s", value_parser = settings::duration)]
    pub target_timeout: Duration,

    /// Most requests to the target in flight at once.
    #[arg(long, env = "RELAY_MAX_IN_FLIGHT", default_value_t = 256, value_parser = settings::positive_count)]
    pub max_in_flight: usize,

    /// First retry waits up to this long; each further retry doubles it (with jitter).
    #[arg(long, env = "RELAY_BACKOFF_BASE", default_value = "500ms", value_parser = settings::duration)]
    pub backoff_base: Duration,

    /// No retry waits longer than this (unless the target's Retry-After says so).
    #[arg(long, env = "RELAY_BACKOFF_CAP", default_value = "5m", value_parser = settings::duration)]
    pub backoff_cap: Duration,

    /// How long a delivered event stays where `relay trace` finds it at once: in the live
    /// store (then it moves to compressed JSON lines under DATA_DIR/archive/, where `relay
    /// trace` still finds it), or on AWS in the events table (then in the S3 archive). Dead
    /// letters stay until redriven or purged. Duplicates of an id are recognised meanwhile.
    #[arg(long, env = "RELAY_RETENTION", default_value = "7d", value_parser = settings::duration)]
    pub retention: Duration,
}

/// What the target's settings point at, read at start from files or AWS (the headers of
/// `--header-secret`, and the secrets and PEM of the `…-ref`, `--target-client-*` and
/// `--target-ca` settings).
#[derive(Default)]
pub struct ReadAtStart {
    pub headers: Vec<(String, String)>,
    pub signing_secret: Option<String>,
    pub oauth_client_secret: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub ca: Option<String>,
}

impl std::fmt::Debug for ReadAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names of what was read; its values are credentials.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ReadAtStart")
            .field("headers", &names)
            .field("signing_secret", &self.signing_secret.is_some())
            .field("oauth_client_secret", &self.oauth_client_secret.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("client_key", &self.client_key.is_some())
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

fn header(raw: &str) -> Result<(String, String), String> {
    crate::parse_header(raw).map_err(|e| e.to_string())
}

impl DeliverySettings {
    /// Settings that contradict each other, in the words of the flags.
    pub fn check(&self) -> Result<(), String> {
        let show = humantime::format_duration;
        if self.backoff_base > self.backoff_cap {
            return Err(format!(
                "--backoff-base ({}) must not exceed --backoff-cap ({})",
                show(self.backoff_base),
                show(self.backoff_cap)
            ));
        }
        if self.target_timeout.is_zero() {
            return Err("--target-timeout must be more than zero".into());
        }
        if self.target_oauth_token_url.is_some()
            && self.target_oauth_client_secret.is_none()
            && self.target_oauth_client_secret_ref.is_none()
        {
            return Err("--target-oauth-token-url needs the client's secret: \
                        --target-oauth-client-secret or --target-oauth-client-secret-ref"
                .into());
        }
        if let Some(url) = &self.target_oauth_token_url
            && let Ok(parsed) = reqwest::Url::parse(url)
            && parsed.scheme() == "http"
            && !matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
        {
            return Err(format!(
                "--target-oauth-token-url {url} must be https: the client secret would cross \
                 the network in clear (http is taken on 127.0.0.1 and localhost only)"
            ));
        }
        if self.batch > 1 && self.document != DEFAULT_DOCUMENT {
            return Err(format!(
                "--document cannot be combined with --batch {}: a batch is relay's own aliased \
                 `createEvent` mutations. Use --batch 1 to send your document, one event per request.",
                self.batch
            ));
        }
        Ok(())
    }

    /// The target's configuration, with what was read at start (see [`ReadAtStart`]), and the
    /// document read if it is `@FILE`. A bad secret is named by its setting, never shown.
    pub fn target(&self, read: ReadAtStart) -> Result<TargetConfig, String> {
        let document = match self.document.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --document file {path}: {e}"))?,
            None => self.document.clone(),
        };
        let mut headers = self.headers.clone();
        headers.extend(read.headers);
        let signing = match (&self.target_signing_secret, read.signing_secret) {
            (Some(secret), _) => Some(SigningSecret::from_setting(
                secret,
                "--target-signing-secret (RELAY_TARGET_SIGNING_SECRET)",
            )?),
            (None, Some(secret)) => Some(SigningSecret::from_setting(
                &secret,
                "--target-signing-secret-ref (RELAY_TARGET_SIGNING_SECRET_REF)",
            )?),
            (None, None) => None,
        };
        let oauth = match (&self.target_oauth_token_url, &self.target_oauth_client_id) {
            (Some(token_url), Some(client_id)) => Some(OAuthClient {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: self
                    .target_oauth_client_secret
                    .clone()
                    .or(read.oauth_client_secret)
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .ok_or("the OAuth2 client secret is empty")?,
                scopes: self.target_oauth_scopes.clone(),
            }),
            _ => None,
        };
        let identity_pem = match (read.client_cert, read.client_key) {
            (Some(cert), Some(key)) => Some(format!("{}\n{}", cert.trim_end(), key)),
            (cert, _) => cert,
        };
        Ok(TargetConfig {
            url: self.target_url.clone(),
            document,
            brand: self.brand.clone(),
            headers,
            timeout: self.target_timeout,
            batch: self.batch.into(),
            signing,
            oauth,
            tls: TargetTls {
                identity_pem,
                ca_pem: read.ca,
            },
        })
    }

    /// The dispatcher's configuration over the embedded store.
    pub fn dispatch(&self) -> DispatchConfig {
        DispatchConfig {
            rate: RateConfig {
                ceiling: self.target_rate,
                ..RateConfig::default()
            },
            policy: DeliveryPolicy {
                max_attempts: self.max_attempts,
                max_age: self.max_age,
                backoff: Backoff {
                    base: self.backoff_base,
                    cap: self.backoff_cap,
                },
            },
            max_in_flight: self.max_in_flight,
            ..DispatchConfig::default()
        }
    }

    /// The dispatcher's configuration over a work queue whose claims are message visibilities
    /// (SQS): a claim lasts long enough for a request and its settlement, no longer, since
    /// after a crash that is how long its events wait; and a receive takes ten messages for
    /// the price of one.
    pub fn dispatch_on_queue(&self) -> DispatchConfig {
        DispatchConfig {
            lease: (self.target_timeout * 3).max(Duration::from_secs(30)),
            claim_at_least: 10,
            hold_at_least: Duration::from_secs(30),
            ..self.dispatch()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        delivery: DeliverySettings,
    }

    fn parse(args: &[&str]) -> Result<DeliverySettings, clap::Error> {
        Cli::try_parse_from(std::iter::once("relay").chain(args.iter().copied()))
            .map(|c| c.delivery)
    }

    #[test]
    fn the_defaults_are_the_policys_and_the_lease_follows_the_target_timeout() {
        let s = parse(&["--target-url", "http://127.0.0.1:1/graphql"]).unwrap();
        assert_eq!(s.dispatch().policy, DeliveryPolicy::default());
        assert_eq!(s.brand, relay_core::DEFAULT_BRAND);
        assert_eq!(s.dispatch_on_queue().lease, Duration::from_secs(30));
        let slow = parse(&[
            "--target-url",
            "http://127.0.0.1:1/graphql",
            "--target-timeout",
            "20s",
        ])
        .unwrap();
        assert_eq!(slow.dispatch_on_queue().lease, Duration::from_secs(60));
    }

    #[test]
    fn contradictions_and_bad_values_are_refused_in_the_flags_words() {
        let url = ["--target-url", "http://127.0.0.1:1/graphql"];
        let both = |more: &[&str]| parse(&[&url[..], more].concat());
        let e = both(&["--backoff-base", "10m"])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(
            e.contains("--backoff-base (10m) must not exceed --backoff-cap (5m)"),
            "{e}"
        );
        let e = both(&["--batch", "5", "--document", "mutation { x }"])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(
            e.contains("--document cannot be combined with --batch 5"),
            "{e}"
        );
        let e = both(&[
            "--target-oauth-token-url",
            "https://auth.example/token",
            "--target-oauth-client-id",
            "relay",
        ])
        .unwrap()
        .check()
        .unwrap_err();
        assert!(e.contains("needs the client's secret"), "{e}");
        let e = both(&[
            "--target-oauth-token-url",
            "http://auth.example/token",
            "--target-oauth-client-id",
            "relay",
            "--target-oauth-client-secret",
            "s",
        ])
        .unwrap()
        .check()
        .unwrap_err();
        assert!(e.contains("must be https"), "{e}");
        let loopback = both(&[
            "--target-oauth-token-url",
            "http://127.0.0.1:9/token",
            "--target-oauth-client-id",
            "relay",
            "--target-oauth-client-secret",
            "s",
        ]);
        assert_eq!(loopback.unwrap().check(), Ok(()));
        assert!(both(&["--target-oauth-client-id", "relay"]).is_err());
        assert!(both(&["--target-client-key", "key.pem"]).is_err());
        assert!(both(&["--target-ca", "ssm:"]).is_err());
        assert!(both(&["--batch", "501"]).is_err());
        assert!(both(&["--max-attempts", "0"]).is_err());
        assert!(both(&["--target-rate", "-2"]).is_err());
        assert!(both(&["--header", "no colon"]).is_err());
        assert!(parse(&["--target-url", "ftp://x"]).is_err());
    }

    #[test]
    fn a_bad_target_signing_secret_is_named_by_its_setting_and_not_shown() {
        let url = ["--target-url", "http://127.0.0.1:1/graphql"];
        let s =
            parse(&[&url[..], &["--target-signing-secret", "whsec_!!hunter2"]].concat()).unwrap();
        let e = s.target(ReadAtStart::default()).unwrap_err();
        assert!(
            e.starts_with("--target-signing-secret (RELAY_TARGET_SIGNING_SECRET)"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(&url)
            .unwrap()
            .target(ReadAtStart {
                signing_secret: Some("nope nope".into()),
                ..ReadAtStart::default()
            })
            .unwrap_err();
        assert!(e.starts_with("--target-signing-secret-ref"), "{e}");
        let signed = parse(&[&url[..], &["--target-signing-secret", "whsec_c2VjcmV0"]].concat())
            .unwrap()
            .target(ReadAtStart::default())
            .unwrap();
        assert!(signed.signing.is_some());
        assert!(
            parse(
                &[
                    &url[..],
                    &["--target-signing-secret", "whsec_c2VjcmV0"],
                    &["--target-signing-secret-ref", "ssm:/x"]
                ]
                .concat()
            )
            .is_err(),
            "one or the other"
        );
    }
}
