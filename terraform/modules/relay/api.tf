# API Gateway REST API (regional): every path to the receiver, which checks the API key itself
# so that the contract's 401 JSON answers hold. A REST stage is the only entry point whose
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

resource "aws_api_gateway_method" "proxy" {
  # checkov:skip=CKV_AWS_59:the receiver checks the API key (constant time, two keys during a rotation) and answers the contract's 401 JSON; an API Gateway key check would answer 403 first
  # checkov:skip=CKV2_AWS_53:the receiver validates every field and answers 400 naming it, as the contract requires
  rest_api_id   = aws_api_gateway_rest_api.ingest.id
  resource_id   = aws_api_gateway_resource.proxy.id
  http_method   = "ANY"
  authorization = "NONE"
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
      aws_api_gateway_integration.proxy.id,
      aws_api_gateway_integration.proxy.uri,
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
  # checkov:skip=CKV2_AWS_29:a WAF web ACL is attached at the organisation level (Firewall Manager) where one is used; stage throttling and API keys protect the stack itself
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
