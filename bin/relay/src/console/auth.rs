//! Signing in to the console: its own admin token, a cookie for browsers, a bearer token for
//! scripts, and a check that a form was posted from the console itself.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use clap::Args;
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::Console;
use super::api::ApiError;

const COOKIE: &str = "relay_console";
/// Shortest admin token accepted: a guessable one would open the dead letters to anyone.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// The console's own token (never an ingest key). Browsers sign in with it once and keep a
    /// cookie; scripts send `Authorization: Bearer TOKEN`. At least 16 characters. Without it,
    /// relay makes one for this run and prints it in the console's URL.
    #[arg(
        long,
        env = "RELAY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Console"
    )]
    admin_token: Option<String>,
}

/// The admin token: given, or made for this run.
#[derive(Debug, Clone)]
pub(crate) enum Token {
    Given(String),
    Made(String),
}

impl Token {
    pub(crate) fn secret(&self) -> &str {
        match self {
            Token::Given(t) | Token::Made(t) => t,
        }
    }
}

impl AdminArgs {
    /// The token to sign in with; one that is too short is a usage error.
    pub(crate) fn token(&self) -> anyhow::Result<Token> {
        match &self.admin_token {
            Some(t) if t.chars().count() < MIN_TOKEN_LEN => clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!(
                    "--admin-token: at least {MIN_TOKEN_LEN} characters, got {}\n",
                    t.chars().count()
                ),
            )
            .exit(),
            Some(t) => Ok(Token::Given(t.clone())),
            None => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes)
                    .map_err(|e| anyhow::anyhow!("cannot make an admin token: {e}"))?;
                Ok(Token::Made(hex(&bytes)))
            }
        }
    }
}

impl AdminArgs {
    /// The token given, if one was.
    pub(crate) fn given(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a request must show.
#[derive(Debug)]
pub(crate) struct Auth {
    token: Vec<u8>,
    /// The cookie's value: a MAC of the token, so the cookie never holds the token itself.
    session: String,
}

impl Auth {
    pub(crate) fn new(token: &str) -> Self {
        Auth {
            token: token.as_bytes().to_vec(),
            session: hex(&hmac_sha256::HMAC::mac(b"relay console session v1", token)),
        }
    }

    fn token_ok(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(&self.token))
    }

    fn signed_in(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = bearer {
            return self.token_ok(token.trim());
        }
        cookie(headers).is_some_and(|c| bool::from(c.as_bytes().ct_eq(self.session.as_bytes())))
    }

    fn set_cookie(&self) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            self.session
        )
    }
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether a form post comes from the console's own pages: a browser says where a post comes
/// from (`Origin`, or `Sec-Fetch-Site`); a script with a bearer token says neither.
fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null");
    if let Some(origin) = origin {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        return origin_host.is_some() && origin_host == host;
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => true,
    }
}

/// Lets a signed-in request through. Otherwise a page redirects to `/login`, the API answers
/// 401; `?token=` on a page signs the browser in and drops the token from the address.
pub(crate) async fn require_sign_in(
    State(console): State<Arc<Console>>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &console.auth;
    let path = request.uri().path().to_owned();
    let api = path.starts_with("/api/") || path == "/metrics";
    if let Some(token) = query_token(request.uri().query())
        && !api
        && request.method() == Method::GET
    {
        if !auth.token_ok(&token) {
            return login_page(Some("That token is not this console's."), &path).into_response();
        }
        return (
            [(header::SET_COOKIE, auth.set_cookie())],
            Redirect::to(&path),
        )
            .into_response();
    }
    if !auth.signed_in(request.headers()) {
        if api || request.method() != Method::GET {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "sign in: send `Authorization: Bearer <admin token>`",
            )
            .into_response();
        }
        let next = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("next", next)
            .finish();
        return Redirect::to(&format!("/login?{query}")).into_response();
    }
    if request.method() == Method::POST && !same_origin(request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "this form was not posted from the console",
        )
        .into_response();
    }
    next.run(request).await
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

pub(super) fn routes() -> axum::Router<Arc<Console>> {
    axum::Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

#[derive(Debug, Deserialize)]
struct Next_ {
    next: Option<String>,
}

/// Only a path of this console: never `//elsewhere` or a URL.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

async fn login_form(Query(q): Query<Next_>) -> Response {
    login_page(None, safe_next(q.next.as_deref())).into_response()
}

async fn login(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let field = |name: &str| {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let next = field("next");
    let next = safe_next(next.as_deref());
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if !console
        .auth
        .token_ok(field("token").unwrap_or_default().trim())
    {
        return (
            StatusCode::UNAUTHORIZED,
            login_page(Some("That token is not this console's."), next),
        )
            .into_response();
    }
    (
        [(header::SET_COOKIE, console.auth.set_cookie())],
        Redirect::to(next),
    )
        .into_response()
}

async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

fn login_page(error: Option<&str>, next: &str) -> maud::Markup {
    super::pages::bare(
        "Sign in",
        html! {
            form.login method="post" action="/login" {
                h1 { "relay console" }
                p { "Sign in with the console's admin token (" code { "--admin-token" } ")." }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                input type="hidden" name="next" value=(next);
                label { "Admin token" input #token type="password" name="token" autocomplete="current-password" autofocus required; }
                button type="submit" { "Sign in" }
            }
        },
    )
}
