//! Layer 4 listeners over real sockets: `tcp` (echo, half-close, failover,
//! idle timeout), `tls` passthrough routed by SNI to backends that complete
//! the handshake with their own certificates, and `udp` sessions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::common::*;

/// A TCP server that echoes every byte back and closes its side after the
/// client's half-close.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP server that records the first bytes of every connection (until
/// `want` bytes or a pause), answers `ok`, and closes.
pub async fn tcp_recorder(want: usize) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while got.len() < want {
                    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                seen.lock().unwrap().push(got);
                let _ = s.write_all(b"ok").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// Sends `data`, half-closes, and returns everything read back.
async fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the relay did not close")
        .unwrap();
    out
}

#[tokio::test]
async fn tcp_listener_echoes_bytes_both_ways_and_passes_the_half_close() {
    let echo = tcp_echo().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: pg
    address: 127.0.0.1:0
    protocol: tcp
    upstream: pg
upstreams:
  - name: pg
    targets: [{echo}]
"#
    ))
    .await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(gw.addr("pg"), &payload).await, payload);
}

#[tokio::test]
async fn tcp_listener_fails_over_from_a_dead_target() {
    let echo = tcp_echo().await;
    let dead = dead_addr().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: pg
    address: 127.0.0.1:0
    protocol: tcp
    upstream: pg
upstreams:
  - name: pg
    balance: round_robin
    targets: [{dead}, {echo}]
    timeouts: {{ connect: 1s }}
"#
    ))
    .await;
    for i in 0..4 {
        let msg = format!("hello {i}");
        assert_eq!(
            round_trip(gw.addr("pg"), msg.as_bytes()).await,
            msg.as_bytes()
        );
    }
}

#[tokio::test]
async fn tcp_listener_counts_open_connections_and_closes_idle_ones() {
    let echo = tcp_echo().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: pg
    address: 127.0.0.1:0
    protocol: tcp
    upstream: pg
upstreams:
  - name: pg
    targets: [{echo}]
    timeouts: {{ idle: 300ms }}
"#
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr("pg")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    let state = gw.gateway.runtime().snapshot.load().upstreams["pg"].targets[0]
        .state
        .clone();
    assert_eq!(
        state.in_flight(),
        1,
        "the connection counts against its target"
    );
    // No bytes either way: the gateway closes after the idle timeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(eventually(Duration::from_secs(2), || state.in_flight() == 0).await);
}

/// Two TLS backends with their own certificates (`a.test`, and `*.b.test`)
/// and a default one (`127.0.0.1`, for clients that send no SNI).
struct Backends {
    ca: TestCa,
    a: TlsBackend,
    b: TlsBackend,
    fallback: TlsBackend,
    a_cert: TestCert,
    b_cert: TestCert,
}

async fn backends() -> Backends {
    let ca = TestCa::new("passthrough CA");
    let a_cert = ca.server("a", &["a.test"]);
    let b_cert = ca.server("b", &["*.b.test"]);
    let fallback_cert = ca.server("fallback", &["127.0.0.1"]);
    let a = TlsBackend::echo("a", tls_server_config(&a_cert, None, &["http/1.1"])).await;
    let b = TlsBackend::echo("b", tls_server_config(&b_cert, None, &["http/1.1"])).await;
    let fallback = TlsBackend::echo(
        "fallback",
        tls_server_config(&fallback_cert, None, &["http/1.1"]),
    )
    .await;
    Backends {
        ca,
        a,
        b,
        fallback,
        a_cert,
        b_cert,
    }
}

async fn passthrough_gateway(b: &Backends, default: bool) -> TestGateway {
    let default = if default {
        "    default_upstream: fallback\n"
    } else {
        ""
    };
    TestGateway::start(&format!(
        r#"
listeners:
  - name: passthrough
    address: 127.0.0.1:0
    protocol: tls
    sni: {{ "A.test": a, "*.b.test": b }}
{default}upstreams:
  - name: a
    targets: [{a}]
  - name: b
    targets: [{b}]
  - name: fallback
    targets: [{fallback}]
"#,
        a = b.a.addr(),
        b = b.b.addr(),
        fallback = b.fallback.addr(),
    ))
    .await
}

