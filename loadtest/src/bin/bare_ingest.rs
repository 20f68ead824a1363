//! The ingest benchmark's baseline: an axum handler that reads the body and answers 202 without
//! validating or storing anything. relay's figures are read against this one, on the same machine
//! in the same run.

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;

async fn accept(body: Bytes) -> impl IntoResponse {
    let _ = body.len();
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"accepted"}"#,
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("bare-ingest listening on http://{}", listener.local_addr()?);
    axum::serve(listener, Router::new().route("/events", post(accept))).await
}
