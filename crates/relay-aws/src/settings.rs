//! Where a stack is, as one typed set of settings: the AWS options every `relay` command shares
//! (`--stack`, `--region`, `--profile`, `--endpoint-url`, `--stack-outputs`) and the `RELAY_*`
//! variables every Lambda function reads (`RELAY_STACK`; in Lambda the runtime's own `AWS_*`
//! variables give the region and credentials).

use std::path::PathBuf;

use clap::Args;
use relay_core::settings;

use crate::AwsOptions;

#[derive(Debug, Clone, Args)]
pub struct AwsSettings {
    /// With --backend aws: the stack's name, the prefix of its table and queue names as
    /// Terraform creates them.
    #[arg(
        long,
        help_heading = "AWS",
        env = "RELAY_STACK",
        default_value = "relay"
    )]
    pub stack: String,
    /// AWS region (otherwise AWS_REGION or the profile's).
    #[arg(long, help_heading = "AWS", env = "RELAY_REGION")]
    pub region: Option<String>,
    /// AWS profile for credentials (otherwise AWS_PROFILE or the default chain).
    #[arg(long, help_heading = "AWS", env = "RELAY_PROFILE")]
    pub profile: Option<String>,
    /// A local AWS-compatible API instead of AWS, e.g. http://127.0.0.1:5000 (AWS_ENDPOINT_URL
    /// works too).
    #[arg(long, help_heading = "AWS", env = "RELAY_ENDPOINT_URL", value_parser = settings::http_url)]
    pub endpoint_url: Option<String>,
    /// Terraform's outputs (`terraform output -json > outputs.json`) naming the resources,
    /// instead of deriving the names from --stack.
    #[arg(long, help_heading = "AWS", env = "RELAY_STACK_OUTPUTS")]
    pub stack_outputs: Option<PathBuf>,
}

impl AwsSettings {
    pub fn options(&self) -> AwsOptions {
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
