//! The receiver: the unchanged ingest router, behind API Gateway.
//!
//! In Lambda, `lambda_http::run(router)` turns each API Gateway REST proxy event into a request
//! for the router and its response into a proxy response. [`api_gateway`] does the same locally, for
//! `relay up --backend aws`: every HTTP request becomes a proxy event, goes through
//! `lambda_http`'s own adapter into the router, and the proxy response it produces becomes the
//! HTTP answer. It is the Lambda path, serialization included, not a shortcut around it.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lambda_http::aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse};
use lambda_http::aws_lambda_events::encodings::Body as LambdaBody;
use lambda_http::lambda_runtime::{Context, LambdaEvent};
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Service};

/// The receiver of a function instance (and of `relay up --backend aws`), from its settings:
/// the ingest router over the stack's events table, its keys and signing secrets read from
/// their secrets, with a trace per event and an EMF line per request.
pub async fn start(
    settings: &crate::start::ReceiverSettings,
) -> Result<Router, crate::start::StartError> {
    let aws = crate::start::LazyAws::new(&settings.aws);
    let config = crate::start::ingest_config(&settings.ingest, &aws).await?;
    Ok(with_metrics(app(aws.get().await?.clone(), config)))
}

/// The ingest router over `aws`'s events table, with a trace per event (`relay up --backend
/// aws` serves it as it is; the function adds its EMF lines).
pub fn app(aws: relay_aws::Aws, config: relay_ingest::IngestConfig) -> Router {
    let tracer = aws.tracer.clone();
    with_tracing(
        relay_ingest::router(relay_aws::DynamoIngest::new(aws), config),
        tracer,
    )
}

/// One EMF line per request (`Function=receiver`): `Accepted`, `Duplicate`, or `Rejected` with
/// the `Reason` the source was answered, and the request's `event_id` and `status` as
/// properties, so the line doubles as the access log.
pub fn with_metrics(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(request_metrics))
}

async fn request_metrics(request: Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    request_emf(&response, started.elapsed()).emit();
    response
}

/// The EMF document for one answered request.
pub fn request_emf(response: &Response, took: std::time::Duration) -> crate::emf::Emf {
    use crate::emf::{Emf, Unit};
    let status = response.status();
    let mut emf = match (status, response.extensions().get::<relay_ingest::Refusal>()) {
        (StatusCode::ACCEPTED, _) => Emf::new("receiver").count("Accepted", 1),
        (StatusCode::OK, None) => Emf::new("receiver").count("Duplicate", 1),
        (_, Some(refusal)) => Emf::new("receiver")
            .dimension("Reason", refusal.code)
            .count("Rejected", 1),
        (_, None) => Emf::new("receiver").count("Answered", 1),
    }
    .values(
        "AckLatency",
        Unit::Milliseconds,
        vec![took.as_secs_f64() * 1000.0],
    )
    .property("status", status.as_u16());
    if let Some(relay_ingest::EventId(id)) = response.extensions().get() {
        emf = emf.property("event_id", id.as_str());
    }
    emf
}

/// One X-Ray trace per accepted event: the request's `X-Amzn-Trace-Id` (API Gateway's trace)
/// is continued, or a trace started; the event is stored with it ([`relay_aws::DynamoIngest`] reads
/// it while the request is handled), and a receive segment annotated with `event_id` is emitted.
pub fn with_tracing(app: Router, tracer: relay_aws::xray::Tracer) -> Router {
    app.layer(axum::middleware::from_fn(
        move |request: Request, next: axum::middleware::Next| {
            let tracer = tracer.clone();
            async move { traced(tracer, request, next).await }
        },
    ))
}

async fn traced(
    tracer: relay_aws::xray::Tracer,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let header = request
        .headers()
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok());
    let receiving = match relay_aws::xray::Receiving::from_header(header) {
        Some(receiving) if tracer.is_on() => receiving,
        _ => return next.run(request).await,
    };
    let started = relay_core::now_millis();
    let response = receiving.clone().scope(next.run(request)).await;
    if response.status() == StatusCode::ACCEPTED
        && let Some(relay_ingest::EventId(id)) = response.extensions().get()
    {
        let ended = relay_core::now_millis();
        tracer.emit(&receiving.segment(id, started, ended, response.status().as_u16()));
    }
    response
}

