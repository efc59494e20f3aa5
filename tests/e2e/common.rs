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

    /// A gateway with one listener `web` (plus the YAML lines `listener`,
    /// indented as its fields, for limits) and one catch-all route to
    /// `backend`: the smallest working configuration.
    pub async fn in_front_of(backend: SocketAddr, listener: &str) -> TestGateway {
        Self::in_front_of_with_routes(backend, listener, "").await
    }

    /// As [`TestGateway::in_front_of`], with `routes` (YAML list items)
    /// tried before the catch-all.
    pub async fn in_front_of_with_routes(
        backend: SocketAddr,
        listener: &str,
        routes: &str,
    ) -> TestGateway {
        Self::start(&format!(
            r#"
listeners:
  - name: web
    address: 127.0.0.1:0
{listener}
routes:
{routes}  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["{backend}"]
"#
        ))
        .await
    }

    /// As `start`, with the given file name (to pick YAML or TOML).
    pub async fn start_named(file: &str, config: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join(file);
        std::fs::write(&config_path, config).unwrap();
        let gateway = match portcullis::gateway::start(config_path.clone()).await {
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

/// A configuration with an admin listener, listener `web` and one
/// catch-all route `all` to `backend` carrying the named `policies`
/// (`(name, YAML flow mapping)`, in route order), plus the top-level YAML
/// lines `extra` (a `stores` section, say).
pub fn policy_config(backend: SocketAddr, policies: &[(&str, &str)], extra: &str) -> String {
    let names: Vec<&str> = policies.iter().map(|(name, _)| *name).collect();
    let defs: String = policies
        .iter()
        .map(|(name, def)| format!("  {name}: {def}\n"))
        .collect();
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: web
    address: "127.0.0.1:0"
routes:
  - name: all
    policies: [{names}]
    upstream: app
upstreams:
  - name: app
    targets: ["{backend}"]
{extra}
policies:
{defs}"#,
        names = names.join(", ")
    )
}

/// A plain reqwest client with no proxy and no connection reuse surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A reqwest client that speaks HTTP/2 without TLS (prior knowledge, h2c).
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
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

/// The status of a GET to `url` with the extra `headers`.
pub async fn status_with(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// `POST /api/v1/reload` on the admin listener: the status and the JSON
/// answer.
pub async fn post_reload(gw: &TestGateway) -> (StatusCode, serde_json::Value) {
    let r = client()
        .post(gw.admin_url("/api/v1/reload"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let v =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("reload answer is not JSON: {text}"));
    (status, v)
}

/// `POST /api/v1/reload` on the admin listener; asserts that it succeeded.
pub async fn reload_ok(gw: &TestGateway) {
    let (status, answer) = post_reload(gw).await;
    assert_eq!(status, 200, "{answer}");
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

/// Sends `request` on an open connection and asserts that the answer (the
/// first read of it) starts with `HTTP/1.1 200`; the connection stays open.
pub async fn answered_200<S>(io: &mut S, request: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = io.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
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

/// A free loopback port (TCP and UDP), for configurations that must name
/// an address before the gateway starts. Taken below Linux's ephemeral
/// range (32768–60999), where neither a port-0 listener nor an outgoing
/// connection of another test can take it between this check and the
/// gateway's bind, and from a per-process sequence, so that no two tests
/// of the run are handed the same port.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_768;
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // A random start keeps test runs of other checkouts on other ports.
    let start = *START.get_or_init(|| {
        (std::hash::RandomState::new().build_hasher().finish() % u64::from(COUNT)) as u32
    });
    for _ in 0..COUNT {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + COUNT - 1);
}

/// Polls until `addr` accepts a TCP connection; panics after `within`.
pub async fn wait_accepting(addr: SocketAddr, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never accepted a connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until connecting to `addr` is refused; returns false if it still accepts after `within`.
pub async fn wait_refusing(addr: SocketAddr, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it returns true; returns false after `within`.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces `path` atomically (write a sibling, rename), so a reload never
/// reads a half-written file.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The real `portcullis run -c FILE` process, its stdout and stderr collected
/// by reader threads. Killed on drop if still running.
pub struct GatewayProcess {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// Starts `portcullis run -c config` with the default log filter.
    pub fn spawn(config: &Path) -> GatewayProcess {
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "-c"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        GatewayProcess {
            child,
            stdout,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`HUP`, `TERM`, `INT`) with `kill -SIGNAL PID`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`; returns false after `within`.
    pub async fn wait_stderr(&self, needle: &str, within: Duration) -> bool {
        eventually(within, || self.stderr().contains(needle)).await
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies everything `from` produces into `into`, on a thread.
fn collect(mut from: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
}

/// The cryptography provider every test-side TLS config uses, named
/// explicitly so that no test depends on a process-wide default.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A throwaway certificate authority that writes the certificates it issues
/// as PEM files into its own temp dir, laid out as an operator would.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate as a PEM file (for `client_ca` or an upstream's `ca`).
    pub cert_path: PathBuf,
    /// The CA certificate as PEM text.
    pub pem: String,
}

/// A certificate issued by a [`TestCa`], with its key.
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    /// A new CA whose subject is `CN={cn}`.
    pub fn new(cn: &str) -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        TestCa {
            dir,
            issuer: rcgen::Issuer::new(params, key),
            cert_path,
            pem: cert.pem(),
        }
    }

    /// A server certificate valid for `names` (DNS names, `*.` wildcards allowed), no subject.
    pub fn server(&self, stem: &str, names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(stem, params)
    }

    /// A client certificate whose subject prints as `CN={cn},O={org}`.
    pub fn client(&self, stem: &str, cn: &str, org: &str) -> TestCert {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Most general first in the DER, so RFC 4514 prints CN first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(stem, params)
    }

    fn issue(&self, stem: &str, params: rcgen::CertificateParams) -> TestCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        TestCert {
            cert_path,
            key_path,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }
}

impl TestCert {
    /// The certificate and key as a rustls signing pair.
    pub fn chain_and_key(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        (
            vec![self.der.clone()],
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
        )
    }

    /// The certificate and key as a reqwest client identity.
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .unwrap()
    }
}

/// A rustls server config presenting `cert`, offering `alpn`, and requiring a
/// client certificate signed by `client_ca` when one is given.
pub fn tls_server_config(
    cert: &TestCert,
    client_ca: Option<&TestCa>,
    alpn: &[&str],
) -> Arc<rustls::ServerConfig> {
    let provider = tls_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = cert.chain_and_key();
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// What a TLS backend saw of one successful handshake.
#[derive(Clone, Debug)]
pub struct TlsHandshake {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    /// The verified client certificate, when the peer sent one.
    pub client_cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// A backend that terminates TLS with its own config, then serves like [`Backend`].
pub struct TlsBackend {
    pub backend: Backend,
    pub handshakes: Arc<Mutex<Vec<TlsHandshake>>>,
}

impl TlsBackend {
    /// A TLS backend answering with [`echo_response`] tagged `name`.
    pub async fn echo(name: &'static str, config: Arc<rustls::ServerConfig>) -> TlsBackend {
        Self::start(config, move |req: Request<Incoming>| async move {
            echo_response(name, req)
        })
        .await
    }

    /// A TLS backend whose answers come from `handler`; failed handshakes are dropped unrecorded.
    pub async fn start<F, Fut>(config: Arc<rustls::ServerConfig>, handler: F) -> TlsBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (seen2, handshakes2) = (seen.clone(), handshakes.clone());
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.wait_for(|s| *s) => return,
                };
                let (handler, seen, handshakes) =
                    (handler.clone(), seen2.clone(), handshakes2.clone());
                let acceptor = acceptor.clone();
                let mut stop_conn = stop_rx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    handshakes.lock().unwrap().push(TlsHandshake {
                        sni: conn.server_name().map(str::to_owned),
                        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                        client_cert: conn
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.clone().into_owned()),
                    });
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
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        TlsBackend {
            backend: Backend { addr, seen, stop },
            handshakes,
        }
    }

    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.backend.seen()
    }

    /// Successful handshakes so far.
    pub fn handshakes(&self) -> Vec<TlsHandshake> {
        self.handshakes.lock().unwrap().clone()
    }
}

/// A reqwest client for an https listener: trusts only `ca`, resolves each
/// `(name, addr)` pair to the gateway so SNI carries the name, and presents
/// `identity` when given.
pub fn https_client(
    ca: &TestCa,
    names: &[(&str, SocketAddr)],
    identity: Option<&TestCert>,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .tls_info(true)
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()]);
    for (name, addr) in names {
        b = b.resolve(name, *addr);
    }
    if let Some(cert) = identity {
        b = b.identity(cert.identity());
    }
    b.build().unwrap()
}

/// Runs `portcullis COMMAND ARGS` with `stdin`: success, stdout, stderr.
pub fn run_cli(command: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg(command)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A `redis-server` on a free loopback port, without persistence, stopped
/// when dropped.
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        wait_accepting(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).await;
        Redis {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a redis command over RESP by hand and returns the raw answer.
    pub async fn command(&self, args: &[&str]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gateway's Prometheus metrics, as text.
pub async fn metrics_text(gw: &TestGateway) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metrics series written exactly `series` (name and
/// labels), 0 when absent.
pub async fn metric_value(gw: &TestGateway, series: &str) -> u64 {
    let prefix = format!("{series} ");
    metrics_text(gw)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

/// GET an admin path; its JSON answer.
pub async fn admin_json(gw: &TestGateway, path: &str) -> serde_json::Value {
    let text = client()
        .get(gw.admin_url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// POST `body` (JSON) to the cache purge endpoint; the status and answer.
pub async fn purge_cache(gw: &TestGateway, body: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .post(gw.admin_url("/api/v1/cache/purge"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
    )
}

/// An h2c client's first bytes: the preface, empty SETTINGS, then GET / on
/// stream 1 (END_STREAM | END_HEADERS): :method GET, :scheme http, :path /
/// from the static table, :authority "localhost" as a literal.
pub fn h2_preface_and_get() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    out.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

/// Reads one HTTP/2 frame: (type, flags, stream id, payload).
pub async fn read_h2_frame(io: &mut tokio::net::TcpStream) -> (u8, u8, u32, Vec<u8>) {
    try_read_h2_frame(io)
        .await
        .expect("an HTTP/2 frame, not the end of the connection")
}

/// Reads one HTTP/2 frame, or None at the end of the connection.
pub async fn try_read_h2_frame(io: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}
