//! HTTP clients to upstream targets.
//!
//! hyper-util's client keeps one keep-alive pool per target authority. Plain
//! HTTP clients are shared by every upstream with the same settings and
//! survive reloads (they sit in [`ClientCache`]); TLS clients are rebuilt on
//! each reload so that rotated CA and client certificates are read again.
//!
//! Upstreams that receive PROXY protocol headers get a [`ProxiedClient`]
//! instead: a header names one client, so such a connection is never shared
//! between clients (HAProxy treats these connections as private too); each
//! request opens its own connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::proxy::body::Body;
use crate::server::proxy_protocol::{self, Version};

/// Settings that decide whether two upstreams can share a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    /// HTTP/2 with prior knowledge (or ALPN h2 over TLS).
    pub http2: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How long idle pooled connections are kept.
    pub idle_timeout: Duration,
}

/// A client to plain-HTTP or TLS targets.
#[derive(Clone)]
pub enum UpstreamClient {
    /// Plain HTTP (h1 or h2c), pooled.
    Plain(Client<HttpConnector, Body>),
    /// TLS to the targets, pooled.
    Tls(Client<HttpsConnector<HttpConnector>, Body>),
    /// A connection per request that starts with a PROXY header.
    Proxied(Arc<ProxiedClient>),
}

/// The two ends of the client's connection, for PROXY headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peers {
    /// The client's address.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct SendError {
    /// The connection could not be opened (retried as `connect_error`).
    pub connect: bool,
    /// It was a timeout (the gateway answers 504 rather than 502).
    pub timed_out: bool,
    /// The error chain, for logs only: it names the target.
    pub detail: String,
}

impl SendError {
    fn from_legacy(e: &hyper_util::client::legacy::Error) -> SendError {
        SendError {
            connect: e.is_connect(),
            timed_out: chain_has_timeout(e),
            detail: error_chain(e),
        }
    }

    fn connect(e: &(dyn std::error::Error + 'static)) -> SendError {
        SendError {
            connect: true,
            timed_out: chain_has_timeout(e),
            detail: error_chain(e),
        }
    }
}

impl UpstreamClient {
    /// Sends `req` (whose URI holds the target) and waits for the response
    /// headers. `peers` names the client for PROXY headers; `None` (the
    /// gateway's own health checks) sends a header that names no client.
    pub async fn send(
        &self,
        req: Request<Body>,
        peers: Option<Peers>,
    ) -> Result<Response<Incoming>, SendError> {
        match self {
            UpstreamClient::Plain(c) => {
                c.request(req).await.map_err(|e| SendError::from_legacy(&e))
            }
            UpstreamClient::Tls(c) => c.request(req).await.map_err(|e| SendError::from_legacy(&e)),
            UpstreamClient::Proxied(c) => c.send(req, peers).await,
        }
    }
}

/// Which TLS server name to send to (and verify for) each target.
#[derive(Clone, Debug, Default)]
pub struct ServerNames {
    /// The upstream's `tls.sni`, which wins for every target.
    pub fixed: Option<ServerName<'static>>,
    /// For targets resolved from a DNS name: `IP:port` to that name.
    pub by_address: HashMap<String, ServerName<'static>>,
}

impl ServerNames {
    /// The name for a request to `uri`: the fixed one, the DNS name the
    /// target's address came from, or the URI's own host.
    pub fn for_uri(
        &self,
        uri: &http::Uri,
    ) -> Result<ServerName<'static>, rustls_pki_types::InvalidDnsNameError> {
        if let Some(name) = &self.fixed {
            return Ok(name.clone());
        }
        if let Some(name) = uri
            .authority()
            .and_then(|a| self.by_address.get(a.as_str()))
        {
            return Ok(name.clone());
        }
        let host = uri.host().unwrap_or_default();
        ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
    }
}

/// Sends each request on a new connection that starts with a PROXY header.
pub struct ProxiedClient {
    /// PROXY protocol version.
    pub version: Version,
    /// TLS after the header, with the server names to send.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerNames)>,
    /// Speak HTTP/2 (prior knowledge, or ALPN h2 over TLS).
    pub http2: bool,
    /// Time to open the connection.
    pub connect_timeout: Duration,
}

impl ProxiedClient {
    async fn send(
        &self,
        req: Request<Body>,
        peers: Option<Peers>,
    ) -> Result<Response<Incoming>, SendError> {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| SendError {
                connect: true,
                timed_out: false,
                detail: "request URI has no target".to_string(),
            })?;
        let mut stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(&authority),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::connect(&e)),
            Err(_) => {
                return Err(SendError {
                    connect: true,
                    timed_out: true,
                    detail: format!("connect to {authority} timed out"),
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let header = match peers {
            Some(p) => proxy_protocol::encode(self.version, p.source, p.destination),
            None => proxy_protocol::encode_local(self.version),
        };
        stream
            .write_all(&header)
            .await
            .map_err(|e| SendError::connect(&e))?;
        match &self.tls {
            None => self.exchange(TokioIo::new(stream), req).await,
            Some((connector, names)) => {
                let name = names
                    .for_uri(req.uri())
                    .map_err(|e| SendError::connect(&e))?;
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| SendError::connect(&e))?;
                self.exchange(TokioIo::new(tls), req).await
            }
        }
    }

    async fn exchange<I>(&self, io: I, req: Request<Body>) -> Result<Response<Incoming>, SendError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let broken = |e: hyper::Error| SendError {
            connect: false,
            timed_out: false,
            detail: error_chain(&e),
        };
        if self.http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| SendError::connect(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "proxied upstream connection ended");
                }
            });
            sender.send_request(req).await.map_err(broken)
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| SendError::connect(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "proxied upstream connection ended");
                }
            });
            sender.send_request(req).await.map_err(broken)
        }
    }
}

/// Whether an error chain contains an I/O timeout.
fn chain_has_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// An error and its sources on one line, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Clients that outlive a configuration snapshot.
#[derive(Default)]
pub struct ClientCache {
    plain: Mutex<HashMap<PoolSettings, UpstreamClient>>,
}

fn http_connector(settings: &PoolSettings) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

fn builder(settings: &PoolSettings) -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.idle_timeout)
        .pool_max_idle_per_host(1024)
        .http2_only(settings.http2);
    b
}

impl ClientCache {
    /// The shared plain-HTTP client for these settings (created on first use).
    pub fn plain(&self, settings: PoolSettings) -> UpstreamClient {
        let mut map = match self.plain.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(settings)
            .or_insert_with(|| {
                UpstreamClient::Plain(builder(&settings).build(http_connector(&settings)))
            })
            .clone()
    }

    /// A new TLS client with `tls` as its rustls configuration; `sni`
    /// overrides the name sent and verified (default: the target's host).
    pub fn tls(
        &self,
        settings: PoolSettings,
        tls: &rustls::ClientConfig,
        names: ServerNames,
    ) -> UpstreamClient {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_only()
            .with_server_name_resolver(move |uri: &http::Uri| names.for_uri(uri));
        // An HTTP/2 upstream offers only h2 in ALPN: the client speaks nothing else.
        let connector = if settings.http2 {
            b.enable_http2().wrap_connector(http_connector(&settings))
        } else {
            b.enable_http1().wrap_connector(http_connector(&settings))
        };
        UpstreamClient::Tls(builder(&settings).build(connector))
    }
}

/// Shared handle type for the cache.
pub type SharedClients = Arc<ClientCache>;