/// API Gateway's own limit on a request body.
const API_GATEWAY_MAX_BODY: usize = 10 * 1024 * 1024;

/// `app` as API Gateway and Lambda would serve it: every request becomes a REST proxy event,
/// the function's answer a proxy response. Served by `relay_ingest::serve` (which gives each
/// request its peer's `ConnectInfo`).
pub fn api_gateway(app: Router) -> Router {
    Router::new().fallback(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request| {
            let app = app.clone();
            async move { through_api_gateway(app, peer, request).await }
        },
    )
}

/// One request, the Lambda way: a REST proxy event in, a REST proxy response out.
async fn through_api_gateway(app: Router, peer: SocketAddr, request: Request) -> Response {
    let event = match proxy_event(peer, request).await {
        Ok(event) => event,
        Err(answer) => return answer,
    };
    // The adapter itself is not `Send`; the call it starts is.
    let call = Adapter::from(app).call(LambdaEvent::new(
        LambdaRequest::ApiGatewayV1(event),
        Context::default(),
    ));
    let answer = match call.await {
        Ok(answer) => answer,
        Err(never) => match never {},
    };
    // What the function returns to Lambda, as API Gateway reads it.
    let proxy: Result<ApiGatewayProxyResponse, _> =
        serde_json::to_value(&answer).and_then(serde_json::from_value);
    match proxy {
        Ok(proxy) => from_proxy_response(proxy),
        Err(e) => {
            tracing::error!(error = %e, "the receiver's answer is not an API Gateway proxy response");
            (StatusCode::BAD_GATEWAY, "malformed Lambda proxy response").into_response()
        }
    }
}

async fn proxy_event(
    peer: SocketAddr,
    request: Request,
) -> Result<ApiGatewayProxyRequest, Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, API_GATEWAY_MAX_BODY)
        .await
        .map_err(|e| {
            if relay_ingest::is_body_timeout(&e) {
                (
                    StatusCode::REQUEST_TIMEOUT,
                    r#"{"error":"body_timeout","message":"the request body did not arrive in time"}"#,
                )
                    .into_response()
            } else {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    r#"{"message":"Request Too Long"}"#,
                )
                    .into_response()
            }
        })?;
    let mut event = ApiGatewayProxyRequest::default();
    event.resource = Some("/{proxy+}".into());
    event.path = Some(parts.uri.path().to_owned());
    event.http_method = parts.method.clone();
    event.headers = parts.headers.clone();
    event.multi_value_headers = parts.headers;
    event.path_parameters = [(
        "proxy".to_owned(),
        parts.uri.path().trim_start_matches('/').to_owned(),
    )]
    .into_iter()
    .collect();
    // Text as text; anything else base64, as API Gateway passes binary bodies.
    match String::from_utf8(bytes.to_vec()) {
        Ok(text) if !text.is_empty() => event.body = Some(text),
        Ok(_) => {}
        Err(_) => {
            event.body = Some(aws_smithy_types::base64::encode(&bytes));
            event.is_base64_encoded = true;
        }
    }
    let context = &mut event.request_context;
    context.http_method = parts.method;
    context.resource_path = Some("/{proxy+}".into());
    context.path = Some(parts.uri.path().to_owned());
    context.protocol = Some("HTTP/1.1".into());
    context.request_id = Some(format!("local-{:016x}", fastrand::u64(..)));
    context.request_time_epoch = relay_core::now_millis();
    context.identity.source_ip = Some(peer.ip().to_string());
    Ok(event)
}

fn from_proxy_response(proxy: ApiGatewayProxyResponse) -> Response {
    let status = StatusCode::from_u16(proxy.status_code as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match proxy.body {
        Some(LambdaBody::Text(text)) => Body::from(text),
        Some(LambdaBody::Binary(bytes)) => Body::from(bytes),
        _ => Body::empty(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in proxy.multi_value_headers.iter().chain(proxy.headers.iter()) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
