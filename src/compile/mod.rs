//! Checks a loaded model and compiles it into a [`Snapshot`].
//!
//! Validation and compilation are one walk: parsing a CIDR, a regex or a
//! certificate is both the check and the build step, and doing them once
//! means a file that passes `portcullis check` is exactly one that loads.
//! Every mistake is recorded with its place in the file; the walk goes on
//! after a mistake so that one run reports all of them.
//!
//! One file per section (`upstream`, `route`, `listener`); this file
//! holds the walk itself and what the sections share.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::diagnostics::{ConfigErrors, Diagnostics, DocPath};
use crate::config::load::Loaded;
use crate::config::locate;
use crate::config::model::{Config, PolicyDef};
use crate::observe::access_log::AccessLogs;
use crate::observe::access_log::{AccessLog, Destination};
use crate::observe::consumer_metrics;
use crate::observe::metrics::Metrics;
use crate::policy::basic_auth::FailureRegistry;
use crate::policy::consumer::{Analytics, Consumers};
use crate::policy::jwks::RemoteKeySets;
use crate::policy::rate_limit::CounterRegistry;
use crate::policy::redis_store::RedisStores;
use crate::policy::{self, NamedPolicy};
use crate::proxy::snapshot::{ConfigInfo, Snapshot};
use crate::upstream::dns::Dns;
use crate::upstream::{ClientCache, TargetStates};

mod listener;
mod route;
mod upstream;

/// The long-lived states a compile reads and adds to: what must outlive a
/// snapshot (metrics, pools, target health, DNS answers, log writers,
/// counters, key sets, store connections). The server's runtime owns them;
/// every reload compiles against the same ones, so a new snapshot reuses
/// what the old one kept.
pub struct Env<'a> {
    /// Exported metrics.
    pub metrics: &'a Arc<Metrics>,
    /// Upstream connection pools.
    pub clients: &'a ClientCache,
    /// Each target's health and load.
    pub targets: &'a TargetStates,
    /// DNS answers for target names.
    pub dns: &'a Dns,
    /// Access-log writers.
    pub access_logs: &'a AccessLogs,
    /// Rate-limit counters.
    pub rate_limits: &'a CounterRegistry,
    /// Basic-auth failure counters.
    pub basic_auth_failures: &'a FailureRegistry,
    /// Key sets fetched by URL.
    pub key_sets: &'a RemoteKeySets,
    /// Redis connections.
    pub redis_stores: &'a RedisStores,
    /// Cache stores.
    pub caches: &'a crate::policy::cache::store::CacheRegistry,
    /// `portcullis check`: validate without opening or fetching anything.
    pub check_only: bool,
}

/// Checks and compiles `loaded` (read from `path`); relative file paths in the
/// configuration resolve against the file's directory.
pub fn compile(path: &Path, loaded: &Loaded, env: &Env) -> Result<Snapshot, ConfigErrors> {
    let mut c = Compiler {
        diag: Diagnostics::new(path, loaded.source.as_ref()),
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        env,
        broken_policies: HashSet::new(),
        consumers: Arc::new(Consumers::empty()),
    };
    let snapshot = c.snapshot(path, &loaded.config, &loaded.text);
    // Series only an older configuration named go now (the running one
    // still holds its own).
    env.metrics.consumers.prune();
    if c.diag.is_empty() {
        snapshot.ok_or_else(|| c.diag.into_errors())
    } else {
        Err(c.diag.into_errors())
    }
}

struct Compiler<'a> {
    diag: Diagnostics<'a>,
    base: std::path::PathBuf,
    env: &'a Env<'a>,
    /// Policies defined but in error: already reported where they are
    /// defined, so not again as undefined where they are used.
    broken_policies: HashSet<String>,
    /// The compiled `consumers` section (empty until compiled).
    consumers: Arc<Consumers>,
}

/// Turns a dotted sub-path from a component ("allow.1") into a document path.
fn sub_path(base: &DocPath, dotted: &str) -> DocPath {
    let mut p = base.clone();
    for seg in dotted.split('.').filter(|s| !s.is_empty()) {
        p = match seg.parse::<usize>() {
            Ok(i) => p.index(i),
            Err(_) => p.key(seg),
        };
    }
    p
}

impl Compiler<'_> {
    fn resolve(&self, p: &Path) -> std::path::PathBuf {
        crate::config::resolve_path(&self.base, p)
    }

    fn unique_names<'n>(&mut self, section: &str, names: impl Iterator<Item = &'n str>) {
        let mut seen = HashSet::new();
        for (i, name) in names.enumerate() {
            let at = DocPath::root().key(section).index(i).key("name");
            if name.is_empty() {
                self.diag.error(
                    &at,
                    format!("{section}[{i}] has an empty name"),
                    Some("give it a unique name".into()),
                );
            } else if !seen.insert(name) {
                self.diag.error(
                    &at,
                    format!("duplicate name `{name}` in {section}"),
                    Some("names must be unique; rename one of them".into()),
                );
            }
        }
    }

    fn missing(&mut self, at: &DocPath, kind: &str, name: &str, known: &[&str]) {
        let hint = match locate::did_you_mean(name, known.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None if known.is_empty() => {
                format!("define it in the top-level `{}` section", section_of(kind))
            }
            None => format!("known {kind}s: {}", known.join(", ")),
        };
        self.diag
            .error(at, format!("{kind} `{name}` is not defined"), Some(hint));
    }

    fn snapshot(&mut self, path: &Path, cfg: &Config, text: &str) -> Option<Snapshot> {
        self.unique_names("listeners", cfg.listeners.iter().map(|l| l.name.as_str()));
        self.unique_names("routes", cfg.routes.iter().map(|r| r.name.as_str()));
        self.unique_names("upstreams", cfg.upstreams.iter().map(|u| u.name.as_str()));

        let upstreams = self.upstreams(cfg);
        let redis = self.redis(cfg);
        self.consumers(cfg);
        let policies = self.policies(cfg, redis.as_ref());
        let routes = self.routes(cfg, &upstreams, &policies);
        let listeners = self.listeners(cfg, &routes, &policies, &upstreams);

        let admin = cfg.admin.as_ref().and_then(|a| {
            self.socket_addr(&DocPath::root().key("admin").key("address"), &a.address)
        });
        let access_log = self.access_log(cfg);
        if !self.diag.is_empty() {
            return None;
        }
        let listener_index = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        Some(Snapshot {
            info: ConfigInfo {
                path: path.to_path_buf(),
                hash: hex::encode(Sha256::digest(text.as_bytes())),
                loaded_at: SystemTime::now(),
            },
            listeners,
            listener_index,
            routes: routes.into_iter().map(|(r, _, _)| r).collect(),
            upstreams,
            admin,
            shutdown_timeout: cfg.shutdown_timeout.0,
            access_log,
            metrics: self.env.metrics.clone(),
            consumers: self.consumers.clone(),
        })
    }

    fn socket_addr(&mut self, at: &DocPath, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.diag.error(
                    at,
                    format!("`{text}` is not a socket address"),
                    Some(
                        "write IP:port, like 0.0.0.0:8080 or [::]:8443 (port 0 picks a free port)"
                            .into(),
                    ),
                );
                None
            }
        }
    }
}

