//! DNS names among upstream targets: resolved when a configuration loads and
//! again every `dns_refresh`. Each address becomes a target of its own (as
//! Envoy's strict DNS does), so balancing, health checks and outlier
//! detection work per address; when the answer changes, the gateway
//! rebuilds its snapshot, so new addresses join and removed ones leave while
//! requests already in flight finish on the targets they started with.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

/// Resolves `host:port` to socket addresses.
pub type ResolveFn =
    Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The operating system's resolver (getaddrinfo: /etc/hosts, then DNS).
pub fn system_resolver() -> ResolveFn {
    Arc::new(|name: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
    })
}

/// Whether a target address names a host to resolve rather than an IP.
pub fn is_name(address: &str) -> bool {
    let host = match address.rsplit_once(':') {
        Some((host, _port)) => host,
        None => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_err()
}

/// Resolved addresses by `host:port`, shared by every snapshot.
pub struct Dns {
    resolve: ResolveFn,
    cache: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl Dns {
    /// A cache in front of `resolve`.
    pub fn new(resolve: ResolveFn) -> Dns {
        Dns {
            resolve,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The last good answer for `name`, sorted.
    pub fn cached(&self, name: &str) -> Option<Vec<SocketAddr>> {
        self.lock().get(name).cloned()
    }

    /// Resolves every name again and returns whether any answer changed.
    /// A failed or empty answer keeps the previous one (a DNS outage must not
    /// empty an upstream); for a name never resolved it is an error.
    pub async fn refresh(&self, names: &[String]) -> Result<bool, Vec<(String, String)>> {
        let mut changed = false;
        let mut errors = Vec::new();
        for name in names {
            let answer = (self.resolve)(name.clone()).await;
            let known = self.cached(name);
            match answer {
                Ok(mut addrs) if !addrs.is_empty() => {
                    addrs.sort();
                    addrs.dedup();
                    if known.as_ref() != Some(&addrs) {
                        if known.is_some() {
                            tracing::info!(%name, addresses = ?addrs, "DNS answer changed");
                        }
                        self.lock().insert(name.clone(), addrs);
                        changed = true;
                    }
                }
                Ok(_) => match known {
                    Some(_) => {
                        tracing::warn!(%name, "DNS returned no address; keeping the previous answer")
                    }
                    None => errors.push((name.clone(), "no address found".to_string())),
                },
                Err(e) => match known {
                    Some(_) => {
                        tracing::warn!(%name, error = %e, "DNS lookup failed; keeping the previous answer")
                    }
                    None => errors.push((name.clone(), e.to_string())),
                },
            }
        }
        if errors.is_empty() {
            Ok(changed)
        } else {
            Err(errors)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<SocketAddr>>> {
        crate::lock(&self.cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(answers: Arc<Mutex<HashMap<String, io::Result<Vec<SocketAddr>>>>>) -> ResolveFn {
        Arc::new(move |name: String| {
            let answer = match answers.lock().unwrap().get(&name) {
                Some(Ok(a)) => Ok(a.clone()),
                Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "unknown name")),
            };
            Box::pin(async move { answer })
        })
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn names_and_ip_literals_are_told_apart() {
        assert!(is_name("users.internal:8080"));
        assert!(is_name("localhost:80"));
        assert!(!is_name("10.0.0.1:8080"));
        assert!(!is_name("[::1]:8080"));
    }

    #[tokio::test]
    async fn refresh_reports_changes_and_keeps_answers_through_failures() {
        let answers = Arc::new(Mutex::new(HashMap::new()));
        let dns = Dns::new(fake(answers.clone()));
        let name = "svc.test:80".to_string();
        answers
            .lock()
            .unwrap()
            .insert(name.clone(), Ok(addrs(&["10.0.0.2:80", "10.0.0.1:80"])));
        assert_eq!(dns.refresh(std::slice::from_ref(&name)).await, Ok(true));
        assert_eq!(
            dns.cached(&name).unwrap(),
            addrs(&["10.0.0.1:80", "10.0.0.2:80"])
        );
        // The same answer in another order is no change.
        answers
            .lock()
            .unwrap()
            .insert(name.clone(), Ok(addrs(&["10.0.0.1:80", "10.0.0.2:80"])));
        assert_eq!(dns.refresh(std::slice::from_ref(&name)).await, Ok(false));
        // A failure keeps the last good answer.
        answers.lock().unwrap().insert(
            name.clone(),
            Err(io::Error::new(io::ErrorKind::TimedOut, "timeout")),
        );
        assert_eq!(dns.refresh(std::slice::from_ref(&name)).await, Ok(false));
        assert_eq!(dns.cached(&name).unwrap().len(), 2);
        // A new answer replaces it.
        answers
            .lock()
            .unwrap()
            .insert(name.clone(), Ok(addrs(&["10.0.0.3:80"])));
        assert_eq!(dns.refresh(std::slice::from_ref(&name)).await, Ok(true));
        assert_eq!(dns.cached(&name).unwrap(), addrs(&["10.0.0.3:80"]));
    }

    #[tokio::test]
    async fn a_name_never_resolved_is_an_error() {
        let dns = Dns::new(fake(Arc::new(Mutex::new(HashMap::new()))));
        let err = dns
            .refresh(&["nowhere.test:80".to_string()])
            .await
            .unwrap_err();
        assert_eq!(err[0].0, "nowhere.test:80");
    }
}
