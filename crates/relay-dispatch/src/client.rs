//! The GraphQL call: one HTTP request per event, enriched, with the event id as the
//! `Idempotency-Key`; or, with batching, up to N events as aliased mutations in one request. It
//! reports what came back; deciding what that means is `classify`'s job.

use std::time::Duration;

use relay_core::classify::{MAX_ANSWER_BYTES, alias};
use relay_core::signing::{
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP, SigningSecret,
};
use relay_core::{Answer, TransportError, enrich};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::credentials::{OAuthClient, TargetTls, TokenSource};

/// The document relay sends unless told otherwise.
pub const DEFAULT_DOCUMENT: &str =
    "mutation CreateEvent($input: EventInput!) { createEvent(input: $input) { id } }";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid target URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid header {0:?}: expected `Name: value`")]
    Header(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
    #[error("{0}")]
    Tls(String),
    #[error(
        "a custom GraphQL document cannot be batched (--batch {0}): relay writes the aliased \
         mutations of a batch itself; use --batch 1 with --document, or drop --document"
    )]
    BatchDocument(usize),
    #[error("--batch must be between 1 and {MAX_BATCH}, got {0}")]
    BatchSize(usize),
}

/// Most events in one request.
pub const MAX_BATCH: usize = 500;

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub url: String,
    pub document: String,
    pub brand: String,
    /// Extra headers, e.g. `Authorization: Bearer …`.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Most events in one request (aliased mutations); 1 sends the document as configured.
    pub batch: usize,
    /// Sign every request the Standard Webhooks way, so that the target can refuse forgeries.
    pub signing: Option<SigningSecret>,
    /// Send an OAuth2 access token, fetched by the client credentials grant.
    pub oauth: Option<OAuthClient>,
    /// The client certificate and CAs of a private target.
    pub tls: TargetTls,
}

impl TargetConfig {
    pub fn new(url: impl Into<String>) -> Self {
        TargetConfig {
            url: url.into(),
            document: DEFAULT_DOCUMENT.into(),
            brand: relay_core::DEFAULT_BRAND.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            batch: 1,
            signing: None,
            oauth: None,
            tls: TargetTls::default(),
        }
    }
}

/// Parses `Name: value` as given on the command line.
pub fn parse_header(raw: &str) -> Result<(String, String), ClientError> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| ClientError::Header(raw.into()))?;
    let (name, value) = (name.trim(), value.trim());
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| ClientError::Header(raw.into()))?;
    HeaderValue::from_str(value).map_err(|_| ClientError::Header(raw.into()))?;
    Ok((name.into(), value.into()))
}

#[derive(Debug, Clone)]
pub struct GraphqlClient {
    http: reqwest::Client,
    url: reqwest::Url,
    document: String,
    brand: String,
    timeout: Duration,
    batch: usize,
    signing: Option<SigningSecret>,
    tokens: Option<TokenSource>,
}

