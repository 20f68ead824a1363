//! Value parsers shared by the subcommands, so bad flags fail at parse time with exit code 2.

use std::time::Duration;

pub(crate) fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m, 24h)"))
}

pub(crate) fn positive_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err("must be a positive number of requests per second".into()),
    }
}

pub(crate) fn positive_count(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

pub(crate) fn share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

pub(crate) fn non_empty(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(raw.to_owned())
    }
}

pub(crate) fn http_url(raw: &str) -> Result<String, String> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or("must be an http:// or https:// URL")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(raw.to_owned())
}

pub(crate) fn header(raw: &str) -> Result<(String, String), String> {
    relay_dispatch::parse_header(raw).map_err(|e| e.to_string())
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
}
