//! The receiver Lambda: API Gateway REST proxy events into the unchanged ingest router, over
//! the stack's events table. `RELAY_API_KEY_SECRET` (`secretsmanager:NAME`) names the secret
//! holding the accepted keys (comma-separated, `old,new` during a rotation), or
//! `RELAY_API_KEY` holds them; set `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` so paths are `/events`, not
//! `/<stage>/events` (Terraform does both). `RELAY_SIGNING_SECRET_REF` (a secret) or
//! `RELAY_SIGNING_SECRET` makes every request carry a Standard Webhooks signature too. Each request leaves one EMF line on stdout: the
//! metrics, with `event_id` and `status` (`relay_lambda::receiver::with_metrics`). Each accepted
//! event is stored with its X-Ray trace (API Gateway's), and gets a receive segment in it.

use std::time::Duration;

use relay_ingest::IngestConfig;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    relay_lambda::start::init_tracing();
    let aws = relay_aws::Aws::connect(&relay_lambda::start::options_from_env()).await?;
    // The keys from Secrets Manager (`RELAY_API_KEY_SECRET`, as Terraform sets it), or, for a
    // local run, from `RELAY_API_KEY`.
    let api_keys = match std::env::var("RELAY_API_KEY_SECRET") {
        Ok(secret) => relay_aws::secrets::api_keys(&aws, &secret.parse()?).await?,
        Err(_) => relay_lambda::start::list_from_env("RELAY_API_KEY")?,
    };
    // Signed requests (Standard Webhooks), when the stack sets a signing secret: a bad one
    // stops the start, naming the variable.
    let signing_secrets = match std::env::var("RELAY_SIGNING_SECRET_REF") {
        Ok(secret) => relay_aws::secrets::api_keys(&aws, &secret.parse()?).await?,
        Err(_) => relay_lambda::start::list_from_env("RELAY_SIGNING_SECRET").unwrap_or_default(),
    }
    .iter()
    .map(|s| s.parse())
    .collect::<Result<Vec<relay_ingest::SigningSecret>, _>>()
    .map_err(|e| format!("RELAY_SIGNING_SECRET: {e}"))?;
    let config = IngestConfig {
        api_keys,
        store_timeout: Duration::from_millis(400),
        signing_secrets,
        ..IngestConfig::default()
    };
    let tracer = aws.tracer.clone();
    let app = relay_ingest::router(relay_aws::DynamoIngest::new(aws), config);
    lambda_http::run(relay_lambda::receiver::with_metrics(
        relay_lambda::receiver::with_tracing(app, tracer),
    ))
    .await
}
