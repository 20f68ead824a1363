//! The web console, as an operator meets it: in a real browser (Debian's headless Chromium,
//! driven by Selenium), and its JSON API and the ingest API checked against their OpenAPI
//! documents.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

const TOKEN: &str = "console-test-admin-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the browser tests leave their screenshots; `RELAY_UPDATE_SCREENSHOTS=1` copies them
/// to docs/images, where the README shows them.
fn shots() -> PathBuf {
    let dir = repo().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn keep_screenshots(names: &[&str]) {
    for name in names {
        let shot = shots().join(name);
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is {size} bytes", shot.display());
        if std::env::var_os("RELAY_UPDATE_SCREENSHOTS").is_some() {
            std::fs::copy(&shot, repo().join("docs/images").join(name)).unwrap();
        }
    }
}

/// Runs the Selenium script; returns its steps, or fails with what it printed.
fn browse(args: &[&str]) -> Vec<Value> {
    let python = repo().join(".venv-browser/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/console_browser.py");
    let out = Command::new(&python)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; scripts/test.sh makes the browser venv",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {steps:?}"))
}

/// Five events delivered, two dead letters with the same reason; then the target takes
/// everything, so a redrive is delivered.
async fn with_dead_letters(relay: &Relay, target: &target_sim::TargetHandle, data: &Path) {
    let mut events: Vec<Value> = (1..=5)
        .map(|i| named(&format!("ok-{i}"), "order.created"))
        .collect();
    events.extend([named("bad-1", "bad"), named("bad-2", "bad")]);
    assert_eq!(post_all(&relay.events_url(), &events).await.len(), 7);
    eventually("5 delivered and 2 dead", 30, || {
        let counts = relay_store::Reader::open(data)
            .unwrap()
            .status_counts()
            .unwrap();
        (counts.delivered, counts.dead) == (5, 2)
    })
    .await;
    target.set_faults(target_sim::Faults::default());
}

/// A relay with its console on a free address, and two dead letters (see [`with_dead_letters`]).
struct WithConsole {
    _dir: tempfile::TempDir,
    data: PathBuf,
    target: target_sim::TargetHandle,
    console: String,
    relay: Relay,
}

