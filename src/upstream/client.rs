//! Pooled HTTP clients to upstream targets.
//!
//! hyper-util's client keeps one keep-alive pool per target authority. Plain
//! HTTP clients are shared by every upstream with the same settings and
//! survive reloads (they sit in [`ClientCache`]); TLS clients are rebuilt on
//! each reload so that rotated CA and client certificates are read again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use crate::proxy::body::Body;

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

/// A pooled client to plain-HTTP or TLS targets.
#[derive(Clone)]
pub enum UpstreamClient {
    /// Plain HTTP (h1 or h2c).
    Plain(Client<HttpConnector, Body>),
    /// TLS to the targets.
    Tls(Client<HttpsConnector<HttpConnector>, Body>),
}

impl UpstreamClient {
    /// Sends `req` (whose URI holds the target) and waits for the response headers.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            UpstreamClient::Plain(c) => c.request(req).await,
            UpstreamClient::Tls(c) => c.request(req).await,
        }
    }
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
        sni: Option<ServerName<'static>>,
    ) -> UpstreamClient {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_only();
        let b = match sni {
            Some(name) => b.with_server_name_resolver(FixedServerNameResolver::new(name)),
            None => b,
        };
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
