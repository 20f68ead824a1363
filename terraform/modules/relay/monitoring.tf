# Alarms to one SNS topic (docs/runbook.md says what each means and what to run), and a
# dashboard of the EMF metrics the functions write (namespace Relay, dimension Function).

resource "aws_sns_topic" "alarms" {
  name              = "${var.stack}-alarms"
  kms_master_key_id = aws_kms_key.relay.arn
  tags              = local.tags
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  alarm_actions = [aws_sns_topic.alarms.arn]

  # name => metric, namespace, statistic, threshold, dimensions, description
  alarms = merge(
    {
      dlq-not-empty = {
        metric      = "ApproximateNumberOfMessagesVisible"
        namespace   = "AWS/SQS"
        statistic   = "Maximum"
        threshold   = 0
        dimensions  = { QueueName = aws_sqs_queue.dlq.name }
        description = "Events were dead-lettered: relay dlq list, then relay dlq redrive (runbook: DLQ not empty)."
      }
      queue-age = {
        metric      = "ApproximateAgeOfOldestMessage"
        namespace   = "AWS/SQS"
        statistic   = "Maximum"
        threshold   = var.queue_age_alarm_seconds
        dimensions  = { QueueName = aws_sqs_queue.work.name }
        description = "Events wait longer than expected: the target is slow, down or limiting (runbook: queue age)."
      }
      stream-iterator-age = {
        metric      = "IteratorAge"
        namespace   = "AWS/Lambda"
        statistic   = "Maximum"
        threshold   = 60000
        dimensions  = { FunctionName = aws_lambda_function.relay["forwarder"].function_name }
        description = "Stored events are not being queued: the forwarder fails or lags (runbook: stream iterator age)."
      }
      stream-failures = {
        metric      = "ApproximateNumberOfMessagesVisible"
        namespace   = "AWS/SQS"
        statistic   = "Maximum"
        threshold   = 0
        dimensions  = { QueueName = aws_sqs_queue.stream_failures.name }
        description = "The stream dropped records the forwarder never queued (runbook: stream failures)."
      }
      api-5xx = {
        metric      = "5XXError"
        namespace   = "AWS/ApiGateway"
        statistic   = "Sum"
        threshold   = 0
        dimensions  = { ApiName = aws_api_gateway_rest_api.ingest.name, Stage = aws_api_gateway_stage.live.stage_name }
        description = "Sources got 5xx answers: the store was slow or unreachable (runbook: errors)."
      }
    },
    # The authorizer answers a wrong key with the `Unauthorized` error, which Lambda counts as
    # a failed invocation: its Errors are refused sources, not failures (its throttles alarm).
    { for f in keys(local.functions) : "${f}-errors" => {
      metric      = "Errors"
      namespace   = "AWS/Lambda"
      statistic   = "Sum"
      threshold   = 0
      dimensions  = { FunctionName = aws_lambda_function.relay[f].function_name }
      description = "The ${f} function failed invocations (runbook: errors)."
    } if f != "authorizer" },
    { for f in keys(local.functions) : "${f}-throttles" => {
      metric      = "Throttles"
      namespace   = "AWS/Lambda"
      statistic   = "Sum"
      threshold   = 0
      dimensions  = { FunctionName = aws_lambda_function.relay[f].function_name }
      description = "The ${f} function was throttled (runbook: throttles)."
    } },
  )
}

resource "aws_cloudwatch_metric_alarm" "relay" {
  for_each            = local.alarms
  alarm_name          = "${var.stack}-${each.key}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  statistic           = each.value.statistic
  dimensions          = each.value.dimensions
  period              = 60
  evaluation_periods  = 1
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_dashboard" "relay" {
  dashboard_name = var.stack
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title  = "Events"
          region = local.region
          stat   = "Sum"
          period = 60
          metrics = [
            ["Relay", "Accepted", "Function", "receiver"],
            ["Relay", "Delivered", "Function", "dispatcher"],
            ["Relay", "Retried", "Function", "dispatcher"],
            ["Relay", "RateLimited", "Function", "dispatcher"],
            ["Relay", "DeadLettered", "Function", "dispatcher"],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title  = "Latency (ms, p99)"
          region = local.region
          stat   = "p99"
          period = 60
          metrics = [
            ["Relay", "AckLatency", "Function", "receiver"],
            ["Relay", "DeliveryLatency", "Function", "dispatcher"],
            ["Relay", "QueueAge", "Function", "dispatcher"],
          ]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title  = "Queues"
          region = local.region
          stat   = "Maximum"
          period = 60
          metrics = [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.work.name],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", aws_sqs_queue.work.name],
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.dlq.name],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title  = "Functions"
          region = local.region
          stat   = "Sum"
          period = 60
          metrics = concat(
            [for f in keys(local.functions) : ["AWS/Lambda", "Errors", "FunctionName", aws_lambda_function.relay[f].function_name]],
            [for f in keys(local.functions) : ["AWS/Lambda", "Throttles", "FunctionName", aws_lambda_function.relay[f].function_name]],
            [["AWS/ApiGateway", "5XXError", "ApiName", aws_api_gateway_rest_api.ingest.name, "Stage", "live"]],
          )
        }
      },
    ]
  })
}
