//! What the gateway knows about one client connection while it serves
//! requests on it: who and where the client is, and what the connection is
//! doing ([`Activity`]) for the server's idle sweep and drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::HeaderValue;

/// Set when the connection has been idle past its limit.
pub const EXPIRED: u8 = 1;
/// Set when the gateway drains: finish the request in flight, then close.
pub const DRAINING: u8 = 2;
/// Set when an HTTP/2 connection told to go away ([`EXPIRED`]) is still
/// open [`GOAWAY_GRACE`] later: close it without waiting for the client.
pub const CLOSE: u8 = 4;

/// How long an idle HTTP/2 connection that was sent GOAWAY has to finish
/// the exchange (its PING answered, the socket closed) before it is cut.
pub const GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// How long a connection may stay idle, by what it is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleLimits {
    /// A complete request head, from accepting or from the first bytes of
    /// a later head (`header_read_timeout`).
    pub head: Duration,
    /// HTTP/1.1, from a response to the next request's first bytes
    /// (`keepalive_timeout`).
    pub keepalive: Duration,
    /// HTTP/2, with no stream open (`http2_idle_timeout`).
    pub http2: Duration,
    /// An answer the client is not taking (`send_timeout`).
    pub send: Duration,
}

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
    /// that may stay idle within `idle`.
    pub fn new(
        listener: Arc<str>,
        client: SocketAddr,
        local: SocketAddr,
        idle: IdleLimits,
    ) -> Connection {
        Connection {
            listener,
            client,
            forwarded_for: crate::http::headers::forwarded_for(client.ip()),
            local,
            tls: false,
            client_cert: None,
            activity: Activity::new(idle),
        }
    }
}

/// A connection's requests in flight, when the last one ended, and what the
/// registry has asked of it. A client has `header_read_timeout` from
/// connecting to its first complete request head; an HTTP/1.1 client then
/// has `keepalive_timeout` from each response to the first bytes of its
/// next request and `header_read_timeout` from there to the complete head
/// (nginx's `keepalive_timeout` and `client_header_timeout`); an HTTP/2
/// client has `http2_idle_timeout` whenever no stream is open.
pub struct Activity {
    busy: AtomicU32,
    /// `header_read_timeout` in milliseconds.
    head_ms: u32,
    /// `keepalive_timeout` in milliseconds.
    keepalive_ms: u32,
    /// `http2_idle_timeout` in milliseconds.
    http2_ms: u32,
    /// `send_timeout` in milliseconds.
    send_ms: u32,
    /// Answers whose body has handed out a chunk that the connection has
    /// not taken yet (the socket, or HTTP/2 flow control, is holding it).
    stalled: AtomicU32,
    /// Bumped whenever an answer hands out or has taken a chunk. A counter
    /// rather than a time: reading the clock twice per answer costs more
    /// than the rest of this bookkeeping; the sweep reads it instead.
    progress: AtomicU32,
    /// `progress` as the sweep last saw it, and when it first saw that
    /// value (touched by the sweep only).
    progress_seen: AtomicU32,
    progress_seen_at: AtomicU64,
    /// Milliseconds since [`epoch`] when the connection last became idle
    /// (or, between HTTP/1.1 requests, when the next head began).
    idle_since: AtomicU64,
    /// Between HTTP/1.1 requests: waiting for the next head's first bytes.
    kept_alive: AtomicBool,
    /// The next head's first bytes came; the sweep starts its
    /// `header_read_timeout` when it sees this (no clock read per request).
    head_begun: AtomicBool,
    /// Set by the first HTTP/2 request: streams are multiplexed.
    multiplexed: AtomicBool,
    /// [`EXPIRED`], [`DRAINING`] and [`CLOSE`].
    signal: AtomicU8,
    /// The connection's task, woken when `signal` changes.
    waker: AtomicWaker,
    /// The connection's key in the server's registry of open connections.
    pub registry_key: usize,
}

/// Milliseconds on the clock the activity marks count from.
pub use crate::now_ms;

