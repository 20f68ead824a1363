# Each ARN goes into its GitHub environment's secret: `<env>-plan` gets AWS_PLAN_ROLE_ARN,
# `<env>` gets AWS_DEPLOY_ROLE_ARN.
output "role_arns" {
  value = { for name, role in aws_iam_role.pipeline : name => role.arn }
}
