//! Every row of the contract's ingest table, against the real store on disk.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use relay_store::{Durability, Reader, SqliteStore, StoreOptions};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

const KEY: &str = "secret-key";

struct Harness {
    app: Router,
    store: SqliteStore,
    dir: tempfile::TempDir,
}

fn harness() -> Harness {
    harness_with(Duration::from_millis(400), StoreOptions::default())
}

fn harness_with(store_timeout: Duration, options: StoreOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(dir.path(), options).unwrap();
    let config = IngestConfig {
        api_keys: vec![KEY.into(), "next-key".into()],
        store_timeout,
        batch_timeout: store_timeout,
        ..IngestConfig::default()
    };
    Harness {
        app: router(store.clone(), config),
        store,
        dir,
    }
}

fn event(id: &str) -> Value {
    json!({"id": id, "name": "order.created", "body": "{\"total\":3}", "timestamp": "2026-11-22T10:00:00Z"})
}

fn request(body: impl Into<Body>, content_type: Option<&str>, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::post("/events");
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    if let Some(key) = key {
        builder = builder.header(API_KEY_HEADER, key);
    }
    builder.body(body.into()).unwrap()
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("non-JSON answer {status}: {e}: {bytes:?}"));
        (status, body)
    }

    async fn post(&self, body: impl Into<Body>) -> (StatusCode, Value) {
        self.send(request(body, Some("application/json"), Some(KEY)))
            .await
    }

    /// Every event id the store holds, once everything answered so far is indexed.
    async fn stored(&self) -> Vec<String> {
        self.store.indexed().await.unwrap();
        Reader::open(self.dir.path()).unwrap().event_ids().unwrap()
    }
}

#[tokio::test]
async fn stored_events_get_202_and_keep_unknown_fields() {
    let h = harness();
    let mut body = event("a");
    body["tenant"] = json!({"region": "eu"});
    let (status, answer) = h.post(body.to_string()).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::ACCEPTED,
            json!({"id": "a", "status": "accepted"})
        )
    );
    h.store.indexed().await.unwrap();
    let stored = Reader::open(h.dir.path())
        .unwrap()
        .delivery("a")
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stored.payload).unwrap(),
        body
    );
}

