# The first five are what `relay … --backend aws --stack-outputs FILE` reads
# (`terraform output -json > FILE`); the names match `--stack` derivation.

output "events_table" {
  value = aws_dynamodb_table.events.name
}

output "control_table" {
  value = aws_dynamodb_table.control.name
}

output "queue_name" {
  value = aws_sqs_queue.work.name
}

output "dlq_name" {
  value = aws_sqs_queue.dlq.name
}

output "archive_bucket" {
  value = aws_s3_bucket.archive.bucket
}

output "api_url" {
  description = "POST events to <api_url>/events."
  value       = aws_api_gateway_stage.live.invoke_url
}

output "queue_url" {
  value = aws_sqs_queue.work.url
}

output "dlq_url" {
  value = aws_sqs_queue.dlq.url
}

output "functions" {
  value = { for k, f in aws_lambda_function.relay : k => f.function_name }
}

output "function_versions" {
  description = "The version each `live` alias points at: what a rollback returns to."
  value       = { for k, a in aws_lambda_alias.live : k => a.function_version }
}

output "alarm_topic_arn" {
  value = aws_sns_topic.alarms.arn
}

output "api_keys_secret" {
  value = aws_secretsmanager_secret.api_keys.name
}

output "target_headers_secret" {
  value = aws_secretsmanager_secret.target_headers.name
}

output "dashboard" {
  value = aws_cloudwatch_dashboard.relay.dashboard_name
}
