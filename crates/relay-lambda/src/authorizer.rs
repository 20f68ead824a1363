//! The API Gateway REQUEST authorizer: the API key is checked before a request reaches the
//! receiver, so an anonymous flood never spends the receiver's concurrency.
//!
//! API Gateway answers a request without `x-api-key` itself (`401`, the authorizer's identity
//! source is missing) and caches this function's answer per key for the authorizer's TTL. A
//! known key gets an `Allow` for the whole stage (a cached answer then covers `/events` and
//! `/events/batch` alike); any other key gets the `Unauthorized` error, which API Gateway turns
//! into `401` with the contract's JSON body (its `UNAUTHORIZED` gateway response, in
//! Terraform). The receiver still checks the key: the authorizer is a gate, not the only lock.

use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use serde_json::{Value, json};

/// What API Gateway must read to answer `401`: exactly this error message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Unauthorized")]
pub struct Unauthorized;

/// The accepted keys of a function instance: the receiver's own settings
/// (`RELAY_API_KEY_SECRET`, or `RELAY_API_KEY` for a local run), read the same way.
pub async fn keys(
    settings: &crate::start::ReceiverSettings,
) -> Result<Vec<String>, crate::start::StartError> {
    let aws = crate::start::LazyAws::new(&settings.aws);
    Ok(crate::start::ingest_config(&settings.ingest, &aws)
        .await?
        .api_keys)
}

/// The authorizer's decision for one request, given the accepted keys.
pub fn decide<K: AsRef<[u8]>>(
    keys: &[K],
    request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Result<Value, Unauthorized> {
    let given = request
        .headers
        .get(relay_ingest::API_KEY_HEADER)
        .map(|v| v.as_bytes())
        .ok_or(Unauthorized)?;
    if !relay_ingest::key_matches(keys, given) {
        return Err(Unauthorized);
    }
    let resource = stage_resource(request.method_arn.as_deref().unwrap_or_default());
    Ok(json!({
        "principalId": "source",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{
                "Action": "execute-api:Invoke",
                "Effect": "Allow",
                "Resource": resource,
            }],
        },
    }))
}

/// `arn:…:execute-api:REGION:ACCOUNT:API/STAGE/*`: every method of the stage the request was
/// for, so that an answer cached for one route holds for the others. An ARN of another shape
/// is kept as it is (the narrowest grant).
fn stage_resource(method_arn: &str) -> String {
    let Some((prefix, path)) = method_arn.split_once('/') else {
        return method_arn.to_owned();
    };
    match path.split('/').next() {
        Some(stage) if !stage.is_empty() => format!("{prefix}/{stage}/*"),
        _ => method_arn.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: Option<&str>) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
        let mut headers = serde_json::Map::new();
        if let Some(key) = key {
            headers.insert("X-Api-Key".into(), json!(key));
        }
        serde_json::from_value(json!({
            "type": "REQUEST",
            "methodArn": "arn:aws:execute-api:eu-west-1:123456789012:abc123/live/POST/events",
            "headers": headers,
            "requestContext": {},
        }))
        .expect("an authorizer event")
    }

    #[test]
    fn a_known_key_may_call_every_route_of_the_stage_and_any_other_is_unauthorized() {
        let keys = ["old-key", "new-key"];
        for key in keys {
            let allowed = decide(&keys, &request(Some(key))).expect("a known key is allowed");
            let statement = &allowed["policyDocument"]["Statement"][0];
            assert_eq!(statement["Effect"], "Allow");
            assert_eq!(
                statement["Resource"],
                "arn:aws:execute-api:eu-west-1:123456789012:abc123/live/*"
            );
        }
        for key in [Some("new-ke"), Some("new-key "), Some(""), None] {
            assert_eq!(decide(&keys, &request(key)), Err(Unauthorized), "{key:?}");
        }
        assert_eq!(Unauthorized.to_string(), "Unauthorized");
    }

    #[test]
    fn an_arn_of_another_shape_is_granted_as_it_is() {
        assert_eq!(stage_resource("arn:odd"), "arn:odd");
        assert_eq!(stage_resource("arn:x:api/"), "arn:x:api/");
    }
}
