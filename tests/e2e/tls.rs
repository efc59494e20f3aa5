//! TLS termination on `https` listeners (SNI, default certificate,
//! `min_version`, ALPN, client certificates and the forwarded subject) and TLS
//! to upstreams (`tls: { ca, sni, cert, key }`, `http2: true` over ALPN h2),
//! each checked through the running gateway with real TLS clients and servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::*;

/// One CA and three server certificates: `a.test` (listed first, so the
/// default), `b.test` and `*.wild.test`.
struct Site {
    ca: TestCa,
    a: TestCert,
    b: TestCert,
    wild: TestCert,
}

impl Site {
    fn new() -> Site {
        let ca = TestCa::new("portcullis e2e CA");
        let a = ca.server("a", &["a.test"]);
        let b = ca.server("b", &["b.test"]);
        let wild = ca.server("wild", &["*.wild.test"]);
        Site { ca, a, b, wild }
    }

    /// The `certificates:` list of a listener, in the order a, b, wild.
    fn certificates_yaml(&self) -> String {
        [&self.a, &self.b, &self.wild]
            .iter()
            .map(|c| {
                format!(
                    "\n        - {{ cert: \"{}\", key: \"{}\" }}",
                    c.cert_path.display(),
                    c.key_path.display()
                )
            })
            .collect()
    }
}

/// A gateway with one `https` listener named `secure` (extra `tls` keys in
/// `tls_extra`, one per line at the tls indentation) that forwards everything
/// to `backend`.
async fn https_gateway(site: &Site, tls_extra: &str, backend: SocketAddr) -> TestGateway {
    https_gateway_with(site, "", tls_extra, backend).await
}

/// As [`https_gateway`], with `listener` as YAML lines of the listener's
/// own fields (limits).
async fn https_gateway_with(
    site: &Site,
    listener: &str,
    tls_extra: &str,
    backend: SocketAddr,
) -> TestGateway {
    TestGateway::start(&format!(
        r#"
listeners:
  - name: secure
    address: 127.0.0.1:0
    protocol: https
{listener}
    tls:
      certificates:{certs}
{tls_extra}
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [{backend}]
"#,
        certs = site.certificates_yaml(),
        tls_extra = tls_extra
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("      {}\n", l.trim()))
            .collect::<String>(),
    ))
    .await
}

/// Accepts any server certificate, so a test can see which one the gateway
/// sent even when it does not name what the client asked for.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accept_any_client() -> ClientConfig {
    let provider = tls_provider();
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
        .with_no_client_auth()
}

