# The four functions: authorizer (API Gateway's key check, before anything else runs), receiver
# (API Gateway → the ingest router), forwarder (the events table's stream → the work queue)
# and dispatcher (the work queue → the target). Each has its
# own least-privilege role, X-Ray active tracing, arm64, and a `live` alias that API Gateway and
# the event source mappings call, so a rollback is one alias update (docs/deploy.md).

resource "aws_cloudwatch_log_group" "function" {
  # checkov:skip=CKV_AWS_338:retention is var.log_retention_days per environment; events themselves are archived in S3
  for_each          = local.functions
  name              = "/aws/lambda/${var.stack}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.relay.arn
  tags              = local.tags
}

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  for_each           = local.functions
  name               = "${var.stack}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
  tags               = local.tags
}

# What every function does: write its own logs, send X-Ray segments, use the stack's key.
data "aws_iam_policy_document" "common" {
  for_each = local.functions

  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function[each.key].arn}:*"]
  }

  statement {
    # X-Ray has no resource-level permissions: these two actions take only "*".
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  statement {
    sid       = "StackKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.relay.arn]
  }
}

data "aws_iam_policy_document" "receiver" {
  source_policy_documents = [data.aws_iam_policy_document.common["receiver"].json]

  statement {
    sid       = "CommitEvents"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.events.arn]
  }

  statement {
    sid       = "ApiKeys"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = concat([aws_secretsmanager_secret.api_keys.arn], aws_secretsmanager_secret.signing[*].arn)
  }
}

data "aws_iam_policy_document" "authorizer" {
  source_policy_documents = [data.aws_iam_policy_document.common["authorizer"].json]

  statement {
    sid       = "ApiKeys"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.api_keys.arn]
  }
}

data "aws_iam_policy_document" "forwarder" {
  source_policy_documents = [data.aws_iam_policy_document.common["forwarder"].json]

  statement {
    sid       = "ReadOutbox"
    actions   = ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"]
    resources = [aws_dynamodb_table.events.stream_arn]
  }

  statement {
    sid       = "Queue"
    actions   = ["sqs:SendMessage", "sqs:GetQueueUrl"]
    resources = [aws_sqs_queue.work.arn, aws_sqs_queue.dlq.arn]
  }

  statement {
    sid       = "FailedBatches"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.stream_failures.arn]
  }
}

