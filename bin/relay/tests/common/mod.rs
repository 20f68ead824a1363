//! Helpers for tests that run the built `relay` binary as a user would.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test crates; panics are the reports

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const KEY: &str = "test-key";

pub fn relay_bin() -> &'static str {
    env!("CARGO_BIN_EXE_relay")
}

/// A `relay up` process. Its stderr goes to a log file that is printed if the test fails.
pub struct Relay {
    child: Option<Child>,
    pub url: String,
    log: PathBuf,
}

impl Relay {
    pub fn start(data_dir: &Path, target_url: &str, extra: &[&str]) -> Relay {
        Relay::start_env(data_dir, target_url, extra, &[])
    }

    /// `relay up --backend aws` against a stack on a local AWS API (created if missing). Its log
    /// goes next to `dir`.
    pub fn start_aws(
        dir: &Path,
        moto: &relay_aws::testing::MotoServer,
        stack: &str,
        target_url: &str,
        extra: &[&str],
    ) -> Relay {
        let env = moto.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // moto is not DynamoDB: beside a parallel test suite its writes can take longer than the
        // 400 ms a source allows. These tests are about what is delivered, not moto's latency.
        let mut args = vec![
            "--backend",
            "aws",
            "--create-resources",
            "--stack",
            stack,
            "--store-timeout",
            "3s",
        ];
        args.extend_from_slice(extra);
        Relay::launch(dir, target_url, &args, &env, false)
    }

    /// On a given address, so that a restart listens where the source sends.
    pub fn start_at(
        data_dir: &Path,
        listen: &str,
        target_url: &str,
        env: &[(&str, &str)],
    ) -> Relay {
        Relay::launch(data_dir, target_url, &["--listen", listen], env, true)
    }

    /// Like [`Relay::start`], with extra environment variables (fault injection).
    pub fn start_env(
        data_dir: &Path,
        target_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        Relay::launch(data_dir, target_url, extra, env, true)
    }

