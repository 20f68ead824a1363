//! Credentials relay fetches for the target: an OAuth2 access token by the client credentials
//! grant (RFC 6749 §4.4), cached until shortly before it expires and fetched again at most once
//! per refusal, and the TLS client identity and CAs of a private target (mTLS). Neither the
//! secret nor a token is ever logged: their `Debug` hides them, and the token's header value is
//! marked sensitive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use relay_core::TransportError;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use tokio::time::Instant;

/// Most bytes of a token endpoint's answer that are read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// The longest a token is kept short of its expiry: it is fetched again this long before.
const RENEW_AHEAD: Duration = Duration::from_secs(60);

/// An OAuth2 client of the target's authorization server.
#[derive(Clone)]
pub struct OAuthClient {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated, as the `scope` parameter takes them.
    pub scopes: Option<String>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// TLS towards a private target: the client certificate (chain and key, PEM) it asks for, and
/// the CAs (PEM) its certificate is signed by, trusted beside the system's.
#[derive(Clone, Default)]
pub struct TargetTls {
    pub identity_pem: Option<String>,
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetTls")
            .field("identity", &self.identity_pem.as_ref().map(|_| ".."))
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

impl TargetTls {
    /// `builder` with this identity and these CAs; an error names the setting at fault.
    pub(crate) fn apply(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, String> {
        if let Some(pem) = &self.identity_pem {
            let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
                format!(
                    "--target-client-cert / --target-client-key: not a PEM certificate and \
                     private key ({})",
                    crate::client::source_chain(&e)
                )
            })?;
            builder = builder.identity(identity);
        }
        if let Some(pem) = &self.ca_pem {
            let cas = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .ok()
                .filter(|cas| !cas.is_empty())
                .ok_or("--target-ca: no PEM certificate in it")?;
            builder = builder.tls_certs_merge(cas);
        }
        Ok(builder)
    }
}

/// Access tokens for the target, one fetch at a time, shared by every request of a dispatcher.
#[derive(Debug, Clone)]
pub(crate) struct TokenSource {
    http: reqwest::Client,
    client: Arc<OAuthClient>,
    timeout: Duration,
    cached: Arc<tokio::sync::Mutex<Option<Token>>>,
    fetched: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Token {
    /// `Bearer …`, marked sensitive.
    header: HeaderValue,
    /// When to fetch the next one; `None` when the server gave no lifetime (then until refused).
    renew_at: Option<Instant>,
}

#[derive(serde::Deserialize)]
struct Granted {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Refused {
    error: String,
    error_description: Option<String>,
}

impl TokenSource {
    /// `http` is a client of its own: the target's extra headers are not the token endpoint's.
    pub(crate) fn new(http: reqwest::Client, client: OAuthClient, timeout: Duration) -> Self {
        TokenSource {
            http,
            client: Arc::new(client),
            timeout,
            cached: Arc::default(),
            fetched: Arc::default(),
        }
    }

    /// Tokens fetched so far.
    pub(crate) fn fetched(&self) -> u64 {
        self.fetched.load(Relaxed)
    }

    /// The `Authorization` value to send: the cached token, or a new one when it is about to
    /// expire. Requests that come while one is fetched wait for it.
    pub(crate) async fn bearer(&self) -> Result<HeaderValue, TransportError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && token.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(token.header.clone());
        }
        let token = self.fetch().await?;
        let header = token.header.clone();
        *cached = Some(token);
        Ok(header)
    }

    /// A token in place of `refused`, which the target answered 401: a new one, unless another
    /// request has fetched one since.
    pub(crate) async fn replace(
        &self,
        refused: &HeaderValue,
    ) -> Result<HeaderValue, TransportError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && token.header != refused
        {
            return Ok(token.header.clone());
        }
        *cached = None;
        let token = self.fetch().await?;
        let header = token.header.clone();
        *cached = Some(token);
        Ok(header)
    }

    async fn fetch(&self) -> Result<Token, TransportError> {
        let failed =
            |why: String| TransportError::Credentials(format!("{}: {why}", self.client.token_url));
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scopes) = &self.client.scopes {
                form.append_pair("scope", scopes);
            }
            form.finish()
        };
        // RFC 6749 §2.3.1: the id and secret are form-encoded before they are put in Basic.
        let encoded = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let response = self
            .http
            .post(&self.client.token_url)
            .basic_auth(
                encoded(&self.client.client_id),
                Some(encoded(&self.client.client_secret)),
            )
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .timeout(self.timeout)
            .body(form)
            .send()
            .await
            .map_err(|e| failed(crate::client::source_chain(&e)))?;
        let status = response.status();
        let body = read_bounded(response).await.map_err(failed)?;
        if !status.is_success() {
            let why = match serde_json::from_slice::<Refused>(&body) {
                Ok(Refused {
                    error,
                    error_description: Some(description),
                }) => format!("{error} ({description})"),
                Ok(Refused { error, .. }) => error,
                Err(_) => "no OAuth2 error in the answer".into(),
            };
            return Err(failed(format!("answered {status}: {why}")));
        }
        let granted: Granted = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("its answer is not an OAuth2 token ({e})")))?;
        if !granted.token_type.eq_ignore_ascii_case("bearer") {
            return Err(failed(format!(
                "it granted a {:?} token; relay sends Bearer tokens only",
                granted.token_type
            )));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", granted.access_token))
            .map_err(|_| failed("its token cannot be an HTTP header".into()))?;
        header.set_sensitive(true);
        let renew_at = granted.expires_in.map(|secs| {
            let lifetime = Duration::from_secs(secs);
            Instant::now() + lifetime - RENEW_AHEAD.min(lifetime / 10)
        });
        self.fetched.fetch_add(1, Relaxed);
        tracing::info!(
            expires_in_s = granted.expires_in,
            "OAuth2 token fetched for the target"
        );
        Ok(Token { header, renew_at })
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| crate::client::source_chain(&e))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_ANSWER {
            return Err(format!(
                "its answer is over {} KiB",
                MAX_TOKEN_ANSWER / 1024
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
