# What each role may do. The plan role reads the stack's configuration and the state, never
# data (no events, no secret values, no archive objects) and writes nothing: a plan runs with
# `-lock=false`. The apply role changes what the relay module creates, under the stack's name
# prefix where the service allows it.

locals {
  arn = "arn:${local.partition}"
  # What the relay module names after its stack, per environment.
  stack_resources = { for env, stack in var.environments : env => [
    "${local.arn}:dynamodb:*:${local.account}:table/${stack}-*",
    "${local.arn}:lambda:*:${local.account}:function:${stack}-*",
    "${local.arn}:logs:*:${local.account}:log-group:/aws/lambda/${stack}-*",
    "${local.arn}:logs:*:${local.account}:log-group:/aws/apigateway/${stack}-*",
    "${local.arn}:logs:*:${local.account}:log-group:aws-waf-logs-${stack}*",
    "${local.arn}:s3:::${stack}-*",
    "${local.arn}:secretsmanager:*:${local.account}:secret:${stack}/*",
    "${local.arn}:sns:*:${local.account}:${stack}-*",
    "${local.arn}:sqs:*:${local.account}:${stack}-*",
    "${local.arn}:iam::${local.account}:role/${stack}-*",
    "${local.arn}:cloudwatch:*:${local.account}:alarm:${stack}-*",
    "${local.arn}:cloudwatch::${local.account}:dashboard/${stack}",
  ] }
}

data "aws_iam_policy_document" "plan" {
  for_each = var.environments

  statement {
    sid       = "ReadState"
    actions   = ["s3:GetObject"]
    resources = ["${local.arn}:s3:::${var.state_bucket}/relay/${each.key}/*"]
  }

  statement {
    sid       = "ListState"
    actions   = ["s3:ListBucket"]
    resources = ["${local.arn}:s3:::${var.state_bucket}"]
  }

  statement {
    # Configuration only: Describe/Get/List of what the module creates (terraform refresh).
    # None of these returns an event, a secret's value or an archived object.
    sid = "ReadConfiguration"
    actions = [
      "cloudwatch:DescribeAlarms", "cloudwatch:GetDashboard", "cloudwatch:ListTagsForResource",
      "dynamodb:DescribeContinuousBackups", "dynamodb:DescribeTable", "dynamodb:DescribeTimeToLive", "dynamodb:ListTagsOfResource",
      "iam:GetRole", "iam:GetRolePolicy", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies",
      "lambda:GetAlias", "lambda:GetFunction", "lambda:GetFunctionCodeSigningConfig", "lambda:GetPolicy", "lambda:ListVersionsByFunction",
      "logs:DescribeLogGroups", "logs:ListTagsForResource",
      "s3:GetBucketOwnershipControls", "s3:GetBucketPolicy", "s3:GetBucketPublicAccessBlock", "s3:GetBucketTagging", "s3:GetBucketVersioning", "s3:GetEncryptionConfiguration", "s3:GetLifecycleConfiguration",
      "secretsmanager:DescribeSecret", "secretsmanager:GetResourcePolicy",
      "sns:GetSubscriptionAttributes", "sns:GetTopicAttributes", "sns:ListTagsForResource",
      "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListQueueTags",
    ]
    resources = local.stack_resources[each.key]
  }

  statement {
    # Read calls of services whose resources have ids, not the stack's names (API Gateway, KMS
    # keys, WAF ACLs, X-Ray rules): refresh reads them by id. None returns data.
    sid = "ReadConfigurationById"
    actions = [
      "apigateway:GET",
      "kms:DescribeKey", "kms:GetKeyPolicy", "kms:GetKeyRotationStatus", "kms:ListAliases", "kms:ListResourceTags",
      "lambda:GetEventSourceMapping",
      "wafv2:GetLoggingConfiguration", "wafv2:GetWebACL", "wafv2:GetWebACLForResource", "wafv2:ListTagsForResource",
      "xray:GetSamplingRules",
    ]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = var.regions
    }
  }
}

