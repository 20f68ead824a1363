//! A whole relay setup run from inside the binary, for `relay demo` and `relay e2e`: the mock
//! target in-process, `relay up` as a child process of this same binary (so it can be killed
//! and restarted like the real thing), and the mock source in-process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use target_sim::TargetHandle;

use crate::aws::AwsArgs;
use crate::import::SendError;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `relay up` child process. Its log goes to a file next to the data directory.
#[derive(Debug)]
pub(crate) struct RelayProcess {
    child: Option<Child>,
    pub(crate) url: String,
    /// The web console's URL, with `--console`.
    pub(crate) console_url: Option<String>,
    pub(crate) api_key: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub(crate) log: PathBuf,
}

impl RelayProcess {
    pub(crate) async fn start(
        data_dir: &Path,
        target_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(data_dir, target_url, extra, Vec::new()).await
    }

    /// [`start`](Self::start) with extra environment variables (AWS credentials).
    pub(crate) async fn start_with(
        data_dir: &Path,
        target_url: &str,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let api_key = format!("harness-{:016x}", fastrand::u64(..));
        let mut args: Vec<String> = [
            "up",
            "--listen",
            "127.0.0.1:0",
            "--target-url",
            target_url,
            "--api-key",
            &api_key,
        ]
        .map(String::from)
        .into();
        args.push("--data-dir".into());
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = data_dir.with_extension("log");
        let mut relay = RelayProcess {
            child: None,
            url: String::new(),
            console_url: None,
            api_key,
            args,
            env,
            log,
        };
        relay.spawn().await?;
        Ok(relay)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let exe =
            std::env::current_exe().context("cannot find the relay binary to start `relay up`")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot write {}", self.log.display()))?;
        let mut child = Command::new(exe)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RELAY_LOG_FORMAT", "pretty")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `relay up`")?;
        let stdout = child.stdout.take().context("no stdout from `relay up`")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(15), stdout.read_line(&mut line)).await;
        if self.args.iter().any(|a| a == "--console") {
            let mut second = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(15), stdout.read_line(&mut second)).await;
            self.console_url = second
                .trim()
                .strip_prefix("relay console on ")
                .map(str::to_owned);
        }
        match (read, line.trim().strip_prefix("relay listening on ")) {
            (Ok(Ok(_)), Some(url)) => {
                self.url = url.to_owned();
                // A restart listens where the first start did, as a real restart would.
                if let Some(addr) = url.strip_prefix("http://")
                    && let Some(listen) = self.args.iter().position(|a| a == "--listen")
                {
                    self.args[listen + 1] = addr.to_owned();
                }
            }
            _ => bail!(
                "`relay up` did not start; its log ({}):\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn events_url(&self) -> String {
        format!("{}/events", self.url)
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same data directory (after [`kill`](Self::kill)).
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// SIGTERM and wait: a clean stop.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("`relay up` did not stop within 30 s of SIGTERM")??;
        if !status.success() {
            bail!("`relay up` exited with {status} on SIGTERM");
        }
        Ok(())
    }
}

/// What the target holds, compared with what the source was told was accepted.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Verdict {
    pub(crate) acked: usize,
    /// Acknowledged events the target holds.
    pub(crate) delivered: usize,
    /// Acknowledged but never reached the target.
    pub(crate) lost: Vec<String>,
    /// Reached the target more than once.
    pub(crate) duplicated: Vec<String>,
    /// Reached the target without the right `brand`.
    pub(crate) unenriched: Vec<String>,
    /// Reached the target with other fields changed.
    pub(crate) altered: Vec<String>,
}

impl Verdict {
    pub(crate) fn of(sent: &[Value], target: &TargetHandle, brand: &str) -> Verdict {
        let received = target.events();
        let mut v = Verdict {
            acked: sent.len(),
            ..Verdict::default()
        };
        for event in sent {
            let id = event["id"].as_str().unwrap_or_default().to_owned();
            let Some(got) = received.get(&id) else {
                v.lost.push(id);
                continue;
            };
            v.delivered += 1;
            if got.deliveries > 1 {
                v.duplicated.push(id.clone());
            }
            let mut input = got.input.clone();
            match input.remove("brand") {
                Some(Value::String(b)) if b == brand => {}
                _ => v.unenriched.push(id.clone()),
            }
            if Value::Object(input) != *event {
                v.altered.push(id);
            }
        }
        v
    }

