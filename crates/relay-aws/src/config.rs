//! Where a stack's resources are, and the clients that reach them: the options every command
//! shares (`--stack`, `--region`, `--profile`, `--endpoint-url`, `--stack-outputs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use serde::{Deserialize, Serialize};

use crate::AwsError;

/// How to reach a stack.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// The prefix of the stack's resource names.
    pub stack: String,
    pub region: Option<String>,
    pub profile: Option<String>,
    /// A local AWS-compatible API instead of AWS (`AWS_ENDPOINT_URL` works too).
    pub endpoint_url: Option<String>,
    /// Terraform's JSON outputs (`terraform output -json`), naming the resources instead.
    pub stack_outputs: Option<PathBuf>,
    /// Longest any one call may take, retries included.
    pub operation_timeout: Duration,
    /// Fixed dummy credentials, for a local AWS API (which takes any).
    pub local_credentials: bool,
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            stack: "relay".into(),
            region: None,
            profile: None,
            endpoint_url: None,
            stack_outputs: None,
            operation_timeout: Duration::from_secs(5),
            local_credentials: false,
        }
    }
}

/// The names of a stack's resources, as Terraform creates them from the stack name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    /// Events (`META` items, written once) and their delivery state (`STATE` items); its
    /// stream is the outbox.
    pub events_table: String,
    /// Small shared items: the fleet's rate, per-second counters, stream checkpoints.
    pub control_table: String,
    /// The work queue: a message per event to deliver.
    pub queue: String,
    /// Where dead letters go, with their reason.
    pub dlq: String,
    /// Delivered and dead-lettered events, as gzip JSON lines by date.
    pub archive_bucket: String,
}

impl Stack {
    pub fn named(stack: &str) -> Self {
        Stack {
            events_table: format!("{stack}-events"),
            control_table: format!("{stack}-control"),
            queue: format!("{stack}-queue"),
            dlq: format!("{stack}-dlq"),
            archive_bucket: format!("{stack}-archive"),
        }
    }

    /// Reads `terraform output -json`: `{"events_table": {"value": "…"}, …}`.
    pub fn from_outputs(path: &Path) -> Result<Self, AwsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AwsError::Config(format!(
                "cannot read --stack-outputs {}: {e}",
                path.display()
            ))
        })?;
        let outputs: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            AwsError::Config(format!(
                "--stack-outputs {} is not JSON: {e}",
                path.display()
            ))
        })?;
        let get = |key: &str| {
            outputs
                .pointer(&format!("/{key}/value"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    AwsError::Config(format!(
                        "--stack-outputs {} has no output `{key}` (expected terraform output -json)",
                        path.display()
                    ))
                })
        };
        Ok(Stack {
            events_table: get("events_table")?,
            control_table: get("control_table")?,
            queue: get("queue_name")?,
            dlq: get("dlq_name")?,
            archive_bucket: get("archive_bucket")?,
        })
    }
}

/// Clients for a stack, and its queues' URLs.
#[derive(Debug, Clone)]
pub struct Aws {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub stack: Stack,
    /// Where the events' X-Ray segments go ([`crate::xray::Tracer::from_env`]).
    pub tracer: crate::xray::Tracer,
    pub xray: aws_sdk_xray::Client,
    /// What the clients were built from, for clients made on demand (secrets).
    pub config: aws_config::SdkConfig,
}

impl Aws {
    /// Builds the clients. Nothing is called yet: see [`Aws::queue_urls`].
    pub async fn connect(options: &AwsOptions) -> Result<Self, AwsError> {
        let stack = match &options.stack_outputs {
            Some(path) => Stack::from_outputs(path)?,
            None => Stack::named(&options.stack),
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // Two tries at most: a caller with a budget (ingest) has its own timeout, and an
            // operator would rather hear "unreachable" in seconds than wait out backoffs.
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_timeout(options.operation_timeout)
                    .build(),
            );
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if options.local_credentials {
            loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "local",
                "local",
                None,
                None,
                "relay-local",
            ));
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(AwsError::Config(
                "no AWS region: pass --region, or set AWS_REGION or a profile's region".into(),
            ));
        }
        Ok(Aws {
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            streams: aws_sdk_dynamodbstreams::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            tracer: crate::xray::Tracer::from_env(&config),
            xray: aws_sdk_xray::Client::new(&config),
            stack,
            config,
        })
    }

    /// The work queue's and the DLQ's URLs; the first call that proves the stack is reachable.
    pub async fn queue_urls(&self) -> Result<(String, String), AwsError> {
        let url = |name: String| {
            let sqs = self.sqs.clone();
            async move {
                sqs.get_queue_url()
                    .queue_name(&name)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(&format!("queue {name}"), e))?
                    .queue_url
                    .ok_or(AwsError::NotFound(format!("queue {name}")))
            }
        };
        Ok((
            url(self.stack.queue.clone()).await?,
            url(self.stack.dlq.clone()).await?,
        ))
    }
}
