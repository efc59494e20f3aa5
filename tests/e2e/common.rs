//! Reusable test servers, clients and a gateway launcher.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis::server::Gateway;
use tokio::net::TcpListener;

/// Body type test backends answer with.
pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body holding `data`.
pub fn body(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// What a backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// A backend server on an ephemeral loopback port.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Backend {
    /// Starts a backend whose answers come from `handler`; it records every request's head.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    /// Serves `handler` on an already bound listener.
    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.wait_for(|s| *s) => return,
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                let mut stop_conn = stop_rx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Backend { addr, seen, stop }
    }

    /// A backend that answers 200 with a JSON echo of the request head and `name`.
    pub async fn echo(name: &'static str) -> Backend {
        Backend::start(move |req: Request<Incoming>| async move { echo_response(name, req) }).await
    }

    /// A backend that answers every request with `status` and `text`.
    pub async fn fixed(status: u16, text: &'static str) -> Backend {
        Backend::start(move |_req| async move {
            let mut r = Response::new(body(text));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        })
        .await
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting and closes open connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A JSON echo of the request head, tagged with the backend's name.
pub fn echo_response(name: &str, req: Request<Incoming>) -> Response<TestBody> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let v = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    let mut r = Response::new(body(v.to_string()));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A gateway started from a YAML (or TOML) text written into a temp dir.
pub struct TestGateway {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestGateway {
    /// Writes `config` as portcullis.yaml in a fresh temp dir and starts a gateway on it.
    pub async fn start(config: &str) -> TestGateway {
        Self::start_named("portcullis.yaml", config).await
    }

    /// As `start`, with the given file name (to pick YAML or TOML).
    pub async fn start_named(file: &str, config: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join(file);
        std::fs::write(&config_path, config).unwrap();
        let gateway = match Gateway::start(config_path.clone()).await {
            Ok(g) => g,
            Err(e) => panic!("gateway did not start:\n{e}\nconfig:\n{config}"),
        };
        TestGateway {
            gateway,
            dir,
            config_path,
        }
    }

    /// A directory for files the config refers to (certs, static roots).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.gateway
            .listener_addr(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// `http://ADDR{path}` for listener `name`.
    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(listener), path)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.gateway.admin_addr().expect("no admin listener"),
            path
        )
    }

    /// Replaces the config file's text (for reload tests).
    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }
}

/// A plain reqwest client with no proxy and no connection reuse surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET `url` and return status, headers and body text.
pub async fn get(url: &str) -> (StatusCode, http::HeaderMap, String) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// Sends raw bytes on a new TCP connection and returns everything read until
/// the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Asserts a problem+json answer with `status` and returns its JSON.
pub fn assert_problem(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &str,
    expected: u16,
) -> serde_json::Value {
    assert_eq!(status.as_u16(), expected, "body: {body}");
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "body: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["status"], expected);
    assert!(v["title"].is_string() && v["detail"].is_string() && v["request_id"].is_string());
    v
}

/// A loopback address nothing listens on (bound then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}
