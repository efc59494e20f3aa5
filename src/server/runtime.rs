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
    /// Set by `portcullis check`: validate without side effects (no log files opened).
    check_only: bool,
}

impl Runtime {
    /// Loads and compiles `config_path`; fails with every error in the file.
    pub fn start(config_path: PathBuf) -> Result<Arc<Runtime>, ConfigErrors> {
        Self::build(config_path, false)
    }

    /// Validates `config_path` as `start` would, without opening log files.
    pub fn check(config_path: PathBuf) -> Result<Arc<Runtime>, ConfigErrors> {
        Self::build(config_path, true)
    }

    fn build(config_path: PathBuf, check_only: bool) -> Result<Arc<Runtime>, ConfigErrors> {
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
            check_only,
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

    /// The access-log writer for `destination`, opened once and shared. In
    /// check mode the destination is only checked, and no writer is returned.
    pub fn access_log(&self, destination: Destination) -> std::io::Result<Option<Arc<AccessLog>>> {
        if self.check_only {
            if let Destination::File(path) = &destination {
                check_writable(path)?;
            }
            return Ok(None);
        }
        let mut logs = match self.access_logs.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(log) = logs.get(&destination) {
            return Ok(Some(log.clone()));
        }
        let log = Arc::new(AccessLog::open(destination.clone())?);
        logs.insert(destination, log.clone());
        Ok(Some(log))
    }
}

/// Whether a log file could be opened for appending, without creating it.
fn check_writable(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::new(ErrorKind::IsADirectory, "it is a directory")),
        Ok(m) if m.permissions().readonly() => Err(Error::new(
            ErrorKind::PermissionDenied,
            "the file is read-only",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            match parent.map(std::fs::metadata) {
                Some(Ok(m)) if m.is_dir() => Ok(()),
                Some(Ok(_)) => Err(Error::new(
                    ErrorKind::NotADirectory,
                    "its parent is not a directory",
                )),
                Some(Err(e)) => Err(e),
                None => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}
