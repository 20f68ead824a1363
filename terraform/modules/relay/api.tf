# API Gateway REST API (regional). Every path but GET /health goes through the API key
# authorizer first (nothing anonymous reaches a Lambda), then to the receiver, which checks the
# key again; API Gateway's own refusals answer the contract's JSON (gateway responses below).
# GET /health is answered by API Gateway itself. A REST stage is the only entry point whose
# X-Ray sampling can be 100 %: API Gateway roots each event's trace (docs/lld.md).

resource "aws_api_gateway_rest_api" "ingest" {
  name        = "${var.stack}-ingest"
  description = "relay ${var.stack}: POST /events"
  endpoint_configuration {
    types = ["REGIONAL"]
  }
  lifecycle {
    create_before_destroy = true
  }
  tags = local.tags
}

resource "aws_api_gateway_resource" "proxy" {
  rest_api_id = aws_api_gateway_rest_api.ingest.id
  parent_id   = aws_api_gateway_rest_api.ingest.root_resource_id
  path_part   = "{proxy+}"
}

# The key check in front: a request without `x-api-key` is refused by API Gateway itself, and
# the function's answer for a key is cached for var.authorizer_cache_seconds.
resource "aws_api_gateway_authorizer" "api_key" {
  name                             = "${var.stack}-api-key"
  rest_api_id                      = aws_api_gateway_rest_api.ingest.id
  type                             = "REQUEST"
  identity_source                  = "method.request.header.x-api-key"
  authorizer_uri                   = aws_lambda_alias.live["authorizer"].invoke_arn
  authorizer_result_ttl_in_seconds = var.authorizer_cache_seconds
}

resource "aws_lambda_permission" "authorizer" {
  statement_id  = "ApiGatewayAuthorize"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.relay["authorizer"].function_name
  qualifier     = aws_lambda_alias.live["authorizer"].name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.ingest.execution_arn}/authorizers/${aws_api_gateway_authorizer.api_key.id}"
}

resource "aws_api_gateway_method" "proxy" {
  # checkov:skip=CKV2_AWS_53:the receiver validates every field and answers 400 naming it, as the contract requires
  rest_api_id   = aws_api_gateway_rest_api.ingest.id
  resource_id   = aws_api_gateway_resource.proxy.id
  http_method   = "ANY"
  authorization = "CUSTOM"
  authorizer_id = aws_api_gateway_authorizer.api_key.id
}

# GET /health needs no key (the contract): API Gateway answers it itself, so an anonymous
# request reaches no Lambda. On AWS the store cannot be "failing" (DynamoDB answers each write).
resource "aws_api_gateway_resource" "health" {
  rest_api_id = aws_api_gateway_rest_api.ingest.id
  parent_id   = aws_api_gateway_rest_api.ingest.root_resource_id
  path_part   = "health"
}

resource "aws_api_gateway_method" "health" {
  # checkov:skip=CKV_AWS_59:GET /health answers without a key by contract; its integration is a MOCK, so it reaches no function and no data
  # checkov:skip=CKV2_AWS_53:a GET without parameters; there is nothing to validate
  rest_api_id   = aws_api_gateway_rest_api.ingest.id
  resource_id   = aws_api_gateway_resource.health.id
  http_method   = "GET"
  authorization = "NONE"
}

resource "aws_api_gateway_integration" "health" {
  rest_api_id       = aws_api_gateway_rest_api.ingest.id
  resource_id       = aws_api_gateway_resource.health.id
  http_method       = aws_api_gateway_method.health.http_method
  type              = "MOCK"
  request_templates = { "application/json" = jsonencode({ statusCode = 200 }) }
}

resource "aws_api_gateway_method_response" "health" {
  rest_api_id = aws_api_gateway_rest_api.ingest.id
  resource_id = aws_api_gateway_resource.health.id
  http_method = aws_api_gateway_method.health.http_method
  status_code = "200"
}

resource "aws_api_gateway_integration_response" "health" {
  rest_api_id        = aws_api_gateway_rest_api.ingest.id
  resource_id        = aws_api_gateway_resource.health.id
  http_method        = aws_api_gateway_method.health.http_method
  status_code        = aws_api_gateway_method_response.health.status_code
  response_templates = { "application/json" = jsonencode({ status = "ok" }) }
  depends_on         = [aws_api_gateway_integration.health]
}

# What API Gateway answers by itself, in the contract's error shape.
locals {
  gateway_responses = {
    UNAUTHORIZED                 = { status = 401, error = "unauthorized", message = "missing or wrong `x-api-key` header" }
    ACCESS_DENIED                = { status = 401, error = "unauthorized", message = "missing or wrong `x-api-key` header" }
    MISSING_AUTHENTICATION_TOKEN = { status = 404, error = "not_found", message = "no such route; try POST /events" }
    THROTTLED                    = { status = 429, error = "rate_limited", message = "too many requests; slow down and try again" }
    WAF_FILTERED                 = { status = 429, error = "rate_limited", message = "too many requests from this address or key; slow down" }
    REQUEST_TOO_LARGE            = { status = 413, error = "payload_too_large", message = "request body too large" }
    DEFAULT_4XX                  = { status = null, error = "bad_request", message = "the request was refused before it reached relay" }
    DEFAULT_5XX                  = { status = null, error = "unavailable", message = "relay is unavailable; the event was not acknowledged" }
  }
}

