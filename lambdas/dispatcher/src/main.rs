//! The dispatcher Lambda: SQS batches into the same delivery logic as `relay up`, answering
//! with a partial batch response. The target is `RELAY_TARGET_URL`, its credentials the headers
//! in `RELAY_HEADER_SECRET` (`secretsmanager:NAME` or `ssm:/NAME`); `RELAY_TARGET_RATE` caps
//! the fleet's rate; `RELAY_BATCH` (default 1) is how many events of an SQS batch go in one
//! request; `RELAY_RETENTION` (default 7d) is how long delivered events' items stay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use relay_lambda::BatchDispatcher;
use relay_lambda::start::{env_or, list_from_env};
use relay_core::rate::RateConfig;
use relay_dispatch::{DispatchConfig, GraphqlClient, TargetConfig};

/// Left for giving unstarted work back before the function's deadline.
const MARGIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Error> {
    relay_lambda::start::init_tracing();
    let aws = relay_aws::Aws::connect(&relay_lambda::start::options_from_env()).await?;
    let retention = humantime::parse_duration(&env_or("RELAY_RETENTION", "7d"))?;
    let queue = relay_aws::SqsQueue::new(aws.clone(), retention).await?;
    let mut target = TargetConfig::new(std::env::var("RELAY_TARGET_URL")?);
    target.brand = env_or("RELAY_BRAND", "testBrand");
    target.batch = env_or("RELAY_BATCH", "1").parse()?;
    target.headers = list_from_env("RELAY_HEADERS")
        .unwrap_or_default()
        .iter()
        .map(|h| relay_dispatch::parse_header(h))
        .collect::<Result<_, _>>()?;
    if let Ok(secret) = std::env::var("RELAY_HEADER_SECRET") {
        let secret: relay_aws::secrets::SecretRef = secret.parse()?;
        target
            .headers
            .extend(relay_aws::secrets::headers(&aws, &secret).await?);
    }
    let client = GraphqlClient::new(&target)?;
    let config = DispatchConfig {
        rate: RateConfig {
            ceiling: std::env::var("RELAY_TARGET_RATE")
                .ok()
                .and_then(|r| r.parse().ok()),
            ..RateConfig::default()
        },
        lease: Duration::from_secs(60),
        ..DispatchConfig::default()
    };
    let dispatcher = BatchDispatcher::new(queue, client, config).in_fleet(aws);
    let dispatcher = &dispatcher;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let deadline = Duration::from_millis(event.context.deadline);
        let budget = deadline.saturating_sub(now).saturating_sub(MARGIN);
        Ok::<_, Error>(dispatcher.dispatch(event.payload, budget).await)
    }))
    .await
}
