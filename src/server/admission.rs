//! Which connections a listener takes: `max_connections` (past it, new
//! connections wait in the kernel's backlog: the accept loop stops asking
//! for them), `max_connections_per_client` and
//! `max_connection_rate_per_client` (past them, a client's new connections
//! are closed at once, as HAProxy's `src_conn_cur` and `src_conn_rate`
//! rules do); and the process's open-files limit, raised at start as
//! nginx's `worker_rlimit_nofile` would be.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::proxy::connection::now_ms;
use crate::proxy::snapshot::Limits;

/// The window `max_connection_rate_per_client` counts in.
const RATE_WINDOW_MS: u64 = 1000;
/// The client table is pruned of clients with nothing open and no recent
/// connection once it holds at least this many (and twice as many as
/// after the last pruning): memory stays bounded by the clients active in
/// the last second, at a cost spread over the connections that grew it.
const PRUNE_FLOOR: usize = 1024;
/// How often a full listener looks again at a `max_connections` a reload
/// may have raised.
const FULL_RECHECK: Duration = Duration::from_secs(1);

/// One listener's connections, as its accept loop admits them.
#[derive(Default)]
pub struct Admission {
    /// Connections open now.
    open: AtomicU32,
    /// Woken when a connection closes.
    freed: Notify,
    clients: Mutex<Clients>,
}

#[derive(Default)]
struct Clients {
    by_ip: HashMap<IpAddr, ClientCount>,
    /// The table's size after it was last pruned.
    pruned_len: usize,
}

/// One client address's connections.
struct ClientCount {
    open: u32,
    /// When the current rate window began ([`now_ms`]).
    window_start: u64,
    /// Connections attempted in the current window.
    in_window: u32,
}

/// Why a new connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The client has `max_connections_per_client` open already.
    PerClient,
    /// The client opened `max_connection_rate_per_client` in the last second.
    RatePerClient,
    /// The client crossed an HTTP/2 flood limit and serves its penalty.
    Http2Flood,
}

impl Refused {
    /// The metric's `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::PerClient => "max_connections_per_client",
            Refused::RatePerClient => "max_connection_rate_per_client",
            Refused::Http2Flood => "http2_flood",
        }
    }
}

/// An admitted connection's place, given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    /// The client, when its connections are counted.
    client: Option<IpAddr>,
}

impl Admission {
    /// Waits until fewer than `max` connections are open, looking again
    /// now and then for a reload that raised `max` (see `limit`).
    pub async fn room(&self, limit: impl Fn() -> Option<u32>) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match limit() {
                Some(max) if self.open.load(Ordering::Acquire) >= max => {}
                _ => return,
            }
            let _ = tokio::time::timeout(FULL_RECHECK, freed).await;
        }
    }

    /// Admits a connection from `ip` under `limits`' per-client caps.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Slot, Refused> {
        let per_client = limits.max_connections_per_client;
        let rate = limits.max_connection_rate_per_client;
        let client = if per_client.is_some() || rate.is_some() {
            self.count_client(ip, per_client, rate, now_ms())?;
            Some(ip)
        } else {
            None
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            admission: self.clone(),
            client,
        })
    }

    fn count_client(
        &self,
        ip: IpAddr,
        per_client: Option<u32>,
        rate: Option<u32>,
        now: u64,
    ) -> Result<(), Refused> {
        let mut clients = crate::lock(&self.clients);
        let len = clients.by_ip.len();
        if len >= PRUNE_FLOOR && len >= clients.pruned_len.saturating_mul(2) {
            clients
                .by_ip
                .retain(|_, c| c.open > 0 || now < c.window_start.saturating_add(RATE_WINDOW_MS));
            clients.pruned_len = clients.by_ip.len();
        }
        let count = clients.by_ip.entry(ip).or_insert(ClientCount {
            open: 0,
            window_start: now,
            in_window: 0,
        });
        if now >= count.window_start.saturating_add(RATE_WINDOW_MS) {
            count.window_start = now;
            count.in_window = 0;
        }
        // A refused attempt counts too: a client that keeps hammering
        // stays refused until it slows down.
        count.in_window = count.in_window.saturating_add(1);
        if rate.is_some_and(|max| count.in_window > max) {
            return Err(Refused::RatePerClient);
        }
        if per_client.is_some_and(|max| count.open >= max) {
            return Err(Refused::PerClient);
        }
        count.open += 1;
        Ok(())
    }

    /// Gives back a connection [`Admission::count_client`] counted.
    fn release_client(&self, ip: IpAddr) {
        let mut clients = crate::lock(&self.clients);
        if let Some(count) = clients.by_ip.get_mut(&ip) {
            count.open = count.open.saturating_sub(1);
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.admission;
        if let Some(ip) = self.client {
            admission.release_client(ip);
        }
        admission.open.fetch_sub(1, Ordering::AcqRel);
        admission.freed.notify_one();
    }
}

