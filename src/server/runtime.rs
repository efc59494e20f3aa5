//! State that outlives a configuration snapshot: the current snapshot itself,
//! metrics, upstream connection pools, target health, DNS answers,
//! access-log writers, rate-limit counters, key sets and Redis connections;
//! loading, compiling (against those states, see [`crate::compile::Env`])
//! and the reload lock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::compile::{Env, compile};
use crate::config::ConfigErrors;
use crate::config::load::{Loaded, load_file};
use crate::observe::access_log::AccessLogs;
use crate::observe::metrics::{Metrics, ResultLabel};
use crate::policy::basic_auth::FailureRegistry;
use crate::policy::cache::store::CacheRegistry;
use crate::policy::jwks::RemoteKeySets;
use crate::policy::rate_limit::CounterRegistry;
use crate::policy::redis_store::RedisStores;
use crate::proxy::snapshot::{Live, Snapshot};
use crate::server::registry::Registry;
use crate::upstream::dns::{self, Dns, ResolveFn, system_resolver};
use crate::upstream::health::HealthChecks;
use crate::upstream::{ClientCache, TargetStates};

/// How often target names are resolved again when `dns_refresh` is not set.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

/// Every target name (`host:port`) the configuration uses.
fn dns_names(cfg: &crate::config::model::Config) -> Vec<String> {
    let mut names: Vec<String> = cfg
        .upstreams
        .iter()
        .flat_map(|u| u.targets.iter().map(|t| t.address()))
        .filter(|a| dns::is_name(a))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Everything the data plane and the admin API share.
pub struct Runtime {
    /// The configuration file, read again on reload.
    pub config_path: PathBuf,
    /// The current snapshot; swapped whole on reload.
    pub snapshot: Live,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Upstream connection pools.
    pub clients: ClientCache,
    /// Access-log writers by destination, reused across reloads.
    access_logs: AccessLogs,
    /// Live state of every target by (upstream, address), kept across reloads.
    targets: TargetStates,
    /// Active health checks of the installed snapshot's upstreams.
    pub health_checks: HealthChecks,
    /// When the process started serving.
    pub started: Instant,
    /// Serializes reloads so two at once cannot interleave.
    reload_lock: tokio::sync::Mutex<()>,
    /// Set by `portcullis check`: validate without side effects (no log files opened).
    check_only: bool,
    /// DNS answers for target names.
    pub dns: Dns,
    /// Open HTTP client connections, for idle timeouts and the drain.
    pub connections: Arc<Registry>,
    /// HTTP/2 frame counts and penalties by client address.
    pub floods: Arc<crate::http::h2_guard::FloodTable>,
    /// Rate-limit counters by policy name, kept across reloads.
    pub rate_limits: CounterRegistry,
    /// Basic-auth failure counters by policy name, kept across reloads.
    pub basic_auth_failures: FailureRegistry,
    /// JSON Web Key Sets fetched by URL, shared by the policies that name them.
    pub key_sets: RemoteKeySets,
    /// Redis connections by URL, kept across reloads.
    pub redis_stores: RedisStores,
    /// Cache stores by policy name, kept across reloads.
    pub caches: CacheRegistry,
    /// The configuration the current snapshot was compiled from, to compile
    /// it again when a DNS answer changes.
    loaded: Mutex<Option<Arc<Loaded>>>,
}

impl Runtime {
    /// Loads and compiles `config_path`; fails with every error in the file.
    pub async fn start(config_path: PathBuf) -> Result<Arc<Runtime>, ConfigErrors> {
        Self::build(config_path, false, system_resolver()).await
    }

    /// As [`Runtime::start`], resolving target names with `resolve` instead
    /// of the system resolver (for embedding with another service discovery).
    pub async fn start_with_resolver(
        config_path: PathBuf,
        resolve: ResolveFn,
    ) -> Result<Arc<Runtime>, ConfigErrors> {
        Self::build(config_path, false, resolve).await
    }

    /// Validates `config_path` as `start` would, without opening log files.
    pub async fn check(config_path: PathBuf) -> Result<Arc<Runtime>, ConfigErrors> {
        Self::build(config_path, true, system_resolver()).await
    }

    async fn build(
        config_path: PathBuf,
        check_only: bool,
        resolve: ResolveFn,
    ) -> Result<Arc<Runtime>, ConfigErrors> {
        let loaded = Arc::new(load_file(&config_path)?);
        // The snapshot needs a runtime (pools, metrics) to compile against, so
        // the runtime is built around a placeholder swapped out at once.
        let metrics = Arc::new(Metrics::new());
        let runtime = Arc::new(Runtime {
            config_path: config_path.clone(),
            snapshot: Live::new(Snapshot::empty(&config_path, metrics.clone())),
            health_checks: HealthChecks::new(metrics.upstream_target_healthy.clone()),
            metrics,
            clients: ClientCache::default(),
            access_logs: AccessLogs::default(),
            targets: TargetStates::default(),
            started: Instant::now(),
            reload_lock: tokio::sync::Mutex::new(()),
            check_only,
            dns: Dns::new(resolve),
            connections: Arc::default(),
            floods: Arc::default(),
            rate_limits: CounterRegistry::default(),
            basic_auth_failures: FailureRegistry::default(),
            key_sets: RemoteKeySets::default(),
            redis_stores: RedisStores::default(),
            caches: CacheRegistry::default(),
            loaded: Mutex::new(None),
        });
        // Unresolvable names are reported by compile, at their line.
        let _ = runtime.dns.refresh(&dns_names(&loaded.config)).await;
        let snapshot = compile(&config_path, &loaded, &runtime.env())?;
        runtime.snapshot.store(Arc::new(snapshot));
        runtime.keep_loaded(loaded);
        Ok(runtime)
    }

    fn keep_loaded(&self, loaded: Arc<Loaded>) {
        *crate::lock(&self.loaded) = Some(loaded);
    }

    fn current_loaded(&self) -> Option<Arc<Loaded>> {
        crate::lock(&self.loaded).clone()
    }

    /// Reads and compiles the file again without installing it; the caller
    /// installs it once the new listeners are bound. Holding the returned
    /// guard keeps other reloads out until then.
    pub async fn prepare_reload(
        &self,
    ) -> (
        tokio::sync::MutexGuard<'_, ()>,
        Result<Snapshot, ConfigErrors>,
    ) {
        let guard = self.reload_lock.lock().await;
        let loaded = match load_file(&self.config_path) {
            Ok(l) => Arc::new(l),
            Err(e) => return (guard, Err(e)),
        };
        let _ = self.dns.refresh(&dns_names(&loaded.config)).await;
        let result = compile(&self.config_path, &loaded, &self.env());
        if result.is_ok() {
            self.keep_loaded(loaded);
        }
        (guard, result)
    }

    /// Resolves the current configuration's target names again; when an
    /// answer changed, compiles the same configuration with the new
    /// addresses. `None` when nothing changed. The guard keeps reloads out
    /// until the caller has installed the snapshot.
    pub async fn prepare_dns_rebuild(
        &self,
        due: &[String],
    ) -> Option<(
        tokio::sync::MutexGuard<'_, ()>,
        Result<Snapshot, ConfigErrors>,
    )> {
        let guard = self.reload_lock.lock().await;
        let loaded = self.current_loaded()?;
        match self.dns.refresh(due).await {
            Ok(true) => Some((guard, compile(&self.config_path, &loaded, &self.env()))),
            _ => None,
        }
    }

    /// Target names of the current configuration with how often to resolve
    /// each (the shortest `dns_refresh` among the upstreams that use it).
    pub fn dns_schedule(&self) -> Vec<(String, Duration)> {
        let Some(loaded) = self.current_loaded() else {
            return Vec::new();
        };
        let mut by_name: HashMap<String, Duration> = HashMap::new();
        for u in &loaded.config.upstreams {
            let every = u.dns_refresh.map(|d| d.0).unwrap_or(DEFAULT_DNS_REFRESH);
            for t in &u.targets {
                if dns::is_name(t.address()) {
                    let e = by_name.entry(t.address().to_string()).or_insert(every);
                    *e = (*e).min(every);
                }
            }
        }
        by_name.into_iter().collect()
    }

    /// Counts a reload attempt in `portcullis_config_reloads_total`.
    pub fn count_reload(&self, success: bool) {
        let label = ResultLabel {
            result: if success { "success" } else { "failure" },
        };
        self.metrics.config_reloads.get_or_create(&label).inc();
    }

    /// The long-lived states a compile reads and adds to.
    fn env(&self) -> Env<'_> {
        Env {
            metrics: &self.metrics,
            clients: &self.clients,
            targets: &self.targets,
            dns: &self.dns,
            access_logs: &self.access_logs,
            rate_limits: &self.rate_limits,
            basic_auth_failures: &self.basic_auth_failures,
            key_sets: &self.key_sets,
            redis_stores: &self.redis_stores,
            caches: &self.caches,
            check_only: self.check_only,
        }
    }

    /// Brings active health checks in line with the installed snapshot; call
    /// it after every install (start and reload), inside the tokio runtime.
    pub fn sync_health_checks(&self) {
        self.health_checks
            .sync(self.snapshot.load().upstreams.values());
    }

    /// Stops every active health check (shutdown).
    pub fn stop_health_checks(&self) {
        self.health_checks.stop();
    }

    /// Forgets the state of targets that `snapshot` no longer has.
    pub fn prune_targets(&self, snapshot: &Snapshot) {
        self.targets.retain(|upstream, address| {
            snapshot
                .upstreams
                .get(upstream)
                .is_some_and(|u| u.targets.iter().any(|t| &*t.address == address))
        });
    }

    /// Writes out every access-log line queued so far (at shutdown),
    /// waiting at most `within` for each log.
    pub fn flush_access_logs(&self, within: Duration) {
        self.access_logs.flush_all(within);
    }

    /// Whether this runtime only checks a file (`portcullis check`): nothing
    /// is opened or fetched.
    pub fn check_only(&self) -> bool {
        self.check_only
    }
}
