//! Listeners, accept loops, TLS, reload and shutdown.
//!
//! A [`Gateway`] owns the running listeners. The admin API sits above this
//! layer: the gateway binds its listener and hands it, with a [`Control`],
//! to the [`AdminService`] it was started with. Reload compiles the new
//! configuration, binds any new listeners, and only then swaps the snapshot
//! and closes listeners that are gone; a failure at any step leaves the
//! running configuration untouched.

pub mod admission;
pub mod client_body;
pub mod connection;
pub mod http1;
pub mod http2;
mod listen;
pub mod registry;
pub mod runtime;
mod ticket_hold;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Mutex, Notify, watch};

use crate::config::diagnostics::{ConfigError, ConfigErrors};
use crate::config::model::Protocol;
use crate::observe::metrics::{ListenerLabel, RefusedLabels};
use crate::observe::throttle::Throttled;
use crate::proxy::snapshot::Snapshot;
use crate::server::admission::Admission;
use crate::upstream::dns::ResolveFn;
pub use runtime::Runtime;

/// Identifies a listener socket across reloads: same name, address text and
/// protocol (http and https counting as one) means the socket stays open.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ListenerKey {
    name: String,
    address: String,
    protocol: Protocol,
}

struct RunningListener {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// What the admin API asks of a running gateway; the server implements it.
pub trait Control: Send + Sync + 'static {
    /// The snapshot, metrics and uptime.
    fn runtime(&self) -> &Arc<Runtime>;
    /// The bound address of listener `name`.
    fn listener_addr(&self, name: &str) -> Option<SocketAddr>;
    /// Reads the configuration file again and applies it, as SIGHUP does.
    fn reload(self: Arc<Self>) -> BoxFuture<'static, Result<Arc<Snapshot>, ConfigErrors>>;
}

/// Serves the admin API on the listener the gateway bound for it.
pub type AdminService = fn(TcpListener, Arc<dyn Control>) -> BoxFuture<'static, ()>;

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration has mistakes.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A socket could not be bound.
    #[error("cannot listen on {address} ({name}): {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address text.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Shared by the gateway handle, the accept loops and the admin API.
pub struct Inner {
    /// Snapshot, metrics, pools.
    pub runtime: Arc<Runtime>,
    listeners: Mutex<HashMap<ListenerKey, RunningListener>>,
    /// Addresses of running listeners by name (for tests and status).
    addresses: std::sync::Mutex<HashMap<String, SocketAddr>>,
    admin_addr: Option<SocketAddr>,
    /// Flips to true when connections must drain.
    drain: watch::Sender<bool>,
    /// Open client connections, to know when draining is done.
    open_connections: AtomicUsize,
    connections_closed: Notify,
    /// Asks the process to shut down (admin or signal).
    stop_requested: Notify,
}