data "aws_iam_policy_document" "dispatcher" {
  source_policy_documents = [data.aws_iam_policy_document.common["dispatcher"].json]

  statement {
    sid = "Work"
    actions = [
      "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage",
    ]
    resources = [aws_sqs_queue.work.arn]
  }

  statement {
    sid       = "DeadLetters"
    actions   = ["sqs:SendMessage", "sqs:GetQueueUrl"]
    resources = [aws_sqs_queue.dlq.arn]
  }

  statement {
    sid       = "DeliveryState"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.events.arn, aws_dynamodb_table.control.arn]
  }

  statement {
    sid       = "Archive"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.archive.arn}/events/*"]
  }

  statement {
    sid     = "TargetCredentials"
    actions = ["secretsmanager:GetSecretValue"]
    resources = concat(
      [aws_secretsmanager_secret.target_headers.arn],
      aws_secretsmanager_secret.target_signing[*].arn,
      aws_secretsmanager_secret.target_oauth[*].arn,
      aws_secretsmanager_secret.target_client_certificate[*].arn,
      aws_secretsmanager_secret.target_ca[*].arn,
    )
  }
}

locals {
  policies = {
    authorizer = data.aws_iam_policy_document.authorizer.json
    receiver   = data.aws_iam_policy_document.receiver.json
    forwarder  = data.aws_iam_policy_document.forwarder.json
    dispatcher = data.aws_iam_policy_document.dispatcher.json
  }

  environment = {
    authorizer = {
      RELAY_STACK          = var.stack
      RELAY_API_KEY_SECRET = "secretsmanager:${aws_secretsmanager_secret.api_keys.name}"
      RUST_LOG             = "info"
    }
    receiver = merge(
      {
        RELAY_STACK                          = var.stack
        RELAY_API_KEY_SECRET                 = "secretsmanager:${aws_secretsmanager_secret.api_keys.name}"
        RELAY_STORE_TIMEOUT                  = var.store_timeout
        RELAY_BATCH_TIMEOUT                  = var.batch_timeout
        AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH = "true"
        RUST_LOG                             = "info"
      },
      var.require_signatures ? { RELAY_SIGNING_SECRET_REF = "secretsmanager:${aws_secretsmanager_secret.signing[0].name}" } : {},
    )
    forwarder = {
      RELAY_STACK = var.stack
      RUST_LOG    = "info"
    }
    dispatcher = merge(
      {
        RELAY_STACK          = var.stack
        RELAY_TARGET_URL     = var.target_url
        RELAY_HEADER_SECRET  = "secretsmanager:${aws_secretsmanager_secret.target_headers.name}"
        RELAY_BRAND          = var.brand
        RELAY_BATCH          = tostring(var.events_per_request)
        RELAY_MAX_ATTEMPTS   = tostring(var.max_attempts)
        RELAY_MAX_AGE        = var.max_age
        RELAY_TARGET_TIMEOUT = var.target_timeout
        RELAY_MAX_IN_FLIGHT  = tostring(var.max_in_flight)
        RELAY_BACKOFF_BASE   = var.backoff_base
        RELAY_BACKOFF_CAP    = var.backoff_cap
        RELAY_RETENTION      = var.retention
        RUST_LOG             = "info"
      },
      var.target_rate > 0 ? { RELAY_TARGET_RATE = tostring(var.target_rate) } : {},
      var.document != "" ? { RELAY_DOCUMENT = var.document } : {},
      var.sign_target_requests ? { RELAY_TARGET_SIGNING_SECRET_REF = "secretsmanager:${aws_secretsmanager_secret.target_signing[0].name}" } : {},
      var.target_oauth_token_url != "" ? {
        RELAY_TARGET_OAUTH_TOKEN_URL         = var.target_oauth_token_url
        RELAY_TARGET_OAUTH_CLIENT_ID         = var.target_oauth_client_id
        RELAY_TARGET_OAUTH_CLIENT_SECRET_REF = "secretsmanager:${aws_secretsmanager_secret.target_oauth[0].name}"
      } : {},
      var.target_oauth_scopes != "" ? { RELAY_TARGET_OAUTH_SCOPES = var.target_oauth_scopes } : {},
      var.target_mtls ? { RELAY_TARGET_CLIENT_CERT = "secretsmanager:${aws_secretsmanager_secret.target_client_certificate[0].name}" } : {},
      var.target_private_ca ? { RELAY_TARGET_CA = "secretsmanager:${aws_secretsmanager_secret.target_ca[0].name}" } : {},
    )
  }
}

# The edge's two functions are capped, so a flood at the API spends these and no more.
locals {
  reserved_concurrency = {
    authorizer = var.authorizer_reserved_concurrency
    receiver   = var.receiver_reserved_concurrency
  }
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = "${var.stack}-${each.key}"
  role     = aws_iam_role.function[each.key].id
  policy   = local.policies[each.key]
}

resource "aws_lambda_function" "relay" {
  # checkov:skip=CKV_AWS_117:the functions reach only AWS APIs and the target's public URL; a VPC would add NAT cost and cold-start time for no isolation gain
  # checkov:skip=CKV_AWS_116:no asynchronous invocations: the receiver is synchronous behind API Gateway, the others are event-source-mapped with their own failure handling (the stream mapping's on-failure queue, the dispatcher's own DLQ decision)
  # checkov:skip=CKV_AWS_272:artifacts are built once by CI and deployed by digest (source_code_hash); code signing is a per-organisation addition
  # checkov:skip=CKV_AWS_115:the receiver reserves concurrency; the dispatcher is capped by its mapping's MaximumConcurrency (reserving it would starve the mapping), the forwarder by its shard count
  for_each = local.functions

  function_name    = "${var.stack}-${each.key}"
  role             = aws_iam_role.function[each.key].arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = ["arm64"]
  filename         = "${var.lambda_artifacts}/relay-${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${var.lambda_artifacts}/relay-${each.key}/bootstrap.zip")
  timeout          = each.value.timeout
  memory_size      = each.value.memory
  publish          = true
  kms_key_arn      = aws_kms_key.relay.arn

  reserved_concurrent_executions = lookup(local.reserved_concurrency, each.key, -1)

  tracing_config {
    mode = "Active"
  }

  environment {
    variables = local.environment[each.key]
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.function[each.key].name
  }

  depends_on = [aws_iam_role_policy.function]
  tags       = local.tags
}

resource "aws_lambda_alias" "live" {
  for_each         = local.functions
  name             = "live"
  function_name    = aws_lambda_function.relay[each.key].function_name
  function_version = aws_lambda_function.relay[each.key].version
}

# The outbox: new events only (INSERT), in order per item; a failing record is bisected out and
# retried until the stream drops it (24 h), then its batch's details go to the failure queue.
resource "aws_lambda_event_source_mapping" "outbox" {
  event_source_arn                   = aws_dynamodb_table.events.stream_arn
  function_name                      = aws_lambda_alias.live["forwarder"].arn
  starting_position                  = "TRIM_HORIZON"
  batch_size                         = 100
  maximum_batching_window_in_seconds = 0
  parallelization_factor             = 1
  bisect_batch_on_function_error     = true
  maximum_retry_attempts             = -1
  maximum_record_age_in_seconds      = -1
  function_response_types            = ["ReportBatchItemFailures"]

  filter_criteria {
    filter {
      pattern = jsonencode({ eventName = ["INSERT"] })
    }
  }

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.stream_failures.arn
    }
  }
}

# The work: batches of ids to the dispatcher, partial failures reported per message, and at
# most var.dispatcher_max_concurrency instances, which share the target's limit.
resource "aws_lambda_event_source_mapping" "work" {
  event_source_arn                   = aws_sqs_queue.work.arn
  function_name                      = aws_lambda_alias.live["dispatcher"].arn
  batch_size                         = max(var.dispatcher_batch_size, var.events_per_request)
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.dispatcher_max_concurrency
  }
}
