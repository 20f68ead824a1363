//! The settings' vocabulary, shared by every host (`relay up`, the Lambda functions): the value
//! parsers behind each setting, so that a bad value gets the same message wherever it is
//! given, and where a secret lives ([`SecretRef`]). The settings themselves are typed next to
//! what they configure (`relay_dispatch::DeliverySettings`, `relay_ingest::IngestSettings`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A duration as people write it: `500ms`, `30s`, `5m`, `24h`.
pub fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m, 24h)"))
}

pub fn positive_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err("must be a positive number of requests per second".into()),
    }
}

pub fn positive_count(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

pub fn share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

pub fn non_empty(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(raw.to_owned())
    }
}

/// An `http://` or `https://` URL.
pub fn http_url(raw: &str) -> Result<String, String> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or("must be an http:// or https:// URL")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(raw.to_owned())
}

/// Where a secret lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// A Secrets Manager secret, by name or ARN; its current version.
    SecretsManager(String),
    /// An SSM parameter (a `SecureString` is decrypted).
    Ssm(String),
}

impl FromStr for SecretRef {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        // The name is not repeated: a reference may sit next to what it guards.
        let (kind, name) = raw
            .split_once(':')
            .ok_or("expected secretsmanager:NAME or ssm:/PARAMETER/NAME")?;
        if name.trim().is_empty() {
            return Err("the secret's name is empty".into());
        }
        match kind {
            "secretsmanager" => Ok(SecretRef::SecretsManager(name.to_owned())),
            "ssm" => Ok(SecretRef::Ssm(name.to_owned())),
            other => Err(format!(
                "unknown store {other:?}; expected secretsmanager:NAME or ssm:/PARAMETER/NAME"
            )),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::SecretsManager(name) => write!(f, "secretsmanager:{name}"),
            SecretRef::Ssm(name) => write!(f, "ssm:{name}"),
        }
    }
}

/// Where a value read at start lives: a file, or a secret in AWS (`secretsmanager:NAME`,
/// `ssm:/PARAMETER/NAME`), so that the same setting works on a laptop and in a Lambda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Secret(SecretRef),
}

impl FromStr for Source {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.trim().is_empty() {
            return Err("expected a file, secretsmanager:NAME or ssm:/PARAMETER/NAME".into());
        }
        if raw.starts_with("secretsmanager:") || raw.starts_with("ssm:") {
            raw.parse().map(Source::Secret)
        } else {
            Ok(Source::File(PathBuf::from(raw)))
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Secret(secret) => secret.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_refuse_nonsense() {
        assert!(
            positive_rate("0").is_err()
                && positive_rate("nan").is_err()
                && positive_rate("-1").is_err()
        );
        assert_eq!(positive_rate("12.5"), Ok(12.5));
        assert!(share("1.1").is_err() && share("x").is_err());
        assert!(duration("ten").is_err());
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(http_url("localhost:80").is_err() && http_url("ftp://x").is_err());
        assert!(non_empty(" ").is_err());
    }

    #[test]
    fn a_secret_lives_in_secrets_manager_or_ssm() {
        assert_eq!(
            "secretsmanager:relay/keys".parse(),
            Ok(SecretRef::SecretsManager("relay/keys".into()))
        );
        assert_eq!(
            "ssm:/relay/h".parse(),
            Ok(SecretRef::Ssm("/relay/h".into()))
        );
        for bad in ["relay/target", "vault:x", "ssm:", "secretsmanager: "] {
            let e = bad.parse::<SecretRef>().unwrap_err();
            assert!(e.contains("expected") || e.contains("empty"), "{bad}: {e}");
            assert!(!e.contains("target"), "the name is not repeated: {e}");
        }
    }

    #[test]
    fn a_source_is_a_file_or_a_secret() {
        assert_eq!(
            "ssm:/relay/ca".parse(),
            Ok(Source::Secret(SecretRef::Ssm("/relay/ca".into())))
        );
        assert_eq!(
            "certs/client.pem".parse(),
            Ok(Source::File("certs/client.pem".into()))
        );
        assert!("ssm:".parse::<Source>().is_err());
        assert!(" ".parse::<Source>().is_err());
    }
}
