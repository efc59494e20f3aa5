//! HTTP clients to upstream targets: opening connections (TCP, the PROXY
//! header, TLS, HTTP/1.1 or HTTP/2) and reusing them through each target's
//! [`IdlePool`].
//!
//! A client carries the settings of one upstream. Plain HTTP clients are
//! shared by every upstream with the same settings and survive reloads (they
//! sit in [`ClientCache`]), so their pooled connections stay warm across a
//! reload; TLS clients are rebuilt on each reload so that rotated CA and
//! client certificates are read again, and connections the old client made
//! are not reused.
//!
//! Upstreams that receive PROXY protocol headers never reuse a connection: a
//! header names one client, so such a connection is never shared between
//! clients (HAProxy treats these connections as private too); each request
//! opens its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::http1::{self, ConnIo, Failed, Http1Conn, PoolReturn};
use super::pool::IdlePool;
use crate::http::body::{Body, BoxError};
use crate::net::proxy_protocol::{self, Version};

/// TCP keep-alive probes on upstream connections start after this much
/// silence, so that a dead peer behind a NAT is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Settings that decide whether two upstreams can share a plain-HTTP client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    /// HTTP/2 with prior knowledge (or ALPN h2 over TLS).
    pub http2: bool,
    /// Connect timeout (TCP, PROXY header and TLS handshake together).
    pub connect_timeout: Duration,
    /// How long idle pooled connections are kept.
    pub idle_timeout: Duration,
}

/// A client to one upstream's targets. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient(Arc<ClientInner>);