    /// Every acknowledged event is at the target, enriched and unchanged, and at most
    /// `allowed_duplicates` arrived twice.
    pub(crate) fn passed(&self, allowed_duplicates: usize) -> bool {
        self.lost.is_empty()
            && self.unenriched.is_empty()
            && self.altered.is_empty()
            && self.duplicated.len() <= allowed_duplicates
    }
}

/// Waits until the target holds every id in `sent`, or the relay has nothing left to send (then
/// whatever is missing is lost), or `timeout` passes.
pub(crate) async fn drained(
    sent: &[Value],
    target: &TargetHandle,
    data_dir: &Path,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let ops = relay_store::Reader::open(data_dir).ok();
    let mut idle_polls = 0;
    loop {
        let received: HashMap<_, _> = target.events();
        if sent
            .iter()
            .all(|e| e["id"].as_str().is_some_and(|id| received.contains_key(id)))
        {
            return true;
        }
        if let Some(ops) = &ops
            && let Ok(s) = relay_core::ops::Operations::status(ops).await
        {
            // Two polls in a row with nothing waiting or in flight: the relay is done.
            idle_polls = if s.queued + s.in_flight == 0 {
                idle_polls + 1
            } else {
                0
            };
            if idle_polls >= 2 {
                return false;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts `events` in one `POST /events/batch`, as `relay import` does: a request answered
/// 429 or 5xx, or not at all, is sent again (a few times, backing off). Returns the events it
/// stored: answered `accepted`, or `duplicate` when the request was sent more than once.
pub(crate) async fn post_batch(
    relay: &RelayProcess,
    events: &[Value],
) -> anyhow::Result<Vec<Value>> {
    let client = &reqwest::Client::new();
    let tries = &std::cell::Cell::new(0u32);
    let url = &format!("{}/batch", relay.events_url());
    let backoff = relay_core::backoff::Backoff {
        base: Duration::from_millis(400),
        cap: Duration::from_secs(7),
    };
    let answer: Value = relay_core::backoff::retry(
        backoff,
        6,
        |e: &SendError| matches!(e, SendError::Later(_)),
        |_, _, _| {},
        move || async move {
            tries.set(tries.get() + 1);
            let sent = client
                .post(url)
                .header("x-api-key", &relay.api_key)
                .json(events)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().as_u16() == 200 => response
                    .json()
                    .await
                    .map_err(|e| SendError::Fatal(anyhow::anyhow!("the answer is not JSON: {e}"))),
                Ok(response)
                    if response.status().as_u16() == 429 || response.status().is_server_error() =>
                {
                    Err(SendError::Later(format!("answered {}", response.status())))
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    Err(SendError::Fatal(anyhow::anyhow!(
                        "the batch was answered {status}: {text}"
                    )))
                }
                Err(e) => Err(SendError::Later(format!("not answered: {e}"))),
            }
        },
    )
    .await
    .map_err(|e| match e {
        SendError::Later(why) => anyhow::anyhow!("the batch was {why}, {} times", tries.get()),
        SendError::Fatal(e) => e,
    })?;
    let tries = tries.get();
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(
        results.len() == events.len(),
        "{} results for {} events",
        results.len(),
        events.len()
    );
    Ok(events
        .iter()
        .zip(results)
        .filter(|(_, r)| r["status"] == "accepted" || (tries > 1 && r["status"] == "duplicate"))
        .map(|(e, _)| e.clone())
        .collect())
}

/// Posts events directly (not open-loop), for scenarios that need particular payloads;
/// returns the ones answered 202.
pub(crate) async fn post(relay: &RelayProcess, events: &[Value]) -> anyhow::Result<Vec<Value>> {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for e in events {
        let response = client
            .post(relay.events_url())
            .header("x-api-key", &relay.api_key)
            .json(e)
            .send()
            .await?;
        if response.status().as_u16() == 202 {
            accepted.push(e.clone());
        }
    }
    Ok(accepted)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// `relay up` on the embedded store.
    Local,
    /// `relay up --backend aws` on a local AWS API (--endpoint-url): each scenario creates a
    /// stack of its own.
    Aws,
}

/// How `relay up` is started on a backend, for `relay e2e`'s scenarios and `relay soak`: its
/// arguments and environment, and the operator's port over what it writes.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) backend: Backend,
    pub(crate) aws: AwsArgs,
    /// Tells this run's stacks from earlier runs' on the same local AWS API.
    pub(crate) run: String,
    /// Where `relay up` reaches AWS, when not the endpoint itself: the fault proxy.
    pub(crate) relay_endpoint: Option<String>,
}

impl Setup {
    /// A run's setup: with `aws_faults`, `relay up` reaches the AWS API through the fault
    /// proxy, which is returned to be kept alive (and asked for its figures) meanwhile.
    pub(crate) async fn new(
        backend: Backend,
        aws: &AwsArgs,
        aws_faults: Option<f64>,
    ) -> anyhow::Result<(Setup, Option<aws_faults::Proxy>)> {
        let proxy = match (aws_faults, &aws.endpoint_url) {
            (Some(rate), Some(upstream)) if rate > 0.0 && backend == Backend::Aws => Some(
                aws_faults::Proxy::start(upstream, aws_faults::Config::new(rate))
                    .await
                    .context("cannot start the AWS fault proxy")?,
            ),
            _ => None,
        };
        let setup = Setup {
            backend,
            aws: aws.clone(),
            run: format!("{:06x}", fastrand::u32(..0x100_0000)),
            relay_endpoint: proxy.as_ref().map(aws_faults::Proxy::url),
        };
        Ok((setup, proxy))
    }

    /// `relay up`'s arguments for this backend, and its environment.
    pub(crate) fn relay(&self, label: &str) -> (Vec<String>, Vec<(String, String)>) {
        if self.backend == Backend::Local {
            return (Vec::new(), Vec::new());
        }
        let mut args: Vec<String> = [
            "--backend",
            "aws",
            "--create-resources",
            "--stack",
            &self.stack(label),
        ]
        .map(String::from)
        .into();
        if let Some(url) = self
            .relay_endpoint
            .as_ref()
            .or(self.aws.endpoint_url.as_ref())
        {
            args.extend(["--endpoint-url".into(), url.clone()]);
        }
        args.extend([
            "--region".into(),
            self.aws
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
        ]);
        // A local AWS API takes any credentials; keep real ones if they are set.
        let env = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
            .into_iter()
            .filter(|k| std::env::var_os(k).is_none())
            .map(|k| (k.to_owned(), "local".to_owned()))
            .collect();
        (args, env)
    }

    /// Starts `relay up` for the scenario (or run) `label`, with its own flags.
    pub(crate) async fn start(
        &self,
        label: &str,
        data: &Path,
        target: &str,
        extra: &[&str],
    ) -> anyhow::Result<RelayProcess> {
        let (mut args, env) = self.relay(label);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RelayProcess::start_with(data, target, &args, env).await
    }

    /// The stack of scenario (or run) `label` on AWS.
    pub(crate) fn stack(&self, label: &str) -> String {
        format!("{}-e2e-{label}-{}", self.aws.stack, self.run)
    }

    /// The operator's port on the scenario's backend: what `relay dlq` uses.
    pub(crate) async fn ops(&self, label: &str, data: &Path) -> anyhow::Result<crate::ops::Ops> {
        if self.backend == Backend::Local {
            return Ok(crate::ops::Ops::Local(relay_store::Reader::open(data)?));
        }
        // As `relay up` is started: the region it is given, and any credentials for a local
        // AWS API unless real ones are set.
        let mut options = self.aws.options();
        options.stack = self.stack(label);
        options.region = Some(
            self.aws
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
        );
        options.local_credentials = std::env::var_os("AWS_ACCESS_KEY_ID").is_none();
        let aws = relay_aws::Aws::connect(&options).await?;
        Ok(crate::ops::Ops::Aws(Box::new(
            relay_aws::ops::AwsOps::connect(aws).await?,
        )))
    }
}