data "aws_iam_policy_document" "apply" {
  for_each = var.environments

  statement {
    sid       = "State"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.arn}:s3:::${var.state_bucket}/relay/${each.key}/*"]
  }

  statement {
    sid       = "ListState"
    actions   = ["s3:ListBucket"]
    resources = ["${local.arn}:s3:::${var.state_bucket}"]
  }

  statement {
    # The stack's own resources, by name prefix.
    sid = "StackResources"
    actions = [
      "dynamodb:CreateTable", "dynamodb:DeleteTable", "dynamodb:Describe*", "dynamodb:List*", "dynamodb:TagResource", "dynamodb:UntagResource", "dynamodb:Update*",
      "lambda:AddPermission", "lambda:CreateAlias", "lambda:CreateFunction", "lambda:DeleteAlias", "lambda:DeleteFunction", "lambda:DeleteFunctionConcurrency", "lambda:Get*", "lambda:List*", "lambda:PublishVersion", "lambda:PutFunctionConcurrency", "lambda:RemovePermission", "lambda:TagResource", "lambda:UntagResource", "lambda:UpdateAlias", "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
      "logs:CreateLogGroup", "logs:DeleteLogGroup", "logs:Describe*", "logs:ListTagsForResource", "logs:PutRetentionPolicy", "logs:TagResource", "logs:UntagResource", "logs:AssociateKmsKey",
      "s3:CreateBucket", "s3:DeleteBucket", "s3:DeleteBucketPolicy", "s3:GetAccelerateConfiguration", "s3:GetBucket*", "s3:GetEncryptionConfiguration", "s3:GetLifecycleConfiguration", "s3:GetReplicationConfiguration", "s3:ListBucket", "s3:PutBucket*", "s3:PutEncryptionConfiguration", "s3:PutLifecycleConfiguration",
      "secretsmanager:CreateSecret", "secretsmanager:DeleteSecret", "secretsmanager:DescribeSecret", "secretsmanager:GetResourcePolicy", "secretsmanager:TagResource", "secretsmanager:UntagResource", "secretsmanager:UpdateSecret",
      "sns:CreateTopic", "sns:DeleteTopic", "sns:Get*", "sns:List*", "sns:SetTopicAttributes", "sns:Subscribe", "sns:TagResource", "sns:Unsubscribe", "sns:UntagResource",
      "sqs:CreateQueue", "sqs:DeleteQueue", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListQueueTags", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:UntagQueue",
      "iam:CreateRole", "iam:DeleteRole", "iam:DeleteRolePolicy", "iam:GetRole", "iam:GetRolePolicy", "iam:List*", "iam:PutRolePolicy", "iam:TagRole", "iam:UntagRole", "iam:UpdateAssumeRolePolicy", "iam:AttachRolePolicy", "iam:DetachRolePolicy",
      "cloudwatch:DeleteAlarms", "cloudwatch:DeleteDashboards", "cloudwatch:Describe*", "cloudwatch:GetDashboard", "cloudwatch:List*", "cloudwatch:PutDashboard", "cloudwatch:PutMetricAlarm", "cloudwatch:TagResource", "cloudwatch:UntagResource",
    ]
    resources = local.stack_resources[each.key]
  }

  statement {
    # The functions' roles may be handed to Lambda and API Gateway only.
    sid       = "PassStackRoles"
    actions   = ["iam:PassRole"]
    resources = ["${local.arn}:iam::${local.account}:role/${each.value}-*"]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["lambda.amazonaws.com", "apigateway.amazonaws.com"]
    }
  }

  statement {
    # Services without name-scoped ARNs for these calls (API Gateway ids, KMS keys, event source
    # mappings, WAF ACL ids, X-Ray rules, the account's API Gateway logging role, log delivery).
    # Held to this account; a separate account per environment is the boundary beyond it.
    sid = "UnscopedByTheirService"
    actions = [
      "apigateway:DELETE", "apigateway:GET", "apigateway:PATCH", "apigateway:POST", "apigateway:PUT", "apigateway:UpdateRestApiPolicy",
      "kms:CreateAlias", "kms:CreateKey", "kms:DeleteAlias", "kms:DescribeKey", "kms:EnableKeyRotation", "kms:GetKeyPolicy", "kms:GetKeyRotationStatus", "kms:ListAliases", "kms:ListResourceTags", "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:TagResource", "kms:UntagResource", "kms:CreateGrant", "kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey",
      "lambda:CreateEventSourceMapping", "lambda:DeleteEventSourceMapping", "lambda:GetEventSourceMapping", "lambda:UpdateEventSourceMapping",
      "wafv2:AssociateWebACL", "wafv2:CreateWebACL", "wafv2:DeleteLoggingConfiguration", "wafv2:DeleteWebACL", "wafv2:DisassociateWebACL", "wafv2:GetLoggingConfiguration", "wafv2:GetWebACL", "wafv2:GetWebACLForResource", "wafv2:ListTagsForResource", "wafv2:PutLoggingConfiguration", "wafv2:TagResource", "wafv2:UntagResource", "wafv2:UpdateWebACL",
      "xray:CreateSamplingRule", "xray:DeleteSamplingRule", "xray:GetSamplingRules", "xray:TagResource", "xray:UntagResource", "xray:UpdateSamplingRule",
      "logs:CreateLogDelivery", "logs:DeleteLogDelivery", "logs:GetLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
      "dynamodb:DescribeStream", "dynamodb:ListStreams",
    ]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = var.regions
    }
  }
}
