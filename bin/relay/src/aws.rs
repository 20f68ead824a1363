//! The AWS options every command shares, one flattened group (`relay_aws::AwsSettings`, which
//! the Lambda functions read from their environment too).

pub(crate) use relay_aws::AwsSettings as AwsArgs;