/// A client that trusts `ca` and speaks only the given TLS versions.
fn client_trusting(
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    ClientConfig::builder_with_provider(tls_provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth()
}

/// Opens a TLS connection to `addr` naming `name` (an IP address sends no SNI).
async fn connect(
    addr: SocketAddr,
    config: ClientConfig,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let connecting = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The leaf certificate the gateway presents when the client names `name`.
async fn certificate_for(addr: SocketAddr, name: &str) -> CertificateDer<'static> {
    let tls = connect(addr, accept_any_client(), name).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The leaf certificate a reqwest response came over.
fn peer_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("TLS info on the response")
        .to_vec()
}

#[tokio::test]
async fn sni_selects_the_certificate_that_names_the_host() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");
    let client = https_client(&site.ca, &[("a.test", addr), ("b.test", addr)], None);
    for (name, expected) in [("b.test", &site.b), ("a.test", &site.a)] {
        let resp = client
            .get(format!("https://{name}:{}/", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("https request to {name}: {e:?}"));
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(peer_certificate(&resp), expected.der.to_vec(), "{name}");
    }
}

#[tokio::test]
async fn wildcard_certificate_is_chosen_for_a_name_one_label_below_it() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");
    let client = https_client(&site.ca, &[("api.wild.test", addr)], None);
    let resp = client
        .get(format!("https://api.wild.test:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(peer_certificate(&resp), site.wild.der.to_vec());
    // Two labels below the wildcard are not covered: the default answers.
    assert_eq!(certificate_for(addr, "x.api.wild.test").await, site.a.der);
}

#[tokio::test]
async fn client_without_sni_gets_the_first_certificate() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");
    // rustls never sends SNI for an IP address, as browsers do not.
    let tls = connect(addr, accept_any_client(), "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], site.a.der);
    drop(tls);
    // The default is the first listed, not whichever was loaded last.
    assert_eq!(certificate_for(addr, "unknown.test").await, site.a.der);
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls12_only_client() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, r#"min_version: "1.3""#, backend.addr).await;
    let addr = gw.addr("secure");
    let tls12 = client_trusting(&site.ca, &[&rustls::version::TLS12]);
    let refused = connect(addr, tls12, "a.test").await;
    assert!(refused.is_err(), "a TLS 1.2 client got through");

    let tls13 = client_trusting(&site.ca, &[&rustls::version::TLS13]);
    let tls = connect(addr, tls13, "a.test").await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn default_min_version_accepts_a_tls12_client() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let tls12 = client_trusting(&site.ca, &[&rustls::version::TLS12]);
    let tls = connect(gw.addr("secure"), tls12, "b.test").await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_and_requests_are_served_over_http2() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");

    let mut config = client_trusting(
        &site.ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    );
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    let tls = connect(addr, config, "a.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    let client = https_client(&site.ca, &[("a.test", addr)], None);
    let resp = client
        .get(format!("https://a.test:{}/over-h2", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["path"], "/over-h2");
}

#[tokio::test]
async fn alpn_http11_client_is_served_over_http11() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(site.ca.pem.as_bytes()).unwrap()])
        .resolve("a.test", addr)
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://a.test:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn https_listener_forwards_x_forwarded_proto_https() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");
    let client = https_client(&site.ca, &[("a.test", addr)], None);
    let resp = client
        .get(format!("https://a.test:{}/", addr.port()))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = backend.seen();
    let values: Vec<_> = seen[0]
        .headers
        .get_all("x-forwarded-proto")
        .iter()
        .collect();
    assert_eq!(values, ["https"]);
}

/// `client_auth: MODE` against a separate CA that signs client certificates.
/// An https gateway that asks for client certificates (`client_auth: mode`,
/// more `tls` keys in `extra`) signed by a client CA of its own, in front of
/// an echo backend; alice holds a certificate from that CA.
struct Mtls {
    site: Site,
    /// Kept for its files, which the gateway reads again on a reload.
    _clients: TestCa,
    alice: TestCert,
    backend: Backend,
    gw: TestGateway,
}

impl Mtls {
    async fn start(mode: &str, extra: &str) -> Mtls {
        let site = Site::new();
        let clients = TestCa::new("client CA");
        let alice = clients.client("alice", "alice", "Acme");
        let backend = Backend::echo("app").await;
        let tls = format!(
            "client_ca: \"{}\"\nclient_auth: {mode}\n{extra}",
            clients.cert_path.display()
        );
        let gw = https_gateway(&site, &tls, backend.addr).await;
        Mtls {
            site,
            _clients: clients,
            alice,
            backend,
            gw,
        }
    }

    /// A client of `https://a.test/` on the gateway presenting `cert`, and that URL.
    fn client(&self, cert: Option<&TestCert>) -> (reqwest::Client, String) {
        let addr = self.gw.addr("secure");
        (
            https_client(&self.site.ca, &[("a.test", addr)], cert),
            format!("https://a.test:{}/", addr.port()),
        )
    }
}

#[tokio::test]
async fn client_auth_required_refuses_a_client_without_a_certificate() {
    let m = Mtls::start("required", "").await;
    let (anonymous, url) = m.client(None);
    let result = anonymous.get(&url).send().await;
    assert!(result.is_err(), "anonymous client was served: {result:?}");

    // A certificate from a CA other than client_ca is no better than none.
    let stranger = m.site.ca.client("mallory", "mallory", "Evil");
    let (other, url) = m.client(Some(&stranger));
    let result = other.get(&url).send().await;
    assert!(
        result.is_err(),
        "client signed by another CA was served: {result:?}"
    );
    assert!(m.backend.seen().is_empty());
}

#[tokio::test]
async fn client_auth_required_forwards_the_verified_subject_in_x_client_subject() {
    let m = Mtls::start("required", "").await;
    let (client, url) = m.client(Some(&m.alice));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = m.backend.seen();
    assert_eq!(
        seen[0]
            .headers
            .get("x-client-subject")
            .map(|v| v.to_str().unwrap()),
        Some("CN=alice,O=Acme")
    );
}

#[tokio::test]
async fn client_subject_header_name_is_configurable() {
    let m = Mtls::start("required", "client_subject_header: x-ssl-subject").await;
    let (client, url) = m.client(Some(&m.alice));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = m.backend.seen();
    assert_eq!(seen[0].headers["x-ssl-subject"], "CN=alice,O=Acme");
    assert!(!seen[0].headers.contains_key("x-client-subject"));
}

#[tokio::test]
async fn client_auth_optional_lets_anonymous_clients_in_and_strips_a_forged_subject() {
    let m = Mtls::start("optional", "").await;
    let (anonymous, url) = m.client(None);
    let resp = anonymous
        .get(&url)
        .header("x-client-subject", "CN=admin,O=Acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = m.backend.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].headers.contains_key("x-client-subject"),
        "forged subject reached the backend: {:?}",
        seen[0].headers.get("x-client-subject")
    );
}

#[tokio::test]
async fn forged_subject_is_replaced_by_the_verified_one() {
    let m = Mtls::start("optional", "").await;
    let (client, url) = m.client(Some(&m.alice));
    let resp = client
        .get(&url)
        .header("x-client-subject", "CN=admin,O=Acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = m.backend.seen();
    let values: Vec<_> = seen[0].headers.get_all("x-client-subject").iter().collect();
    assert_eq!(values, ["CN=alice,O=Acme"]);
}

/// A plain-HTTP gateway whose only upstream is `target` with the given `tls`
/// (and `http2`) settings.
async fn gateway_to_tls_upstream(target: SocketAddr, tls: &str, http2: bool) -> TestGateway {
    TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: secure-app
upstreams:
  - name: secure-app
    targets: [{target}]
    http2: {http2}
    tls: {tls}
"#
    ))
    .await
}

