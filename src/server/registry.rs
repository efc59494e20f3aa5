//! The gateway's open HTTP client connections: what each is doing
//! ([`Activity`]), one periodic sweep that closes those idle past their
//! listener's limits (`header_read_timeout`, `keepalive_timeout`,
//! `http2_idle_timeout`), and the drain that asks them all to finish.
//!
//! One sweep over every connection, rather than a timer and a drain waiter
//! in each connection's task, is what keeps an idle keep-alive connection
//! small (a tokio timer and a watch waiter are ~250 bytes of task state per
//! connection); checking 10,000 connections takes tens of microseconds.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use slab::Slab;

use crate::proxy::connection::{CLOSE, Connection, DRAINING, now_ms};

/// Sweeps at least this often, however long the limits.
const MAX_TICK: Duration = Duration::from_secs(1);
/// Sweeps at most this often, however short the limits.
const MIN_TICK: Duration = Duration::from_millis(10);

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
        conn.activity.registry_key = entry.key();
        let conn = Arc::new(conn);
        entry.insert(conn.clone());
        if state.draining {
            conn.activity.signal(DRAINING);
        }
        Registered(conn, self.clone())
    }

    /// Signals every connection idle past its limit, and cuts those whose
    /// client has not taken an answer for `send_timeout` (telling
    /// `on_send_timeout` about each).
    pub fn sweep(&self, mut on_send_timeout: impl FnMut(&Connection)) {
        let now = now_ms();
        let state = self.state();
        for (_, conn) in &state.open {
            if let Some(flag) = conn.activity.due(now) {
                if flag == CLOSE && conn.activity.stalled() {
                    on_send_timeout(conn);
                }
                conn.activity.signal(flag);
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
/// dropped. Two pointers: it is part of what every idle connection keeps.
pub struct Registered(Arc<Connection>, Arc<Registry>);

impl Registered {
    /// The connection.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.0
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.1.state().open.try_remove(self.0.activity.registry_key);
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Context;

    use super::*;
    use crate::proxy::connection::{Busy, EXPIRED, GOAWAY_GRACE, IdleLimits};

    fn conn(limit: Duration) -> Connection {
        let addr = "127.0.0.1:1".parse().unwrap();
        let idle = IdleLimits {
            head: limit,
            keepalive: limit,
            http2: limit,
            send: limit,
        };
        Connection::new("l".into(), addr, addr, idle)
    }

    fn flags(c: &Connection) -> u8 {
        c.activity.signals()
    }

    #[test]
    fn idle_connections_expire_and_busy_ones_do_not() {
        let limit = Duration::from_millis(40);
        let registry = Arc::new(Registry::default());
        let registered = registry.register(conn(limit));
        let c = registered.connection();
        registry.sweep(|_| {});
        assert_eq!(flags(c), 0);
        std::thread::sleep(Duration::from_millis(60));

        let busy = Busy::new(c, false);
        registry.sweep(|_| {});
        assert_eq!(flags(c), 0, "a request is in flight");
        drop(busy);
        registry.sweep(|_| {});
        assert_eq!(flags(c), 0, "idle again from now");
        std::thread::sleep(Duration::from_millis(60));
        registry.sweep(|_| {});
        assert_eq!(flags(c), EXPIRED);

        // HTTP/2: told to go away once idle, then cut after the grace.
        let h2 = registry.register(conn(limit));
        let busy = Busy::new(h2.connection(), true);
        std::thread::sleep(Duration::from_millis(60));
        registry.sweep(|_| {});
        assert_eq!(flags(h2.connection()), 0, "a stream is open");
        drop(busy);
        std::thread::sleep(Duration::from_millis(60));
        registry.sweep(|_| {});
        assert_eq!(flags(h2.connection()), EXPIRED);
        let activity = &h2.connection().activity;
        let grace = GOAWAY_GRACE.as_millis() as u64;
        assert_eq!(activity.due(now_ms() + grace / 2), None);
        assert_eq!(activity.due(now_ms() + grace), Some(CLOSE));
    }

    #[test]
    fn a_kept_alive_connection_has_keepalive_then_header_time() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let idle = IdleLimits {
            head: Duration::from_millis(100),
            keepalive: Duration::from_millis(1000),
            http2: Duration::from_millis(500),
            send: Duration::from_millis(300),
        };
        let c = Arc::new(Connection::new("l".into(), addr, addr, idle));
        let a = &c.activity;
        let now = now_ms();
        // The first head: header_read_timeout from the start.
        assert_eq!(a.due(now + 50), None);
        assert_eq!(a.due(now + 100), Some(EXPIRED));
        a.head_started();
        assert_eq!(a.due(now + 100), Some(EXPIRED), "still the first head");
        // After a response: keepalive_timeout until the next head begins.
        drop(Busy::new(&c, false));
        let idle_from = now_ms();
        assert_eq!(a.due(idle_from + 500), None);
        assert_eq!(a.due(idle_from + 1000), Some(EXPIRED));
        a.head_started();
        // The sweep that first sees the head begun starts its time.
        let head_from = now_ms() + 700;
        assert_eq!(a.due(head_from), None);
        assert_eq!(a.due(head_from + 50), None);
        assert_eq!(a.due(head_from + 100), Some(EXPIRED));
    }

    #[test]
    fn an_answer_not_taken_for_send_timeout_cuts_the_connection() {
        let c = Arc::new(conn(Duration::from_millis(300)));
        let a = &c.activity;
        let busy = Busy::new(&c, false);
        // Waiting on the upstream is nobody's stall.
        assert_eq!(a.due(now_ms() + 10_000), None);
        busy.stall();
        // Timed from the first sweep that sees the stall.
        let from = now_ms();
        assert_eq!(a.due(from), None);
        assert_eq!(a.due(from + 200), None);
        assert_eq!(a.due(from + 300), Some(CLOSE));
        // Taken in time: the clock starts again at each chunk.
        busy.unstall();
        busy.stall();
        assert_eq!(a.due(from + 400), None);
        assert_eq!(a.due(from + 600), None);
        assert_eq!(a.due(from + 700), Some(CLOSE));
        busy.unstall();
        assert_eq!(a.due(from + 10_000), None, "a request is in flight");
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
        registry.sweep(|_| {});
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