impl GraphqlClient {
    pub fn new(config: &TargetConfig) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| ClientError::Url {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Url {
                url: config.url.clone(),
                reason: "scheme must be http or https".into(),
            });
        }
        if config.batch == 0 || config.batch > MAX_BATCH {
            return Err(ClientError::BatchSize(config.batch));
        }
        if config.batch > 1 && config.document.trim() != DEFAULT_DOCUMENT {
            return Err(ClientError::BatchDocument(config.batch));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let raw = || ClientError::Header(format!("{name}: {value}"));
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| raw())?,
                HeaderValue::from_str(value).map_err(|_| raw())?,
            );
        }
        let http = http_client(config)?.default_headers(headers).build()?;
        let tokens = match &config.oauth {
            Some(oauth) => Some(TokenSource::new(
                http_client(config)?.build()?,
                oauth.clone(),
                config.timeout,
            )),
            None => None,
        };
        Ok(GraphqlClient {
            http,
            url,
            document: config.document.clone(),
            brand: config.brand.clone(),
            timeout: config.timeout,
            batch: config.batch,
            signing: config.signing.clone(),
            tokens,
        })
    }

    /// OAuth2 tokens fetched so far (0 without OAuth2).
    pub fn tokens_fetched(&self) -> u64 {
        self.tokens.as_ref().map_or(0, TokenSource::fetched)
    }

    /// Most events [`Self::send_batch`] is given at once.
    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Sends one event (its stored JSON) and returns the target's answer.
    pub async fn send(&self, event_id: &str, payload: &str) -> Result<Answer, TransportError> {
        let body =
            json!({ "query": self.document, "variables": { "input": self.enriched(payload)? } });
        self.post(body, Some(event_id), || event_id.to_owned())
            .await
    }

    /// Sends events (id, stored JSON) in one request: one alone as [`Self::send`] does, more as
    /// aliased mutations `e0: createEvent(input: $e0) { id } e1: …`. Each event's id, its
    /// idempotency key, is in its input; `extensions.idempotencyKeys` maps alias to id, since
    /// one `Idempotency-Key` header cannot name them all.
    pub async fn send_batch(&self, events: &[(&str, &str)]) -> Result<Answer, TransportError> {
        if let [(id, payload)] = events {
            return self.send(id, payload).await;
        }
        let mut variables = Map::new();
        let mut keys = Map::new();
        for (i, (id, payload)) in events.iter().enumerate() {
            variables.insert(alias(i), self.enriched(payload)?);
            keys.insert(alias(i), Value::String((*id).to_owned()));
        }
        let body = json!({
            "query": batch_document(events.len()),
            "variables": variables,
            "extensions": { "idempotencyKeys": keys },
        });
        self.post(body, None, || batch_message_id(events)).await
    }

    fn enriched(&self, payload: &str) -> Result<Value, TransportError> {
        let payload: Map<String, Value> = serde_json::from_str(payload).map_err(|e| {
            TransportError::Unsendable(format!("its stored payload is not a JSON object: {e}"))
        })?;
        Ok(enrich(&payload, &self.brand))
    }

    /// POSTs `body`, with `key` as the `Idempotency-Key` header and, when signing, `message()`
    /// as the `webhook-id` (made only then: a batch's is a digest). With OAuth2, a 401 gets the
    /// request sent once more with a new token.
    async fn post(
        &self,
        body: Value,
        key: Option<&str>,
        message: impl FnOnce() -> String,
    ) -> Result<Answer, TransportError> {
        let body = serde_json::to_vec(&body)
            .map_err(|e| TransportError::Unsendable(format!("cannot encode the request: {e}")))?;
        let message = self.signing.as_ref().map(|_| message());
        let mut token = match &self.tokens {
            Some(tokens) => Some(tokens.bearer().await?),
            None => None,
        };
        let mut refused_once = false;
        loop {
            let response = self
                .request(&body, key, message.as_deref(), token.as_ref())?
                .send()
                .await
                .map_err(|e| self.transport_error(e))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED
                && !refused_once
                && let (Some(tokens), Some(refused)) = (&self.tokens, &token)
            {
                tracing::info!("the target refused the OAuth2 token; fetching a new one");
                token = Some(tokens.replace(refused).await?);
                refused_once = true;
                continue;
            }
            return self.answer(response).await;
        }
    }

    /// One request of `post`, signed (again, on a second try) when signing.
    fn request(
        &self,
        body: &[u8],
        key: Option<&str>,
        message: Option<&str>,
        token: Option<&HeaderValue>,
    ) -> Result<reqwest::RequestBuilder, TransportError> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", header_value(key)?);
        }
        if let Some(token) = token {
            request = request.header(reqwest::header::AUTHORIZATION, token.clone());
        }
        if let (Some(secret), Some(message)) = (&self.signing, message) {
            let timestamp = relay_core::now_millis().div_euclid(1000);
            let signature = secret.sign(message, timestamp, body).ok_or_else(|| {
                TransportError::Unsendable(
                    "its request is not UTF-8, which cannot be signed".into(),
                )
            })?;
            request = request
                .header(HEADER_WEBHOOK_ID, header_value(message)?)
                .header(HEADER_WEBHOOK_TIMESTAMP, timestamp)
                .header(HEADER_WEBHOOK_SIGNATURE, signature);
        }
        Ok(request.timeout(self.timeout).body(body.to_vec()))
    }

    async fn answer(&self, response: reqwest::Response) -> Result<Answer, TransportError> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let budget_headers = response
            .headers()
            .iter()
            .filter(|(name, _)| Answer::is_budget_header(name.as_str()))
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let body = self.read_bounded(response).await?;
        Ok(Answer {
            status,
            retry_after,
            budget_headers,
            body,
        })
    }

    /// The answer's body, up to [`MAX_ANSWER_BYTES`]: a target (or what stands in front of it)
    /// must not make the relay buffer without end.
    async fn read_bounded(
        &self,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, TransportError> {
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(TransportError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(TransportError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, e: reqwest::Error) -> TransportError {
        if e.is_timeout() {
            TransportError::Timeout(self.timeout)
        } else if e.is_connect() {
            TransportError::Connect(source_chain(&e))
        } else {
            TransportError::Other(source_chain(&e))
        }
    }
}

/// The builder both of a target's clients start from (the target's, and its token endpoint's):
/// no redirects, a bounded connect, relay's user agent, the target's TLS settings.
fn http_client(config: &TargetConfig) -> Result<reqwest::ClientBuilder, ClientError> {
    let builder = reqwest::Client::builder()
        // A redirect would turn the POST into a GET; treat it as the misconfiguration it is.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("relay/", env!("CARGO_PKG_VERSION")));
    config.tls.apply(builder).map_err(ClientError::Tls)
}

/// An event id as a header value. Ingest refuses ids that cannot be one; one stored by an older
/// relay fails here, once.
fn header_value(id: &str) -> Result<HeaderValue, TransportError> {
    HeaderValue::from_str(id).map_err(|_| {
        TransportError::Unsendable(format!(
            "its id {id:?} cannot be an Idempotency-Key header (ids must be {})",
            relay_core::event::ID_RULES
        ))
    })
}

/// The `webhook-id` of a batch: `batch_` and a digest of its event ids, so the same batch sent
/// again carries the same id (each event's own id is in the signed body).
fn batch_message_id(events: &[(&str, &str)]) -> String {
    let mut hash = hmac_sha256::Hash::new();
    for (id, _) in events {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("batch_{hex}")
}

/// The document of a batch of `n` events: the default mutation, aliased once per event.
pub fn batch_document(n: usize) -> String {
    let variables: Vec<String> = (0..n)
        .map(|i| format!("${}: EventInput!", alias(i)))
        .collect();
    let fields: Vec<String> = (0..n)
        .map(|i| format!("{0}: createEvent(input: ${0}) {{ id }}", alias(i)))
        .collect();
    format!(
        "mutation CreateEvents({}) {{ {} }}",
        variables.join(", "),
        fields.join(" ")
    )
}

/// reqwest's top-level message hides the cause ("error sending request"); show the chain.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_from_the_command_line() {
        assert_eq!(
            parse_header("Authorization: Bearer x").unwrap(),
            ("Authorization".into(), "Bearer x".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: v").is_err());
    }

    #[test]
    fn a_batch_document_aliases_the_default_mutation() {
        assert_eq!(
            batch_document(2),
            "mutation CreateEvents($e0: EventInput!, $e1: EventInput!) { \
             e0: createEvent(input: $e0) { id } e1: createEvent(input: $e1) { id } }"
        );
    }

    #[test]
    fn a_custom_document_is_refused_with_batches_and_sizes_are_bounded() {
        let custom = |batch| TargetConfig {
            document: "mutation M($input: EventInput!) { record(event: $input) { ok } }".into(),
            batch,
            ..TargetConfig::new("http://127.0.0.1:1/graphql")
        };
        assert!(GraphqlClient::new(&custom(1)).is_ok());
        let refused = GraphqlClient::new(&custom(10)).unwrap_err();
        assert!(matches!(refused, ClientError::BatchDocument(10)));
        assert!(refused.to_string().contains("--batch 1"), "{refused}");
        for batch in [0, MAX_BATCH + 1] {
            let config = TargetConfig {
                batch,
                ..TargetConfig::new("http://127.0.0.1:1/graphql")
            };
            assert!(matches!(
                GraphqlClient::new(&config),
                Err(ClientError::BatchSize(_))
            ));
        }
    }

    proptest::proptest! {
        /// What ingest accepts, the header carries unchanged: the target reads the same id.
        #[test]
        fn every_id_ingest_accepts_is_its_own_idempotency_header(id in "\\PC{0,300}|[ -~]{1,300}") {
            if relay_core::event::check_id(&id).is_ok() {
                let value = HeaderValue::from_str(&id).expect("a valid header value");
                proptest::prop_assert_eq!(value.to_str().ok(), Some(id.as_str()));
                proptest::prop_assert_eq!(id.trim(), id.as_str());
            }
        }
    }

    #[test]
    fn urls_must_be_http() {
        assert!(GraphqlClient::new(&TargetConfig::new("http://127.0.0.1:1/graphql")).is_ok());
        assert!(matches!(
            GraphqlClient::new(&TargetConfig::new("ftp://x")),
            Err(ClientError::Url { .. })
        ));
        assert!(matches!(
            GraphqlClient::new(&TargetConfig::new("not a url")),
            Err(ClientError::Url { .. })
        ));
    }
}