/// Raises the process's soft open-files limit to its hard limit, so that
/// connections are not refused for descriptors the system would grant;
/// returns the limit now in force.
#[cfg(unix)]
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above; the kernel copies the struct in.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// Elsewhere the limit is left as it is.
#[cfg(not(unix))]
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    Err(std::io::Error::other("not supported here"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: Option<u32>, rate: Option<u32>) -> Limits {
        Limits {
            max_connections_per_client: per_client,
            max_connection_rate_per_client: rate,
            ..Limits::default()
        }
    }

    #[test]
    fn a_client_gets_its_share_and_others_theirs() {
        let admission = Arc::new(Admission::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let caps = limits(Some(2), None);
        let first = admission.admit(a, &caps).unwrap();
        let _second = admission.admit(a, &caps).unwrap();
        assert_eq!(admission.admit(a, &caps).err(), Some(Refused::PerClient));
        let _other = admission.admit(b, &caps).unwrap();
        assert_eq!(admission.open(), 3);
        drop(first);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(a, &caps).is_ok());
    }

    #[test]
    fn the_rate_cap_counts_per_second_refused_attempts_included() {
        let admission = Admission::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(admission.count_client(a, None, Some(3), 5_000).is_ok());
        }
        assert_eq!(
            admission.count_client(a, None, Some(3), 5_500),
            Err(Refused::RatePerClient)
        );
        assert_eq!(
            admission.count_client(a, None, Some(3), 5_999),
            Err(Refused::RatePerClient)
        );
        assert!(admission.count_client(a, None, Some(3), 6_000).is_ok());
    }

    #[test]
    fn without_caps_clients_are_not_tracked() {
        let admission = Arc::new(Admission::default());
        let slot = admission
            .admit("192.0.2.1".parse().unwrap(), &Limits::default())
            .unwrap();
        assert!(slot.client.is_none());
        assert!(crate::lock(&admission.clients).by_ip.is_empty());
    }

    #[test]
    fn the_table_forgets_clients_with_nothing_open_and_no_recent_connection() {
        let admission = Admission::default();
        let kept: IpAddr = "198.51.100.7".parse().unwrap();
        admission.count_client(kept, None, Some(10), 0).unwrap();
        // With `kept`, the table reaches PRUNE_FLOOR entries.
        for i in 1..PRUNE_FLOOR as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            admission.count_client(ip, None, Some(10), 0).unwrap();
            admission.release_client(ip);
        }
        // Ten seconds on, every window has ended: only the client with a
        // connection still open stays, beside the newcomer.
        let late: IpAddr = "198.51.100.1".parse().unwrap();
        admission
            .count_client(late, None, Some(10), 10_000)
            .unwrap();
        let clients = crate::lock(&admission.clients);
        assert_eq!(clients.by_ip.len(), 2);
        assert!(clients.by_ip.contains_key(&kept));
    }

    #[tokio::test]
    async fn a_full_listener_waits_until_a_connection_closes() {
        let admission = Arc::new(Admission::default());
        let slot = admission
            .admit("192.0.2.1".parse().unwrap(), &Limits::default())
            .unwrap();
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.room(|| Some(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(slot);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let now = raise_open_files_limit().unwrap();
        assert!(now >= 1024, "{now}");
    }
}
