//! State that outlives a configuration snapshot: the current snapshot itself,
//! metrics, upstream connection pools and access-log writers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::compile::compile;
use crate::config::load::load_file;
use crate::config::{ConfigErrors, Snapshot};
use crate::observe::access_log::{AccessLog, Destination};
use crate::observe::metrics::{Metrics, ResultLabel};
use crate::upstream::ClientCache;

/// Everything the data plane and the admin API share.
pub struct Runtime {
    /// The configuration file, read again on reload.
    pub config_path: PathBuf,
    /// The current snapshot; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Upstream connection pools.
    pub clients: ClientCache,
    /// Access-log writers by destination, reused across reloads.
    access_logs: Mutex<HashMap<Destination, Arc<AccessLog>>>,
    /// When the process started serving.
    pub started: Instant,
    /// Serializes reloads so two at once cannot interleave.
    reload_lock: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// Loads and compiles `config_path`; fails with every error in the file.
    pub fn start(config_path: PathBuf) -> Result<Arc<Runtime>, ConfigErrors> {
        let loaded = load_file(&config_path)?;
        // The snapshot needs a runtime (pools, metrics) to compile against, so
        // the runtime is built around a placeholder swapped out at once.
        let runtime = Arc::new(Runtime {
            config_path: config_path.clone(),
            snapshot: ArcSwap::from_pointee(Snapshot::empty(&config_path)),
            metrics: Arc::new(Metrics::new()),
            clients: ClientCache::default(),
            access_logs: Mutex::new(HashMap::new()),
            started: Instant::now(),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        let snapshot = compile(&config_path, &loaded, &runtime)?;
        runtime.snapshot.store(Arc::new(snapshot));
        Ok(runtime)
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
        let result = load_file(&self.config_path)
            .and_then(|loaded| compile(&self.config_path, &loaded, self));
        (guard, result)
    }

    /// Counts a reload attempt in `portcullis_config_reloads_total`.
    pub fn count_reload(&self, success: bool) {
        let label = ResultLabel {
            result: if success { "success" } else { "failure" },
        };
        self.metrics.config_reloads.get_or_create(&label).inc();
    }

    /// The access-log writer for `destination`, opened once and shared.
    pub fn access_log(&self, destination: Destination) -> std::io::Result<Arc<AccessLog>> {
        let mut logs = match self.access_logs.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(log) = logs.get(&destination) {
            return Ok(log.clone());
        }
        let log = Arc::new(AccessLog::open(destination.clone())?);
        logs.insert(destination, log.clone());
        Ok(log)
    }
}
