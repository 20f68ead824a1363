//! Signed requests, the Standard Webhooks way: besides the API key, ingest can require that each
//! request carry `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` and the base64
//! HMAC-SHA256 of `id.timestamp.body` under a shared `whsec_` secret; `relay_core::signing`).
//! The check itself is the `standardwebhooks` crate's (constant-time comparison, ±5 minutes of
//! clock skew).
//!
//! A replay inside the five minutes carries the same body, so the same event id: the store
//! answers it as the duplicate it is. Past them it is refused as stale.

use axum::http::{HeaderMap, StatusCode};
pub use relay_core::signing::SigningSecret;
use relay_core::signing::WebhookError;

use crate::ApiError;

/// Whether `body` is signed by one of `secrets`; with none configured every request passes.
pub(crate) fn verify(
    secrets: &[SigningSecret],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let Some(first) = secrets.first() else {
        return Ok(());
    };
    // Headers and timestamp are the same for every secret; only the signature differs.
    let outcome = first.webhook().verify(body, headers);
    let error = match outcome {
        Ok(()) => return Ok(()),
        Err(WebhookError::InvalidSignature) => {
            if secrets[1..]
                .iter()
                .any(|s| s.webhook().verify(body, headers).is_ok())
            {
                return Ok(());
            }
            WebhookError::InvalidSignature
        }
        Err(e) => e,
    };
    Err(refusal(&error))
}

fn refusal(error: &WebhookError) -> ApiError {
    let unauthorized = |code, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    match error {
        WebhookError::MissingHeader(name) | WebhookError::InvalidHeader(name) => unauthorized(
            "signature_required",
            match *name {
                "id" => "a signed request needs a `webhook-id` header",
                "timestamp" => "a signed request needs a `webhook-timestamp` header (Unix seconds)",
                _ => {
                    "a signed request needs a `webhook-signature` header (`v1,<base64 HMAC-SHA256>`)"
                }
            },
        ),
        WebhookError::InvalidTimestamp => unauthorized(
            "signature_required",
            "`webhook-timestamp` must be Unix seconds",
        ),
        WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError => unauthorized(
            "signature_expired",
            "`webhook-timestamp` is more than 5 minutes from the relay's clock: sign each request when it is sent",
        ),
        WebhookError::InvalidPayload => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "request body is not UTF-8",
        ),
        _ => unauthorized(
            "invalid_signature",
            "no `webhook-signature` matches the body under a signing secret of this relay",
        ),
    }
}
