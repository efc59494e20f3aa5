//! HTTP/2 from clients: a connection's streams are served side by side
//! (inside the connection's task), and one stream's failure or reset stays
//! its own.

use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use hyper::body::Incoming;

use crate::common::*;

/// A gateway in front of a backend that waits `delay` before answering
/// with the request's path.
async fn delayed(delay: Duration) -> (Backend, TestGateway) {
    let backend = Backend::start(move |req: http::Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::new(body(req.uri().path().to_owned()))
    })
    .await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    (backend, gw)
}

#[tokio::test]
async fn streams_of_one_connection_are_served_side_by_side() {
    let (_backend, gw) = delayed(Duration::from_millis(400)).await;
    let h2 = h2c_client();
    // One connection (the client multiplexes), 40 streams at once.
    let started = Instant::now();
    let requests = (0..40).map(|i| {
        let (c, url) = (h2.clone(), gw.url("web", &format!("/s/{i}")));
        tokio::spawn(async move {
            let r = c.get(&url).send().await.unwrap();
            (r.version(), r.status(), r.text().await.unwrap())
        })
    });
    let answers = futures_util::future::join_all(requests).await;
    let took = started.elapsed();
    for (i, answer) in answers.into_iter().enumerate() {
        let (version, status, text) = answer.unwrap();
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, format!("/s/{i}"));
    }
    // One after another would take 16 s.
    assert!(took < Duration::from_secs(3), "40 streams took {took:?}");
}

#[tokio::test]
async fn a_stream_the_client_gives_up_on_leaves_the_others_running() {
    let (_backend, gw) = delayed(Duration::from_millis(300)).await;
    let h2 = h2c_client();
    let (c, url) = (h2.clone(), gw.url("web", "/kept"));
    let kept = tokio::spawn(async move { c.get(&url).send().await.unwrap().text().await });
    // Dropped before its answer: the client resets the stream.
    let abandoned = h2.get(gw.url("web", "/abandoned")).send();
    let _ = tokio::time::timeout(Duration::from_millis(50), abandoned).await;
    assert_eq!(kept.await.unwrap().unwrap(), "/kept");
    // The connection still serves new streams.
    let r = h2.get(gw.url("web", "/after")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "/after");
}

#[tokio::test]
async fn the_request_id_is_sent_never_indexed_so_it_does_not_fill_the_header_table() {
    use tokio::io::AsyncWriteExt;
    let backend =
        Backend::start(|_req: http::Request<Incoming>| async move { Response::new(body("ok")) })
            .await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    let mut io = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    io.write_all(&h2_preface_and_get()).await.unwrap();
    let block = loop {
        let (kind, _, stream, payload) =
            tokio::time::timeout(Duration::from_secs(5), read_h2_frame(&mut io))
                .await
                .expect("a response within 5 s");
        if kind == 0x4 && payload.is_empty() {
            continue;
        }
        if kind == 0x1 && stream == 1 {
            break payload;
        }
    };
    // RFC 7541 §6.2.3: 0x10 is "literal never indexed, new name"; 0x89 a
    // nine-byte Huffman string, the code of "x-request-id" (Appendix B).
    let never_indexed = [
        0x10, 0x89, 0xf2, 0xb5, 0x85, 0xed, 0x69, 0x50, 0x95, 0x8d, 0x27,
    ];
    assert!(
        block
            .windows(never_indexed.len())
            .any(|w| w == never_indexed),
        "x-request-id not sent never-indexed in {block:02x?}"
    );
}

// ---------------------------------------------------------------------------
// HEAD: headers only, whoever answers (RFC 9110 §9.3.2)
// ---------------------------------------------------------------------------

/// A gateway with an h2c-capable `web` listener and an https `secure` one
/// (certificate for `h.test`), whose routes answer in every way the
/// gateway can: directly, from a file, through a policy's refusal, from
/// a dead upstream, from a live one, or with no route at all.
async fn every_kind_of_answer(
    ca: &TestCa,
    files: &std::path::Path,
    live: std::net::SocketAddr,
) -> TestGateway {
    let cert = ca.server("h", &["h.test"]);
    std::fs::write(files.join("file.txt"), "some file contents").unwrap();
    let dead = dead_addr().await;
    TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
  - name: secure
    address: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - {{ cert: "{cert}", key: "{key}" }}
routes:
  - {{ name: respond, match: {{ path: /respond }}, respond: {{ status: 200, body: hello }} }}
  - {{ name: file, match: {{ path_prefix: /file.txt }}, static: {{ root: "{files}" }} }}
  - {{ name: auth, match: {{ path: /auth }}, policies: [auth], respond: {{ body: secret }} }}
  - {{ name: deny, match: {{ path: /deny }}, policies: [nobody], respond: {{ body: no }} }}
  - {{ name: limited, match: {{ path: /limited }}, policies: [once], respond: {{ body: once }} }}
  - {{ name: dead, match: {{ path: /dead }}, upstream: dead }}
  - {{ name: live, match: {{ path: /live }}, upstream: live }}
policies:
  auth: {{ type: jwt, secret: "test-secret-of-at-least-32-bytes!!" }}
  nobody: {{ type: ip_filter, deny: [0.0.0.0/0, "::/0"] }}
  once: {{ type: rate_limit, limit: 1, per: 1h }}
upstreams:
  - {{ name: dead, targets: ["{dead}"] }}
  - {{ name: live, targets: ["{live}"] }}
"#,
        cert = cert.cert_path.display(),
        key = cert.key_path.display(),
        files = files.display(),
    ))
    .await
}

#[tokio::test]
async fn head_gets_the_headers_only_over_every_protocol_whoever_answers() {
    let ca = TestCa::new("head CA");
    let files = tempfile::tempdir().unwrap();
    let live = Backend::start(|_req: http::Request<Incoming>| async move {
        Response::new(body("from the backend"))
    })
    .await;
    let gw = every_kind_of_answer(&ca, files.path(), live.addr).await;
    // Use up the rate limit's one request, so HEAD sees the 429.
    let (status, _, _) = get(&gw.url("web", "/limited")).await;
    assert_eq!(status, 200);

    let secure = gw.addr("secure");
    let clients = [
        (
            "HTTP/1.1",
            client(),
            gw.url("web", ""),
            http::Version::HTTP_11,
        ),
        (
            "h2c",
            h2c_client(),
            gw.url("web", ""),
            http::Version::HTTP_2,
        ),
        (
            "h2 over TLS",
            https_client(&ca, &[("h.test", secure)], None),
            format!("https://h.test:{}", secure.port()),
            http::Version::HTTP_2,
        ),
    ];
    let cases = [
        ("/respond", 200),
        ("/file.txt", 200),
        ("/auth", 401),
        ("/deny", 403),
        ("/nowhere", 404),
        ("/limited", 429),
        ("/dead", 502),
        ("/live", 200),
    ];
    for (protocol, client, base, version) in &clients {
        for (path, status) in cases {
            let resp = client
                .head(format!("{base}{path}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{protocol} HEAD {path}: {e:?}"));
            assert_eq!(resp.version(), *version, "{protocol} HEAD {path}");
            assert_eq!(resp.status(), status, "{protocol} HEAD {path}");
            assert!(
                resp.headers().contains_key("x-request-id"),
                "{protocol} HEAD {path}"
            );
            let text = resp
                .text()
                .await
                .unwrap_or_else(|e| panic!("{protocol} HEAD {path}: body: {e:?}"));
            assert_eq!(text, "", "{protocol} HEAD {path}");
        }
    }
}
