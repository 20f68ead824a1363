# Once per account, by an administrator (the only apply that is not the pipeline's): the
# pipeline's OIDC provider and roles (docs/deploy.md, step 2). Local state is fine here; keep
# the outputs, they go into the GitHub environments' secrets.

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      "managed-by" = "terraform"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "repository" {
  description = "OWNER/REPO of this repository."
  type        = string
}

variable "state_bucket" {
  type = string
}

module "deploy_roles" {
  source = "../../modules/deploy-roles"

  repository   = var.repository
  state_bucket = var.state_bucket
  regions      = [var.region]
}

output "role_arns" {
  value = module.deploy_roles.role_arns
}
