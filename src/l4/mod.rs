//! Layer 4 balancing: `tcp`, `tls` (passthrough routed by SNI) and `udp`
//! listeners.
//!
//! These listeners skip HTTP entirely: accept → (peek the SNI) → pick a target
//! with the upstream's balancer and health state → copy bytes both ways. They
//! share the upstreams, balancers and health checks of the HTTP path, so a
//! target that active checks mark down receives neither requests nor
//! connections, and `least_connections` counts open connections.

pub mod tcp;
pub mod tls_passthrough;
pub mod udp;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::net::proxy_protocol;
use crate::upstream::balance::PickContext;
use crate::upstream::breaker::{Admitted, Refused};
use crate::upstream::{InFlight, Upstream};

pub use crate::upstream::L4Settings;

/// What an L4 listener does with each connection or datagram.
pub enum L4Plan {
    /// `protocol: tcp`: balance connections over one upstream.
    Tcp(Arc<Upstream>),
    /// `protocol: tls`: route by the ClientHello's server name.
    Tls(SniRoutes),
    /// `protocol: udp`: balance client sessions over one upstream.
    Udp(Arc<Upstream>),
}

/// Server name to upstream, for `tls` listeners: exact names first, then the
/// longest matching wildcard, then the default. Generic so that the matching
/// rules can be tested without building upstreams.
pub struct SniRoutes<T = Arc<Upstream>> {
    exact: HashMap<String, T>,
    /// `(".example.com", upstream)` for `*.example.com`, longest suffix first.
    wildcards: Vec<(String, T)>,
    default: Option<T>,
}

impl<T> SniRoutes<T> {
    /// An empty table that sends everything to `default` (or closes, without one).
    pub fn new(default: Option<T>) -> SniRoutes<T> {
        SniRoutes {
            exact: HashMap::new(),
            wildcards: Vec::new(),
            default,
        }
    }

    /// Adds `pattern` (`db.example.com` or `*.example.com`); the error is a
    /// reason for the user.
    pub fn add(&mut self, pattern: &str, upstream: T) -> Result<(), &'static str> {
        const WILDCARD: &str = "a wildcard must be a whole leading label, as in \"*.example.com\"";
        let name = normalize(pattern);
        if name.is_empty() {
            return Err("the server name is empty");
        }
        match name.strip_prefix('*') {
            Some(suffix)
                if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
            {
                self.wildcards.push((suffix.to_string(), upstream));
                self.wildcards
                    .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
            }
            Some(_) => return Err(WILDCARD),
            None if name.contains('*') => return Err(WILDCARD),
            None => {
                self.exact.insert(name, upstream);
            }
        }
        Ok(())
    }

    /// The upstream for a ClientHello that named `sni` (or none).
    pub fn route(&self, sni: Option<&str>) -> Option<&T> {
        let Some(sni) = sni else {
            return self.default.as_ref();
        };
        let name = normalize(sni);
        if let Some(u) = self.exact.get(&name) {
            return Some(u);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, u)| u)
            .or(self.default.as_ref())
    }
}

/// Server names compare case-insensitively and without a trailing dot.
fn normalize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Why no connection to a target could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every target is down (and `when_all_down: fail`).
    #[error("no healthy target is available")]
    NoTarget,
    /// Every target tried refused, failed or timed out.
    #[error("no target accepted the connection")]
    Failed,
    /// The upstream's circuit breaker is at its cap.
    #[error("circuit breaker: {0}")]
    CircuitOpen(#[from] Refused),
}

/// What an open L4 connection holds: the target's in-flight count (so
/// least_connections counts connections) and the circuit breaker's slot.
#[derive(Debug)]
pub struct Lease {
    _in_flight: InFlight,
    _admitted: Option<Admitted>,
}

/// The balancer's hash for an L4 client: only the client IP is known, so
/// every `hash_key` falls back to it (as a request without the key's value
/// does on the HTTP path).
fn pick_context(upstream: &Upstream, client: SocketAddr) -> PickContext {
    let hash = upstream
        .hash_key
        .as_ref()
        // An empty request has no header, cookie, query or path value, which
        // makes the key hash the client IP; it allocates nothing.
        .map(|k| k.hash(&http::Request::new(()), client.ip()))
        .unwrap_or(0);
    PickContext { hash }
}

