//! For tests: a private local AWS API (moto server) on a free loopback port, stopped on drop.
//! `scripts/test.sh` installs moto into `.venv-moto`; `RELAY_MOTO_SERVER` may name another
//! `moto_server` executable.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Aws, AwsOptions};

#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    pub url: String,
}

fn executable() -> PathBuf {
    if let Ok(path) = std::env::var("RELAY_MOTO_SERVER") {
        return path.into();
    }
    // crates/relay-aws → the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-moto/bin/moto_server")
}

impl MotoServer {
    /// Starts one, and waits until it answers.
    ///
    /// # Panics
    /// When moto is not installed (run `scripts/test.sh`, which installs it), or does not
    /// start within 20 s.
    pub fn start() -> MotoServer {
        let exe = executable();
        assert!(
            exe.exists(),
            "{} not found: AWS tests need moto. Run scripts/test.sh (it installs moto into .venv-moto), or set RELAY_MOTO_SERVER",
            exe.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let server = MotoServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Options to reach it, with dummy credentials (moto takes any).
    pub fn options(&self, stack: &str) -> AwsOptions {
        AwsOptions {
            stack: stack.into(),
            region: Some("us-east-1".into()),
            endpoint_url: Some(self.url.clone()),
            local_credentials: true,
            ..AwsOptions::default()
        }
    }

    /// Clients for a stack on it, its resources created.
    pub async fn stack(&self, stack: &str) -> Aws {
        let aws = Aws::connect(&self.options(stack)).await.expect("clients");
        crate::create_resources(&aws)
            .await
            .expect("stack resources");
        aws
    }

    /// Stores a Secrets Manager secret, as an operator would before starting relay.
    pub async fn put_secret(&self, name: &str, value: &str) {
        let aws = Aws::connect(&self.options("secrets"))
            .await
            .expect("clients");
        aws_sdk_secretsmanager::Client::new(&aws.config)
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("the secret is stored");
    }

    /// The environment a child process (the built binary) needs to reach it.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("RELAY_ENDPOINT_URL", self.url.clone()),
        ]
    }

    /// A function's environment for stack `stack` on this server: [`MotoServer::env`], the
    /// SDK's endpoint, and `RELAY_STACK`.
    pub fn function_env(&self, stack: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.push(("AWS_ENDPOINT_URL".into(), self.url.clone()));
        env.push(("RELAY_STACK".into(), stack.into()));
        env
    }
}

/// Every line of every object in today's partition of the stack's S3 archive.
pub async fn archived(aws: &Aws) -> Vec<serde_json::Value> {
    use std::io::Read;
    let s3 = aws_sdk_s3::Client::new(&aws.config);
    let today = crate::archive::date_of(relay_core::now_millis());
    let listed = s3
        .list_objects_v2()
        .bucket(&aws.stack.archive_bucket)
        .prefix(format!("{}/date={today}/", crate::archive::PREFIX))
        .send()
        .await
        .expect("the archive bucket lists");
    let mut lines = Vec::new();
    for object in listed.contents() {
        let key = object.key().unwrap_or_default();
        assert!(key.ends_with(".jsonl.gz"), "{key}");
        let body = s3
            .get_object()
            .bucket(&aws.stack.archive_bucket)
            .key(key)
            .send()
            .await
            .expect("the object reads")
            .body
            .collect()
            .await
            .expect("the object's body")
            .into_bytes();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .expect("gzip");
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str(l).expect("JSON lines")),
        );
    }
    lines
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