/// The upstream `tls` block: trust `ca`, name `backend.test`, and present
/// `cert` when given.
fn upstream_tls(ca: &TestCa, cert: Option<&TestCert>) -> String {
    let mut out = format!("{{ sni: backend.test, ca: \"{}\"", ca.cert_path.display());
    if let Some(c) = cert {
        out.push_str(&format!(
            ", cert: \"{}\", key: \"{}\"",
            c.cert_path.display(),
            c.key_path.display()
        ));
    }
    out.push_str(" }");
    out
}

#[tokio::test]
async fn upstream_tls_verifies_the_target_against_ca_under_the_sni_name() {
    let backend_ca = TestCa::new("backend CA");
    let cert = backend_ca.server("backend", &["backend.test"]);
    let backend = TlsBackend::echo("tls-app", tls_server_config(&cert, None, &["http/1.1"])).await;
    let gw = gateway_to_tls_upstream(backend.addr(), &upstream_tls(&backend_ca, None), false).await;
    let (status, _, text) = get(&gw.url("web", "/secure?x=1")).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["backend"], "tls-app");
    assert_eq!(v["path"], "/secure?x=1");
    let handshakes = backend.handshakes();
    assert_eq!(handshakes[0].sni.as_deref(), Some("backend.test"));
}

#[tokio::test]
async fn upstream_tls_with_the_wrong_ca_gives_502() {
    let backend_ca = TestCa::new("backend CA");
    let wrong_ca = TestCa::new("unrelated CA");
    let cert = backend_ca.server("backend", &["backend.test"]);
    let backend = TlsBackend::echo("tls-app", tls_server_config(&cert, None, &["http/1.1"])).await;
    let gw = gateway_to_tls_upstream(backend.addr(), &upstream_tls(&wrong_ca, None), false).await;
    let (status, headers, text) = get(&gw.url("web", "/")).await;
    let v = assert_problem(status, &headers, &text, 502);
    assert!(!text.contains(&backend.addr().to_string()), "{v}");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn upstream_mtls_presents_the_configured_client_certificate() {
    let backend_ca = TestCa::new("backend CA");
    let cert = backend_ca.server("backend", &["backend.test"]);
    let gateway_ca = TestCa::new("gateway client CA");
    let gateway_cert = gateway_ca.client("gateway", "portcullis", "Acme");
    let config = tls_server_config(&cert, Some(&gateway_ca), &["http/1.1"]);
    let backend = TlsBackend::echo("mtls-app", config).await;
    let tls = upstream_tls(&backend_ca, Some(&gateway_cert));
    let gw = gateway_to_tls_upstream(backend.addr(), &tls, false).await;
    let (status, _, text) = get(&gw.url("web", "/")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("mtls-app"), "{text}");
    let handshakes = backend.handshakes();
    assert_eq!(handshakes[0].client_cert.as_ref(), Some(&gateway_cert.der));
}

#[tokio::test]
async fn upstream_mtls_without_a_client_certificate_gives_502() {
    let backend_ca = TestCa::new("backend CA");
    let cert = backend_ca.server("backend", &["backend.test"]);
    let gateway_ca = TestCa::new("gateway client CA");
    let config = tls_server_config(&cert, Some(&gateway_ca), &["http/1.1"]);
    let backend = TlsBackend::echo("mtls-app", config).await;
    let gw = gateway_to_tls_upstream(backend.addr(), &upstream_tls(&backend_ca, None), false).await;
    let (status, headers, text) = get(&gw.url("web", "/")).await;
    assert_problem(status, &headers, &text, 502);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn upstream_http2_over_tls_negotiates_h2_by_alpn() {
    let backend_ca = TestCa::new("backend CA");
    let cert = backend_ca.server("backend", &["backend.test"]);
    let config = tls_server_config(&cert, None, &["h2", "http/1.1"]);
    let backend = TlsBackend::echo("h2-app", config).await;
    let gw = gateway_to_tls_upstream(backend.addr(), &upstream_tls(&backend_ca, None), true).await;
    let (status, _, text) = get(&gw.url("web", "/grpc-like")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(backend.handshakes()[0].alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(backend.seen()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn an_idle_tls_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway_with(&site, "    keepalive_timeout: 600ms", "", backend.addr).await;
    let config = client_trusting(&site.ca, &[&rustls::version::TLS13]);
    let mut tls = connect(gw.addr("secure"), config, "a.test").await.unwrap();
    answered_200(&mut tls, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let mut buf = vec![0u8; 16 * 1024];

    // Kept alive, then idle: closed once keepalive_timeout has passed.
    let idle_from = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the idle TLS connection was still open after 5s"
    );
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(500) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// One request on a new TLS connection (read to the end, so that the
/// tickets sent after the handshake arrive); how the handshake went.
async fn one_request(addr: SocketAddr, config: ClientConfig) -> rustls::HandshakeKind {
    let mut tls = connect(addr, config, "a.test").await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let answer = get_over(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    kind
}

/// Sends a GET of `/` over `tls` and reads the answer to the end (the
/// request asks the gateway to close).
async fn get_over(tls: &mut TlsStream<TcpStream>) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn a_client_resumes_with_the_one_ticket_each_handshake_gives_until_a_reload() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");
    let store = Arc::new(CountingTickets {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        tickets: Default::default(),
    });
    let mut config = client_trusting(&site.ca, &[&rustls::version::TLS13]);
    config.resumption = rustls::client::Resumption::store(store.clone());
    let tickets = || store.tickets.load(std::sync::atomic::Ordering::SeqCst);

    assert_eq!(
        one_request(addr, config.clone()).await,
        rustls::HandshakeKind::Full
    );
    assert_eq!(tickets(), 1, "one ticket per handshake");
    // Each resumption uses the ticket it holds and gets the next.
    for n in 2..=3 {
        assert_eq!(
            one_request(addr, config.clone()).await,
            rustls::HandshakeKind::Resumed
        );
        assert_eq!(tickets(), n);
    }
    // A reload makes new ticket keys: sessions verified under the old
    // configuration (an old client_ca, say) do not carry over.
    gw.gateway.reload().await.unwrap();
    assert_eq!(
        one_request(addr, config.clone()).await,
        rustls::HandshakeKind::Full
    );
}

#[tokio::test]
async fn a_resumed_mtls_session_still_forwards_the_verified_subject() {
    let m = Mtls::start("required", "").await;
    let (chain, key) = m.alice.chain_and_key();
    let config = ClientConfig::builder_with_provider(tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(m.site.ca.roots())
        .with_client_auth_cert(chain, key)
        .unwrap();
    let addr = m.gw.addr("secure");
    assert_eq!(
        one_request(addr, config.clone()).await,
        rustls::HandshakeKind::Full
    );
    assert_eq!(
        one_request(addr, config).await,
        rustls::HandshakeKind::Resumed
    );
    let subjects: Vec<_> = m
        .backend
        .seen()
        .iter()
        .map(|s| s.headers.get("x-client-subject").cloned())
        .collect();
    assert_eq!(subjects.len(), 2);
    assert!(
        subjects
            .iter()
            .all(|s| s.as_ref().is_some_and(|v| v == "CN=alice,O=Acme")),
        "{subjects:?}"
    );
}

/// A TLS ClientHello (no usable cipher suite, so the handshake fails at
/// once) whose SNI extension names the IP address `127.0.0.1`, as clients of
/// `https://127.0.0.1/` send.
fn client_hello_with_ip_sni() -> Vec<u8> {
    let name = b"127.0.0.1";
    let mut sni = vec![0, 0]; // extension type server_name
    let list_len = 3 + name.len();
    sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    sni.extend_from_slice(&(list_len as u16).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[7; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0, 2, 0x00, 0x2f]); // one TLS 1.2 suite
    hello.extend_from_slice(&[1, 0]); // no compression
    hello.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    hello.extend_from_slice(&sni);
    let mut handshake = vec![1, 0];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn clients_sending_an_ip_address_as_sni_do_not_fill_the_log() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners:\n  - name: secure\n    address: 127.0.0.1:{port}\n    protocol: https\n    tls:\n      certificates:{}\nroutes:\n  - name: all\n    upstream: app\nupstreams:\n  - name: app\n    targets: [\"{}\"]\n",
            site.certificates_yaml(),
            backend.addr
        ),
    )
    .unwrap();
    let p = GatewayProcess::spawn(&file);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_accepting(addr, Duration::from_secs(5)).await;
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&client_hello_with_ip_sni()).await.unwrap();
        // The gateway answers with an alert and closes: the hello was read.
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .expect("the gateway closes the connection")
            .ok();
        assert_eq!(answer.first(), Some(&0x15), "an alert: {answer:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = p.stderr();
    assert!(
        !log.contains("SNI"),
        "the log has a line per client:\n{log}"
    );
}

#[tokio::test]
async fn session_tickets_come_with_the_first_answer_and_resume_the_next_connection() {
    let site = Site::new();
    let backend = Backend::echo("app").await;
    let gw = https_gateway(&site, "", backend.addr).await;
    let addr = gw.addr("secure");
    // One client configuration, so one session store across connections.
    let config = client_trusting(&site.ca, &[&rustls::version::TLS13]);

    let mut first = connect(addr, config.clone(), "a.test").await.unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // Handshake done, no request yet: the ticket is held, nothing arrives.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(
        Duration::from_millis(200),
        first.get_ref().0.peek(&mut byte),
    )
    .await;
    assert!(early.is_err(), "the session ticket came before an answer");
    assert!(get_over(&mut first).await.starts_with("HTTP/1.1 200"));

    let mut second = connect(addr, config, "a.test").await.unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the ticket that came with the answer did not resume"
    );
    assert!(get_over(&mut second).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_client_refused_for_want_of_a_certificate_is_told_so_by_an_alert() {
    let m = Mtls::start("required", "").await;
    let config = client_trusting(&m.site.ca, &[&rustls::version::TLS13]);
    // A TLS 1.3 client finishes its side before the gateway checks it.
    let mut tls = connect(m.gw.addr("secure"), config, "a.test")
        .await
        .unwrap();
    let _ = tls
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let error = tls.read_to_end(&mut answer).await.unwrap_err();
    let alert = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
        )),
        "{error:?}"
    );
    assert!(m.backend.seen().is_empty());
}
