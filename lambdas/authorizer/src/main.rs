//! The authorizer Lambda: API Gateway's REQUEST authorizer on `x-api-key`, so that nothing
//! anonymous reaches the receiver. The accepted keys come from the receiver's own settings
//! (`RELAY_API_KEY_SECRET`, `secretsmanager:NAME`, or `RELAY_API_KEY` for a local run); API
//! Gateway caches each answer per key (`authorizer_result_ttl_in_seconds`).

use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use relay_lambda::{authorizer, start};

#[tokio::main]
async fn main() -> Result<(), Error> {
    start::init_tracing();
    let keys = &authorizer::keys(&start::from_env("relay-authorizer")?).await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| async move {
            // The error's message is what API Gateway reads: exactly "Unauthorized" is a 401.
            Ok::<serde_json::Value, Error>(authorizer::decide(keys, &event.payload)?)
        },
    ))
    .await
}