impl Compiler<'_> {
    fn redis(&mut self, cfg: &Config) -> Option<policy::SharedStore> {
        let def = cfg.stores.redis.as_ref()?;
        match self.env.redis_stores.get(&def.url, def.timeout.0) {
            Ok(store) => Some(policy::SharedStore {
                store,
                key_prefix: def.key_prefix.clone(),
            }),
            Err(e) => {
                self.diag.error(
                    &DocPath::root().key("stores").key("redis").key("url"),
                    e.to_string(),
                    None,
                );
                None
            }
        }
    }

    fn consumers(&mut self, cfg: &Config) {
        let is_rate_limit =
            |name: &str| matches!(cfg.policies.get(name), Some(PolicyDef::RateLimit(_)));
        let analytics = Analytics {
            metrics: (!self.env.check_only).then_some(&*self.env.metrics.consumers),
            max_series: cfg
                .observability
                .max_consumer_series
                .unwrap_or(consumer_metrics::DEFAULT_MAX_SERIES),
        };
        match Consumers::build(
            &cfg.consumers,
            &cfg.consumer_headers,
            is_rate_limit,
            analytics,
        ) {
            Ok(c) => self.consumers = Arc::new(c),
            Err(errors) => {
                for e in errors {
                    self.diag
                        .error(&sub_path(&DocPath::root(), &e.field), e.message, e.hint);
                }
            }
        }
    }

    fn policies(
        &mut self,
        cfg: &Config,
        redis: Option<&policy::SharedStore>,
    ) -> HashMap<String, NamedPolicy> {
        let mut out = HashMap::new();
        for (name, def) in &cfg.policies {
            let at = DocPath::root().key("policies").key(name);
            let env = policy::BuildEnv {
                name,
                metrics: self.env.metrics,
                rate_limits: self.env.rate_limits,
                basic_auth_failures: self.env.basic_auth_failures,
                key_sets: self.env.key_sets,
                check_only: self.env.check_only,
                base: &self.base,
                redis: match (redis, &cfg.stores.redis) {
                    (Some(store), _) => policy::Store::Ready(store),
                    (None, Some(_)) => policy::Store::InError,
                    (None, None) => policy::Store::Absent,
                },
                consumers: &self.consumers,
                caches: self.env.caches,
            };
            match policy::build(def, &env) {
                Ok(p) => {
                    out.insert(
                        name.clone(),
                        NamedPolicy {
                            name: Arc::from(name.as_str()),
                            policy: p,
                        },
                    );
                }
                Err(errors) => {
                    self.broken_policies.insert(name.clone());
                    for (field, message) in errors {
                        self.diag.error(
                            &sub_path(&at, &field),
                            format!("policy `{name}`: {message}"),
                            None,
                        );
                    }
                }
            }
        }
        out
    }

    fn policy_list(
        &mut self,
        at: &DocPath,
        names: &[String],
        known: &HashMap<String, NamedPolicy>,
    ) -> Vec<NamedPolicy> {
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match known.get(name) {
                Some(p) => out.push(p.clone()),
                None if self.broken_policies.contains(name) => {}
                None => {
                    let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    self.missing(&at.index(i), "policy", name, &names);
                }
            }
        }
        out
    }

    /// Compiles routes; each comes with its match spec and its route-level policies.
    fn access_log(&mut self, cfg: &Config) -> Option<Arc<AccessLog>> {
        let log = cfg.observability.access_log.as_ref()?;
        let destination = match log.path.as_str() {
            "off" => return None,
            "stdout" => Destination::Stdout,
            p => Destination::File(self.resolve(Path::new(p))),
        };
        match self
            .env
            .access_logs
            .open(destination, self.env.check_only, self.env.metrics)
        {
            Ok(l) => l,
            Err(e) => {
                self.diag.error(
                    &DocPath::root()
                        .key("observability")
                        .key("access_log")
                        .key("path"),
                    format!("cannot open the access log `{}`: {e}", log.path),
                    Some("use stdout, off, or a writable file path".to_string()),
                );
                None
            }
        }
    }
}

/// The top-level section that defines things of `kind`.
fn section_of(kind: &str) -> &'static str {
    match kind {
        "policy" => "policies",
        "upstream" => "upstreams",
        "listener" => "listeners",
        _ => "routes",
    }
}