/// Connects to a target of `upstream` for `client`, trying other targets
/// when one refuses or times out, and sends the upstream's PROXY header
/// (`client` connected to `destination`). The returned lease counts the
/// connection against the target for as long as it is kept.
pub async fn connect(
    upstream: &Upstream,
    client: SocketAddr,
    destination: SocketAddr,
) -> Result<(TcpStream, Lease), ConnectError> {
    let admitted = match &upstream.breaker {
        Some(breaker) => match breaker.admit(upstream.l4.connect_timeout).await {
            Ok(a) => Some(a),
            Err(refused) => {
                upstream.circuit_open_total.inc();
                return Err(refused.into());
            }
        },
        None => None,
    };
    let ctx = pick_context(upstream, client);
    let settings = upstream.l4;
    let mut tried = Vec::new();
    while tried.len() < upstream.targets.len() {
        let Some((index, lease)) = upstream.select(&ctx, &tried) else {
            return Err(ConnectError::NoTarget);
        };
        if tried.contains(&index) {
            // The balancer has nothing else left to offer.
            break;
        }
        tried.push(index);
        let target = &upstream.targets[index];
        let attempt = tokio::time::timeout(
            settings.connect_timeout,
            TcpStream::connect(&*target.address),
        )
        .await;
        let mut stream = match attempt {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(upstream = %upstream.name, target = %target.address, error = %e, "L4 connect failed");
                upstream.record_outcome(index, true);
                continue;
            }
            Err(_) => {
                tracing::debug!(upstream = %upstream.name, target = %target.address, "L4 connect timed out");
                upstream.record_outcome(index, true);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(version) = settings.proxy_protocol {
            let header = proxy_protocol::encode(version, client, destination);
            if let Err(e) = stream.write_all(&header).await {
                tracing::debug!(upstream = %upstream.name, target = %target.address, error = %e, "sending the PROXY header failed");
                upstream.record_outcome(index, true);
                continue;
            }
        }
        upstream.record_outcome(index, false);
        return Ok((
            stream,
            Lease {
                _in_flight: lease,
                _admitted: admitted,
            },
        ));
    }
    Err(ConnectError::Failed)
}

/// Milliseconds since `start`, for a cheap shared "last activity" stamp.
fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
}

/// Copies bytes both ways until both sides have finished (a half-close on
/// one side is passed on to the other, which may keep sending), or until no
/// byte has moved either way for `idle`. Returns the bytes copied
/// client→target and target→client, when the copy ended normally.
pub async fn relay<A, B>(client: A, target: B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Tracked {
        inner: client,
        start,
        last: last.clone(),
    };
    let mut target = Tracked {
        inner: target,
        start,
        last: last.clone(),
    };
    let idle_ms = idle.as_millis().min(u128::from(u64::MAX)) as u64;
    let watchdog = async {
        loop {
            let quiet_until = last.load(Ordering::Relaxed).saturating_add(idle_ms);
            let now = elapsed_ms(start);
            if now >= quiet_until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(quiet_until - now)).await;
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut target) => r,
        _ = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

/// A stream that stamps the time of its last successful read or write.
struct Tracked<S> {
    inner: S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last.store(elapsed_ms(self.start), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn sni_routes_prefer_exact_then_longest_wildcard_then_default() {
        let mut t = SniRoutes::new(Some("default"));
        t.add("DB.example.com", "db").unwrap();
        t.add("*.example.com", "wide").unwrap();
        t.add("*.internal.example.com", "internal").unwrap();
        assert_eq!(t.route(Some("db.example.com.")), Some(&"db"));
        assert_eq!(t.route(Some("A.Internal.Example.com")), Some(&"internal"));
        assert_eq!(t.route(Some("x.example.com")), Some(&"wide"));
        assert_eq!(t.route(Some("example.com")), Some(&"default"));
        assert_eq!(t.route(None), Some(&"default"));
        let strict: SniRoutes<&str> = SniRoutes::new(None);
        assert_eq!(strict.route(Some("x")), None);
        assert!(t.add("a.*.com", "bad").is_err());
        assert!(t.add("*foo.com", "bad").is_err());
        assert!(t.add("", "bad").is_err());
    }

    #[tokio::test]
    async fn relay_passes_half_close_and_keeps_the_other_direction() {
        let (client_app, client_side) = tokio::io::duplex(1024);
        let (target_side, target_app) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client_side, target_side, Duration::from_secs(5)));
        let (mut client_r, mut client_w) = tokio::io::split(client_app);
        let (mut target_r, mut target_w) = tokio::io::split(target_app);
        client_w.write_all(b"ping").await.unwrap();
        client_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        target_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        // The client has finished sending; the target can still answer.
        target_w.write_all(b"pong").await.unwrap();
        target_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong");
        assert_eq!(relay.await.unwrap().unwrap(), (4, 4));
    }

    #[tokio::test]
    async fn relay_closes_after_idle_time_with_no_bytes() {
        let (_client_app, client_side) = tokio::io::duplex(64);
        let (target_side, _target_app) = tokio::io::duplex(64);
        let started = Instant::now();
        let r = relay(client_side, target_side, Duration::from_millis(100)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
