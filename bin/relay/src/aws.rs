//! The AWS options every command shares (`--stack`, `--region`, `--profile`, `--endpoint-url`,
//! `--stack-outputs`), one flattened group.

use std::path::PathBuf;

use clap::Args;
use relay_aws::AwsOptions;

use crate::args;

#[derive(Debug, Clone, Args)]
pub(crate) struct AwsArgs {
    /// With --backend aws: the stack's name, the prefix of its table and queue names as
    /// Terraform creates them.
    #[arg(long, env = "RELAY_STACK", default_value = "relay")]
    pub(crate) stack: String,
    /// AWS region (otherwise AWS_REGION or the profile's).
    #[arg(long, env = "RELAY_REGION")]
    pub(crate) region: Option<String>,
    /// AWS profile for credentials (otherwise AWS_PROFILE or the default chain).
    #[arg(long, env = "RELAY_PROFILE")]
    pub(crate) profile: Option<String>,
    /// A local AWS-compatible API instead of AWS, e.g. http://127.0.0.1:5000 (AWS_ENDPOINT_URL
    /// works too).
    #[arg(long, env = "RELAY_ENDPOINT_URL", value_parser = args::http_url)]
    pub(crate) endpoint_url: Option<String>,
    /// Terraform's outputs (`terraform output -json > outputs.json`) naming the resources,
    /// instead of deriving the names from --stack.
    #[arg(long, env = "RELAY_STACK_OUTPUTS")]
    pub(crate) stack_outputs: Option<PathBuf>,
}

impl AwsArgs {
    pub(crate) fn options(&self) -> AwsOptions {
        AwsOptions {
            stack: self.stack.clone(),
            region: self.region.clone(),
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
            stack_outputs: self.stack_outputs.clone(),
            ..AwsOptions::default()
        }
    }
}