    fn launch(
        data_dir: &Path,
        target_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        local: bool,
    ) -> Relay {
        let log = data_dir.with_extension(format!("{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // An address of its own, or any free port.
        let listen = if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        let mut child = Command::new(relay_bin())
            .arg("up")
            .args(listen)
            .args(["--api-key", KEY, "--target-url", target_url])
            .args(if local {
                vec!["--data-dir".as_ref(), data_dir.as_os_str()]
            } else {
                vec![]
            })
            .args(extra)
            .envs(env.iter().copied())
            .env("RELAY_LOG", "info,relay_dispatch=debug")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("relay listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Relay {
            child: Some(child),
            url,
            log,
        }
    }

    pub fn events_url(&self) -> String {
        format!("{}/events", self.url)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- relay log ----\n{}", self.log());
        }
    }
}

pub fn event(i: usize) -> Value {
    json!({
        "id": format!("evt-{i:05}"),
        "name": "order.created",
        "body": format!("{{\"order\":{i},\"note\":\"ünïcode ✓\"}}"),
        "timestamp": if i.is_multiple_of(2) { json!("2026-11-22T10:00:00.123+01:00") } else { json!(1_763_800_000_000_u64 + i as u64) },
        "source": {"shard": i % 7, "tags": ["a", "b"]},
    })
}

/// Posts events concurrently (at most 32 at once); returns the ids answered 202.
pub async fn post_all(url: &str, events: &[Value]) -> Vec<String> {
    let client = reqwest::Client::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let tasks: Vec<_> = events
        .iter()
        .cloned()
        .map(|e| {
            let (client, url, limit) = (client.clone(), url.to_owned(), limit.clone());
            tokio::spawn(async move {
                let _slot = limit.acquire().await.unwrap();
                let response = client
                    .post(url)
                    .header("x-api-key", KEY)
                    .json(&e)
                    .send()
                    .await
                    .ok()?;
                (response.status().as_u16() == 202).then(|| e["id"].as_str().unwrap().to_owned())
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            acked.push(id);
        }
    }
    acked
}

/// Polls `check` until it holds; the deadline only guards against a hang.
pub async fn eventually(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn target(rate: f64, burst: f64) -> target_sim::TargetHandle {
    let config = target_sim::TargetConfig {
        rate,
        burst: Some(burst),
        ..Default::default()
    };
    target_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

/// A target (200/s) that refuses events with this name for good, until its faults are cleared.
pub async fn target_rejecting(name: &str) -> target_sim::TargetHandle {
    target_sim::start(
        "127.0.0.1:0".parse().unwrap(),
        target_sim::TargetConfig {
            rate: 200.0,
            faults: target_sim::Faults {
                reject_names: vec![name.into()],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// The stdout of a successful `relay … --json`, parsed.
pub fn json_of(assert: assert_cmd::assert::Assert) -> Value {
    let out = assert.success().get_output().stdout.clone();
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
}

/// A trace's attempts as (trigger, outcome).
pub fn outcomes(trace: &Value) -> Vec<(String, String)> {
    trace["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["trigger"].as_str().unwrap().to_owned(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A valid event with this id and name.
pub fn named(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "body": "b", "timestamp": 1_763_800_000})
}

/// Ids at the edge of what ingest accepts: every printable ASCII character, spaces inside,
/// the longest id; and ids it must refuse (with 422 naming `id`), because the target's
/// `Idempotency-Key` header could not carry them unchanged.
pub fn edge_ids() -> (Vec<String>, Vec<String>) {
    let printable: Vec<char> = ('!'..='~').collect();
    let mut accepted: Vec<String> = printable.chunks(16).map(|c| c.iter().collect()).collect();
    accepted.extend([
        "with inner  spaces".to_owned(),
        r#"quote"back\slash"#.to_owned(),
        "%41%00 not decoded".to_owned(),
        "z".repeat(256),
    ]);
    let refused = [
        "évènement",
        "emoji-✓",
        "tab\there",
        "nul\u{0}",
        " leading",
        "trailing ",
        "del\u{7f}",
    ]
    .map(str::to_owned)
    .to_vec();
    (accepted, refused)
}

/// Posts [`edge_ids`] to `events_url` and checks every accepted one reaches `target` byte for
/// byte (input.id and the Idempotency-Key header), and no refused one is stored.
pub async fn edge_ids_reach_the_target_unchanged(
    events_url: &str,
    target: &target_sim::TargetHandle,
) {
    let (accepted, refused) = edge_ids();
    let client = reqwest::Client::new();
    for id in &accepted {
        let response = client
            .post(events_url)
            .header("x-api-key", KEY)
            .json(&named(id, "edge"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            202,
            "{id:?}: {:?}",
            response.text().await
        );
    }
    for id in &refused {
        let response = client
            .post(events_url)
            .header("x-api-key", KEY)
            .json(&named(id, "edge"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422, "{id:?} must be refused");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["field"], "id", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "the reason is given: {body}"
        );
    }
    eventually("every accepted id delivered", 60, || {
        target.stats().events as usize >= accepted.len()
    })
    .await;
    let received = target.events();
    let mut got: Vec<&String> = received.keys().collect();
    got.sort();
    let mut want: Vec<&String> = accepted.iter().collect();
    want.sort();
    assert_eq!(got, want, "exactly the accepted ids, unchanged");
    for id in &accepted {
        assert_eq!(received[id].input["id"], json!(id));
    }
    assert_eq!(
        target.stats().bad_idempotency_keys,
        0,
        "every header carried its id"
    );
    assert_eq!(target.stats().duplicates, 0);
}

/// A free loopback address, for a relay that must listen on the same one after a restart.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `webhook-signature` for `body`, from the Python `standardwebhooks` package: a signer relay
/// did not write.
pub fn python_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-webhooks/bin/python");
    assert!(
        python.exists(),
        "{} not found: scripts/test.sh installs the standardwebhooks package into .venv-webhooks",
        python.display()
    );
    let script = "import sys, datetime, standardwebhooks\n\
        secret, msg_id, ts = sys.argv[1], sys.argv[2], int(sys.argv[3])\n\
        when = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)\n\
        print(standardwebhooks.Webhook(secret).sign(msg_id, when, sys.stdin.buffer.read()))";
    let mut child = std::process::Command::new(python)
        .args(["-c", script, secret, id, &timestamp.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub async fn post_signed(
    url: &str,
    key: Option<&str>,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/events"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

pub fn signed(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", msg_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            python_signature(secret, msg_id, timestamp, body),
        ),
    ]
}

/// What the independent verifying target saw of one request.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Verified {
    pub valid: bool,
    pub webhook_id: Option<String>,
    pub events: Vec<String>,
    pub error: Option<String>,
}

/// A test peer in Python (`common/SCRIPT`, run by the test venv's interpreter): the port it
/// printed first, and each later line of its output as it comes.
struct PythonPeer {
    child: Child,
    port: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl PythonPeer {
    fn start(script: &str, args: &[&str]) -> PythonPeer {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-webhooks/bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/common")
            .join(script);
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out.next().unwrap().unwrap();
        let port = first.strip_prefix("listening ").unwrap().to_owned();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in out.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        PythonPeer { child, port, lines }
    }

    fn lines<T: serde::de::DeserializeOwned>(&self) -> Vec<T> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GraphQL target that checks every request's Standard Webhooks signature with the Python
/// reference package (`common/signed_target.py`), answering 401 to any it cannot verify.
pub struct VerifyingTarget {
    peer: PythonPeer,
    pub url: String,
}

impl VerifyingTarget {
    pub fn start(secret: &str) -> VerifyingTarget {
        let peer = PythonPeer::start("signed_target.py", &[secret]);
        let url = format!("http://127.0.0.1:{}/graphql", peer.port);
        VerifyingTarget { peer, url }
    }

    pub fn seen(&self) -> Vec<Verified> {
        self.peer.lines()
    }
}

/// What the credentialed target saw of one request: at `/token`, whether it granted a token;
/// at `/graphql`, whether the request was authorized and the client certificate's name.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SeenRequest {
    pub path: String,
    #[serde(default)]
    pub granted: bool,
    #[serde(default)]
    pub authorized: bool,
    #[serde(default)]
    pub events: Vec<String>,
    pub peer: Option<String>,
}

/// The OAuth2 client the credentialed target's token endpoint knows.
pub const OAUTH_CLIENT: (&str, &str, &str) = ("relay-test", "s3cr3t/+=value", "events:write");

/// A GraphQL target behind OAuth2 (client credentials; tokens that live `expires_in` seconds)
/// and, with `tls`, behind TLS that asks for a client certificate signed by its client CA
/// (`common/credentialed_target.py`, Python's standard library).
pub struct CredentialedTarget {
    peer: PythonPeer,
    /// `http(s)://127.0.0.1:PORT`.
    pub base: String,
}

impl CredentialedTarget {
    pub fn start(expires_in: Option<u64>, tls: Option<&Pki>) -> CredentialedTarget {
        let (id, secret, scope) = OAUTH_CLIENT;
        let mut args: Vec<String> = Vec::new();
        if let Some(expires_in) = expires_in {
            let oauth = ["--oauth", id, secret, scope, &expires_in.to_string()];
            args.extend(oauth.map(str::to_owned));
        }
        if let Some(pki) = tls {
            args.push("--tls".into());
            for file in ["server.pem", "server-key.pem", "ca.pem"] {
                args.push(pki.path(file));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let peer = PythonPeer::start("credentialed_target.py", &args);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://127.0.0.1:{}", peer.port);
        CredentialedTarget { peer, base }
    }

    pub fn url(&self) -> String {
        format!("{}/graphql", self.base)
    }

    /// relay's flags for this target's token endpoint.
    pub fn oauth_flags(&self) -> Vec<String> {
        let (id, _, scope) = OAUTH_CLIENT;
        [
            "--target-oauth-token-url",
            &format!("{}/token", self.base),
            "--target-oauth-client-id",
            id,
            "--target-oauth-scopes",
            scope,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.peer.lines()
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate (`CN=relay-client`), all
/// signed by it, as PEM files in a temporary directory: `ca.pem`, `server.pem`,
/// `server-key.pem`, `client.pem`, `client-key.pem`.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let server_key = KeyPair::generate().unwrap();
        write(
            "server.pem",
            server.signed_by(&server_key, &issuer).unwrap().pem(),
        );
        write("server-key.pem", server_key.serialize_pem());
        let mut client = CertificateParams::new(Vec::new()).unwrap();
        client.distinguished_name = DistinguishedName::new();
        client
            .distinguished_name
            .push(DnType::CommonName, "relay-client");
        let client_key = KeyPair::generate().unwrap();
        write(
            "client.pem",
            client.signed_by(&client_key, &issuer).unwrap().pem(),
        );
        write("client-key.pem", client_key.serialize_pem());
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_owned()
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap()
    }
}

/// `relay pause` and `relay resume` as an operator uses them, on the backend `relay` runs the
/// commands against (`relay ARGS [backend flags]`), with `relay up` sending to `target`: while
/// paused, events are accepted and none is sent, and `status` and `trace` say who paused and
/// why; after the resume every one is delivered.
pub async fn pause_then_resume(
    relay: impl Fn(&[&str]) -> assert_cmd::assert::Assert,
    events_url: &str,
    target: &target_sim::TargetHandle,
) {
    let stdout = |a: assert_cmd::assert::Assert| {
        String::from_utf8(a.success().get_output().stdout.clone()).unwrap()
    };
    let said = stdout(relay(&[
        "pause",
        "--reason",
        "target migration",
        "--by",
        "ana",
    ]));
    assert!(
        said.contains("paused since") && said.contains("by ana: target migration"),
        "{said}"
    );
    let again = stdout(relay(&["pause", "--by", "bob"]));
    assert!(
        again.contains("already paused") && again.contains("by ana"),
        "{again}"
    );
    // The dispatchers look every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events: Vec<Value> = (0..20).map(|i| named(&format!("held-{i}"), "ok")).collect();
    assert_eq!(
        post_all(events_url, &events).await.len(),
        20,
        "accepted while paused"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(target.stats().events, 0, "nothing is sent while paused");
    let status = json_of(relay(&["status", "--json"]));
    assert_eq!(status["pause"]["by"], "ana", "{status}");
    assert_eq!(status["pause"]["reason"], "target migration", "{status}");
    let human = stdout(relay(&["status"]));
    assert!(
        human.contains("PAUSED") && human.contains("target migration"),
        "{human}"
    );
    let trace = json_of(relay(&["trace", "held-0", "--json"]));
    assert_eq!(trace["paused"]["by"], "ana", "{trace}");
    assert_eq!(trace["attempts"].as_array().unwrap().len(), 0, "{trace}");
    let human = stdout(relay(&["trace", "held-0"]));
    assert!(
        human.contains("held back") && human.contains("by ana"),
        "{human}"
    );

    let resumed = stdout(relay(&["resume"]));
    assert!(
        resumed.contains("resumed") && resumed.contains("by ana"),
        "{resumed}"
    );
    eventually("every held event delivered after the resume", 60, || {
        target.stats().events == 20
    })
    .await;
    let stats = target.stats();
    assert_eq!(stats.duplicates, 0);
    let not = stdout(relay(&["resume"]));
    assert!(not.contains("not paused"), "{not}");
    let status = json_of(relay(&["status", "--json"]));
    assert!(status.get("pause").is_none(), "{status}");
    let trace = json_of(relay(&["trace", "held-0", "--json"]));
    assert!(trace.get("paused").is_none(), "{trace}");
}

/// A real Prometheus server (Debian's `prometheus`), scraping the given targets every second,
/// with its own storage in a temporary directory. `scripts/test.sh` installs it.
pub struct Prometheus {
    child: Child,
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(jobs: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let scrapes: String = jobs
            .iter()
            .map(|(job, target)| {
                format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n")
            })
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrapes}"),
        )
        .unwrap();
        let listen = free_addr();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `prometheus` ({e}); scripts/test.sh installs it (Debian's package)")
            });
        let prometheus = Prometheus {
            child,
            url: format!("http://{listen}"),
            log,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&ready).await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus did not get ready; its log:\n{}",
                std::fs::read_to_string(&prometheus.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// The instant vector of a PromQL query: each series' labels and value.
    pub async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query?{query}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// The one value of a query that names one series; `None` while it has none.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let series = self.query(promql).await;
        assert!(series.len() <= 1, "{promql} names {} series", series.len());
        series.first().map(|(_, v)| *v)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log());
        }
    }
}

/// A real OTLP/HTTP receiver (`common/otlp_receiver.py`): protobuf decoded by the
/// opentelemetry-proto package, each span and metric data point a JSON line.
pub struct OtlpReceiver {
    peer: PythonPeer,
    pub url: String,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let peer = PythonPeer::start("otlp_receiver.py", &[]);
        let url = format!("http://127.0.0.1:{}", peer.port);
        OtlpReceiver { peer, url }
    }

    /// Everything received so far.
    pub fn lines(&self) -> Vec<Value> {
        self.peer.lines()
    }
}