impl Activity {
    /// A connection that has just been accepted (idle from now) and may
    /// stay idle within `limits`.
    pub fn new(limits: IdleLimits) -> Activity {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Activity {
            busy: AtomicU32::new(0),
            head_ms: ms(limits.head),
            keepalive_ms: ms(limits.keepalive),
            http2_ms: ms(limits.http2),
            send_ms: ms(limits.send),
            stalled: AtomicU32::new(0),
            progress: AtomicU32::new(0),
            progress_seen: AtomicU32::new(0),
            progress_seen_at: AtomicU64::new(0),
            idle_since: AtomicU64::new(now_ms()),
            kept_alive: AtomicBool::new(false),
            head_begun: AtomicBool::new(false),
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
        self.kept_alive.store(true, Ordering::Relaxed);
        self.head_begun.store(false, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Notes that the first bytes of a request head have arrived: from
    /// here (as the next sweep sees it, a tick late at worst) the head has
    /// `header_read_timeout` to complete, as the first one had from the
    /// connection's start.
    pub fn head_started(&self) {
        if self.kept_alive.load(Ordering::Relaxed) {
            self.kept_alive.store(false, Ordering::Relaxed);
            self.head_begun.store(true, Ordering::Relaxed);
        }
    }

    /// The flag the registry's sweep should signal at `now_ms`, if any:
    /// [`EXPIRED`] once the connection has been idle for its limit (HTTP/2:
    /// it sends GOAWAY; HTTP/1: it closes), then, for an HTTP/2 connection
    /// still open [`GOAWAY_GRACE`] later, [`CLOSE`].
    pub fn due(&self, now_ms: u64) -> Option<u8> {
        // An answer the client has not taken for `send_timeout` (nginx's
        // send_timeout; HTTP/2 streams held on a zero window included):
        // the connection is cut.
        if self.stalled.load(Ordering::Relaxed) > 0 {
            // The stall is timed from the first sweep that sees no
            // progress: a tick (at most a second) late at worst.
            let progress = self.progress.load(Ordering::Relaxed);
            if self.progress_seen.swap(progress, Ordering::Relaxed) != progress {
                self.progress_seen_at.store(now_ms, Ordering::Relaxed);
                return None;
            }
            let since = self.progress_seen_at.load(Ordering::Relaxed);
            let stuck = since.saturating_add(u64::from(self.send_ms)) <= now_ms;
            let signals = self.signal.load(Ordering::Relaxed);
            return (stuck && signals & CLOSE == 0).then_some(CLOSE);
        }
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.head_begun.swap(false, Ordering::Relaxed) {
            self.idle_since.store(now_ms, Ordering::Relaxed);
        }
        let multiplexed = self.multiplexed.load(Ordering::Relaxed);
        let limit = if multiplexed {
            self.http2_ms
        } else if self.kept_alive.load(Ordering::Relaxed) {
            self.keepalive_ms
        } else {
            self.head_ms
        };
        let since = self.idle_since.load(Ordering::Relaxed);
        let expires = since.saturating_add(u64::from(limit));
        let signals = self.signal.load(Ordering::Relaxed);
        if signals & EXPIRED == 0 {
            return (expires <= now_ms).then_some(EXPIRED);
        }
        let cut = expires.saturating_add(GOAWAY_GRACE.as_millis() as u64);
        (multiplexed && signals & CLOSE == 0 && cut <= now_ms).then_some(CLOSE)
    }

    /// Whether an answer is waiting for the client to take it.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed) > 0
    }

    /// Whether requests on this connection are HTTP/2 streams.
    pub fn multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    /// The flags signalled so far ([`EXPIRED`], [`DRAINING`], [`CLOSE`]).
    pub fn signals(&self) -> u8 {
        self.signal.load(Ordering::Acquire)
    }

    /// Sets `flag` ([`EXPIRED`], [`DRAINING`] or [`CLOSE`]) and wakes the
    /// connection's task.
    pub fn signal(&self, flag: u8) {
        self.signal.fetch_or(flag, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready when the connection must close now: idle past its limit
    /// (HTTP/1), or past the grace after GOAWAY (HTTP/2). Otherwise
    /// registers the task to be woken by the sweep or the drain.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register before looking, so that a signal set in between wakes us.
        self.waker.register(cx.waker());
        let signals = self.signal.load(Ordering::Acquire);
        let close = if self.multiplexed() {
            CLOSE
        } else {
            EXPIRED | CLOSE
        };
        if signals & close != 0 {
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

    /// Whether the connection should wind down as in a drain: the gateway
    /// drains, or an HTTP/2 connection has been idle past its limit.
    pub fn winding_down(&self) -> bool {
        self.signal.load(Ordering::Acquire) & (DRAINING | EXPIRED) != 0
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

impl Busy {
    /// Notes that the answer's body handed out a chunk the connection has
    /// yet to take: until [`Busy::unstall`], `send_timeout` runs.
    pub fn stall(&self) {
        let activity = &self.0.activity;
        activity.progress.fetch_add(1, Ordering::Relaxed);
        activity.stalled.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that the connection took the chunk (it asks for the next).
    pub fn unstall(&self) {
        let activity = &self.0.activity;
        activity.progress.fetch_add(1, Ordering::Relaxed);
        activity.stalled.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}
