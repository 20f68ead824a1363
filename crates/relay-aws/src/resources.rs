//! `--create-resources`: the stack's tables, stream and queues, for a local AWS-compatible API.
//! In an account Terraform owns them (`terraform/`); these are the same shapes.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::{Aws, AwsError};

/// Messages received this often without being settled go to the DLQ: a net for messages that
/// crash dispatchers. Every retry is a fresh message, so retries never count toward it.
const MAX_RECEIVE_COUNT: u32 = 5;
/// The work queue's visibility: 6 × the dispatcher function's 60 s timeout, as AWS advises.
const VISIBILITY_SECS: u32 = 360;

/// Creates whatever of the stack is missing; leaves what exists alone.
pub async fn create_resources(aws: &Aws) -> Result<(), AwsError> {
    create_tables(aws).await?;
    create_bucket(aws).await?;
    create_queues(aws).await?;
    tracing::info!(stack = ?aws.stack, "stack resources ready");
    Ok(())
}

/// The events table (its stream the outbox, `expires_at` its TTL) and the control table.
async fn create_tables(aws: &Aws) -> Result<(), AwsError> {
    let stack = &aws.stack;
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| AwsError::Config(e.to_string()))
    };
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| AwsError::Config(e.to_string()))
    };
    let events = aws
        .dynamodb
        .create_table()
        .table_name(&stack.events_table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .map_err(|e| AwsError::Config(e.to_string()))?,
        )
        .send()
        .await;
    let created = ignore_existing(events, "ResourceInUseException", &stack.events_table)?;
    if created {
        aws.dynamodb
            .update_time_to_live()
            .table_name(&stack.events_table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("expires_at")
                    .build()
                    .map_err(|e| AwsError::Config(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the events table's TTL", e))?;
    }
    let control = aws
        .dynamodb
        .create_table()
        .table_name(&stack.control_table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .attribute_definitions(attr("pk")?)
        .send()
        .await;
    ignore_existing(control, "ResourceInUseException", &stack.control_table)?;

    Ok(())
}

/// The archive bucket, in the stack's region.
async fn create_bucket(aws: &Aws) -> Result<(), AwsError> {
    let bucket = &aws.stack.archive_bucket;
    let mut create = aws_sdk_s3::Client::new(&aws.config)
        .create_bucket()
        .bucket(bucket);
    let region = aws.config.region().map(|r| r.as_ref().to_owned());
    if let Some(region) = region.filter(|r| r != "us-east-1") {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    region.as_str(),
                ))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            }) => {}
        Err(e) => return Err(AwsError::from_sdk(&format!("bucket {bucket}"), e)),
    }

    Ok(())
}

/// The DLQ, then the work queue that dead-letters into it.
async fn create_queues(aws: &Aws) -> Result<(), AwsError> {
    let stack = &aws.stack;
    let dlq_url = aws
        .sqs
        .create_queue()
        .queue_name(&stack.dlq)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&format!("queue {}", stack.dlq), e))?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = aws
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&format!("queue {}", stack.dlq), e))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default();
    let redrive =
        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
            .to_string();
    aws.sqs
        .create_queue()
        .queue_name(&stack.queue)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            VISIBILITY_SECS.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&format!("queue {}", stack.queue), e))?;
    Ok(())
}

/// `Ok(true)` when created, `Ok(false)` when it was there already.
fn ignore_existing<T, E, R>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>,
    exists_code: &str,
    what: &str,
) -> Result<bool, AwsError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().and_then(|s| s.code()) == Some(exists_code) => Ok(false),
        Err(e) => Err(AwsError::from_sdk(what, e)),
    }
}
