//! The ingest server's edge: connections (plain TCP, or TLS), how long a client may take to send
//! a request, and how many connections may be open at once, so that slow or broken clients
//! cannot hold the server that the good ones need.
//!
//! `axum::serve` has no read timeouts and no connection limit: a client that sends a header a
//! byte a minute holds a connection (and a task) forever, and a few thousand of them use up the
//! process's file descriptors. Here each connection is served by hyper with
//!
//! - a header timeout: the whole request head must arrive within it, counted from the
//!   connection's start or from the previous answer, so it is also how long an idle kept-alive
//!   connection stays open (hyper's `header_read_timeout`);
//! - a body timeout: the whole body must arrive within it, counted from the end of the head
//!   (a deadline, not a per-read timer, so a trickle of bytes does not extend it); past it the
//!   answer is `408 body_timeout`;
//! - a TLS handshake bounded by the header timeout;
//! - a cap on open connections: at the cap, new connections wait in the kernel's backlog until
//!   one closes, and the relay says so in its log (once per 10 s while it lasts).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::BodyTimeout;

/// How the edge treats its clients. The defaults suit a relay on a network.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Most time a client may take to send a request's head (and to finish a TLS handshake),
    /// from the connection's start or the previous answer: also how long an idle kept-alive
    /// connection stays open.
    pub header_timeout: Duration,
    /// Most time a client may take to send a request's body, from the end of its head.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Serve HTTPS with this certificate, reloadable; plain HTTP without.
    pub tls: Option<Tls>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            tls: None,
        }
    }
}

/// Serves `app` on `listener` as [`ServeOptions`] says, until `shutdown` resolves; then stops
/// accepting and lets the requests in progress finish (each bounded by the timeouts).
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut slots = Slots::new(options.max_connections);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let Some(slot) = slots.take(shutdown.as_mut()).await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // neither ends the server.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_timeout = options.body_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(|body| Body::new(Deadline::new(body, body_timeout)));
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let http = http.clone();
        let watcher = graceful.watcher();
        match options.tls.as_ref().map(Tls::current) {
            None => {
                let connection = http.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _slot = slot;
                    log_connection_end(peer, watcher.watch(connection).await);
                });
            }
            Some(config) => {
                let header_timeout = options.header_timeout;
                tokio::spawn(async move {
                    let _slot = slot;
                    let Some(stream) = handshake(config, stream, peer, header_timeout).await else {
                        return;
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    log_connection_end(peer, watcher.watch(connection).await);
                });
            }
        }
    }
    drop(listener);
    // Requests in progress finish; none can take longer than the timeouts allow, but a
    // handler could, so the wait is bounded.
    let grace = options.header_timeout + options.body_timeout;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "connections still open at shutdown were closed");
    }
    Ok(())
}

/// The connection cap: a slot per open connection. When none is free a new connection waits,
/// and the log says so once per 10 s while it lasts, with how many waited.
struct Slots {
    slots: Arc<Semaphore>,
    max: usize,
    full_since: Option<Instant>,
    waits: u64,
}

impl Slots {
    fn new(max: usize) -> Self {
        Slots {
            slots: Arc::new(Semaphore::new(max.max(1))),
            max,
            full_since: None,
            waits: 0,
        }
    }

    /// A free slot, or `None` if `shutdown` comes first.
    async fn take(
        &mut self,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(slot);
        }
        self.waits += 1;
        if self
            .full_since
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                max_connections = self.max,
                waiting_since_last = self.waits,
                "connection limit reached: new connections wait until one closes \
                 (raise --max-connections if these are real clients)"
            );
            self.full_since = Some(Instant::now());
            self.waits = 0;
        }
        tokio::select! {
            slot = Arc::clone(&self.slots).acquire_owned() => slot.ok(),
            () = shutdown => None,
        }
    }
}

/// The TLS handshake, bounded by the header timeout; a failed or slow one ends the connection
/// (logged at debug: scanners and health checks do it all day).
async fn handshake(
    config: Arc<rustls::ServerConfig>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

fn log_connection_end(peer: SocketAddr, ended: Result<(), hyper::Error>) {
    if let Err(e) = ended {
        if e.is_timeout() {
            tracing::debug!(%peer, "connection closed: the request head did not arrive in time");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct Deadline<B> {
    body: B,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Deadline<B> {
    fn new(body: B, limit: Duration) -> Self {
        Deadline {
            body,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(self.limit).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A certificate and key from PEM files, reloadable while the server runs (on SIGHUP in
/// `relay up`): connections made after a reload get the new certificate.
#[derive(Debug, Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

/// Why a certificate or key could not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)")]
    NoCertificate(PathBuf),
    #[error("the key in {key} does not suit the certificate in {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

impl Tls {
    /// Reads the certificate chain (leaf first) and the private key (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// Reads the files again. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    fn read(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
        move |source| TlsError::Read {
            path: path.to_owned(),
            source,
        }
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(read(key))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|source| TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