/// A running gateway.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// Loads `config_path`, binds every listener and the admin listener, and
    /// starts serving (the admin API with `admin`).
    pub async fn start(config_path: PathBuf, admin: AdminService) -> Result<Gateway, StartError> {
        Self::start_runtime(Runtime::start(config_path).await?, admin).await
    }

    /// As [`Gateway::start`], resolving target names with `resolve` instead
    /// of the system resolver (for embedding with another service discovery).
    pub async fn start_with_resolver(
        config_path: PathBuf,
        resolve: ResolveFn,
        admin: AdminService,
    ) -> Result<Gateway, StartError> {
        Self::start_runtime(
            Runtime::start_with_resolver(config_path, resolve).await?,
            admin,
        )
        .await
    }

    async fn start_runtime(
        runtime: Arc<Runtime>,
        admin: AdminService,
    ) -> Result<Gateway, StartError> {
        static OPEN_FILES: std::sync::Once = std::sync::Once::new();
        OPEN_FILES.call_once(|| match admission::raise_open_files_limit() {
            Ok(limit) => tracing::info!(limit, "open files limit"),
            Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
        });
        let snapshot = runtime.snapshot.load_full();
        let (drain, _) = watch::channel(false);
        let admin_listener = match snapshot.admin {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            name: "admin".into(),
                            address: addr.to_string(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let inner = Arc::new(Inner {
            runtime,
            listeners: Mutex::new(HashMap::new()),
            addresses: std::sync::Mutex::new(HashMap::new()),
            admin_addr,
            drain,
            open_connections: AtomicUsize::new(0),
            connections_closed: Notify::new(),
            stop_requested: Notify::new(),
        });
        {
            let mut running = inner.listeners.lock().await;
            let new = bind_new(&snapshot, &running).await?;
            for (key, listener) in new {
                start_listener(&inner, key, listener, &mut running);
            }
        }
        inner.runtime.sync_health_checks();
        if let Some(listener) = admin_listener {
            tokio::spawn(admin(listener, inner.clone()));
        }
        tokio::spawn(dns_refresh_loop(inner.clone()));
        tokio::spawn(sweep_loop(Arc::downgrade(&inner.runtime)));
        Ok(Gateway { inner })
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.listener_addr(name)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }

    /// The shared runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.runtime
    }

    /// Reloads the configuration file (as SIGHUP does).
    pub async fn reload(&self) -> Result<Arc<Snapshot>, ConfigErrors> {
        Inner::reload(&self.inner).await
    }

    /// Resolves when shutdown was requested through [`Gateway::request_stop`].
    pub async fn stop_requested(&self) {
        self.inner.stop_requested.notified().await
    }

    /// Asks a task waiting in [`Gateway::stop_requested`] to shut down.
    pub fn request_stop(&self) {
        self.inner.stop_requested.notify_waiters();
    }

    /// Stops accepting, lets in-flight requests finish within the configured
    /// `shutdown_timeout`, and returns whether every connection finished.
    pub async fn shutdown(&self) -> bool {
        let timeout = self.inner.runtime.snapshot.load().shutdown_timeout;
        self.shutdown_within(timeout).await
    }

    /// As [`Gateway::shutdown`] with an explicit deadline.
    pub async fn shutdown_within(&self, timeout: Duration) -> bool {
        self.inner.runtime.stop_health_checks();
        {
            let mut running = self.inner.listeners.lock().await;
            for (_, l) in running.drain() {
                let _ = l.stop.send(true);
            }
        }
        let _ = self.inner.drain.send(true);
        self.inner.runtime.connections.drain();
        let drained = async {
            loop {
                let notified = self.inner.connections_closed.notified();
                if self.inner.open_connections.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let finished = tokio::time::timeout(timeout, drained).await.is_ok();
        // The writer drains on a timer; the last lines must not wait for it.
        let runtime = self.inner.runtime.clone();
        let _ = tokio::task::spawn_blocking(move || {
            runtime.flush_access_logs(Duration::from_secs(2));
        })
        .await;
        finished
    }
}

impl Control for Inner {
    fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        Inner::listener_addr(self, name)
    }

    fn reload(self: Arc<Self>) -> BoxFuture<'static, Result<Arc<Snapshot>, ConfigErrors>> {
        Box::pin(async move { Inner::reload(&self).await })
    }
}

impl Inner {
    /// Makes `snapshot` the one requests see, and moves the long-lived state
    /// (health checks, target registry) to it.
    fn swap_in(&self, snapshot: &Arc<Snapshot>) {
        let rt = &self.runtime;
        rt.snapshot.store(snapshot.clone());
        rt.health_checks.sync(snapshot.upstreams.values());
        rt.prune_targets(snapshot);
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let map = crate::lock(&self.addresses);
        map.get(name).copied()
    }

    /// Compiles the file again, binds new listeners, swaps the snapshot and
    /// closes removed listeners. On any error nothing changes.
    pub async fn reload(self: &Arc<Self>) -> Result<Arc<Snapshot>, ConfigErrors> {
        let rt = &self.runtime;
        let (_guard, result) = rt.prepare_reload().await;
        let snapshot = match result {
            Ok(s) => Arc::new(s),
            Err(errors) => {
                rt.count_reload(false);
                tracing::error!(errors = %errors, "reload failed; the running configuration stays");
                return Err(errors);
            }
        };
        let mut running = self.listeners.lock().await;
        let new = match bind_new(&snapshot, &running).await {
            Ok(n) => n,
            Err(e) => {
                rt.count_reload(false);
                let errors = ConfigErrors(vec![ConfigError {
                    file: snapshot.info.path.clone(),
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                    hint: Some("free the port or pick another address".into()),
                }]);
                tracing::error!(errors = %errors, "reload failed; the running configuration stays");
                return Err(errors);
            }
        };
        self.swap_in(&snapshot);
        for (key, listener) in new {
            start_listener(self, key, listener, &mut running);
        }
        let wanted: Vec<ListenerKey> = snapshot.listeners.iter().map(key_of).collect();
        running.retain(|key, l| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(listener = %key.name, address = %l.local_addr, "listener closed by reload");
                let _ = l.stop.send(true);
                // A listener that moved to a new address keeps its name; the
                // new socket was recorded above and must not be forgotten.
                if let Ok(mut map) = self.addresses.lock()
                    && map.get(&key.name) == Some(&l.local_addr)
                {
                    map.remove(&key.name);
                }
            }
            keep
        });
        rt.count_reload(true);
        tracing::info!(hash = %snapshot.info.hash, "configuration reloaded");
        Ok(snapshot)
    }
}

