# One stack of relay on AWS. Every name is derived from var.stack exactly as relay derives it
# from `--stack` (crates/relay-aws/src/config.rs, `Stack::named`), and outputs.tf gives what
# `relay --backend aws --stack-outputs` reads.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  region    = data.aws_region.current.name
  partition = data.aws_partition.current.partition

  names = {
    events_table   = "${var.stack}-events"
    control_table  = "${var.stack}-control"
    queue          = "${var.stack}-queue"
    dlq            = "${var.stack}-dlq"
    archive_bucket = "${var.stack}-archive"
  }

  functions = {
    authorizer = { timeout = 5, memory = 128 }
    receiver   = { timeout = 10, memory = 256 }
    forwarder  = { timeout = 30, memory = 256 }
    dispatcher = { timeout = var.dispatcher_timeout, memory = 512 }
  }

  tags = merge({ "relay:stack" = var.stack }, var.tags)
}

# One customer-managed key for the stack's data at rest: tables, queues, topic, logs, secrets,
# archive and the functions' environment.
resource "aws_kms_key" "relay" {
  description             = "relay ${var.stack}: data at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "relay" {
  name          = "alias/${var.stack}"
  target_key_id = aws_kms_key.relay.key_id
}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:the account root must administer its key (AWS's default key policy); IAM policies scope the rest
  # checkov:skip=CKV_AWS_111:same statement: a key policy's resource is the key itself
  # checkov:skip=CKV_AWS_356:same statement: "*" in a key policy means this key
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "ServicesEncrypt"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type = "Service"
      identifiers = [
        "logs.${local.region}.amazonaws.com",
        "cloudwatch.amazonaws.com",
        "sns.amazonaws.com",
        "sqs.amazonaws.com",
      ]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}
