//! The authorizer Lambda: API Gateway's REQUEST authorizer on `x-api-key`, so that nothing
//! anonymous reaches the receiver. The accepted keys come from the same secret as the
//! receiver's (`RELAY_API_KEY_SECRET`, `secretsmanager:NAME`), or `RELAY_API_KEY` for a local
//! run; API Gateway caches each answer per key (`authorizer_result_ttl_in_seconds`).

use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    relay_lambda::start::init_tracing();
    let keys = match std::env::var("RELAY_API_KEY_SECRET") {
        Ok(secret) => {
            let aws = relay_aws::Aws::connect(&relay_lambda::start::options_from_env()).await?;
            relay_aws::secrets::api_keys(&aws, &secret.parse()?).await?
        }
        Err(_) => relay_lambda::start::list_from_env("RELAY_API_KEY")?,
    };
    let keys = &keys;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| async move {
            // The error's message is what API Gateway reads: exactly "Unauthorized" is a 401.
            Ok::<serde_json::Value, Error>(relay_lambda::authorizer::decide(keys, &event.payload)?)
        },
    ))
    .await
}
