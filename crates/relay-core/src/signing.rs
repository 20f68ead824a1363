//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,…`,
//! the base64 HMAC-SHA256 of `id.timestamp.body` under a shared `whsec_` secret). Ingest checks
//! them on what sources send; the dispatcher puts them on what it sends, so that a target can
//! refuse forgeries. The HMAC and the check are the `standardwebhooks` crate's.

use std::sync::Arc;

pub use standardwebhooks::{
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP, Webhook, WebhookError,
};

/// One signing secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SigningSecret(Arc<Webhook>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl std::str::FromStr for SigningSecret {
    type Err = String;

    /// `whsec_` and base64 (padded or not), as Standard Webhooks senders hand them out.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
        let padded = format!("{bare}{}", "=".repeat((4 - bare.len() % 4) % 4));
        match Webhook::new(&padded) {
            Ok(_) if bare.is_empty() => Err("a signing secret may not be empty".into()),
            Ok(webhook) => Ok(SigningSecret(Arc::new(webhook))),
            // The secret itself is never repeated in the message.
            Err(_) => Err("a signing secret is `whsec_` followed by base64".into()),
        }
    }
}

impl SigningSecret {
    /// Parses the value of `setting` (a flag and its variable), with an error that names the
    /// setting and never repeats the value.
    pub fn from_setting(value: &str, setting: &str) -> Result<Self, String> {
        value
            .parse()
            .map_err(|e| format!("{setting}: {e}; the value is not shown"))
    }

    /// The `webhook-signature` value of `body` sent as message `id` at `timestamp` (Unix
    /// seconds). `None` if the body is not UTF-8, which the scheme cannot sign.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        self.0.sign(id, timestamp, body).ok()
    }

    /// The verifier, for the headers of a request.
    pub fn webhook(&self) -> &Webhook {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_with_or_without_prefix_and_padding_and_are_never_shown() {
        // The Standard Webhooks specification's example secret and signature.
        let secret: SigningSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(
            secret
                .sign(
                    "msg_p5jXN8AQM9LWM0D4loKWxJek",
                    1614265330,
                    br#"{"test": 2432232314}"#
                )
                .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                .parse::<SigningSecret>()
                .is_ok()
        );
        assert!("whsec_".parse::<SigningSecret>().is_err());
        let refused = "whsec_not base64!".parse::<SigningSecret>().unwrap_err();
        assert!(!refused.contains("not base64!"), "{refused}");
        assert_eq!(format!("{secret:?}"), "SigningSecret(..)");
    }
}