resource "aws_api_gateway_gateway_response" "contract" {
  for_each      = local.gateway_responses
  rest_api_id   = aws_api_gateway_rest_api.ingest.id
  response_type = each.key
  status_code   = each.value.status == null ? null : tostring(each.value.status)
  response_templates = {
    "application/json" = jsonencode({ error = each.value.error, message = each.value.message })
  }
}

resource "aws_api_gateway_integration" "proxy" {
  rest_api_id             = aws_api_gateway_rest_api.ingest.id
  resource_id             = aws_api_gateway_resource.proxy.id
  http_method             = aws_api_gateway_method.proxy.http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = aws_lambda_alias.live["receiver"].invoke_arn
  timeout_milliseconds    = 2000
}

resource "aws_lambda_permission" "api" {
  statement_id  = "ApiGatewayInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.relay["receiver"].function_name
  qualifier     = aws_lambda_alias.live["receiver"].name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.ingest.execution_arn}/*/*/*"
}

resource "aws_api_gateway_deployment" "ingest" {
  rest_api_id = aws_api_gateway_rest_api.ingest.id
  triggers = {
    redeploy = sha1(jsonencode([
      aws_api_gateway_resource.proxy.id,
      aws_api_gateway_method.proxy.id,
      aws_api_gateway_method.proxy.authorizer_id,
      aws_api_gateway_authorizer.api_key.id,
      aws_api_gateway_integration.proxy.id,
      aws_api_gateway_integration.proxy.uri,
      aws_api_gateway_method.health.id,
      aws_api_gateway_integration.health.id,
      aws_api_gateway_integration_response.health.id,
      local.gateway_responses,
    ]))
  }
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "access" {
  # checkov:skip=CKV_AWS_338:retention is var.log_retention_days per environment
  name              = "/aws/apigateway/${var.stack}-access"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.relay.arn
  tags              = local.tags
}

resource "aws_api_gateway_stage" "live" {
  # checkov:skip=CKV2_AWS_29:the web ACL in waf.tf is attached when var.waf_enabled (on in prod); checkov cannot follow the count
  # checkov:skip=CKV2_AWS_77:the web ACL in waf.tf runs AWSManagedRulesKnownBadInputsRuleSet (Log4j included); checkov cannot follow the count to it
  # checkov:skip=CKV2_AWS_51:sources are outside clients with API keys, not mutual-TLS peers
  # checkov:skip=CKV_AWS_120:POST /events must never be answered from a cache
  deployment_id        = aws_api_gateway_deployment.ingest.id
  rest_api_id          = aws_api_gateway_rest_api.ingest.id
  stage_name           = "live"
  xray_tracing_enabled = true

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.access.arn
    format = jsonencode({
      requestId      = "$context.requestId"
      traceId        = "$context.xrayTraceId"
      ip             = "$context.identity.sourceIp"
      requestTime    = "$context.requestTimeEpoch"
      httpMethod     = "$context.httpMethod"
      path           = "$context.path"
      status         = "$context.status"
      responseLength = "$context.responseLength"
      latencyMs      = "$context.responseLatency"
      integrationMs  = "$context.integration.latency"
      error          = "$context.error.message"
    })
  }

  depends_on = [aws_api_gateway_account.logging]
  tags       = local.tags
}

resource "aws_api_gateway_method_settings" "all" {
  # checkov:skip=CKV_AWS_225:POST /events must never be answered from a cache
  rest_api_id = aws_api_gateway_rest_api.ingest.id
  stage_name  = aws_api_gateway_stage.live.stage_name
  method_path = "*/*"

  settings {
    metrics_enabled        = true
    logging_level          = "ERROR"
    throttling_rate_limit  = var.api_throttle_rate
    throttling_burst_limit = var.api_throttle_burst
    caching_enabled        = false
  }
}

# Per-client quotas: attach API keys to this plan (docs/deploy.md).
resource "aws_api_gateway_usage_plan" "sources" {
  name = "${var.stack}-sources"
  api_stages {
    api_id = aws_api_gateway_rest_api.ingest.id
    stage  = aws_api_gateway_stage.live.stage_name
  }
  throttle_settings {
    rate_limit  = var.api_throttle_rate
    burst_limit = var.api_throttle_burst
  }
}

# API Gateway writes logs through an account-wide role.
data "aws_iam_policy_document" "assume_apigateway" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "apigateway_logs" {
  name                = "${var.stack}-apigateway-logs"
  assume_role_policy  = data.aws_iam_policy_document.assume_apigateway.json
  managed_policy_arns = ["arn:${local.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"]
  tags                = local.tags
}

resource "aws_api_gateway_account" "logging" {
  cloudwatch_role_arn = aws_iam_role.apigateway_logs.arn
}

# One trace per event: the stage samples every request (var.xray_sampling_rate).
resource "aws_xray_sampling_rule" "events" {
  rule_name      = substr("${var.stack}-events", 0, 32)
  priority       = 100
  version        = 1
  reservoir_size = 1
  fixed_rate     = var.xray_sampling_rate
  url_path       = "/events*"
  host           = "*"
  http_method    = "*"
  service_type   = "AWS::ApiGateway::Stage"
  service_name   = "${aws_api_gateway_rest_api.ingest.name}/${aws_api_gateway_stage.live.stage_name}"
  resource_arn   = "*"
  tags           = local.tags
}