fn key_of(plan: &Arc<crate::proxy::snapshot::ListenerPlan>) -> ListenerKey {
    ListenerKey {
        name: plan.name.to_string(),
        address: plan.address_text.clone(),
        // http, https, tcp and tls share one accept loop, and each connection
        // reads its protocol and TLS settings from the current plan, so
        // switching between them keeps the socket instead of binding the same
        // port a second time. Only udp needs a different kind of socket.
        protocol: match plan.protocol {
            Protocol::Udp => Protocol::Udp,
            _ => Protocol::Http,
        },
    }
}

/// A bound listener socket: a stream listener, or a UDP socket.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Bound {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }
}

/// Binds every listener of `snapshot` that is not running yet.
async fn bind_new(
    snapshot: &Snapshot,
    running: &HashMap<ListenerKey, RunningListener>,
) -> Result<Vec<(ListenerKey, Bound)>, StartError> {
    let mut out = Vec::new();
    for plan in &snapshot.listeners {
        let key = key_of(plan);
        if running.contains_key(&key) {
            continue;
        }
        let bound = match plan.protocol {
            Protocol::Udp => UdpSocket::bind(plan.address).await.map(Bound::Udp),
            // Behind a plain TCP listener the server may speak first (SMTP,
            // MySQL): its connections are handed over at once.
            Protocol::Tcp => TcpListener::bind(plan.address).await.map(Bound::Tcp),
            Protocol::Http | Protocol::Https | Protocol::Tls => {
                TcpListener::bind(plan.address).await.map(|listener| {
                    listen::defer_accept(&listener);
                    Bound::Tcp(listener)
                })
            }
        };
        let listener = bound.map_err(|source| StartError::Bind {
            name: key.name.clone(),
            address: key.address.clone(),
            source,
        })?;
        out.push((key, listener));
    }
    Ok(out)
}

fn start_listener(
    inner: &Arc<Inner>,
    key: ListenerKey,
    listener: Bound,
    running: &mut HashMap<ListenerKey, RunningListener>,
) {
    let Ok(local_addr) = listener.local_addr() else {
        return;
    };
    tracing::info!(listener = %key.name, address = %local_addr, "listening");
    let (stop, stop_rx) = watch::channel(false);
    if let Ok(mut map) = inner.addresses.lock() {
        map.insert(key.name.clone(), local_addr);
    }
    match listener {
        Bound::Tcp(listener) => {
            tokio::spawn(accept_loop(
                inner.clone(),
                key.name.clone(),
                listener,
                stop_rx,
            ));
        }
        Bound::Udp(socket) => {
            let name: Arc<str> = Arc::from(key.name.as_str());
            // Open UDP sessions count as connections in connections_active.
            let gauge = inner
                .runtime
                .metrics
                .connections_active
                .get_or_create_owned(&ListenerLabel {
                    listener: name.clone(),
                });
            let runtime = inner.runtime.clone();
            let listener = name.clone();
            let current: crate::l4::udp::CurrentUpstream =
                Box::new(
                    move || match &runtime.snapshot.load().listener(&listener)?.l4 {
                        Some(crate::l4::L4Plan::Udp(upstream)) => Some(upstream.clone()),
                        _ => None,
                    },
                );
            tokio::spawn(crate::l4::udp::serve(socket, name, current, gauge, stop_rx));
        }
    }
    running.insert(key, RunningListener { local_addr, stop });
}

