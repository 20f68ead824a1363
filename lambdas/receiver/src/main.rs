//! The receiver Lambda: API Gateway REST proxy events into the unchanged ingest router, over
//! the stack's events table. `RELAY_API_KEY` holds the accepted keys (comma-separated, for
//! rotation); set `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` so paths are `/events`, not
//! `/<stage>/events` (Terraform does both). Each request leaves one EMF line on stdout: the
//! metrics, with `event_id` and `status` (`relay_aws::receiver::with_metrics`).

use std::time::Duration;

use relay_ingest::IngestConfig;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    relay_aws::lambda::init_tracing();
    let aws = relay_aws::Aws::connect(&relay_aws::lambda::options_from_env()).await?;
    let config = IngestConfig {
        api_keys: relay_aws::lambda::list_from_env("RELAY_API_KEY")?,
        store_timeout: Duration::from_millis(400),
    };
    lambda_http::run(relay_aws::receiver::with_metrics(relay_ingest::router(
        relay_aws::DynamoIngest::new(aws),
        config,
    )))
    .await
}
