//! A service the gateway itself calls on behalf of a policy: a key set URL
//! (`jwt`), an auth service (`forward_auth`), an introspection endpoint
//! (`introspection`). One URL, taken apart once, reached through the
//! gateway's own upstream client (pooled keep-alive connections, TLS with
//! SNI and a chosen CA bundle, a connect timeout) with a deadline on the
//! whole exchange, so a dead or slow service costs a bounded wait.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, header};

use crate::http::body::Body;
use crate::upstream::client::{PoolSettings, ServerNames, UpstreamBody, UpstreamClient};
use crate::upstream::pool::IdlePool;

/// Why a service URL cannot be used, or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL cannot be called as written.
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    BadUrl(String),
    /// The CA file cannot be used.
    #[error("{0}")]
    Ca(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Send(String),
    /// No answer (head) in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One service URL and the client to call it with.
pub struct Service {
    url: String,
    /// `host:port`, the port filled in from the scheme: what is connected to.
    target: Authority,
    /// The URL's own authority, for the Host header.
    host: HeaderValue,
    path: PathAndQuery,
    client: UpstreamClient,
    pool: Arc<IdlePool>,
    timeout: Duration,
}

impl Service {
    /// Checks `url` (http or https with a host) and `ca` (for https; the
    /// Mozilla roots by default), without connecting. `timeout` bounds
    /// connecting and each call's wait for the answer's head.
    pub fn new(url: &str, ca: Option<&Path>, timeout: Duration) -> Result<Service, CallError> {
        let bad = || CallError::BadUrl(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(bad)?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target: Authority = format!("{}:{port}", authority.host())
            .parse()
            .map_err(|_| bad())?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
        let settings = PoolSettings {
            http2: false,
            connect_timeout: timeout,
            idle_timeout: Duration::from_secs(90),
        };
        let tls = if https {
            let config = crate::net::tls::upstream_client_config(ca, None)
                .map_err(|e| CallError::Ca(e.to_string()))?;
            Some(config)
        } else {
            None
        };
        let client = UpstreamClient::new(
            settings,
            tls.as_deref().map(|c| (c, ServerNames::default())),
            None,
        );
        Ok(Service {
            url: url.to_string(),
            target,
            host,
            path: uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            client,
            pool: Arc::default(),
            timeout,
        })
    }

    /// A policy's `url`, `ca` and `timeout` checked as a whole: the
    /// timeout above zero, a CA only for https, the CA path relative to
    /// the file. Mistakes go to `errors` under the field they belong to.
    pub fn configured(
        url: &str,
        ca: Option<&Path>,
        timeout: Duration,
        env: &super::BuildEnv,
        errors: &mut Vec<(String, String)>,
    ) -> Option<Service> {
        if timeout.is_zero() {
            errors.push(("timeout".into(), "`timeout` must be above zero".into()));
        }
        if ca.is_some() && !url.starts_with("https://") {
            errors.push(("ca".into(), "`ca` applies to an https `url` only".into()));
        }
        let ca = ca.map(|p| env.resolve(p));
        match Service::new(url, ca.as_deref(), timeout) {
            Ok(s) => Some(s),
            Err(e) => {
                let field = if matches!(e, CallError::Ca(_)) {
                    "ca"
                } else {
                    "url"
                };
                errors.push((field.into(), e.to_string()));
                None
            }
        }
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port` that is connected to.
    pub fn target(&self) -> &Authority {
        &self.target
    }

    /// A request to the URL with its Host header set; the caller adds the
    /// method, headers and body.
    pub fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.uri_mut() = Uri::from(self.path.clone());
        req.headers_mut().insert(header::HOST, self.host.clone());
        req
    }

    /// Sends `req` and waits for the answer's head, at most the timeout.
    /// The body is the caller's to read (with its own limit).
    pub async fn call(&self, req: Request<Body>) -> Result<Response<UpstreamBody>, CallError> {
        // `None`: the call is the gateway's own request, not a client's.
        let send = self.client.send(&self.target, &self.pool, req, None);
        match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(sent)) => Ok(sent.response),
            Ok(Err(e)) => Err(CallError::Send(e.detail)),
            Err(_) => Err(CallError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_ports_filled_in_without_connecting() {
        let target = |url: &str| {
            Service::new(url, None, Duration::from_secs(1)).map(|s| s.target().to_string())
        };
        assert_eq!(
            target("http://auth.internal/check").unwrap(),
            "auth.internal:80"
        );
        assert_eq!(
            target("https://idp.example.com/x").unwrap(),
            "idp.example.com:443"
        );
        assert_eq!(target("http://127.0.0.1:9000/").unwrap(), "127.0.0.1:9000");
        for bad in ["ftp://x/", "/relative", "http:///nohost", "not a url"] {
            assert!(matches!(target(bad), Err(CallError::BadUrl(_))), "{bad}");
        }
        let s = Service::new("http://a.example:81/p?q=1", None, Duration::from_secs(1)).unwrap();
        let req = s.request(crate::http::body::empty());
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.headers()["host"], "a.example:81");
    }
}
