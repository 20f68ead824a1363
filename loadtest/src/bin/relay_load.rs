//! Goose load test of relay's ingest API. Each simulated user POSTs unique, valid events with the
//! API key; a 202 is the only success. Load shapes (steady, burst, soak) are goose test plans,
//! chosen in `loadtest/goose.sh`. Speaks HTTP only; never imports relay's crates.
//!
//!     RELAY_API_KEY=… relay-load --host http://127.0.0.1:8080 --test-plan "32,2s;32,30s;0,1s"

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use goose::prelude::*;
use serde_json::json;

static NEXT: AtomicU64 = AtomicU64::new(0);
static RUN: OnceLock<String> = OnceLock::new();
static KEY: OnceLock<String> = OnceLock::new();

async fn post_event(user: &mut GooseUser) -> TransactionResult {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let event = json!({
        "id": format!("{}-{n}", RUN.get().map_or("load", String::as_str)),
        "name": "load.event",
        "body": "x".repeat(64),
        "timestamp": 1_763_800_000_000u64 + n,
    });
    let request = user
        .get_request_builder(&GooseMethod::Post, "/events")?
        .header("x-api-key", KEY.get().map_or("", String::as_str))
        .json(&event);
    let request = GooseRequest::builder()
        .name("POST /events")
        .set_request_builder(request)
        .expect_status_code(202)
        .build();
    let _response = user.request(request).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    let key = std::env::var("RELAY_API_KEY").unwrap_or_default();
    if key.is_empty() {
        eprintln!("error: set RELAY_API_KEY to the key `relay up` accepts");
        std::process::exit(2);
    }
    let _ = KEY.set(key);
    // Ids must be new on every run: a repeated id is answered 200 (duplicate), not 202.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let _ = RUN.set(format!("load-{nanos:x}"));
    GooseAttack::initialize()?
        .register_scenario(scenario!("Source").register_transaction(transaction!(post_event)))
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoWebSocket, true)?
        .execute()
        .await?;
    Ok(())
}