struct ClientInner {
    /// Tells this client's pooled connections from other clients'.
    id: u64,
    settings: PoolSettings,
    /// TLS to the targets, with the server name to send to each.
    tls: Option<(tokio_rustls::TlsConnector, ServerNames)>,
    /// PROXY header version; `Some` means a new connection per request.
    proxy_protocol: Option<Version>,
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
    fn connect(e: &(dyn std::error::Error + 'static)) -> SendError {
        SendError {
            connect: true,
            timed_out: chain_has_timeout(e),
            detail: error_chain(e),
        }
    }

    fn broken(e: &(dyn std::error::Error + 'static)) -> SendError {
        SendError {
            connect: false,
            timed_out: chain_has_timeout(e),
            detail: error_chain(e),
        }
    }
}

/// A response head from a target; its body still streams from the
/// connection (an HTTP/1 connection goes back to the target's pool once the
/// body has been read to its end).
pub struct Sent {
    /// The response.
    pub response: Response<UpstreamBody>,
    /// After `101 Switching Protocols`: the connection, for the tunnel.
    pub upgraded: Option<Upgraded>,
}

/// An upstream connection that switched protocols (WebSocket).
pub struct Upgraded {
    /// The socket.
    pub io: ConnIo,
    /// Bytes the target sent right after its 101 head.
    pub early: Bytes,
}

/// A response body from an HTTP/1 or an HTTP/2 target.
pub enum UpstreamBody {
    /// Read by the request's own task from the pooled connection.
    Http1(http1::ResponseBody),
    /// From hyper's HTTP/2 connection.
    Http2(Incoming),
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            UpstreamBody::Http2(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(b) => b.is_end_stream(),
            UpstreamBody::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(b) => b.size_hint(),
            UpstreamBody::Http2(b) => b.size_hint(),
        }
    }
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

impl UpstreamClient {
    /// A client with `settings`, TLS when `tls` is given (its ALPN is set
    /// here to the one protocol the client speaks), and a PROXY header on
    /// every connection when `proxy_protocol` is given.
    pub fn new(
        settings: PoolSettings,
        tls: Option<(&rustls::ClientConfig, ServerNames)>,
        proxy_protocol: Option<Version>,
    ) -> UpstreamClient {
        let tls = tls.map(|(config, names)| {
            let mut config = config.clone();
            // An HTTP/2 upstream is offered only h2: the client speaks nothing else.
            config.alpn_protocols = vec![if settings.http2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            (tokio_rustls::TlsConnector::from(Arc::new(config)), names)
        });
        UpstreamClient(Arc::new(ClientInner {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            settings,
            tls,
            proxy_protocol,
        }))
    }

    /// `http` or `https`, as the client speaks to its targets.
    pub fn scheme(&self) -> Scheme {
        if self.0.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    /// Sends `req` to the target at `authority` and waits for the response
    /// head. The request's URI is its origin form (path and query). `pool`
    /// is the target's; `peers` names the client for PROXY headers, and
    /// `None` (the gateway's own health checks) sends a header that names
    /// no client.
    pub async fn send(
        &self,
        authority: &Authority,
        pool: &Arc<IdlePool>,
        mut req: Request<Body>,
        peers: Option<Peers>,
    ) -> Result<Sent, SendError> {
        let inner = &*self.0;
        let idle_timeout = inner.settings.idle_timeout;
        let pooled = inner.proxy_protocol.is_none();
        if inner.settings.http2 {
            // HTTP/2 names the target in the request itself.
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(self.scheme());
            parts.authority = Some(authority.clone());
            *req.uri_mut() = Uri::from_parts(parts).map_err(|e| SendError::connect(&e))?;
            let sender = if pooled {
                self.pooled_http2(authority, pool).await?
            } else {
                self.connect_http2(authority, peers).await?
            };
            return send_http2(sender, req).await;
        }
        let home = pooled.then(|| PoolReturn {
            pool: pool.clone(),
            client: inner.id,
            idle_timeout,
        });
        if pooled {
            while let Some(mut conn) = pool.take_http1(inner.id) {
                if !conn.is_usable() {
                    continue;
                }
                match conn.send(req, authority, home.clone(), true).await {
                    Ok(head) => return Ok(sent_http1(head)),
                    // The target closed it while idle: try the next one.
                    Err(Failed {
                        unsent: Some(back), ..
                    }) => req = *back,
                    Err(Failed { error, .. }) => return Err(SendError::broken(&error)),
                }
            }
        }
        let io = self
            .connect(Box::pin(self.open(authority, peers)), authority)
            .await?;
        match Http1Conn::new(io).send(req, authority, home, false).await {
            Ok(head) => Ok(sent_http1(head)),
            Err(Failed { error, .. }) => Err(SendError::broken(&error)),
        }
    }

    /// The target's shared HTTP/2 connection, opened by the first request
    /// that needs it (a burst of first requests opens one).
    async fn pooled_http2(
        &self,
        authority: &Authority,
        pool: &Arc<IdlePool>,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let (id, idle_timeout) = (self.0.id, self.0.settings.idle_timeout);
        if let Some(sender) = pool.shared_http2(id, idle_timeout) {
            return Ok(sender);
        }
        let _turn = pool.http2_connect_turn().await;
        // Another request may have opened it while this one waited.
        if let Some(sender) = pool.shared_http2(id, idle_timeout) {
            return Ok(sender);
        }
        // Pooled connections carry no PROXY header, so no peers.
        let sender = self.connect_http2(authority, None).await?;
        pool.set_http2(sender.clone(), id, idle_timeout);
        Ok(sender)
    }

    /// Opens an HTTP/2 connection (the upstream has `http2: true`); it runs
    /// as a task of its own, since it multiplexes.
    async fn connect_http2(
        &self,
        authority: &Authority,
        peers: Option<Peers>,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let handshake = async {
            let io = self.open(authority, peers).await?;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| SendError::connect(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(sender)
        };
        self.connect(Box::pin(handshake), authority).await
    }

    /// Runs `opening` within the connect timeout. Callers box it: opening a
    /// connection (TCP, TLS, HTTP/2 handshake) is a large future, and keeping
    /// it inline would make every request's future that much larger to
    /// move, reused connection or not.
    async fn connect<T>(
        &self,
        opening: Pin<Box<dyn Future<Output = Result<T, SendError>> + Send + '_>>,
        authority: &Authority,
    ) -> Result<T, SendError> {
        match tokio::time::timeout(self.0.settings.connect_timeout, opening).await {
            Ok(result) => result,
            Err(_) => Err(SendError {
                connect: true,
                timed_out: true,
                detail: format!("connect to {authority} timed out"),
            }),
        }
    }

    /// TCP to `authority`, then the PROXY header and TLS when configured.
    async fn open(&self, authority: &Authority, peers: Option<Peers>) -> Result<ConnIo, SendError> {
        let inner = &*self.0;
        let mut stream = TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| SendError::connect(&e))?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        if let Some(version) = inner.proxy_protocol {
            let header = match peers {
                Some(p) => proxy_protocol::encode(version, p.source, p.destination),
                None => proxy_protocol::encode_local(version),
            };
            stream
                .write_all(&header)
                .await
                .map_err(|e| SendError::connect(&e))?;
        }
        match &inner.tls {
            None => Ok(ConnIo::Plain(stream)),
            Some((connector, names)) => {
                let name = names
                    .for_authority(authority)
                    .map_err(|e| SendError::connect(&e))?;
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| SendError::connect(&e))?;
                Ok(ConnIo::Tls(Box::new(tls)))
            }
        }
    }
}

/// The HTTP/1 exchange's result as the caller sees it.
fn sent_http1(head: http1::Head) -> Sent {
    Sent {
        response: head.response.map(UpstreamBody::Http1),
        upgraded: head.upgraded.map(|(io, early)| Upgraded { io, early }),
    }
}

/// Sends on an HTTP/2 connection.
async fn send_http2(
    mut sender: http2::SendRequest<Body>,
    req: Request<Body>,
) -> Result<Sent, SendError> {
    match sender.send_request(req).await {
        Ok(response) => Ok(Sent {
            response: response.map(UpstreamBody::Http2),
            upgraded: None,
        }),
        Err(e) => Err(SendError::broken(&e)),
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
    /// The name for the target at `authority`: the fixed one, the DNS name
    /// the target's address came from, or the address's own host.
    pub fn for_authority(
        &self,
        authority: &Authority,
    ) -> Result<ServerName<'static>, rustls_pki_types::InvalidDnsNameError> {
        if let Some(name) = &self.fixed {
            return Ok(name.clone());
        }
        if let Some(name) = self.by_address.get(authority.as_str()) {
            return Ok(name.clone());
        }
        let host = authority.host();
        ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
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

/// Plain-HTTP clients that outlive a configuration snapshot.
#[derive(Default)]
pub struct ClientCache {
    plain: Mutex<HashMap<PoolSettings, UpstreamClient>>,
}

impl ClientCache {
    /// The shared plain-HTTP client for these settings (created on first use).
    pub fn plain(&self, settings: PoolSettings) -> UpstreamClient {
        let mut map = crate::lock(&self.plain);
        map.entry(settings)
            .or_insert_with(|| UpstreamClient::new(settings, None, None))
            .clone()
    }
}

/// Shared handle type for the cache.
pub type SharedClients = Arc<ClientCache>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_prefer_sni_then_the_dns_name_then_the_address() {
        let authority: Authority = "10.0.0.5:443".parse().unwrap();
        let mut names = ServerNames::default();
        assert_eq!(
            names.for_authority(&authority).unwrap(),
            ServerName::try_from("10.0.0.5").unwrap()
        );
        names.by_address.insert(
            "10.0.0.5:443".into(),
            ServerName::try_from("users.internal").unwrap(),
        );
        assert_eq!(
            names.for_authority(&authority).unwrap(),
            ServerName::try_from("users.internal").unwrap()
        );
        names.fixed = Some(ServerName::try_from("api.test").unwrap());
        assert_eq!(
            names.for_authority(&authority).unwrap(),
            ServerName::try_from("api.test").unwrap()
        );
        let v6: Authority = "[::1]:8443".parse().unwrap();
        assert_eq!(
            ServerNames::default().for_authority(&v6).unwrap(),
            ServerName::try_from("::1").unwrap()
        );
    }

    #[test]
    fn every_client_has_its_own_id_and_plain_clients_are_shared() {
        let settings = PoolSettings {
            http2: false,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
        };
        let cache = ClientCache::default();
        assert_eq!(cache.plain(settings).0.id, cache.plain(settings).0.id);
        let other = UpstreamClient::new(settings, None, None);
        assert_ne!(other.0.id, cache.plain(settings).0.id);
    }
}
