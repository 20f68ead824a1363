//! The one error shape every refusal takes: `{"error", "message", "field"?}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

/// Marks a response as a refusal, with its error code, for middleware (logging, metrics).
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub code: &'static str,
}

/// The id of the event a response is about, for middleware (access logs, metrics).
#[derive(Debug, Clone)]
pub struct EventId(pub String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error: code,
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self)).into_response();
        response
            .extensions_mut()
            .insert(Refusal { code: self.error });
        response
    }
}
