//! Keep-alive connections to one target, ready for the next request.
//!
//! Each target has its own pool (it lives in the target's [`TargetState`],
//! so it survives reloads), which makes taking a connection a short,
//! uncontended lock on a small stack: no map lookup and no hashing. HTTP/1
//! connections carry one request at a time; the most recently used idle one
//! is taken first (its socket and the backend's worker are warm), and an
//! idle one is just a socket and its buffers, with no task. An HTTP/2
//! connection is shared by every request to the target.
//!
//! Connections remember which client made them: a reload that rebuilds a TLS
//! client (new CA or client certificate) stops reusing connections the old
//! one made. Idle connections close after the upstream's idle timeout,
//! checked by one small task per pool that runs only while the pool holds
//! connections.
//!
//! [`TargetState`]: super::TargetState

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;

use super::http1::Http1Conn;

use crate::http::body::Body;

/// At most this many idle HTTP/1 connections are kept per target; past it,
/// the one idle longest is closed.
const MAX_IDLE: usize = 1024;

/// The keep-alive connections of one target.
#[derive(Default)]
pub struct IdlePool {
    inner: Mutex<Idle>,
    /// Held while an HTTP/2 connection is being opened, so that a burst of
    /// first requests opens one connection rather than one each.
    http2_connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Idle {
    /// Idle HTTP/1 connections, oldest first.
    http1: Vec<IdleHttp1>,
    /// The shared HTTP/2 connection, if one is open.
    http2: Option<SharedHttp2>,
    /// Whether a task is closing expired connections.
    reaping: bool,
}

struct IdleHttp1 {
    conn: Http1Conn,
    client: u64,
    expires: Instant,
}

struct SharedHttp2 {
    sender: http2::SendRequest<Body>,
    client: u64,
    expires: Instant,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle_http1", &self.idle_http1())
            .finish()
    }
}

impl IdlePool {
    fn lock(&self) -> MutexGuard<'_, Idle> {
        crate::lock(&self.inner)
    }

    /// The most recently used idle HTTP/1 connection made by `client`;
    /// expired and foreign connections met on the way are dropped. The
    /// caller checks [`Http1Conn::is_usable`] outside the lock.
    pub fn take_http1(&self, client: u64) -> Option<Http1Conn> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(c) = idle.http1.pop() {
            if c.client == client && c.expires > now {
                return Some(c.conn);
            }
        }
        None
    }

    /// Returns an HTTP/1 connection whose exchange finished cleanly; it
    /// closes after `idle_timeout` unless a request takes it first.
    pub fn put_http1(self: &Arc<Self>, conn: Http1Conn, client: u64, idle_timeout: Duration) {
        let expires = Instant::now() + idle_timeout;
        let mut idle = self.lock();
        if idle.http1.len() >= MAX_IDLE {
            idle.http1.remove(0);
        }
        idle.http1.push(IdleHttp1 {
            conn,
            client,
            expires,
        });
        self.start_reaper(&mut idle, idle_timeout);
    }

    /// A handle on the shared HTTP/2 connection made by `client`, if it is
    /// open; using it pushes its idle deadline back.
    pub fn shared_http2(
        &self,
        client: u64,
        idle_timeout: Duration,
    ) -> Option<http2::SendRequest<Body>> {
        let mut idle = self.lock();
        let shared = idle.http2.as_mut()?;
        if shared.client != client || shared.sender.is_closed() {
            idle.http2 = None;
            return None;
        }
        shared.expires = Instant::now() + idle_timeout;
        Some(shared.sender.clone())
    }

    /// Waits for the turn to open the shared HTTP/2 connection; check
    /// [`IdlePool::shared_http2`] again once it is yours.
    pub async fn http2_connect_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.http2_connecting.lock().await
    }

    /// Makes `sender` the shared HTTP/2 connection for requests to come.
    pub fn set_http2(
        self: &Arc<Self>,
        sender: http2::SendRequest<Body>,
        client: u64,
        idle_timeout: Duration,
    ) {
        let expires = Instant::now() + idle_timeout;
        let mut idle = self.lock();
        idle.http2 = Some(SharedHttp2 {
            sender,
            client,
            expires,
        });
        self.start_reaper(&mut idle, idle_timeout);
    }

    /// Idle HTTP/1 connections held (shown by `Debug`, checked by tests).
    pub fn idle_http1(&self) -> usize {
        self.lock().http1.len()
    }

    fn start_reaper(self: &Arc<Self>, idle: &mut Idle, idle_timeout: Duration) {
        if idle.reaping {
            return;
        }
        // Pools are also used outside a runtime by unit tests of other
        // modules; without one, expired connections are dropped on take.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        idle.reaping = true;
        runtime.spawn(reap(Arc::downgrade(self), idle_timeout));
    }

    /// Drops expired connections; the time of the next expiry, or `None`
    /// when the pool is empty (the reaper then stops).
    fn reap_expired(&self, now: Instant) -> Option<Instant> {
        let mut idle = self.lock();
        idle.http1.retain(|c| c.expires > now);
        if idle
            .http2
            .as_ref()
            .is_some_and(|s| s.expires <= now || s.sender.is_closed())
        {
            idle.http2 = None;
        }
        let next = idle
            .http1
            .iter()
            .map(|c| c.expires)
            .chain(idle.http2.as_ref().map(|s| s.expires))
            .min();
        if next.is_none() {
            idle.reaping = false;
        }
        next
    }
}

