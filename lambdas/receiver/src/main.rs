//! The receiver Lambda: API Gateway REST proxy events into the unchanged ingest router, over
//! the stack's events table. Its settings are `relay up`'s ingest flags as `RELAY_*` variables:
//! `RELAY_API_KEY_SECRET` (`secretsmanager:NAME`) names the secret holding the accepted keys
//! (comma-separated, `old,new` during a rotation), or `RELAY_API_KEY` holds them;
//! `RELAY_SIGNING_SECRET_REF` (a secret) or `RELAY_SIGNING_SECRET` makes every request carry a
//! Standard Webhooks signature too (docs/configuration.md). Set
//! `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` so paths are `/events`, not `/<stage>/events`
//! (Terraform does both). Each request leaves one EMF line on stdout; each accepted event is
//! stored with its X-Ray trace (API Gateway's), and gets a receive segment in it.

use relay_lambda::{receiver, start};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    start::init_tracing();
    let settings = start::from_env("relay-receiver")?;
    lambda_http::run(receiver::start(&settings).await?).await
}
