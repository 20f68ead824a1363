//! relay on AWS, behind the same ports as the embedded store.
//!
//! - **Commit point**: one conditional `PutItem` of the event's `META` item
//!   ([`DynamoIngest`], the `Ingest` port): 202, or 200/409 from the stored item the refused
//!   write returns, in one round trip.
//! - **Outbox**: the events table's stream. Every new `META` item is forwarded to the work
//!   queue ([`outbox`]); an event stored but not yet queued is still delivered, since the
//!   stream keeps it until it is.
//! - **Work queue**: SQS carries event ids; the delivery state lives in a small `STATE` item
//!   claimed and settled with conditional updates ([`SqsQueue`], the `WorkQueue` port). Retries
//!   are re-sends with `DelaySeconds`, so they never spend receive counts; dead-lettering is
//!   the dispatcher's decision, with the reason.
//!
//! The design and what moto (the local AWS API used in tests) does and does not do:
//! `docs/lld.md`.

pub mod archive;
mod config;
pub mod control;
mod ingest;
mod items;
mod listing;
pub mod ops;
pub mod outbox;
mod queue;
mod resources;
pub mod secrets;
mod settings;
#[cfg(feature = "testing")]
pub mod testing;
pub mod xray;

use std::fmt::Debug;

pub use config::{Aws, AwsOptions, Stack};
pub use ingest::DynamoIngest;
pub use queue::{Received, SqsQueue};
pub use resources::create_resources;
pub use settings::AwsSettings;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{0}")]
    Config(String),
    #[error(
        "{0} does not exist: create the stack first (`relay up --backend aws --create-resources` on a local AWS API; Terraform in an account)"
    )]
    NotFound(String),
    #[error(
        "no AWS credentials to reach {0}: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (any values for a local AWS API)"
    )]
    Credentials(String),
    #[error("cannot reach AWS for {what}: {detail}")]
    Unreachable { what: String, detail: String },
    #[error("AWS is busy for {what}, try again: {detail}")]
    Busy { what: String, detail: String },
    #[error("AWS refused {what}: {detail}")]
    Service { what: String, detail: String },
}

impl AwsError {
    pub(crate) fn from_sdk<E, R>(what: &str, e: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: Debug,
    {
        let what = what.to_owned();
        match &e {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or_default();
                let detail = format!("{code}: {}", service.err().message().unwrap_or_default());
                if code.contains("NotFound")
                    || code.contains("NonExistentQueue")
                    || code.contains("QueueDoesNotExist")
                {
                    AwsError::NotFound(what)
                } else if is_transient(code) {
                    AwsError::Busy { what, detail }
                } else {
                    AwsError::Service { what, detail }
                }
            }
            _ => {
                let detail = DisplayErrorContext(&e).to_string();
                if detail.to_ascii_lowercase().contains("credentials") {
                    AwsError::Credentials(what)
                } else {
                    AwsError::Unreachable { what, detail }
                }
            }
        }
    }

    /// Whether trying again later may work: AWS was unreachable or busy.
    pub fn is_transient(&self) -> bool {
        matches!(self, AwsError::Unreachable { .. } | AwsError::Busy { .. })
    }

    /// The port's view: worth trying again later, or not.
    pub(crate) fn into_store_error(self) -> relay_core::StoreError {
        match self {
            AwsError::Unreachable { .. } | AwsError::Busy { .. } => {
                relay_core::StoreError::Unavailable(self.to_string())
            }
            other => relay_core::StoreError::Failed(other.to_string()),
        }
    }
}

/// Error codes that mean "not now" rather than "no": throttling and AWS's own failures. The
/// SDK retries them already; one that outlasts its retries is still worth trying later.
fn is_transient(code: &str) -> bool {
    code.contains("Throttl")
        || code.contains("ProvisionedThroughputExceeded")
        || code.contains("LimitExceeded")
        || code.contains("TooManyRequests")
        || code.contains("InternalServerError")
        || code.contains("InternalFailure")
        || code.contains("InternalError")
        || code.contains("ServiceUnavailable")
        || code.contains("SlowDown")
        || code.contains("RequestTimeout")
        || code == "TransactionConflictException"
}

/// Runs `call` until it works or fails for good, for what a start needs from AWS (the stack's
/// queues, its resources): a transient error (unreachable, throttled, AWS's own failure) is
/// tried again with jittered backoff, up to `tries` times, each logged.
pub async fn retry_transient<T, F, Fut>(what: &str, tries: u32, call: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AwsError>>,
{
    let backoff = relay_core::backoff::Backoff {
        base: std::time::Duration::from_millis(500),
        cap: std::time::Duration::from_secs(8),
    };
    relay_core::backoff::retry(
        backoff,
        tries,
        AwsError::is_transient,
        |attempt, e, wait| {
            tracing::warn!(%what, attempt, error = %e, ?wait, "AWS call failed; trying again");
        },
        call,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_aws_failures_are_worth_trying_again_and_refusals_are_not() {
        for code in [
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "RequestLimitExceeded",
            "InternalServerError",
            "InternalFailure",
            "ServiceUnavailable",
            "SlowDown",
            "TransactionConflictException",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in [
            "ConditionalCheckFailedException",
            "ValidationException",
            "AccessDeniedException",
            "InvalidParameterValue",
        ] {
            assert!(!is_transient(code), "{code}");
        }
        let busy = AwsError::Busy {
            what: "the events table".into(),
            detail: "ThrottlingException: slow down".into(),
        };
        assert!(busy.into_store_error().is_retryable());
    }
}