/// Closes the pool's connections as they expire; ends with the pool or when
/// it is empty.
async fn reap(pool: Weak<IdlePool>, idle_timeout: Duration) {
    let mut wake = Instant::now() + idle_timeout;
    loop {
        tokio::time::sleep_until(wake.into()).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        match pool.reap_expired(Instant::now()) {
            // A little slack gathers connections that expire close together.
            Some(next) => wake = next + Duration::from_millis(10),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::http1::ConnIo;
    use crate::upstream::http1::tests::pair;
    use http::{Request, Response};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    use tokio::net::{TcpListener, TcpStream};

    async fn http2_conn() -> http2::SendRequest<Body> {
        let (client, server) = tokio::io::duplex(65536);
        tokio::spawn(async move {
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(crate::http::body::empty()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn takes_the_most_recently_returned_connection() {
        let pool = Arc::new(IdlePool::default());
        let (a, _sa) = pair().await;
        let (b, _sb) = pair().await;
        pool.put_http1(a, 1, MINUTE);
        pool.put_http1(b, 1, MINUTE);
        assert_eq!(pool.idle_http1(), 2);
        let mut taken = pool.take_http1(1).expect("an idle connection");
        assert!(taken.is_usable());
        assert_eq!(pool.idle_http1(), 1);
    }

    #[tokio::test]
    async fn another_clients_connections_are_not_reused() {
        let pool = Arc::new(IdlePool::default());
        let (a, _sa) = pair().await;
        pool.put_http1(a, 1, MINUTE);
        assert!(pool.take_http1(2).is_none());
        // The foreign connection was dropped on the way.
        assert_eq!(pool.idle_http1(), 0);
    }

    #[tokio::test]
    async fn a_connection_the_target_closed_or_wrote_to_is_not_usable() {
        let (mut closed, server) = pair().await;
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!closed.is_usable(), "EOF");

        let (mut chatty, mut server) = pair().await;
        tokio::io::AsyncWriteExt::write_all(&mut server, b"HTTP/1.1 200 OK\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!chatty.is_usable(), "bytes nobody asked for");

        let (mut quiet, _server) = pair().await;
        assert!(quiet.is_usable());
        assert!(quiet.is_usable(), "checking does not change the answer");
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let pool = Arc::new(IdlePool::default());
        let (a, _sa) = pair().await;
        pool.put_http1(a, 1, Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.idle_http1(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The reaper closed it without any request coming by.
        assert_eq!(pool.idle_http1(), 0);
        assert!(
            !pool.lock().reaping,
            "the reaper stops when the pool is empty"
        );
    }

    #[tokio::test]
    async fn the_pool_is_bounded() {
        let pool = Arc::new(IdlePool::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut servers = Vec::new();
        for _ in 0..=MAX_IDLE {
            let client = TcpStream::connect(addr).await.unwrap();
            servers.push(listener.accept().await.unwrap().0);
            pool.put_http1(Http1Conn::new(ConnIo::Plain(client)), 1, MINUTE);
        }
        assert_eq!(pool.idle_http1(), MAX_IDLE);
    }

    #[tokio::test]
    async fn http2_connection_is_shared_until_another_client_replaces_it() {
        let pool = Arc::new(IdlePool::default());
        assert!(pool.shared_http2(1, MINUTE).is_none());
        pool.set_http2(http2_conn().await, 1, MINUTE);
        assert!(pool.shared_http2(1, MINUTE).is_some());
        assert!(pool.shared_http2(1, MINUTE).is_some());
        assert!(pool.shared_http2(2, MINUTE).is_none());
        assert!(
            pool.shared_http2(1, MINUTE).is_none(),
            "dropped once foreign"
        );
    }
}
