# A WAF web ACL in front of the stage (var.waf_enabled; on in prod): AWS's known-bad-inputs
# rules, then two rate limits over 5 minutes, one per source IP and one per API key (the
# per-key throttle; the usage plan's throttle is the stage's whole). A blocked request gets 429
# with the contract's error shape. WAF's logs never hold the API key.

resource "aws_wafv2_web_acl" "ingest" {
  count = var.waf_enabled ? 1 : 0
  name  = "${var.stack}-ingest"
  scope = "REGIONAL"

  default_action {
    allow {}
  }

  custom_response_body {
    key          = "rate_limited"
    content_type = "APPLICATION_JSON"
    content      = jsonencode({ error = "rate_limited", message = "too many requests from this address or key; slow down" })
  }

  rule {
    name     = "known-bad-inputs"
    priority = 0
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.stack}-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "per-source-ip"
    priority = 1
    action {
      block {
        custom_response {
          response_code            = 429
          custom_response_body_key = "rate_limited"
        }
      }
    }
    statement {
      rate_based_statement {
        limit                 = var.waf_requests_per_ip
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.stack}-per-source-ip"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "per-api-key"
    priority = 2
    action {
      block {
        custom_response {
          response_code            = 429
          custom_response_body_key = "rate_limited"
        }
      }
    }
    statement {
      rate_based_statement {
        limit                 = var.waf_requests_per_key
        evaluation_window_sec = 300
        aggregate_key_type    = "CUSTOM_KEYS"
        custom_key {
          header {
            name = "x-api-key"
            text_transformation {
              priority = 0
              type     = "NONE"
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.stack}-per-api-key"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.stack}-ingest"
    sampled_requests_enabled   = true
  }

  tags = local.tags
}

resource "aws_wafv2_web_acl_association" "stage" {
  count        = var.waf_enabled ? 1 : 0
  resource_arn = aws_api_gateway_stage.live.arn
  web_acl_arn  = aws_wafv2_web_acl.ingest[0].arn
}

resource "aws_cloudwatch_log_group" "waf" {
  # checkov:skip=CKV_AWS_338:retention is var.log_retention_days per environment
  count             = var.waf_enabled ? 1 : 0
  name              = "aws-waf-logs-${var.stack}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.relay.arn
  tags              = local.tags
}

resource "aws_wafv2_web_acl_logging_configuration" "ingest" {
  count                   = var.waf_enabled ? 1 : 0
  resource_arn            = aws_wafv2_web_acl.ingest[0].arn
  log_destination_configs = [aws_cloudwatch_log_group.waf[0].arn]

  redacted_fields {
    single_header {
      name = "x-api-key"
    }
  }
}