#[tokio::test]
async fn same_id_same_payload_is_a_duplicate_other_payload_a_conflict() {
    let h = harness();
    h.post(event("a").to_string()).await;
    let (status, answer) = h.post(event("a").to_string()).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"id": "a", "status": "duplicate"}))
    );

    let mut changed = event("a");
    changed["body"] = json!("other");
    let (status, answer) = h.post(changed.to_string()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (answer["error"].as_str(), answer["field"].as_str()),
        (Some("id_conflict"), Some("id"))
    );
    assert_eq!(h.stored().await, ["a"]);
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401_and_every_current_key_works() {
    let h = harness();
    let body = event("a").to_string();
    for key in [
        None,
        Some("wrong"),
        Some(""),
        Some("secret-ke"),
        Some("secret-key2"),
    ] {
        let (status, answer) = h
            .send(request(body.clone(), Some("application/json"), key))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(answer["error"], "unauthorized");
    }
    assert!(h.stored().await.is_empty());
    let (status, _) = h
        .send(request(
            event("b").to_string(),
            Some("application/json"),
            Some("next-key"),
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn bodies_that_are_not_json_get_400() {
    let h = harness();
    for body in ["", "{", "nope", "{\"id\":\"a\",}"] {
        let (status, answer) = h.post(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(answer["error"], "invalid_json");
    }
    let (status, _) = h.post(vec![0xff, 0xfe, b'{']).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn wrong_shapes_get_422_naming_the_field() {
    let h = harness();
    let cases = [
        (
            json!({"name": "n", "body": "b", "timestamp": 1}),
            Some("id"),
        ),
        (
            json!({"id": "", "name": "n", "body": "b", "timestamp": 1}),
            Some("id"),
        ),
        (
            json!({"id": "a", "name": 5, "body": "b", "timestamp": 1}),
            Some("name"),
        ),
        (
            json!({"id": "a", "name": "n", "timestamp": 1}),
            Some("body"),
        ),
        (
            json!({"id": "a", "name": "n", "body": "b", "timestamp": "noon"}),
            Some("timestamp"),
        ),
        (json!([1, 2, 3]), None),
    ];
    for (body, field) in cases {
        let (status, answer) = h.post(body.to_string()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer["field"].as_str(), field, "{body}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn bodies_over_256_kib_get_413_with_or_without_a_length() {
    let h = harness();
    let mut big = event("a");
    big["body"] = json!("x".repeat(MAX_BODY_BYTES));
    let (status, answer) = h.post(big.to_string()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let declared = Request::post("/events")
        .header("content-type", "application/json")
        .header(API_KEY_HEADER, KEY)
        .header("content-length", (MAX_BODY_BYTES + 1).to_string())
        .body(Body::from(event("c").to_string()))
        .unwrap();
    assert_eq!(h.send(declared).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    let mut fits = event("b");
    fits["body"] = json!("x".repeat(MAX_BODY_BYTES - 200));
    assert_eq!(h.post(fits.to_string()).await.0, StatusCode::ACCEPTED);
    assert_eq!(h.stored().await, ["b"]);
}

#[tokio::test]
async fn other_content_types_get_415() {
    let h = harness();
    let body = event("a").to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let (status, answer) = h.send(request(body.clone(), ct, Some(KEY))).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("unsupported_media_type")
            ),
            "{ct:?}"
        );
    }
    assert!(h.stored().await.is_empty());
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/cloudevents+json",
    ] {
        let id = format!("ok-{}", ct.len());
        assert_eq!(
            h.send(request(event(&id).to_string(), Some(ct), Some(KEY)))
                .await
                .0,
            StatusCode::ACCEPTED,
            "{ct}"
        );
    }
}

/// Every flush takes 2 s, and the store may not answer before its flush; ingest waits 200 ms.
fn stuck() -> Harness {
    harness_with(
        Duration::from_millis(200),
        StoreOptions {
            durability: Durability::Flush,
            faults: Some(std::sync::Arc::new(
                relay_store::Faults::parse("flush.journal=stall:2s", 1).unwrap(),
            )),
            ..StoreOptions::default()
        },
    )
}

#[tokio::test]
async fn a_stuck_store_gets_503_inside_the_budget() {
    let h = stuck();
    let answered =
        tokio::time::timeout(Duration::from_secs(1), h.post(event("a").to_string())).await;
    let (status, answer) = answered.expect("ingest must answer while the store is stuck");
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
    );
    // Still serving meanwhile.
    let (status, _) = h.post("{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_needs_no_key_and_unknown_routes_answer_json() {
    let h = harness();
    let (status, body) = h
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = h
        .send(Request::get("/nope").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = h
        .send(Request::get("/events").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

fn batch_request(body: impl Into<Body>, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::post("/events/batch").header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header(API_KEY_HEADER, key);
    }
    builder.body(body.into()).unwrap()
}

impl Harness {
    async fn post_batch(&self, items: &Value) -> (StatusCode, Value) {
        self.send(batch_request(items.to_string(), Some(KEY))).await
    }
}

#[tokio::test]
async fn a_batch_answers_each_item_in_order_and_stores_only_the_valid_ones() {
    let h = harness();
    h.post(event("before").to_string()).await;
    let mut other = event("before");
    other["body"] = json!("changed");
    let mut no_name = event("no-name");
    no_name.as_object_mut().unwrap().remove("name");
    let items = json!([
        event("a"),
        no_name,
        event("before"),
        other,
        "not an object",
        event("a"),
        {"id": "bad-ts", "name": "n", "body": "b", "timestamp": "yesterday"},
        event("b"),
    ]);
    let (status, answer) = h.post_batch(&items).await;
    assert_eq!(status, StatusCode::OK);
    let results = answer["results"].as_array().unwrap();
    let summary: Vec<(Option<&str>, &str, Option<&str>)> = results
        .iter()
        .map(|r| {
            (
                r["id"].as_str(),
                r["status"].as_str().unwrap(),
                r["field"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("a"), "accepted", None),
            (Some("no-name"), "invalid", Some("name")),
            (Some("before"), "duplicate", None),
            (Some("before"), "conflict", Some("id")),
            (None, "invalid", None),
            (Some("a"), "duplicate", None),
            (Some("bad-ts"), "invalid", Some("timestamp")),
            (Some("b"), "accepted", None),
        ]
    );
    for refused in [&results[1], &results[3], &results[4]] {
        assert!(
            refused["error"].is_string() && refused["message"].is_string(),
            "{refused}"
        );
    }
    assert_eq!(h.stored().await, ["before", "a", "b"]);
}

#[tokio::test]
async fn whole_batch_errors_are_answered_as_for_one_event_and_store_nothing() {
    let h = harness();
    let one = json!([event("x")]).to_string();
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            batch_request(one.clone(), None),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            batch_request(one.clone(), Some("wrong")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            batch_request("[{", Some(KEY)),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            batch_request("", Some(KEY)),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            batch_request(event("x").to_string(), Some(KEY)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch",
        ),
        (
            batch_request(
                Value::Array((0..501).map(|i| event(&format!("e{i}"))).collect()).to_string(),
                Some(KEY),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_too_large",
        ),
        (
            batch_request(
                json!([{"id": "big", "name": "n", "timestamp": 1, "body": "x".repeat(1 << 20)}])
                    .to_string(),
                Some(KEY),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Request::post("/events/batch")
                .header("content-type", "text/plain")
                .header(API_KEY_HEADER, KEY)
                .body(Body::from(one))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (request, status, code) in cases {
        let (got, answer) = h.send(request).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
    }
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn a_batch_item_over_256_kib_is_invalid_alone() {
    let h = harness();
    let big = json!({"id": "big", "name": "n", "timestamp": 1, "body": "x".repeat(300 * 1024)});
    let (status, answer) = h.post_batch(&json!([big, event("small")])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["results"][0]["status"], "invalid");
    assert_eq!(answer["results"][0]["error"], "payload_too_large");
    assert_eq!(answer["results"][1]["status"], "accepted");
    assert_eq!(h.stored().await, ["small"]);
}

#[tokio::test]
async fn a_stuck_store_fails_the_whole_batch_with_503_inside_the_budget() {
    let h = stuck();
    let answered = tokio::time::timeout(
        Duration::from_secs(1),
        h.post_batch(&json!([event("a"), event("b")])),
    )
    .await;
    let (status, answer) = answered.expect("ingest must answer while the store is stuck");
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
    );
}

/// Bodies that are sometimes valid events, often nearly valid, sometimes garbage.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![
        Just(json!("")),
        "[a-z]{1,4}".prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        Just(Value::Null)
    ];
    let text = prop_oneof![
        ".{0,8}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from)
    ];
    let ts = prop_oneof![
        Just(json!("2026-11-22T10:00:00+02:00")),
        Just(json!("2026-11-22")),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
    ];
    let object = (
        proptest::option::of(id),
        proptest::option::of(text.clone()),
        proptest::option::of(text),
        proptest::option::of(ts),
    )
        .prop_map(|(id, name, body, ts)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("id", id),
                ("name", name),
                ("body", body),
                ("timestamp", ts),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m).to_string().into_bytes()
        });
    prop_oneof![4 => object, 1 => proptest::collection::vec(any::<u8>(), 0..64)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn no_request_gets_a_5xx_or_stores_anything_invalid(
        requests in proptest::collection::vec((body(), prop_oneof![Just(Some("application/json")), Just(Some("text/plain")), Just(None)], prop_oneof![Just(Some(KEY)), Just(Some("bad")), Just(None)]), 1..8)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let h = harness();
        let mut accepted = Vec::new();
        for (body, ct, key) in requests {
            let (status, answer) = rt.block_on(h.send(request(body.clone(), ct, key)));
            prop_assert!(!status.is_server_error(), "{status} {answer}");
            if status == StatusCode::ACCEPTED {
                let event = relay_core::parse_event(&body).expect("only valid events are accepted");
                prop_assert!(ct.is_some() && key == Some(KEY));
                accepted.push(event.id);
            } else if !status.is_success() {
                prop_assert!(answer["error"].is_string() && answer["message"].is_string());
            }
        }
        prop_assert_eq!(rt.block_on(h.stored()), accepted);
    }
}

/// Every journal flush fails, and so does writing it again elsewhere: the store is failing.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_store_answers_503_store_failing_and_health_says_so() {
    let h = harness_with(
        Duration::from_millis(400),
        StoreOptions {
            faults: Some(std::sync::Arc::new(
                relay_store::Faults::parse("flush.journal=error", 1).unwrap(),
            )),
            ..StoreOptions::default()
        },
    );
    let (status, body) = h.post(event("first").to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "store_failing", "{body}");
    // From now on, and bad input is still bad input.
    let (status, body) = h.post(event("second").to_string()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_failing"))
    );
    let (status, _) = h.post("{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = h
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (body["status"].as_str(), body["error"].as_str()),
        (Some("failing"), Some("store_failing"))
    );
    assert!(
        !body.to_string().contains("EIO"),
        "no internals in a public answer: {body}"
    );
}
