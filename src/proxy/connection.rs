//! What the gateway knows about one client connection while it serves
//! requests on it: who and where the client is, and what the connection is
//! doing ([`Activity`]) for the server's idle sweep and drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use http::HeaderValue;

/// Set when the connection has been idle past its limit.
pub const EXPIRED: u8 = 1;
/// Set when the gateway drains: finish the request in flight, then close.
pub const DRAINING: u8 = 2;

/// What the listener knows about the connection a request came on.
pub struct Connection {
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's IP as an X-Forwarded-For entry, made once per connection.
    pub forwarded_for: HeaderValue,
    /// The address the client connected to (from PROXY protocol when the
    /// listener takes it), for PROXY headers toward upstreams.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// What a listener with `client_subject_header` passes upstream (boxed:
    /// most connections have none).
    pub client_cert: Option<Box<ClientCert>>,
    /// Requests in flight and what the gateway asks of the connection.
    pub activity: Activity,
}

/// The verified client certificate of an mTLS connection, as sent upstream.
pub struct ClientCert {
    /// The header that carries the subject upstream.
    pub header: http::HeaderName,
    /// The verified subject, ready as a header value (none without a
    /// client certificate: the header is then removed).
    pub subject: Option<HeaderValue>,
}

impl Connection {
    /// A plain (not TLS) connection from `client` to `local` on `listener`
    /// that may stay idle for `idle_limit` between requests.
    pub fn new(
        listener: Arc<str>,
        client: SocketAddr,
        local: SocketAddr,
        idle_limit: Duration,
    ) -> Connection {
        Connection {
            listener,
            client,
            forwarded_for: crate::http::headers::forwarded_for(client.ip()),
            local,
            tls: false,
            client_cert: None,
            activity: Activity::new(idle_limit),
        }
    }
}

/// A connection's requests in flight, when the last one ended, and what the
/// registry has asked of it. An HTTP/1 client has `header_read_timeout`
/// from the end of one response (or from connecting) to the complete head
/// of its next request.
pub struct Activity {
    busy: AtomicU32,
    /// The connection's idle limit in milliseconds.
    limit_ms: u32,
    /// Milliseconds since [`epoch`] when the connection last became idle.
    idle_since: AtomicU64,
    /// Set by the first HTTP/2 request: streams are multiplexed, and the
    /// sweep leaves HTTP/2 connections alone once they have a request.
    multiplexed: AtomicBool,
    /// [`EXPIRED`] and [`DRAINING`].
    signal: AtomicU8,
    /// The connection's task, woken when `signal` changes.
    waker: AtomicWaker,
    /// The connection's key in the server's registry of open connections.
    pub registry_key: usize,
}

/// The clock the activity marks count from.
fn epoch() -> Instant {
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    *EPOCH
}

/// Milliseconds on the activity clock.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Activity {
    /// A connection that has just been accepted (idle from now) and may
    /// stay idle for `limit`.
    pub fn new(limit: Duration) -> Activity {
        Activity {
            busy: AtomicU32::new(0),
            limit_ms: u32::try_from(limit.as_millis()).unwrap_or(u32::MAX),
            idle_since: AtomicU64::new(now_ms()),
            multiplexed: AtomicBool::new(false),
            signal: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            registry_key: 0,
        }
    }

    /// Marks a request as in flight (see [`Busy`]).
    fn begin(&self, http2: bool) {
        if http2 {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request as done.
    fn end(&self) {
        // Stamp first: the sweep reads `busy`, then `idle_since`.
        self.idle_since.store(now_ms(), Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether the connection has been idle for its whole limit at `now_ms`
    /// (and has not been told so already).
    pub fn newly_expired(&self, now_ms: u64) -> bool {
        if self.multiplexed.load(Ordering::Relaxed)
            || self.busy.load(Ordering::Relaxed) > 0
            || self.signal.load(Ordering::Relaxed) & EXPIRED != 0
        {
            return false;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        since.saturating_add(u64::from(self.limit_ms)) <= now_ms
    }

    /// The flags signalled so far ([`EXPIRED`], [`DRAINING`]).
    pub fn signals(&self) -> u8 {
        self.signal.load(Ordering::Acquire)
    }

    /// Sets `flag` ([`EXPIRED`] or [`DRAINING`]) and wakes the connection's task.
    pub fn signal(&self, flag: u8) {
        self.signal.fetch_or(flag, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready when the sweep found the connection idle past its limit;
    /// otherwise registers the task to be woken by the sweep or the drain.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register before looking, so that a signal set in between wakes us.
        self.waker.register(cx.waker());
        if self.signal.load(Ordering::Acquire) & EXPIRED != 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether the gateway is draining: finish what is in flight, take no
    /// more requests. The task is woken when this turns true if it has
    /// polled [`Activity::poll_expired`] since its last wake.
    pub fn draining(&self) -> bool {
        self.signal.load(Ordering::Acquire) & DRAINING != 0
    }
}

/// A request in flight on a connection, until dropped (when its response
/// has been sent, or abandoned).
pub struct Busy(Arc<Connection>);

impl Busy {
    /// Marks a request on `conn` as in flight.
    pub fn new(conn: &Arc<Connection>, http2: bool) -> Busy {
        conn.activity.begin(http2);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}
