//! Value parsers of the subcommands' own flags, so bad flags fail at parse time with exit code
//! 2. The settings `relay up` shares with the Lambda functions use `relay_core::settings`'s.

pub(crate) use relay_core::settings::{duration, http_url, positive_count, positive_rate, share};

pub(crate) fn header(raw: &str) -> Result<(String, String), String> {
    relay_dispatch::parse_header(raw).map_err(|e| e.to_string())
}
