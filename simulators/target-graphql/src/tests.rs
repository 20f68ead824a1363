//! The mock target over real HTTP: limiter modes, faults, dedup and counters.

use std::collections::HashMap;
use std::time::Instant;

use super::*;

const MUTATION: &str =
    "mutation CreateEvent($input: EventInput!) { createEvent(input: $input) { id } }";

async fn target(config: TargetConfig) -> TargetHandle {
    start("127.0.0.1:0".parse().unwrap(), config).await.unwrap()
}

fn input(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "body": "b", "timestamp": 1, "brand": "testBrand", "extra": {"k": [1, 2]}})
}

async fn create(
    t: &TargetHandle,
    id: &str,
    name: &str,
    key: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new()
        .post(t.url())
        .json(&json!({"query": MUTATION, "variables": {"input": input(id, name)}}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

/// POSTs a GraphQL request as it is; the answer's body.
async fn post_json(t: &TargetHandle, request: &Value) -> Value {
    reqwest::Client::new()
        .post(t.url())
        .json(request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn unlimited() -> TargetConfig {
    TargetConfig {
        rate: 1e6,
        ..Default::default()
    }
}

#[tokio::test]
async fn stores_events_once_and_counts_duplicates() {
    let t = target(unlimited()).await;
    let (status, _, body) = create(&t, "a", "n", Some("a")).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"data": {"createEvent": {"id": "a"}}}))
    );
    create(&t, "a", "n", Some("a")).await;
    create(&t, "b", "n", None).await;

    let stats = t.stats();
    assert_eq!(
        (
            stats.requests,
            stats.events,
            stats.duplicates,
            stats.bad_idempotency_keys
        ),
        (3, 2, 1, 1)
    );
    let events = t.events();
    assert_eq!(events["a"].deliveries, 2);
    assert_eq!(
        Value::Object(events["a"].input.clone()),
        input("a", "n"),
        "kept exactly as received"
    );
}

#[tokio::test]
async fn a_batch_of_aliased_mutations_takes_one_token_and_answers_per_alias() {
    let t = target(TargetConfig {
        rate: 1.0,
        burst: Some(1.0),
        faults: Faults {
            reject_names: vec!["poison".into()],
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let query = "mutation B($e0: EventInput!, $e1: EventInput!, $e2: EventInput!) { \
        e0: createEvent(input: $e0) { id } e1: createEvent(input: $e1) { id } \
        e2: createEvent(input: $e2) { id } }";
    let batch = json!({
        "query": query,
        "variables": {"e0": input("a", "n"), "e1": input("p", "poison"), "e2": input("c", "n")},
        "extensions": {"idempotencyKeys": {"e0": "a", "e1": "p", "e2": "wrong"}},
    });
    let answer = post_json(&t, &batch).await;
    // async-graphql leaves a failed nullable field out of `data` rather than null: either way,
    // only its error says what became of it.
    assert_eq!(
        (
            &answer["data"]["e0"],
            &answer["data"]["e1"],
            &answer["data"]["e2"]
        ),
        (&json!({"id": "a"}), &Value::Null, &json!({"id": "c"}))
    );
    assert_eq!(answer["errors"][0]["path"], json!(["e1"]));
    assert_eq!(answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    // The bucket held one token: the batch took it whole, the next request is refused.
    let again = reqwest::Client::new()
        .post(t.url())
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 429);
    let stats = t.stats();
    assert_eq!(
        (
            stats.requests,
            stats.events,
            stats.rejected,
            stats.rate_limited,
            stats.bad_idempotency_keys
        ),
        (2, 2, 1, 1, 1),
        "one key named another event"
    );
}

#[tokio::test]
async fn http429_mode_answers_429_with_retry_after() {
    let t = target(TargetConfig {
        rate: 1.0,
        burst: Some(2.0),
        ..Default::default()
    })
    .await;
    assert_eq!(create(&t, "a", "n", Some("a")).await.0, 200);
    assert_eq!(create(&t, "b", "n", Some("b")).await.0, 200);
    let (status, retry_after, body) = create(&t, "c", "n", Some("c")).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("1")));
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!((t.stats().rate_limited, t.stats().events), (1, 2));
}

#[tokio::test]
async fn graphql_mode_signals_the_limit_in_the_body() {
    let t = target(TargetConfig {
        rate: 1.0,
        burst: Some(1.0),
        mode: LimitMode::Graphql,
        ..Default::default()
    })
    .await;
    create(&t, "a", "n", Some("a")).await;
    let (status, retry_after, body) = create(&t, "b", "n", Some("b")).await;
    assert_eq!((status, retry_after), (200, None));
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 1);
}

#[tokio::test]
async fn faults_fail_reject_and_delay_on_cue() {
    let t = target(unlimited()).await;
    t.set_faults(Faults {
        outage: true,
        ..Default::default()
    });
    assert_eq!(create(&t, "a", "n", Some("a")).await.0, 503);
    t.set_faults(Faults {
        fail_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(create(&t, "a", "n", Some("a")).await.0, 503);

    let client = reqwest::Client::new();
    let faults = Faults {
        reject_names: vec!["poison".into()],
        latency_ms: 150,
        ..Default::default()
    };
    client
        .put(format!("http://{}/admin/faults", t.addr()))
        .json(&faults)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let started = Instant::now();
    let (status, _, body) = create(&t, "p", "poison", Some("p")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "latency is injected"
    );
    assert_eq!(
        (status, &body["errors"][0]["extensions"]["code"]),
        (200, &json!("BAD_USER_INPUT"))
    );
    assert_eq!(create(&t, "ok", "fine", Some("ok")).await.0, 200);

    let stats: Stats = client
        .get(format!("http://{}/admin/stats", t.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((stats.failed, stats.rejected, stats.events), (2, 1, 1));
}

#[tokio::test]
async fn queries_show_what_was_received() {
    let t = target(unlimited()).await;
    create(&t, "a", "n", Some("a")).await;
    create(&t, "a", "n", Some("a")).await;
    let answer: Value = reqwest::Client::new()
        .post(t.url())
        .json(&json!({"query": "{ stats { events duplicates } events { id deliveries input } event(id: \"a\") { deliveries } }"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["data"]["stats"],
        json!({"events": 1, "duplicates": 1})
    );
    assert_eq!(
        answer["data"]["events"][0]["input"]["extra"],
        json!({"k": [1, 2]})
    );
    assert_eq!(answer["data"]["event"]["deliveries"], 2);
}

#[tokio::test]
async fn unknown_admin_fields_are_refused() {
    let t = target(unlimited()).await;
    let response = reqwest::Client::new()
        .put(format!("http://{}/admin/faults", t.addr()))
        .json(&json!({"outage": true, "typo": 1}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    assert!(!t.faults().outage);
    t.stop().await;
}

#[tokio::test]
async fn drop_and_duplicate_faults_misbehave_on_every_nth_event() {
    let t = target(unlimited()).await;
    t.set_faults(Faults {
        drop_every: Some(3),
        ..Default::default()
    });
    for id in ["a", "b", "c", "d"] {
        assert_eq!(
            create(&t, id, "n", Some(id)).await.0,
            200,
            "dropped events are still acknowledged"
        );
    }
    let mut stored: Vec<_> = t.events().into_keys().collect();
    stored.sort();
    assert_eq!(stored, ["a", "b", "d"]);

    t.set_faults(Faults {
        duplicate_every: Some(5),
        ..Default::default()
    });
    create(&t, "e", "n", Some("e")).await;
    create(&t, "f", "n", Some("f")).await;
    assert_eq!(
        (t.events()["e"].deliveries, t.events()["f"].deliveries),
        (2, 1),
        "the 5th arrival is recorded twice"
    );
}

/// One request; the answer's status, budget headers and body.
async fn create_with_headers(t: &TargetHandle, id: &str) -> (u16, HashMap<String, String>, Value) {
    let response = reqwest::Client::new()
        .post(t.url())
        .header("Idempotency-Key", id)
        .json(&json!({"query": MUTATION, "variables": {"input": input(id, "n")}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    (status, headers, response.json().await.unwrap())
}

#[tokio::test]
async fn headers_mode_announces_the_budget_in_each_syntax() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for announce in [
        Announce::Draft6,
        Announce::Draft8,
        Announce::XRatelimit,
        Announce::XRatelimitEpoch,
    ] {
        let t = target(TargetConfig {
            rate: 3.0,
            mode: LimitMode::Headers,
            announce,
            ..Default::default()
        })
        .await;
        let mut seen = Vec::new();
        for i in 0..4 {
            let (status, headers, _) = create_with_headers(&t, &format!("e{i}")).await;
            let remaining = match announce {
                Announce::Draft6 => headers["ratelimit-remaining"].clone(),
                Announce::Draft8 => {
                    assert_eq!(headers["ratelimit-policy"], "\"default\";q=3;w=1");
                    let r = headers["ratelimit"].split(";r=").nth(1).unwrap();
                    r.split(';').next().unwrap().to_owned()
                }
                _ => headers["x-ratelimit-remaining"].clone(),
            };
            if announce == Announce::XRatelimitEpoch {
                let reset: u64 = headers["x-ratelimit-reset"].parse().unwrap();
                assert!((now..=now + 3).contains(&reset), "an epoch: {reset}");
            }
            if announce == Announce::Draft6 {
                assert_eq!(headers["ratelimit-limit"], "3, 3;w=1");
            }
            seen.push((status, remaining));
        }
        assert_eq!(
            seen,
            [(200, "2"), (200, "1"), (200, "0"), (429, "0")].map(|(s, r)| (s, r.to_owned())),
            "{announce:?}"
        );
    }
}

#[tokio::test]
async fn graphql_cost_mode_reports_throttle_status_and_throttles() {
    let t = target(TargetConfig {
        rate: 1.0,
        burst: Some(2.0),
        mode: LimitMode::Headers,
        announce: Announce::GraphqlCost,
        ..Default::default()
    })
    .await;
    let mut available = Vec::new();
    for i in 0..3 {
        let (status, _, body) = create_with_headers(&t, &format!("e{i}")).await;
        assert_eq!(status, 200);
        let cost = &body["extensions"]["cost"]["throttleStatus"];
        assert_eq!(
            (
                cost["maximumAvailable"].as_f64(),
                cost["restoreRate"].as_f64()
            ),
            (Some(2.0), Some(1.0))
        );
        available.push(cost["currentlyAvailable"].as_f64().unwrap());
        if i == 2 {
            assert_eq!(body["errors"][0]["extensions"]["code"], "THROTTLED");
        }
    }
    assert_eq!(available, [1.0, 0.0, 0.0]);
}

#[tokio::test]
async fn the_limit_changes_while_it_runs() {
    let t = target(TargetConfig {
        rate: 1.0,
        burst: Some(1.0),
        ..Default::default()
    })
    .await;
    assert_eq!(create(&t, "a", "n", Some("a")).await.0, 200);
    assert_eq!(create(&t, "b", "n", Some("b")).await.0, 429);
    let client = reqwest::Client::new();
    let admin = format!("http://{}/admin/limit", t.addr());
    let changed = client
        .put(&admin)
        .json(&json!({"rate": 1000.0, "burst": 100.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status().as_u16(), 200);
    for i in 0..50 {
        assert_eq!(
            create(&t, &format!("c{i}"), "n", Some(&format!("c{i}")))
                .await
                .0,
            200
        );
    }
    let bad = client
        .put(&admin)
        .json(&json!({"rate": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    assert_eq!(t.limit().rate, 1000.0);
    t.set_limit(Limit {
        rate: 1.0,
        burst: Some(1.0),
        window_ms: Some(10_000),
    });
    for i in 0..10 {
        assert_eq!(create(&t, &format!("d{i}"), "n", None).await.0, 200);
    }
    assert_eq!(
        create(&t, "e", "n", None).await.0,
        429,
        "10 per 10 s window"
    );
}

/// `concurrency`: at most N requests in progress; the next is answered 429 at once, without
/// `Retry-After`, and a request that finished frees its place.
#[tokio::test]
async fn a_concurrency_limit_refuses_what_is_beyond_it_and_frees_places() {
    let mut config = unlimited();
    config.concurrency = Some(2);
    config.faults.latency_ms = 300;
    let t = target(config).await;
    let started = (0..3).map(|i| {
        let t = &t;
        async move { create(t, &format!("c{i}"), "n", Some(&format!("c{i}"))).await }
    });
    let answers = futures_util::future::join_all(started).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _, _)| *status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429]);
    let refused = answers
        .iter()
        .find(|(status, _, _)| *status == 429)
        .unwrap();
    assert_eq!(refused.1, None, "no Retry-After: the limit is not a rate");
    // Both places are free again.
    let again = futures_util::future::join_all((3..5).map(|i| {
        let t = &t;
        async move { create(t, &format!("c{i}"), "n", Some(&format!("c{i}"))).await }
    }))
    .await;
    assert!(again.iter().all(|(status, _, _)| *status == 200));
    assert_eq!(t.stats().rate_limited, 1);
}

/// `non_null_mutations`: a refused alias nulls the whole `data`, and the aliases after it do
/// not run (the specification's serial execution), where the nullable schema answers per alias.
#[tokio::test]
async fn a_non_null_mutation_stops_the_batch_at_the_refused_alias() {
    let batch = json!({
        "query": "mutation M($e0: EventInput!, $e1: EventInput!, $e2: EventInput!) { e0: createEvent(input: $e0) { id } e1: createEvent(input: $e1) { id } e2: createEvent(input: $e2) { id } }",
        "variables": {"e0": input("s0", "n"), "e1": input("s1", "poison"), "e2": input("s2", "n")},
        "extensions": {"idempotencyKeys": {"e0": "s0", "e1": "s1", "e2": "s2"}},
    });
    for strict in [false, true] {
        let mut config = unlimited();
        config.non_null_mutations = strict;
        config.faults.reject_names = vec!["poison".into()];
        let t = target(config).await;
        let answer = post_json(&t, &batch).await;
        assert_eq!(answer["errors"][0]["path"], json!(["e1"]), "{answer}");
        let stored: Vec<String> = t.events().into_keys().collect();
        if strict {
            assert_eq!(answer["data"], Value::Null, "{answer}");
            assert_eq!(stored, ["s0"], "e2 did not run");
        } else {
            assert_eq!(answer["data"]["e2"]["id"], "s2", "{answer}");
            assert_eq!(stored.len(), 2);
        }
    }
}
