//! PROXY protocol over real sockets: v1 and v2 headers read by listeners
//! with `proxy_protocol: true` (the address reaches X-Forwarded-For), a
//! malformed or missing header closing the connection, headers sent by
//! upstreams with `proxy_protocol: v1|v2`, and the layered deployment: a
//! `tcp` portcullis in front of two HTTP portcullis instances.

use std::net::SocketAddr;
use std::time::Duration;

use portcullis::net::proxy_protocol::{Version, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;
use crate::l4::tcp_recorder;

/// An http listener that requires PROXY headers, forwarding to `backend`.
async fn proxied_http_gateway(backend: SocketAddr) -> TestGateway {
    TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    proxy_protocol: true
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [{backend}]
"#
    ))
    .await
}

const REQUEST: &[u8] = b"GET /who HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";

fn forwarded_for(backend: &Backend) -> Vec<String> {
    backend
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn http_listener_takes_the_client_address_from_a_v1_header() {
    let backend = Backend::echo("app").await;
    let gw = proxied_http_gateway(backend.addr).await;
    let mut request = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n".to_vec();
    request.extend_from_slice(REQUEST);
    let text = raw(gw.addr("web"), &request, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(forwarded_for(&backend), ["203.0.113.7"]);
}

#[tokio::test]
async fn http_listener_takes_the_client_address_from_a_v2_header() {
    let backend = Backend::echo("app").await;
    let gw = proxied_http_gateway(backend.addr).await;
    let source: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
    let mut request = encode(Version::V2, source, "[2001:db8::1]:80".parse().unwrap());
    request.extend_from_slice(REQUEST);
    let text = raw(gw.addr("web"), &request, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(forwarded_for(&backend), ["2001:db8::7"]);
}

#[tokio::test]
async fn malformed_or_missing_proxy_header_closes_the_connection() {
    let backend = Backend::echo("app").await;
    let gw = proxied_http_gateway(backend.addr).await;
    for bad in [
        REQUEST.to_vec(),
        b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n".to_vec(),
    ] {
        let started = std::time::Instant::now();
        let text = raw(gw.addr("web"), &bad, Duration::from_secs(10)).await;
        assert_eq!(text, "", "closed without an answer");
        assert!(started.elapsed() < Duration::from_secs(8));
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn tcp_upstreams_send_v1_and_v2_headers_for_the_client() {
    for (version, marker) in [
        ("v1", &b"PROXY TCP4 127.0.0.1 "[..]),
        ("v2", b"\r\n\r\n\0\r\nQUIT\n"),
    ] {
        let (target, seen) = tcp_recorder(64).await;
        let gw = TestGateway::start(&format!(
            r#"
listeners:
  - name: front
    address: 127.0.0.1:0
    protocol: tcp
    upstream: app
upstreams:
  - name: app
    targets: [{target}]
    proxy_protocol: {version}
"#
        ))
        .await;
        let front = gw.addr("front");
        let mut s = TcpStream::connect(front).await.unwrap();
        let client = s.local_addr().unwrap();
        s.write_all(b"payload").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, b"ok");
        let got = seen.lock().unwrap()[0].clone();
        assert!(
            got.starts_with(marker),
            "{version}: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            got.ends_with(b"payload"),
            "{version}: payload after the header"
        );
        let expected = encode(
            if version == "v1" {
                Version::V1
            } else {
                Version::V2
            },
            client,
            front,
        );
        assert_eq!(&got[..expected.len()], &expected[..], "{version}");
    }
}

/// A gateway whose HTTP route forwards to an upstream that gets PROXY
/// headers: a second gateway (`proxy_protocol: true`) in front of `backend`.
async fn http_chain_with_proxy(version: &str, backend: SocketAddr) -> (TestGateway, TestGateway) {
    let inner = proxied_http_gateway(backend).await;
    let outer = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: inner
upstreams:
  - name: inner
    proxy_protocol: {version}
    targets: [{}]
"#,
        inner.addr("web")
    ))
    .await;
    (outer, inner)
}

/// Sends one request from a client bound to `source` and returns the answer.
async fn request_from(source: &str, to: SocketAddr) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    s.write_all(REQUEST).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http_upstreams_receive_v1_and_v2_headers_for_each_client() {
    for version in ["v1", "v2"] {
        let backend = Backend::echo("app").await;
        let (outer, _inner) = http_chain_with_proxy(version, backend.addr).await;
        // Two clients from different addresses, one after the other: each
        // request carries its own client's header, so no connection is
        // shared between them.
        for source in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
            let text = request_from(source, outer.addr("web")).await;
            assert!(text.starts_with("HTTP/1.1 200"), "{version}: {text}");
        }
        // The outer gateway appends the client; the inner one appends the
        // address from the PROXY header, which names the same client
        // (without the header it would be the outer gateway, 127.0.0.1).
        assert_eq!(
            forwarded_for(&backend),
            [
                "127.0.0.2, 127.0.0.2",
                "127.0.0.3, 127.0.0.3",
                "127.0.0.2, 127.0.0.2"
            ],
            "{version}"
        );
    }
}

#[tokio::test]
async fn health_checks_to_proxy_upstreams_send_a_header_naming_no_client() {
    let backend = Backend::echo("app").await;
    let inner = proxied_http_gateway(backend.addr).await;
    let outer = TestGateway::start(&format!(
        r#"
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: inner
upstreams:
  - name: inner
    proxy_protocol: v2
    targets: [{}]
    health_check: {{ type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1 }}
"#,
        inner.addr("web")
    ))
    .await;
    // The inner gateway closes connections without a valid header; checks
    // reaching the backend prove the LOCAL header was accepted.
    assert!(
        eventually(Duration::from_secs(3), || backend
            .seen()
            .iter()
            .any(|s| s.uri.contains("/healthz")))
        .await,
        "no health check got through"
    );
    let (_, _, body) = get(&outer.admin_url("/api/v1/upstreams")).await;
    assert!(body.contains("\"healthy\":true"), "{body}");
}

/// The layered deployment of the design: an L4 portcullis (`tcp`, sending
/// PROXY v2) balancing over two L7 portcullis instances (`proxy_protocol:
/// true`), which forward to one backend. The client connects from
/// 127.0.0.2 while every hop between gateways comes from 127.0.0.1, so the
/// backend seeing 127.0.0.2 proves the address crossed the L4 tier.
#[tokio::test]
async fn layered_l4_tier_in_front_of_two_http_instances_keeps_the_client_address() {
    let backend = Backend::echo("app").await;
    let instance = |tag: &'static str| {
        let backend = backend.addr;
        async move {
            TestGateway::start(&format!(
                r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    proxy_protocol: true
routes:
  - name: all
    upstream: app
    request_headers: {{ set: {{ x-instance: {tag} }} }}
upstreams:
  - name: app
    targets: [{backend}]
"#
            ))
            .await
        }
    };
    let one = instance("one").await;
    let two = instance("two").await;
    let edge = TestGateway::start(&format!(
        r#"
listeners:
  - name: edge
    address: 127.0.0.1:0
    protocol: tcp
    upstream: l7
upstreams:
  - name: l7
    balance: round_robin
    proxy_protocol: v2
    targets: [{one}, {two}]
"#,
        one = one.addr("web"),
        two = two.addr("web"),
    ))
    .await;
    for _ in 0..4 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(edge.addr("edge")).await.unwrap();
        s.write_all(REQUEST).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_eq!(s.headers["x-forwarded-for"], "127.0.0.2");
    }
    let instances: std::collections::HashSet<_> = seen
        .iter()
        .map(|s| s.headers["x-instance"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        instances.len(),
        2,
        "both L7 instances served: {instances:?}"
    );
}

#[tokio::test]
async fn layered_example_runs_as_written() {
    let app = Backend::echo("app").await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let text = std::fs::read_to_string(format!("{root}/layered.yaml")).unwrap();
    // Only addresses change: the L7 listeners get free ports (the L4
    // upstream names them), the others ephemeral ports.
    let (a, b) = (free_port(), free_port());
    let text = text
        .replace("127.0.0.1:3000", &app.addr.to_string())
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{a}"))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{b}"))
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:5353", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let gw = TestGateway::start(&text).await;
    for _ in 0..2 {
        let text = raw(gw.addr("edge"), REQUEST, Duration::from_secs(10)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let tiers: std::collections::HashSet<String> = app
        .seen()
        .iter()
        .map(|s| s.headers["x-tier"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(tiers.len(), 2, "{tiers:?}");
    assert!(forwarded_for(&app).iter().all(|f| f == "127.0.0.1"));
}
