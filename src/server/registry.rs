//! The gateway's open HTTP client connections: what each is doing
//! ([`Activity`]), one periodic sweep that closes those idle past their
//! listener's `header_read_timeout`, and the drain that asks them all to
//! finish.
//!
//! One sweep over every connection, rather than a timer and a drain waiter
//! in each connection's task, is what keeps an idle keep-alive connection
//! small (a tokio timer and a watch waiter are ~250 bytes of task state per
//! connection); checking 10,000 connections takes tens of microseconds.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use slab::Slab;

use crate::proxy::pipeline::Connection;

/// Set when the connection has been idle past its limit.
const EXPIRED: u8 = 1;
/// Set when the gateway drains: finish the request in flight, then close.
const DRAINING: u8 = 2;

/// Sweeps at least this often, however long the limits.
const MAX_TICK: Duration = Duration::from_secs(1);
/// Sweeps at most this often, however short the limits.
const MIN_TICK: Duration = Duration::from_millis(10);

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
    /// Where the connection is registered: its registry and its key there.
    place: Option<(Arc<Registry>, usize)>,
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
            place: None,
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
    fn newly_expired(&self, now_ms: u64) -> bool {
        if self.multiplexed.load(Ordering::Relaxed)
            || self.busy.load(Ordering::Relaxed) > 0
            || self.signal.load(Ordering::Relaxed) & EXPIRED != 0
        {
            return false;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        since.saturating_add(u64::from(self.limit_ms)) <= now_ms
    }

    fn signal(&self, flag: u8) {
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

/// The open HTTP connections of a gateway.
#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: Slab<Arc<Connection>>,
    draining: bool,
}

impl Registry {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Adds `conn` until the returned handle is dropped.
    pub fn register(self: &Arc<Self>, mut conn: Connection) -> Registered {
        let mut state = self.state();
        let entry = state.open.vacant_entry();
        conn.activity.place = Some((self.clone(), entry.key()));
        let conn = Arc::new(conn);
        entry.insert(conn.clone());
        if state.draining {
            conn.activity.signal(DRAINING);
        }
        Registered(conn)
    }

    /// Signals every connection idle past its limit.
    pub fn sweep(&self) {
        let now = now_ms();
        let state = self.state();
        for (_, conn) in &state.open {
            if conn.activity.newly_expired(now) {
                conn.activity.signal(EXPIRED);
            }
        }
    }

    /// Asks every connection, open now or opened later, to finish.
    pub fn drain(&self) {
        let mut state = self.state();
        state.draining = true;
        for (_, conn) in &state.open {
            conn.activity.signal(DRAINING);
        }
    }

    /// How many connections are open.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().open.len()
    }
}

/// A registered connection (one handle per connection, kept by the task
/// that serves it); the connection leaves the [`Registry`] when it is
/// dropped. One pointer: it is part of what every idle connection keeps.
pub struct Registered(Arc<Connection>);

impl Registered {
    /// The connection.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.0
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some((registry, key)) = &self.0.activity.place {
            registry.state().open.try_remove(*key);
        }
    }
}

/// How often to sweep for connections idle past `shortest` (the shortest
/// limit of any listener): a tenth of it, so that a connection is closed
/// within 10% of its limit, between [`MIN_TICK`] and [`MAX_TICK`].
pub fn tick(shortest: Duration) -> Duration {
    (shortest / 10).clamp(MIN_TICK, MAX_TICK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(limit: Duration) -> Connection {
        let addr = "127.0.0.1:1".parse().unwrap();
        Connection::new("l".into(), addr, addr, limit)
    }

    fn flags(c: &Connection) -> u8 {
        c.activity.signal.load(Ordering::Acquire)
    }

    #[test]
    fn idle_connections_expire_and_busy_ones_do_not() {
        let limit = Duration::from_millis(40);
        let registry = Arc::new(Registry::default());
        let registered = registry.register(conn(limit));
        let c = registered.connection();
        registry.sweep();
        assert_eq!(flags(c), 0);
        std::thread::sleep(Duration::from_millis(60));

        let busy = Busy::new(c, false);
        registry.sweep();
        assert_eq!(flags(c), 0, "a request is in flight");
        drop(busy);
        registry.sweep();
        assert_eq!(flags(c), 0, "idle again from now");
        std::thread::sleep(Duration::from_millis(60));
        registry.sweep();
        assert_eq!(flags(c), EXPIRED);

        let h2 = registry.register(conn(limit));
        drop(Busy::new(h2.connection(), true));
        std::thread::sleep(Duration::from_millis(60));
        registry.sweep();
        assert_eq!(
            flags(h2.connection()),
            0,
            "HTTP/2 connections are left alone"
        );
    }

    #[test]
    fn drain_reaches_open_and_later_connections_and_handles_leave() {
        let registry = Arc::new(Registry::default());
        let before = registry.register(conn(Duration::from_secs(10)));
        assert!(!before.connection().activity.draining());
        registry.drain();
        assert!(before.connection().activity.draining());
        let after = registry.register(conn(Duration::from_secs(10)));
        assert!(after.connection().activity.draining());
        assert_eq!(registry.len(), 2);
        drop(before);
        assert_eq!(registry.len(), 1);
        drop(after);
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn a_signal_wakes_the_registered_task() {
        let registry = Arc::new(Registry::default());
        let registered = registry.register(conn(Duration::ZERO));
        let activity = &registered.connection().activity;
        let woken = Arc::new(AtomicBool::new(false));
        let waker = futures_util::task::waker(Arc::new(Flag(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        assert!(activity.poll_expired(&mut cx).is_pending());
        registry.sweep();
        assert!(woken.load(Ordering::Acquire));
        assert!(activity.poll_expired(&mut cx).is_ready());
    }

    struct Flag(Arc<AtomicBool>);
    impl futures_util::task::ArcWake for Flag {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Ordering::Release);
        }
    }

    #[test]
    fn ticks_follow_the_shortest_limit_within_bounds() {
        assert_eq!(tick(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_secs(60)), MAX_TICK);
        assert_eq!(tick(Duration::from_millis(500)), Duration::from_millis(50));
        assert_eq!(tick(Duration::from_millis(20)), MIN_TICK);
    }
}
