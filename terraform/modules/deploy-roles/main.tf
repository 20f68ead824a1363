# The pipeline's AWS access, once per account: GitHub's OIDC provider and, per environment, a
# plan role that can read but not write and an apply role that can change only that
# environment's stack. Each role trusts exactly one GitHub environment of one repository
# (`repo:OWNER/REPO:environment:NAME`), so no branch, pull request or fork can assume it: a
# job gets the subject only by naming the environment, whose protection rules (required
# reviewers on prod) GitHub enforces first. No access keys exist.

terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  issuer    = "token.actions.githubusercontent.com"
  # One plan role and one apply role per environment; the plan job runs in `<env>-plan`.
  roles = merge(
    { for env, stack in var.environments : "${env}-plan" => { env = env, stack = stack, subject = "${env}-plan", writes = false } },
    { for env, stack in var.environments : "${env}-deploy" => { env = env, stack = stack, subject = env, writes = true } },
  )
}

resource "aws_iam_openid_connect_provider" "github" {
  url            = "https://${local.issuer}"
  client_id_list = ["sts.amazonaws.com"]
  tags           = var.tags
}

data "aws_iam_policy_document" "trust" {
  for_each = local.roles

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.github.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
    # Exactly this repository's job in this GitHub environment: StringEquals, never a pattern.
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:sub"
      values   = ["repo:${var.repository}:environment:${each.value.subject}"]
    }
  }
}

resource "aws_iam_role" "pipeline" {
  for_each             = local.roles
  name                 = "relay-${each.key}"
  description          = each.value.writes ? "terraform apply of ${each.value.stack}, from the ${each.value.env} GitHub environment" : "terraform plan of ${each.value.stack} (read only), from the ${each.value.subject} GitHub environment"
  assume_role_policy   = data.aws_iam_policy_document.trust[each.key].json
  max_session_duration = 3600
  tags                 = var.tags
}

resource "aws_iam_role_policy" "pipeline" {
  for_each = local.roles
  name     = "relay-${each.key}"
  role     = aws_iam_role.pipeline[each.key].id
  policy   = each.value.writes ? data.aws_iam_policy_document.apply[each.value.env].json : data.aws_iam_policy_document.plan[each.value.env].json
}
