//! `protocol: udp` listeners: datagrams are balanced per client address.
//!
//! The first datagram from a client address opens a session: a target is
//! picked and a new socket, connected to that target, is opened for the
//! client alone, so the target's replies can be told apart and relayed to the
//! right client from the listener's own address. A session with no datagram
//! either way for the upstream's `timeouts.idle` expires and its socket closes.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::pick_context;
use crate::upstream::{InFlight, Upstream};

/// The upstream the listener's current plan names (`None` once a reload
/// has removed the listener or made it something else).
pub type CurrentUpstream = Box<dyn Fn() -> Option<Arc<Upstream>> + Send + Sync>;

/// Largest UDP payload (IPv4 limit; jumbograms are not relayed).
const MAX_DATAGRAM: usize = 65_535;

/// One client's session: its own socket to the chosen target.
struct Session {
    socket: Arc<UdpSocket>,
    /// Milliseconds since the listener started, at the last datagram either way.
    last: AtomicU64,
    /// Counts the session against its target while it lives.
    _lease: InFlight,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

fn lock(sessions: &Sessions) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Session>>> {
    crate::lock(sessions)
}

/// Serves the UDP listener `name` on `socket` until `stop` turns true. Each
/// new session asks `current` for the listener's upstream, so a reload that
/// changes the upstream applies to new sessions; open sessions keep their
/// target.
pub async fn serve(
    socket: UdpSocket,
    name: Arc<str>,
    current: CurrentUpstream,
    gauge: Gauge,
    mut stop: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let sessions: Sessions = Arc::default();
    let start = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = stopped(&mut stop) => return,
        };
        let (n, client) = match received {
            Ok(pair) => pair,
            Err(e) => {
                // ICMP errors from earlier sends surface here on some systems;
                // they concern one client, not the listener.
                tracing::debug!(listener = %name, error = %e, "UDP receive failed");
                continue;
            }
        };
        let existing = lock(&sessions).get(&client).cloned();
        let session = match existing {
            Some(s) => s,
            None => {
                let Some(upstream) = current() else {
                    return;
                };
                let Some(session) = open(&upstream, client, elapsed_ms(start)).await else {
                    tracing::debug!(listener = %name, %client, "no UDP target available; datagram dropped");
                    continue;
                };
                let session = Arc::new(session);
                lock(&sessions).insert(client, session.clone());
                gauge.inc();
                tokio::spawn(replies(
                    socket.clone(),
                    client,
                    session.clone(),
                    sessions.clone(),
                    upstream.l4.idle_timeout,
                    start,
                    gauge.clone(),
                    stop.clone(),
                ));
                session
            }
        };
        session.last.store(elapsed_ms(start), Ordering::Relaxed);
        if let Err(e) = session.socket.send(&buf[..n]).await {
            tracing::debug!(listener = %name, %client, error = %e, "UDP send to target failed");
        }
    }
}

/// Resolves when the listener stops. The watch guard is dropped here, so it
/// never lives across an await of the caller (it is not Send).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
}

/// Picks a target for `client` and opens a socket connected to it, trying
/// another target when one cannot be resolved or connected.
async fn open(upstream: &Upstream, client: SocketAddr, now_ms: u64) -> Option<Session> {
    let ctx = pick_context(upstream, client);
    let mut tried = Vec::new();
    while tried.len() < upstream.targets.len() {
        let (index, lease) = upstream.select(&ctx, &tried)?;
        if tried.contains(&index) {
            return None;
        }
        tried.push(index);
        let target = &upstream.targets[index];
        match connect(&target.address).await {
            Ok(socket) => {
                return Some(Session {
                    socket: Arc::new(socket),
                    last: AtomicU64::new(now_ms),
                    _lease: lease,
                });
            }
            Err(e) => {
                tracing::debug!(upstream = %upstream.name, target = %target.address, error = %e, "UDP target unusable");
                upstream.record_outcome(index, true);
            }
        }
    }
    None
}

/// A socket on an ephemeral port, connected to `address` (`host:port`).
async fn connect(address: &str) -> io::Result<UdpSocket> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for addr in tokio::net::lookup_host(address).await? {
        let local: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        match socket.connect(addr).await {
            Ok(()) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Removes `client`'s entry when it is still `session` (a new session may
/// have replaced it).
fn forget(sessions: &Sessions, client: SocketAddr, session: &Arc<Session>) {
    let mut map = lock(sessions);
    if map.get(&client).is_some_and(|s| Arc::ptr_eq(s, session)) {
        map.remove(&client);
    }
}

/// Relays the target's replies to `client` until the session is idle for
/// `idle`, then forgets it.
#[allow(clippy::too_many_arguments)]
async fn replies(
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    session: Arc<Session>,
    sessions: Sessions,
    idle: Duration,
    start: Instant,
    gauge: Gauge,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let idle_ms = idle.as_millis().min(u128::from(u64::MAX)) as u64;
    loop {
        let quiet_until = session.last.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = elapsed_ms(start);
        if now >= quiet_until {
            break;
        }
        tokio::select! {
            r = session.socket.recv(&mut buf) => match r {
                Ok(n) => {
                    session.last.store(elapsed_ms(start), Ordering::Relaxed);
                    if let Err(e) = listener.send_to(&buf[..n], client).await {
                        tracing::debug!(%client, error = %e, "UDP reply to client failed");
                    }
                }
                // A refused port (ICMP) on a connected socket: the target may
                // come back, and the idle timer ends the session otherwise.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    tracing::debug!(%client, error = %e, "UDP receive from target failed");
                    break;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(quiet_until - now)) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    forget(&sessions, client, &session);
    gauge.dec();
    tracing::debug!(%client, "UDP session closed");
}
