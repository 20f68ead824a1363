//! Target credentials from Secrets Manager or SSM Parameter Store, never from code or plain
//! environment variables: `--header-secret secretsmanager:NAME` or `ssm:/PARAMETER/NAME`
//! (`RELAY_HEADER_SECRET`). The value holds the headers every request to the target carries,
//! either as a JSON object (`{"Authorization": "Bearer …"}`, the usual shape of a secret) or one
//! `Name: value` per line.
//!
//! Read once at start (a Lambda instance's cold start): a rotated secret reaches new instances
//! at once and running ones when they are recycled, so keep the previous value valid for a
//! while when rotating (Secrets Manager's `AWSPREVIOUS` stage does exactly that).

use crate::{Aws, AwsError};

pub use relay_core::settings::SecretRef;

/// Reads the secret's current value.
pub async fn read_secret(aws: &Aws, secret: &SecretRef) -> Result<String, AwsError> {
    let what = format!("secret {secret}");
    let value = match secret {
        SecretRef::SecretsManager(name) => {
            aws_sdk_secretsmanager::Client::new(&aws.config)
                .get_secret_value()
                .secret_id(name)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(&what, e))?
                .secret_string
        }
        SecretRef::Ssm(name) => aws_sdk_ssm::Client::new(&aws.config)
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(&what, e))?
            .parameter
            .and_then(|p| p.value),
    };
    value.ok_or_else(|| AwsError::Config(format!("{what} has no text value")))
}

/// The headers a secret's value names: a JSON object of strings, or `Name: value` lines.
/// Errors never repeat the value.
pub fn headers_from_secret(value: &str) -> Result<Vec<(String, String)>, String> {
    let trimmed = value.trim();
    let headers: Vec<(String, String)> = if trimmed.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("not a JSON object of headers (line {})", e.line()))?;
        map.into_iter()
            .map(|(name, v)| match v {
                serde_json::Value::String(v) => Ok((name, v)),
                _ => Err(format!("header {name:?} is not a string")),
            })
            .collect::<Result<_, _>>()?
    } else {
        trimmed
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                let (name, v) = line
                    .split_once(':')
                    .ok_or_else(|| format!("line {} is not 'Name: value'", i + 1))?;
                Ok((name.trim().to_owned(), v.trim().to_owned()))
            })
            .collect::<Result<_, String>>()?
    };
    if headers.is_empty() {
        return Err("it holds no header".into());
    }
    for (name, value) in &headers {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(format!("{name:?} is not a header name"));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("the value of {name} has a line break"));
        }
    }
    Ok(headers)
}

/// Reads a secret and parses its headers, with errors that name the secret.
pub async fn headers(aws: &Aws, secret: &SecretRef) -> Result<Vec<(String, String)>, AwsError> {
    let value = read_secret(aws, secret).await?;
    headers_from_secret(&value).map_err(|e| AwsError::Config(format!("secret {secret}: {e}")))
}

/// The ingest API keys a secret holds: comma- or newline-separated (several during a
/// rotation, `old,new`), or a JSON array of strings.
pub fn keys_from_secret(value: &str) -> Result<Vec<String>, String> {
    let keys: Vec<String> = match serde_json::from_str::<Vec<String>>(value) {
        Ok(list) => list,
        Err(_) if value.trim_start().starts_with('[') => {
            return Err("the value is not a JSON array of strings".into());
        }
        Err(_) => value.split([',', '\n']).map(str::to_owned).collect(),
    };
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return Err("the value holds no API key".into());
    }
    Ok(keys)
}

/// Reads a secret and parses its API keys, with errors that name the secret.
pub async fn api_keys(aws: &Aws, secret: &SecretRef) -> Result<Vec<String>, AwsError> {
    let value = read_secret(aws, secret).await?;
    keys_from_secret(&value).map_err(|e| AwsError::Config(format!("secret {secret}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_come_as_a_list_or_json_and_an_empty_secret_is_refused() {
        let both = vec!["old-key".to_owned(), "new-key".to_owned()];
        assert_eq!(keys_from_secret("old-key,new-key"), Ok(both.clone()));
        assert_eq!(keys_from_secret("old-key\nnew-key\n"), Ok(both.clone()));
        assert_eq!(keys_from_secret(r#"["old-key", "new-key"]"#), Ok(both));
        for bad in ["", " , ", "[1]", "[]"] {
            assert!(keys_from_secret(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_come_as_json_or_lines_and_errors_never_show_the_value() {
        let want = vec![("Authorization".to_owned(), "Bearer s3cret".to_owned())];
        assert_eq!(
            headers_from_secret(r#"{"Authorization": "Bearer s3cret"}"#),
            Ok(want.clone())
        );
        assert_eq!(
            headers_from_secret("Authorization: Bearer s3cret\n"),
            Ok(want)
        );
        for bad in [
            r#"{"Authorization": 5}"#,
            "{s3cret",
            "s3cret",
            "",
            "Bad Name: s3cret",
        ] {
            let e = headers_from_secret(bad).unwrap_err();
            assert!(!e.contains("s3cret"), "{bad:?} → {e}");
        }
    }
}