async fn relay_with_a_console_and_dead_letters() -> WithConsole {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target_rejecting("bad").await;
    let console = free_addr();
    let relay = Relay::start(
        &data,
        &target.url(),
        &["--console", &console, "--admin-token", TOKEN],
    );
    with_dead_letters(&relay, &target, &data).await;
    WithConsole {
        _dir: dir,
        data,
        target,
        console,
        relay,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_finds_an_event_redrives_a_dead_letter_purges_a_reason_and_pauses() {
    let WithConsole {
        _dir,
        data,
        target,
        console,
        relay,
    } = relay_with_a_console_and_dead_letters().await;

    let url = format!("http://{console}/?token={TOKEN}");
    let steps = browse(&[
        "clickthrough",
        &url,
        shots().to_str().unwrap(),
        &relay.events_url(),
        KEY,
    ]);
    assert_eq!(step(&steps, "overview")["dead"], "2");
    let found = step(&steps, "found")["ids"].as_array().unwrap().len();
    assert_eq!(found, 5, "the five ok- events, and only them: {steps:?}");
    assert_eq!(step(&steps, "tailed")["first"], "tail-1");
    assert_eq!(step(&steps, "delivered after redrive")["trigger"], true);
    assert_eq!(step(&steps, "purged")["count"], 1);
    step(&steps, "resumed");
    step(&steps, "signed in again");

    // What the clicks did, seen from outside the console.
    eventually("bad-1 and tail-1 reach the target", 30, || {
        let got = target.events();
        got.contains_key("bad-1") && got.contains_key("tail-1")
    })
    .await;
    assert!(
        !target.events().contains_key("bad-2"),
        "a purged dead letter is never sent"
    );
    let reader = relay_store::Reader::open(&data).unwrap();
    assert_eq!(reader.pause_now().unwrap(), None, "resumed");
    let trace = json_of(
        assert_cmd::Command::new(relay_bin())
            .args([
                "trace",
                "bad-2",
                "--json",
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .assert(),
    );
    assert_eq!(trace["archived"]["why"], "purged", "{trace}");
    keep_screenshots(&[
        "console-event.png",
        "console-dead-letters.png",
        "console-target.png",
    ]);
    assert_eq!(relay.terminate().code(), Some(0));
}

/// What the README promises: `relay demo --console`, open the printed URL, watch it happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_demo_with_a_console_shows_the_demo_as_it_happens() {
    let mut demo = Killed(
        Command::new(relay_bin())
            .args(["demo", "--console", "127.0.0.1:0", "--duration", "10s"])
            .args(["--rps", "60", "--target-rate", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let demo = &mut demo.0;
    let mut stdout = BufReader::new(demo.stdout.take().unwrap()).lines();
    let first = stdout.next().unwrap().unwrap();
    let url = first
        .strip_prefix("open the console: ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .to_owned();
    let steps = browse(&["demo", &url, shots().to_str().unwrap()]);
    let watched = step(&steps, "watched");
    assert!(watched["updates"].as_i64().unwrap() >= 2, "{watched}");
    step(&steps, "drained");
    let rest: Vec<String> = stdout
        .by_ref()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("the console stays up"))
        .collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("every acknowledged event was delivered once")),
        "the demo's report: {rest:?}"
    );
    Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(
        demo.wait().unwrap().success(),
        "the demo ends cleanly on Ctrl-C"
    );
    keep_screenshots(&["console-overview.png"]);
}

/// A child process stopped with the test, pass or fail (SIGINT first: `relay demo` stops the
/// `relay up` it started).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            std::thread::sleep(std::time::Duration::from_secs(1));
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A validator for one of an OpenAPI document's schemas.
fn schema(doc: &Value, name: &str) -> jsonschema::Validator {
    let root =
        json!({"$ref": format!("#/components/schemas/{name}"), "components": doc["components"]});
    jsonschema::validator_for(&root).unwrap()
}

fn valid(doc: &Value, schema_of: &Value, body: &Value, what: &str) {
    let reference = schema_of["$ref"].as_str();
    let root = match reference {
        Some(r) => json!({"$ref": r, "components": doc["components"]}),
        None => {
            let mut s = schema_of.clone();
            s["components"] = doc["components"].clone();
            s
        }
    };
    let validator = jsonschema::validator_for(&root).unwrap();
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{body}");
}

/// The schema the document gives `status` of `method path`.
fn answer_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "the document has no {method} {path}");
    let answer = &op["responses"][status.to_string()];
    assert!(
        answer.is_object(),
        "the document gives {method} {path} no {status} answer"
    );
    &answer["content"]["application/json"]["schema"]
}

struct Api {
    doc: Value,
    base: String,
    client: reqwest::Client,
}

impl Api {
    /// Calls `method path` and checks the answer against the document: a status it lists, and
    /// a body its schema allows.
    async fn call(
        &self,
        method: &str,
        path: &str,
        doc_path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "get" => self.client.get(url),
            _ => self.client.post(url).json(&body.unwrap_or(json!({}))),
        };
        let answer = request.bearer_auth(TOKEN).send().await.unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        let schema = answer_schema(&self.doc, doc_path, method, status);
        valid(
            &self.doc,
            schema,
            &body,
            &format!("{method} {path} {status}"),
        );
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_api_answers_as_its_openapi_document_says() {
    let WithConsole {
        _dir,
        data,
        target,
        console,
        relay,
    } = relay_with_a_console_and_dead_letters().await;
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/openapi/console.json")).unwrap(),
    )
    .unwrap();
    let api = Api {
        doc: doc.clone(),
        base: format!("http://{console}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };

    // Every operation the document lists, each answered as it says.
    let (_, served) = api
        .call("get", "/api/v1/openapi.json", "/api/v1/openapi.json", None)
        .await;
    assert_eq!(served, doc, "the console serves the document in docs/");
    // One status read serves the console for 1.5 s: the dead letters show within that.
    let mut overview = Value::Null;
    for _ in 0..40 {
        (_, overview) = api
            .call("get", "/api/v1/overview", "/api/v1/overview", None)
            .await;
        if overview["status"]["dead"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(overview["status"]["dead"], 2, "{overview}");
    assert_eq!(overview["cards"]["dead"]["text"], "2");
    let (_, page) = api
        .call(
            "get",
            "/api/v1/events?id_prefix=ok-&limit=2",
            "/api/v1/events",
            None,
        )
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let (_, rest) = api
        .call(
            "get",
            &format!(
                "/api/v1/events?id_prefix=ok-&limit=2&cursor={}",
                urlenc(next)
            ),
            "/api/v1/events",
            None,
        )
        .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 2, "the next page");
    let (_, dead) = api
        .call(
            "get",
            "/api/v1/events?status=dead&field=name%3Dbad",
            "/api/v1/events",
            None,
        )
        .await;
    assert_eq!(dead["events"].as_array().unwrap().len(), 2);
    let (status, _) = api
        .call("get", "/api/v1/events?status=lost", "/api/v1/events", None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .call(
            "get",
            "/api/v1/events?cursor=nonsense",
            "/api/v1/events",
            None,
        )
        .await;
    assert_eq!(status, 400, "a cursor relay did not give");
    let (_, trace) = api
        .call("get", "/api/v1/events/ok-1", "/api/v1/events/{id}", None)
        .await;
    assert_eq!(trace["delivery"]["status"], "delivered");
    let (status, _) = api
        .call("get", "/api/v1/events/nobody", "/api/v1/events/{id}", None)
        .await;
    assert_eq!(status, 404);
    let (_, letters) = api
        .call(
            "get",
            "/api/v1/dead-letters?reason=BAD",
            "/api/v1/dead-letters",
            None,
        )
        .await;
    assert_eq!(letters.as_array().unwrap().len(), 2);
    let (_, groups) = api
        .call(
            "get",
            "/api/v1/dead-letters/groups",
            "/api/v1/dead-letters/groups",
            None,
        )
        .await;
    assert_eq!(groups[0]["count"], 2, "{groups}");
    let reason = groups[0]["reason"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call(
            "post",
            "/api/v1/dead-letters/redrive",
            "/api/v1/dead-letters/redrive",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400, "never everything by omission");
    let (_, dry) = api
        .call(
            "post",
            "/api/v1/dead-letters/purge",
            "/api/v1/dead-letters/purge",
            Some(json!({"reason": reason, "dry_run": true})),
        )
        .await;
    assert_eq!(dry["purged"].as_array().unwrap().len(), 2, "{dry}");
    let (_, redriven) = api
        .call(
            "post",
            "/api/v1/dead-letters/redrive",
            "/api/v1/dead-letters/redrive",
            Some(json!({"ids": ["bad-1", "ok-1"]})),
        )
        .await;
    assert_eq!(redriven["redriven"], json!(["bad-1"]));
    assert_eq!(redriven["skipped"], json!(["ok-1"]), "not a dead letter");
    let (_, purged) = api
        .call(
            "post",
            "/api/v1/dead-letters/purge",
            "/api/v1/dead-letters/purge",
            Some(json!({"reason": reason})),
        )
        .await;
    assert_eq!(purged["purged"], json!(["bad-2"]));
    let (_, paused) = api
        .call(
            "post",
            "/api/v1/pause",
            "/api/v1/pause",
            Some(json!({"reason": "api test", "by": "ci"})),
        )
        .await;
    assert_eq!(
        (paused["already"].as_bool(), paused["pause"]["by"].as_str()),
        (Some(false), Some("ci"))
    );
    let (_, again) = api
        .call("post", "/api/v1/pause", "/api/v1/pause", None)
        .await;
    assert_eq!(again["already"], true);
    let (_, t) = api
        .call("get", "/api/v1/target", "/api/v1/target", None)
        .await;
    assert_eq!(
        (t["running"].as_bool(), t["pause"]["reason"].as_str()),
        (Some(true), Some("api test"))
    );
    let (_, resumed) = api
        .call("post", "/api/v1/resume", "/api/v1/resume", None)
        .await;
    assert_eq!(resumed["resumed"]["by"], "ci");
    eventually("the redriven event delivered", 30, || {
        target.events().contains_key("bad-1")
    })
    .await;

    // Without the token: 401 for the API and /metrics, the sign-in page for a page.
    let bare = |path: &str| api.client.get(format!("{}{path}", api.base)).send();
    let refused = bare("/api/v1/overview").await.unwrap();
    assert_eq!(refused.status(), 401);
    valid(
        &doc,
        &json!({"$ref": "#/components/schemas/Error"}),
        &refused.json().await.unwrap(),
        "401",
    );
    assert_eq!(bare("/metrics").await.unwrap().status(), 401);
    let page = bare("/dead-letters").await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login?next=%2Fdead-letters");
    let wrong = api
        .client
        .get(format!("{}/api/v1/overview", api.base))
        .bearer_auth("console-test-admin-tokeN")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let key = api
        .client
        .get(format!("{}/api/v1/overview", api.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), 401, "an ingest key does not open the console");
    // The metrics, with the token; every page with a CSP that allows no inline script.
    let metrics = api
        .client
        .get(format!("{}/metrics", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("relay_events_accepted_total 7"), "{text}");
    let login = bare("/login").await.unwrap();
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(
        !login.text().await.unwrap().contains("<script>"),
        "no inline script"
    );
    // A form posted from another site is refused, even with the console's cookie.
    let signed = api
        .client
        .get(format!("{}/?token={TOKEN}", api.base))
        .send()
        .await
        .unwrap();
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let forged = api
        .client
        .post(format!("{}/target/pause", api.base))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .body("reason=csrf")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        relay_store::Reader::open(&data)
            .unwrap()
            .pause_now()
            .unwrap(),
        None,
        "not paused by a forged form"
    );
    assert_eq!(relay.terminate().code(), Some(0));
}

fn urlenc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The ingest API answers each case docs/openapi/ingest.json lists with the status and body it
/// documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_api_answers_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(200.0, 20.0).await;
    let relay = Relay::start(&dir.path().join("data"), &target.url(), &[]);
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/openapi/ingest.json")).unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let event = named("doc-1", "order.created");
    let event_schema = schema(&doc, "Event");
    assert!(
        event_schema.is_valid(&event),
        "the tests' events are what the document says"
    );
    // (path, key, content type, body, the status the document gives)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            "/events",
            Some(KEY),
            "application/json",
            event.to_string().into_bytes(),
            202,
        ),
        (
            "/events",
            Some(KEY),
            "application/json",
            event.to_string().into_bytes(),
            200,
        ),
        (
            "/events",
            Some(KEY),
            "application/json",
            json!({"id": "doc-1", "name": "other", "body": "b", "timestamp": 1})
                .to_string()
                .into_bytes(),
            409,
        ),
        (
            "/events",
            None,
            "application/json",
            event.to_string().into_bytes(),
            401,
        ),
        (
            "/events",
            Some(KEY),
            "application/json",
            b"{not json".to_vec(),
            400,
        ),
        (
            "/events",
            Some(KEY),
            "application/json",
            json!({"id": "doc-2"}).to_string().into_bytes(),
            422,
        ),
        (
            "/events",
            Some(KEY),
            "text/plain",
            event.to_string().into_bytes(),
            415,
        ),
        (
            "/events",
            Some(KEY),
            "application/json",
            vec![b' '; 300 * 1024],
            413,
        ),
        (
            "/events/batch",
            Some(KEY),
            "application/json",
            json!([named("doc-3", "n"), {"id": ""}])
                .to_string()
                .into_bytes(),
            200,
        ),
        (
            "/events/batch",
            Some(KEY),
            "application/json",
            json!({"not": "an array"}).to_string().into_bytes(),
            422,
        ),
    ];
    for (path, key, content_type, body, want) in cases {
        let mut request = client
            .post(format!("{}{path}", relay.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        assert_eq!(status, want, "{path} ({content_type}, key {key:?})");
        let body: Value = answer.json().await.unwrap();
        valid(
            &doc,
            answer_schema(&doc, path, "post", status),
            &body,
            &format!("POST {path} {status}"),
        );
    }
    let health = client
        .get(format!("{}/health", relay.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    valid(
        &doc,
        answer_schema(&doc, "/health", "get", 200),
        &health.json().await.unwrap(),
        "GET /health",
    );
    assert_eq!(relay.terminate().code(), Some(0));
}

/// `relay console --backend aws`: the same pages and API over a stack (on a local AWS API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_over_an_aws_stack() {
    let moto = relay_aws::testing::MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = target_rejecting("bad").await;
    let up = Relay::start_aws(dir.path(), &moto, "console", &target.url(), &[]);
    let mut events: Vec<Value> = (1..=3)
        .map(|i| named(&format!("ok-{i}"), "order.created"))
        .collect();
    events.push(named("bad-1", "bad"));
    assert_eq!(post_all(&up.events_url(), &events).await.len(), 4);
    eventually("3 delivered", 60, || target.stats().events == 3).await;

    let listen = free_addr();
    let mut console = Command::new(relay_bin());
    console
        .args(["console", "--backend", "aws", "--stack", "console"])
        .args(["--listen", &listen, "--admin-token", TOKEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in moto.env() {
        console.env(k, v);
    }
    let mut console = Killed(console.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(console.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), format!("relay console on http://{listen}/"));
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://{listen}{path}"))
            .bearer_auth(TOKEN)
            .send()
    };
    let json = |r: reqwest::Response| async move { r.json::<Value>().await.unwrap() };

    let mut groups = Value::Null;
    for _ in 0..120 {
        groups = json(get("/api/v1/dead-letters/groups").await.unwrap()).await;
        if groups.as_array().is_some_and(|g| !g.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(groups[0]["count"], 1, "{groups}");
    let page = json(get("/api/v1/events?id_prefix=ok-").await.unwrap()).await;
    let statuses: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["delivered"; 3], "{page}");
    let dead = json(get("/api/v1/events?status=dead").await.unwrap()).await;
    assert_eq!(dead["events"][0]["event_id"], "bad-1", "{dead}");
    let trace = json(get("/api/v1/events/bad-1").await.unwrap()).await;
    assert_eq!(trace["trace_ids"][0]["system"], "xray", "{trace}");
    let html = get("/events/bad-1").await.unwrap().text().await.unwrap();
    assert!(
        html.contains("Trace id (xray)") && html.contains("Dead-lettered"),
        "{html}"
    );
    let overview = json(get("/api/v1/overview").await.unwrap()).await;
    assert_eq!(overview["place"], "in stack console", "{overview}");
    // The gauges, from the stack's queues and control item.
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(gauge("relay_dead_letters"), Some(1.0), "{metrics}");
    assert_eq!(gauge("relay_paused"), Some(0.0), "{metrics}");

    target.set_faults(target_sim::Faults::default());
    let redriven = client
        .post(format!("http://{listen}/api/v1/dead-letters/redrive"))
        .bearer_auth(TOKEN)
        .json(&json!({"ids": ["bad-1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(json(redriven).await["redriven"], json!(["bad-1"]));
    eventually("the redriven event delivered", 60, || {
        target.events().contains_key("bad-1")
    })
    .await;
    drop(console);
    assert_eq!(up.terminate().code(), Some(0));
}

/// A script that closes relay's stdout (or never reads it) stops neither `relay up` nor `relay
/// console`: their stable lines on stdout must not panic as `println!` does on a closed pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_stops_neither_relay_up_nor_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(100.0, 10.0).await;
    let (listen, console, other) = (free_addr(), free_addr(), free_addr());
    let spawn = |args: Vec<&str>| {
        let mut child = Command::new(relay_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The reading end closed before relay writes anything.
        drop(child.stdout.take());
        Killed(child)
    };
    let data_dir = data.to_str().unwrap();
    let target_url = target.url();
    let _up = spawn(vec![
        "up",
        "--listen",
        &listen,
        "--data-dir",
        data_dir,
        "--api-key",
        KEY,
        "--target-url",
        &target_url,
        "--console",
        &console,
        "--admin-token",
        TOKEN,
    ]);
    let client = reqwest::Client::new();
    let overview = |at: String| {
        client
            .get(format!("http://{at}/api/v1/overview"))
            .bearer_auth(TOKEN)
            .send()
    };
    eventually_async("relay up's console answers", || overview(console.clone())).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        post_all(&format!("http://{listen}/events"), &[event(1)])
            .await
            .len(),
        1
    );
    let _console = spawn(vec![
        "console",
        "--data-dir",
        data_dir,
        "--listen",
        &other,
        "--admin-token",
        TOKEN,
    ]);
    eventually_async("relay console answers", || overview(other.clone())).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        overview(other.clone()).await.unwrap().status(),
        200,
        "still up"
    );
    assert_eq!(
        overview(console.clone()).await.unwrap().status(),
        200,
        "still up"
    );
}

/// Polls `request` until it is answered 200.
async fn eventually_async<F, Fut>(what: &str, request: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    for _ in 0..100 {
        if request().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}
