variable "repository" {
  description = "The GitHub repository the pipeline runs in, as OWNER/REPO. Only its jobs can assume the roles."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.repository))
    error_message = "repository is OWNER/REPO, without wildcards."
  }
}

variable "environments" {
  description = "GitHub environment => the stack it deploys (`dev` => `relay-dev`): a plan role and an apply role each."
  type        = map(string)
  default = {
    dev  = "relay-dev"
    prod = "relay-prod"
  }
}

variable "state_bucket" {
  description = "The Terraform state bucket (docs/deploy.md, step 1)."
  type        = string
}

variable "regions" {
  description = "Regions the apply roles may act in."
  type        = list(string)
  default     = ["eu-west-1"]
}

variable "tags" {
  type    = map(string)
  default = {}
}
