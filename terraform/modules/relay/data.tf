# DynamoDB: events (META written once, STATE per delivery; the stream is the outbox) and control
# (the fleet's rate item, stream checkpoints).

resource "aws_dynamodb_table" "events" {
  name             = local.names.events_table
  billing_mode     = "PAY_PER_REQUEST"
  hash_key         = "pk"
  range_key        = "sk"
  stream_enabled   = true
  stream_view_type = "NEW_IMAGE"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.relay.arn
  }

  deletion_protection_enabled = true
  tags                        = local.tags
}

resource "aws_dynamodb_table" "control" {
  name         = local.names.control_table
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"

  attribute {
    name = "pk"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.relay.arn
  }

  deletion_protection_enabled = true
  tags                        = local.tags
}

# SQS: the work queue, and the DLQ. The dispatcher dead-letters itself (with the reason); the
# redrive policy is only a net for messages that crash dispatchers.

resource "aws_sqs_queue" "dlq" {
  name                              = local.names.dlq
  message_retention_seconds         = 14 * 24 * 3600
  kms_master_key_id                 = aws_kms_key.relay.arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = local.tags
}

resource "aws_sqs_queue" "work" {
  name                              = local.names.queue
  visibility_timeout_seconds        = 6 * var.dispatcher_timeout
  message_retention_seconds         = 4 * 24 * 3600
  receive_wait_time_seconds         = 20
  kms_master_key_id                 = aws_kms_key.relay.arn
  kms_data_key_reuse_period_seconds = 300
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = 5
  })
  tags = local.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.work.arn]
  })
}

# Where stream batches go that the forwarder could not queue after its retries.
resource "aws_sqs_queue" "stream_failures" {
  name                              = "${var.stack}-stream-failures"
  message_retention_seconds         = 14 * 24 * 3600
  kms_master_key_id                 = aws_kms_key.relay.arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = local.tags
}

# S3: delivered and dead-lettered events as gzip JSON lines, events/date=YYYY-MM-DD/.

resource "aws_s3_bucket" "archive" {
  # checkov:skip=CKV_AWS_144:cross-region replication is a per-organisation choice; the archive is a copy of data already kept in DynamoDB (PITR) for 37 days
  # checkov:skip=CKV2_AWS_62:nothing consumes archive writes as events; Athena reads the partitions
  # checkov:skip=CKV_AWS_18:server access logs need a second bucket per stack; CloudTrail data events cover audit where required
  bucket = local.names.archive_bucket
  tags   = local.tags
}

resource "aws_s3_bucket_versioning" "archive" {
  bucket = aws_s3_bucket.archive.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.relay.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "archive" {
  bucket                  = aws_s3_bucket.archive.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id

  rule {
    id     = "age-out"
    status = "Enabled"
    filter {
      prefix = "events/"
    }
    transition {
      days          = 30
      storage_class = "GLACIER_IR"
    }
    expiration {
      days = var.archive_expiry_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# Secrets: the target's credentials (headers) and the ingest API keys. Values are set out of
# band (docs/deploy.md), never in Terraform state.

resource "aws_secretsmanager_secret" "target_headers" {
  # checkov:skip=CKV2_AWS_57:the target's credential is issued by a third party; rotation is the runbook's two-step (docs/deploy.md), not a Lambda
  name       = "${var.stack}/target-headers"
  kms_key_id = aws_kms_key.relay.arn
  tags       = local.tags
}

resource "aws_secretsmanager_secret" "api_keys" {
  # checkov:skip=CKV2_AWS_57:source API keys rotate by the documented old,new overlap (docs/deploy.md), driven by the source's owner
  name       = "${var.stack}/api-keys"
  kms_key_id = aws_kms_key.relay.arn
  tags       = local.tags
}

# With var.require_signatures, the receiver also requires a Standard Webhooks signature under
# one of these secrets (`whsec_…`, comma-separated during a rotation). Set out of band, as the
# keys are; until it is set, the receiver cannot start, so nothing unsigned is ever taken.
resource "aws_secretsmanager_secret" "signing" {
  # checkov:skip=CKV2_AWS_57:signing secrets rotate by the documented old,new overlap (docs/deploy.md), driven by the source's owner
  count      = var.require_signatures ? 1 : 0
  name       = "${var.stack}/signing-secrets"
  kms_key_id = aws_kms_key.relay.arn
  tags       = local.tags
}

# With var.sign_target_requests, the dispatcher signs every request to the target under this
# secret (`whsec_…`), which the target's owner also holds. Set out of band; until it is set, the
# dispatcher cannot start, so nothing unsigned is ever sent.
resource "aws_secretsmanager_secret" "target_signing" {
  # checkov:skip=CKV2_AWS_57:the target's owner verifies with the same secret; rotation is agreed with them (docs/deploy.md), not a Lambda
  count      = var.sign_target_requests ? 1 : 0
  name       = "${var.stack}/target-signing-secret"
  kms_key_id = aws_kms_key.relay.arn
  tags       = local.tags
}

# With var.target_oauth_token_url, the dispatcher gets its OAuth2 tokens with the client secret in
# this secret. Set out of band; until it is set, the dispatcher cannot start.
resource "aws_secretsmanager_secret" "target_oauth" {
  # checkov:skip=CKV2_AWS_57:the client secret is issued by the target's authorization server; it is rotated there (docs/deploy.md)
  count      = var.target_oauth_token_url != "" ? 1 : 0
  name       = "${var.stack}/target-oauth-client-secret"
  kms_key_id = aws_kms_key.relay.arn
  tags       = local.tags
}

# With var.target_mtls, the dispatcher's client certificate for the target: its PEM chain and
# private key in one value. Set out of band.
resource "aws_secretsmanager_secret" "target_client_certificate" {
  # checkov:skip=CKV2_AWS_57:the certificate is issued by the target's CA; it is renewed there (docs/deploy.md)
  count      = var.target_mtls ? 1 : 0
  name       = "${var.stack}/target-client-certificate"
  kms_key_id = aws_kms_key.relay.arn
  tags       = local.tags
}

# With var.target_private_ca, the CAs (PEM) the target's certificate is signed by. Not secret,
# but kept beside the credentials it goes with. Set out of band.
resource "aws_secretsmanager_secret" "target_ca" {
  # checkov:skip=CKV2_AWS_57:a CA certificate is public; it changes when the target's CA does, not on a schedule
  count      = var.target_private_ca ? 1 : 0
  name       = "${var.stack}/target-ca"
  kms_key_id = aws_kms_key.relay.arn
  tags       = local.tags
}
