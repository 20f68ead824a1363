# relay, dev. State in S3 with S3-native locking (use_lockfile); the bucket is created once per
# account (docs/deploy.md, "Bootstrap"). deploy.yml passes -backend-config for the bucket name.

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }

  backend "s3" {
    key          = "relay/dev/terraform.tfstate"
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      "relay:environment" = "dev"
      "managed-by"        = "terraform"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "stack" {
  description = "Resource name prefix; relay commands take it as --stack."
  type        = string
  default     = "relay-dev"
}

variable "lambda_artifacts" {
  description = "Where CI put the Lambda zips (the build job's artifact)."
  type        = string
}

variable "target_url" {
  type      = string
  sensitive = true
}

variable "alarm_email" {
  type    = string
  default = ""
}

module "relay" {
  source = "../../modules/relay"

  stack            = var.stack
  lambda_artifacts = var.lambda_artifacts
  target_url       = var.target_url
  target_rate      = 0
  # Events per GraphQL request; raise it (up to 500) for a target whose limit counts requests.
  events_per_request         = 1
  dispatcher_max_concurrency = 2
  log_retention_days         = 30
  alarm_email                = ""
}

# Everything the module gives, under the same names: `terraform output -json > outputs.json`
# is what `relay --backend aws --stack-outputs outputs.json` reads.
output "events_table" {
  value = module.relay.events_table
}

output "control_table" {
  value = module.relay.control_table
}

output "queue_name" {
  value = module.relay.queue_name
}

output "dlq_name" {
  value = module.relay.dlq_name
}

output "archive_bucket" {
  value = module.relay.archive_bucket
}

output "api_url" {
  value = module.relay.api_url
}

output "queue_url" {
  value = module.relay.queue_url
}

output "dlq_url" {
  value = module.relay.dlq_url
}

output "functions" {
  value = module.relay.functions
}

output "function_versions" {
  value = module.relay.function_versions
}

output "alarm_topic_arn" {
  value = module.relay.alarm_topic_arn
}

output "api_keys_secret" {
  value = module.relay.api_keys_secret
}

output "target_headers_secret" {
  value = module.relay.target_headers_secret
}