/// How often a flood of one event (accept errors, refused connections)
/// writes a log line.
const LOG_PERIOD: Duration = Duration::from_secs(10);
/// The first pause after a failed accept, doubled while failures go on.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn accept_loop(
    inner: Arc<Inner>,
    name: String,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let gauge = inner
        .runtime
        .metrics
        .connections_active
        .get_or_create_owned(&ListenerLabel {
            listener: Arc::from(name.as_str()),
        });
    static ACCEPT_FAILED: Throttled = Throttled::new(LOG_PERIOD);
    static REFUSED: Throttled = Throttled::new(LOG_PERIOD);
    let admission = Arc::new(Admission::default());
    let listener_name: Arc<str> = Arc::from(name.as_str());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // At max_connections, new connections wait in the kernel's backlog.
        let max_connections = || {
            let snapshot = inner.runtime.snapshot.load();
            snapshot.listener(&name)?.limits.max_connections
        };
        let accepted = tokio::select! {
            a = async {
                admission.room(max_connections).await;
                listener.accept().await
            } => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, client) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF_MIN;
                pair
            }
            Err(e) => {
                // Out of file descriptors and similar: back off, longer
                // while it lasts, instead of spinning on the error.
                if let Some(times) = ACCEPT_FAILED.due() {
                    tracing::warn!(listener = %name, error = %e, times, "accepting connections failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Some(plan) = inner.runtime.snapshot.load().listener(&name).cloned() else {
            return;
        };
        let admitted = if inner.runtime.floods.penalized(client.ip()) {
            Err(admission::Refused::Http2Flood)
        } else {
            admission.admit(client.ip(), &plan.limits)
        };
        let slot = match admitted {
            Ok(slot) => slot,
            Err(refused) => {
                let labels = RefusedLabels {
                    listener: listener_name.clone(),
                    reason: refused.reason(),
                };
                inner
                    .runtime
                    .metrics
                    .connections_refused
                    .get_or_create(&labels)
                    .inc();
                if let Some(times) = REFUSED.due() {
                    tracing::info!(listener = %name, %client, reason = refused.reason(), times, "closing new connections past a per-client cap");
                }
                drop(stream);
                continue;
            }
        };
        let inner = inner.clone();
        let gauge = gauge.clone();
        inner.open_connections.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        // Combinators, not an async block: the block would keep `stream`,
        // `client` and `plan` in every connection's task after handing them on.
        let served = connection::serve(stream, client, plan, inner.runtime.clone());
        tokio::spawn(served.map(move |()| {
            drop(slot);
            gauge.dec();
            if inner.open_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
                inner.connections_closed.notify_waiters();
            }
        }));
    }
}

/// Reloads on SIGHUP; on SIGTERM or SIGINT stops accepting, drains within
/// `shutdown_timeout` and returns success.
pub async fn serve_until_signal(gateway: Gateway) -> std::process::ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::process::ExitCode::FAILURE;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // Errors are logged by reload; the running configuration stays.
                let _ = gateway.reload().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = gateway.stop_requested() => break,
        }
    }
    tracing::info!("draining connections");
    if gateway.shutdown().await {
        tracing::info!("all connections finished; exiting");
    } else {
        tracing::warn!("shutdown_timeout passed with connections still open; exiting");
    }
    std::process::ExitCode::SUCCESS
}

/// Sweeps the open connections for idle ones, as often as the shortest
/// idle limit of the running listeners calls for (also while
/// draining: a client may be sending a head slowly), until the runtime is
/// gone.
async fn sweep_loop(runtime: std::sync::Weak<Runtime>) {
    loop {
        let tick = {
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            runtime
                .connections
                .sweep(|conn| count_send_timeout(&runtime, conn));
            let snapshot = runtime.snapshot.load();
            let shortest = snapshot
                .listeners
                .iter()
                .map(|l| l.limits.shortest_idle())
                .min()
                .unwrap_or(Duration::from_secs(10));
            registry::tick(shortest)
        };
        tokio::time::sleep(tick).await;
    }
}

/// Counts (and now and then logs) a connection cut for not taking its
/// answer within `send_timeout`.
fn count_send_timeout(runtime: &Runtime, conn: &crate::proxy::connection::Connection) {
    static LOG: Throttled = Throttled::new(LOG_PERIOD);
    let labels = crate::observe::metrics::ClientTimeoutLabels {
        listener: conn.listener.clone(),
        kind: "send_timeout",
    };
    runtime.metrics.client_timeouts.get_or_create(&labels).inc();
    if let Some(times) = LOG.due() {
        tracing::info!(client = %conn.client, times, "connections whose client did not take its answer within send_timeout cut");
    }
}

/// Resolves target names again, each on its `dns_refresh` schedule; when an
/// answer changes, installs the same configuration compiled with the new
/// addresses (listeners stay as they are). Stops when the gateway drains.
async fn dns_refresh_loop(inner: Arc<Inner>) {
    let mut drain = inner.drain.subscribe();
    let mut next_due: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        let now = tokio::time::Instant::now();
        let schedule = inner.runtime.dns_schedule();
        next_due.retain(|name, _| schedule.iter().any(|(n, _)| n == name));
        let mut due = Vec::new();
        let mut wake = now + runtime::DEFAULT_DNS_REFRESH;
        for (name, every) in schedule {
            let at = next_due.entry(name.clone()).or_insert(now + every);
            if *at <= now {
                due.push(name);
                *at = now + every;
            }
            wake = wake.min(*at);
        }
        if !due.is_empty()
            && let Some((_guard, result)) = inner.runtime.prepare_dns_rebuild(&due).await
        {
            match result {
                Ok(snapshot) => {
                    inner.swap_in(&Arc::new(snapshot));
                    tracing::info!("targets updated from DNS");
                }
                // Cannot happen for a configuration that compiled before,
                // short of a certificate that vanished; keep what runs.
                Err(errors) => {
                    tracing::error!(%errors, "rebuilding after a DNS change failed; keeping the running configuration")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
    }
}
