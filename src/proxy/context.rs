//! Per-request state that policies and phases share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;

/// What the pipeline knows about one request besides the request itself.
pub struct RequestCtx {
    /// The X-Request-Id sent upstream and logged (kept from the client when valid).
    pub request_id: HeaderValue,
    /// The client's address (from PROXY protocol when the listener takes it).
    pub client: SocketAddr,
    /// When the request arrived.
    pub started: Instant,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The matched route's name, once routing has run.
    pub route: Option<Arc<str>>,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

impl RequestCtx {
    /// The request id as text, for logs and error bodies.
    pub fn request_id_str(&self) -> &str {
        // Ids are ASCII by construction (validated or generated).
        self.request_id.to_str().unwrap_or("-")
    }
}

/// A connection's requests in flight and when the last one ended, for its
/// idle watchdog: an HTTP/1 client has `header_read_timeout` from the end
/// of one response (or from connecting) to the complete head of its next
/// request. One timer per connection, re-armed only when it fires, does
/// what a timer armed for every request head would.
pub struct Activity {
    busy: AtomicU32,
    /// Milliseconds since [`epoch`] when the connection last became idle.
    idle_since: AtomicU64,
    /// Set by the first HTTP/2 request: streams are multiplexed, and the
    /// watchdog steps aside as it always has for HTTP/2.
    multiplexed: AtomicBool,
}

/// What the watchdog should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum IdleCheck {
    /// Idle for the whole limit: close the connection.
    Expired,
    /// Look again at this time.
    At(Instant),
    /// Never (an HTTP/2 connection).
    Never,
}

/// The clock the activity marks count from.
fn epoch() -> Instant {
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    *EPOCH
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Activity {
    /// A connection that has just been accepted (idle from now).
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            multiplexed: AtomicBool::new(false),
        })
    }

    /// Marks a request as in flight until the returned guard is dropped
    /// (when its response has been sent, or abandoned).
    pub fn begin(self: &Arc<Self>, http2: bool) -> Busy {
        if http2 {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether the connection has been idle for `limit`, or when to look again.
    pub fn check(&self, limit: Duration) -> IdleCheck {
        if self.multiplexed.load(Ordering::Relaxed) {
            return IdleCheck::Never;
        }
        let now = now_ms();
        let limit_ms = limit.as_millis() as u64;
        if self.busy.load(Ordering::Relaxed) > 0 {
            return IdleCheck::At(epoch() + Duration::from_millis(now + limit_ms));
        }
        let deadline = self.idle_since.load(Ordering::Relaxed) + limit_ms;
        if deadline <= now {
            IdleCheck::Expired
        } else {
            IdleCheck::At(epoch() + Duration::from_millis(deadline))
        }
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Stamp first: the watchdog reads `busy`, then `idle_since`.
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_expire_and_busy_ones_do_not() {
        let limit = Duration::from_millis(40);
        let a = Activity::new();
        assert!(matches!(a.check(limit), IdleCheck::At(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(a.check(limit), IdleCheck::Expired);

        let busy = a.begin(false);
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            matches!(a.check(limit), IdleCheck::At(_)),
            "a request is in flight"
        );
        drop(busy);
        assert!(
            matches!(a.check(limit), IdleCheck::At(_)),
            "idle again from now"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(a.check(limit), IdleCheck::Expired);

        let h2 = Activity::new();
        drop(h2.begin(true));
        assert_eq!(h2.check(limit), IdleCheck::Never);
    }
}