/// A TLS client that trusts only `ca`.
fn tls_client(ca: &TestCa) -> tokio_rustls::TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Completes a TLS handshake for `name` over `io`, sends one HTTP/1.1
/// request, and returns the server certificate and the response text.
async fn https_get<IO>(
    ca: &TestCa,
    name: &str,
    io: IO,
) -> (rustls::pki_types::CertificateDer<'static>, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let server = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tls_client(ca).connect(server, io).await.unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(
        format!("GET /hi HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    (cert, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn tls_listener_routes_by_sni_and_backends_complete_the_handshake() {
    let b = backends().await;
    let gw = passthrough_gateway(&b, true).await;
    let stream = TcpStream::connect(gw.addr("passthrough")).await.unwrap();
    let (cert, body) = https_get(&b.ca, "a.test", stream).await;
    assert_eq!(
        cert, b.a_cert.der,
        "the client saw backend a's own certificate"
    );
    assert!(body.contains(r#""backend":"a""#), "{body}");

    let stream = TcpStream::connect(gw.addr("passthrough")).await.unwrap();
    let (cert, body) = https_get(&b.ca, "db.b.test", stream).await;
    assert_eq!(cert, b.b_cert.der, "the wildcard name reached backend b");
    assert!(body.contains(r#""backend":"b""#), "{body}");

    assert_eq!(b.a.handshakes()[0].sni.as_deref(), Some("a.test"));
    assert_eq!(b.b.handshakes()[0].sni.as_deref(), Some("db.b.test"));
    assert!(b.fallback.handshakes().is_empty());
}

/// Pipes `stream` through an in-memory pair whose first bytes are written in
/// small pieces with pauses, so the ClientHello crosses many TCP segments.
fn dribble(stream: TcpStream) -> tokio::io::DuplexStream {
    let (near, far) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let _ = stream.set_nodelay(true);
        let (mut sr, mut sw) = stream.into_split();
        let (mut fr, mut fw) = tokio::io::split(far);
        let up = async move {
            let mut buf = [0u8; 4096];
            let mut sent = 0;
            loop {
                let n = match fr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for piece in buf[..n].chunks(if sent < 2048 { 40 } else { 4096 }) {
                    if sw.write_all(piece).await.is_err() {
                        return;
                    }
                    sent += piece.len();
                    if sent <= 2048 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            let _ = sw.shutdown().await;
        };
        let down = async move {
            let _ = tokio::io::copy(&mut sr, &mut fw).await;
            let _ = fw.shutdown().await;
        };
        tokio::join!(up, down);
    });
    near
}

#[tokio::test]
async fn tls_listener_reads_a_client_hello_split_across_segments() {
    let b = backends().await;
    let gw = passthrough_gateway(&b, false).await;
    let stream = TcpStream::connect(gw.addr("passthrough")).await.unwrap();
    let (cert, body) = https_get(&b.ca, "a.test", dribble(stream)).await;
    assert_eq!(cert, b.a_cert.der);
    assert!(body.contains(r#""backend":"a""#), "{body}");
}

#[tokio::test]
async fn tls_listener_sends_a_hello_without_sni_to_the_default_upstream() {
    let b = backends().await;
    let gw = passthrough_gateway(&b, true).await;
    // rustls sends no SNI for an IP address.
    let stream = TcpStream::connect(gw.addr("passthrough")).await.unwrap();
    let (_, body) = https_get(&b.ca, "127.0.0.1", stream).await;
    assert!(body.contains(r#""backend":"fallback""#), "{body}");
    assert_eq!(b.fallback.handshakes()[0].sni, None);
}

#[tokio::test]
async fn tls_listener_without_a_default_closes_unknown_names_and_non_tls() {
    let b = backends().await;
    let gw = passthrough_gateway(&b, false).await;
    for name in ["127.0.0.1", "unknown.test"] {
        let stream = TcpStream::connect(gw.addr("passthrough")).await.unwrap();
        let server = ServerName::try_from(name.to_string()).unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            tls_client(&b.ca).connect(server, stream),
        )
        .await
        .expect("the gateway did not close");
        assert!(r.is_err(), "{name}: the handshake must fail");
    }
    let text = raw(
        gw.addr("passthrough"),
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(text, "", "plain HTTP gets no answer");
    assert!(b.a.handshakes().is_empty() && b.fallback.handshakes().is_empty());
}

/// A UDP server that answers each datagram with `name:` and the datagram.
async fn udp_echo(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

async fn udp_ask(socket: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    socket.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("no UDP reply")
        .unwrap();
    assert_eq!(from, to, "replies come from the listener's address");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn udp_listener_relays_replies_to_each_client_and_expires_idle_sessions() {
    let one = udp_echo("one").await;
    let two = udp_echo("two").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: dns
    address: 127.0.0.1:0
    protocol: udp
    upstream: resolvers
upstreams:
  - name: resolvers
    balance: round_robin
    targets: [{one}, {two}]
    timeouts: {{ idle: 400ms }}
"#
    ))
    .await;
    let addr = gw.addr("dns");
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let first_a = udp_ask(&a, addr, "a1").await;
    let first_b = udp_ask(&b, addr, "b1").await;
    // Round robin spreads the two clients; each keeps its target.
    let target_of = |reply: &str| reply.split(':').next().unwrap().to_string();
    assert_ne!(target_of(&first_a), target_of(&first_b));
    assert!(first_a.ends_with(":a1") && first_b.ends_with(":b1"));
    for i in 2..5 {
        let reply = udp_ask(&a, addr, &format!("a{i}")).await;
        assert_eq!(reply, format!("{}:a{i}", target_of(&first_a)));
        let reply = udp_ask(&b, addr, &format!("b{i}")).await;
        assert_eq!(reply, format!("{}:b{i}", target_of(&first_b)));
    }
    let snapshot = gw.gateway.runtime().snapshot.load_full();
    let targets = &snapshot.upstreams["resolvers"].targets;
    let open = || targets.iter().map(|t| t.state.in_flight()).sum::<u32>();
    assert_eq!(open(), 2, "one session per client");
    assert!(
        eventually(Duration::from_secs(5), || open() == 0).await,
        "idle sessions expire"
    );
    // A client that comes back gets a fresh session.
    assert!(udp_ask(&a, addr, "again").await.ends_with(":again"));
}

#[tokio::test]
async fn l4_listeners_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(
        &path,
        r#"
listeners:
  - name: pg
    address: 127.0.0.1:0
    protocol: tcp
  - name: pass
    address: 127.0.0.1:0
    protocol: tls
    sni: { "a.*.test": nowhere }
  - name: dns
    address: 127.0.0.1:0
    protocol: udp
    upstream: app
    proxy_protocol: true
upstreams:
  - name: app
    targets: [127.0.0.1:1]
"#,
    )
    .unwrap();
    let errors = match portcullis::gateway::start(path).await {
        Ok(_) => panic!("the config must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(errors.contains("has no `upstream`"), "{errors}");
    assert!(
        errors.contains("upstream `nowhere` is not defined"),
        "{errors}"
    );
    assert!(
        errors.contains("not available on udp listeners"),
        "{errors}"
    );
}
