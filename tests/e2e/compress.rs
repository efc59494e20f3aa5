//! `compress`: answers encoded with zstd, brotli or gzip by the client's
//! `Accept-Encoding`, decoded here by the real decoders; what is never
//! encoded; request bodies decoded, bombs refused; config errors at their
//! line.

use std::io::{Read, Write};
use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;

use crate::common::*;

/// A JSON document of about 20 KB: worth compressing.
fn big_json() -> String {
    let items: Vec<String> = (0..400)
        .map(|i| format!(r#"{{"id":{i},"name":"item number {i}","tags":["a","b","c"]}}"#))
        .collect();
    format!(r#"{{"items":[{}]}}"#, items.join(","))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A backend whose answer depends on the path: the cases the policy must
/// encode and the ones it must leave alone. `/echo` answers with what it
/// was sent.
async fn backend() -> Backend {
    Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        let mut status = http::StatusCode::OK;
        let mut h = http::HeaderMap::new();
        let json = HeaderValue::from_static("application/json");
        let text: Bytes = match path.as_str() {
            "/big.json" => {
                h.insert("content-type", json);
                h.insert("etag", HeaderValue::from_static("\"v1\""));
                h.insert("accept-ranges", HeaderValue::from_static("bytes"));
                big_json().into()
            }
            "/small.json" => {
                h.insert("content-type", json);
                r#"{"ok":true}"#.into()
            }
            "/encoded" => {
                h.insert("content-type", json);
                h.insert("content-encoding", HeaderValue::from_static("gzip"));
                gzip(big_json().as_bytes()).into()
            }
            "/range" => {
                status = http::StatusCode::PARTIAL_CONTENT;
                h.insert("content-type", json);
                h.insert(
                    "content-range",
                    HeaderValue::from_static("bytes 0-1999/20000"),
                );
                big_json()[..2000].to_string().into()
            }
            "/no-transform" => {
                h.insert("content-type", json);
                h.insert(
                    "cache-control",
                    HeaderValue::from_static("public, no-transform"),
                );
                big_json().into()
            }
            "/image.png" => {
                h.insert("content-type", HeaderValue::from_static("image/png"));
                vec![7u8; 20_000].into()
            }
            "/chunked" => {
                // Two frames, no length: an unknown length is encoded
                // whatever its size.
                let frames = futures_util::stream::iter([
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                        Bytes::from_static(b"hello, "),
                    )),
                    Ok(hyper::body::Frame::data(Bytes::from_static(b"world"))),
                ]);
                let mut r = http::Response::new(http_body_util::StreamBody::new(frames).boxed());
                r.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                return r;
            }
            "/echo" => {
                let encoding = req
                    .headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let got = req.into_body().collect().await.unwrap().to_bytes();
                let answer = serde_json::json!({
                    "encoding": encoding,
                    "text": String::from_utf8_lossy(&got),
                });
                let mut r = http::Response::new(body(answer.to_string()));
                r.headers_mut().insert("content-type", json);
                return r;
            }
            _ => {
                status = http::StatusCode::NOT_FOUND;
                Bytes::new()
            }
        };
        let mut r = http::Response::new(body(text));
        *r.status_mut() = status;
        *r.headers_mut() = h;
        r
    })
    .await
}

/// A gateway with a `compress` policy `def` on a route to `backend`, and
/// a route `/direct` that answers a big JSON document itself.
async fn gateway(backend: SocketAddr, def: &str) -> TestGateway {
    let direct = big_json().replace('\\', "\\\\").replace('"', "\\\"");
    TestGateway::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: web
    address: "127.0.0.1:0"
routes:
  - name: direct
    match: {{ path: /direct }}
    policies: [squeeze]
    respond: {{ status: 200, body: "{direct}", headers: {{ content-type: application/json }} }}
  - name: all
    policies: [squeeze]
    upstream: app
upstreams:
  - name: app
    targets: ["{backend}"]
policies:
  squeeze: {def}
"#
    ))
    .await
}

/// GET `path` with `Accept-Encoding: accept` (none when `None`).
async fn fetch(
    gw: &TestGateway,
    path: &str,
    accept: Option<&str>,
) -> (u16, http::HeaderMap, Bytes) {
    let mut req = client().get(gw.url("web", path));
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap())
}

/// The body decoded as `Content-Encoding` says, by the reference decoders.
fn decoded(headers: &http::HeaderMap, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match headers.get("content-encoding").map(|v| v.to_str().unwrap()) {
        None => out.extend_from_slice(data),
        Some("gzip") => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("br") => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("zstd") => out = zstd::stream::decode_all(data).unwrap(),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

fn encoding(headers: &http::HeaderMap) -> Option<&str> {
    headers.get("content-encoding").map(|v| v.to_str().unwrap())
}

fn varies(headers: &http::HeaderMap) -> bool {
    headers.get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")
    })
}

#[tokio::test]
async fn each_algorithm_round_trips_through_a_real_decoder() {
    let backend = backend().await;
    let gw = gateway(backend.addr, "{ type: compress }").await;
    let original = big_json();
    for algorithm in ["gzip", "br", "zstd"] {
        let (status, headers, data) = fetch(&gw, "/big.json", Some(algorithm)).await;
        assert_eq!(status, 200);
        assert_eq!(encoding(&headers), Some(algorithm));
        assert!(
            data.len() < original.len() / 4,
            "{algorithm}: {} bytes",
            data.len()
        );
        assert_eq!(decoded(&headers, &data), original.as_bytes(), "{algorithm}");
        assert!(headers.get("content-length").is_none(), "{algorithm}");
        assert!(headers.get("accept-ranges").is_none(), "{algorithm}");
        assert_eq!(headers["etag"], "W/\"v1\"", "{algorithm}");
        assert!(varies(&headers), "{algorithm}");
    }
    // The same over HTTP/2 (h2c).
    let r = h2c_client()
        .get(gw.url("web", "/big.json"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    let headers = r.headers().clone();
    assert_eq!(encoding(&headers), Some("br"));
    assert_eq!(
        decoded(&headers, &r.bytes().await.unwrap()),
        original.as_bytes()
    );

    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    for (algorithm, n) in [("gzip", 1), ("br", 2), ("zstd", 1)] {
        let line = format!(
            r#"portcullis_compressed_responses_total{{route="all",encoding="{algorithm}"}} {n}"#
        );
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn negotiation_follows_q_values_then_the_policy_order() {
    let backend = backend().await;
    let gw = gateway(backend.addr, "{ type: compress }").await;
    let cases: [(Option<&str>, Option<&str>); 12] = [
        (None, None),
        (Some(""), None),
        (Some("identity"), None),
        (Some("gzip;q=0"), None),
        (Some("*;q=0"), None),
        (Some("*"), Some("zstd")),
        (Some("*, zstd;q=0"), Some("br")),
        (Some("br;q=0.5, gzip;q=0.8"), Some("gzip")),
        (Some("gzip, br"), Some("br")),
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("deflate"), None),
        (Some("identity;q=0, gzip;q=0.1"), Some("gzip")),
    ];
    for (accept, want) in cases {
        let (status, headers, data) = fetch(&gw, "/big.json", accept).await;
        assert_eq!(status, 200);
        assert_eq!(encoding(&headers), want, "Accept-Encoding: {accept:?}");
        assert_eq!(decoded(&headers, &data), big_json().as_bytes());
        // Encoded or not, the answer depends on Accept-Encoding.
        assert!(varies(&headers), "Accept-Encoding: {accept:?}");
        if want.is_none() {
            assert_eq!(headers["etag"], "\"v1\"");
            assert_eq!(
                headers["content-length"],
                big_json().len().to_string().as_str()
            );
        }
    }

    // The policy's own order breaks ties.
    let gw = gateway(
        backend.addr,
        "{ type: compress, algorithms: [gzip, brotli] }",
    )
    .await;
    let (_, headers, _) = fetch(&gw, "/big.json", Some("zstd, br, gzip")).await;
    assert_eq!(encoding(&headers), Some("gzip"));
    let (_, headers, _) = fetch(&gw, "/big.json", Some("zstd")).await;
    assert_eq!(encoding(&headers), None);
}

#[tokio::test]
async fn small_encoded_ranged_no_transform_and_binary_answers_go_as_they_are() {
    let backend = backend().await;
    let gw = gateway(backend.addr, "{ type: compress }").await;
    let accept = Some("gzip, br, zstd");

    let (_, headers, data) = fetch(&gw, "/small.json", accept).await;
    assert_eq!(encoding(&headers), None);
    assert_eq!(&data[..], br#"{"ok":true}"#);
    assert!(varies(&headers), "a listed type varies even when small");

    let (_, headers, data) = fetch(&gw, "/encoded", accept).await;
    assert_eq!(
        encoding(&headers),
        Some("gzip"),
        "the upstream's own encoding"
    );
    assert_eq!(
        decoded(&headers, &data),
        big_json().as_bytes(),
        "encoded once"
    );

    let (status, headers, data) = fetch(&gw, "/range", accept).await;
    assert_eq!(status, 206);
    assert_eq!(encoding(&headers), None);
    assert_eq!(data.len(), 2000);

    let (_, headers, data) = fetch(&gw, "/no-transform", accept).await;
    assert_eq!(encoding(&headers), None);
    assert_eq!(data.len(), big_json().len());

    let (_, headers, data) = fetch(&gw, "/image.png", accept).await;
    assert_eq!(encoding(&headers), None);
    assert!(!varies(&headers), "an unlisted type never varies");
    assert_eq!(data.len(), 20_000);

    // HEAD: no body to encode.
    let r = client()
        .head(gw.url("web", "/big.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());

    // A larger min_size leaves the big document alone too.
    let gw = gateway(backend.addr, "{ type: compress, min_size: 1MiB }").await;
    let (_, headers, _) = fetch(&gw, "/big.json", accept).await;
    assert_eq!(encoding(&headers), None);
}

#[tokio::test]
async fn an_unknown_length_is_encoded_whatever_its_size() {
    let backend = backend().await;
    let gw = gateway(backend.addr, "{ type: compress, levels: { gzip: 9 } }").await;
    let (_, headers, data) = fetch(&gw, "/chunked", Some("gzip")).await;
    assert_eq!(encoding(&headers), Some("gzip"));
    assert_eq!(decoded(&headers, &data), b"hello, world");
}

#[tokio::test]
async fn the_gateways_own_answers_are_encoded_too() {
    let backend = backend().await;
    let gw = gateway(
        backend.addr,
        "{ type: compress, levels: { br: 5, zstd: 19 } }",
    )
    .await;
    for algorithm in ["br", "zstd"] {
        let (status, headers, data) = fetch(&gw, "/direct", Some(algorithm)).await;
        assert_eq!(status, 200);
        assert_eq!(encoding(&headers), Some(algorithm));
        assert_eq!(decoded(&headers, &data), big_json().as_bytes());
    }
}

#[tokio::test]
async fn encoded_answers_are_decoded_for_clients_that_do_not_accept_them() {
    let backend = backend().await;
    let gw = gateway(
        backend.addr,
        "{ type: compress, decompress_for_clients: true }",
    )
    .await;
    let original = big_json();

    // No Accept-Encoding (curl without --compressed): plain.
    let (status, headers, data) = fetch(&gw, "/encoded", None).await;
    assert_eq!(status, 200);
    assert_eq!(encoding(&headers), None);
    assert_eq!(&data[..], original.as_bytes());
    assert!(headers.get("content-length").is_none());
    assert!(varies(&headers));

    // gzip accepted: the upstream's own bytes.
    let (_, headers, data) = fetch(&gw, "/encoded", Some("gzip")).await;
    assert_eq!(encoding(&headers), Some("gzip"));
    assert_eq!(&data[..], &gzip(original.as_bytes())[..]);

    // brotli only: decoded, then encoded again for this client.
    let (_, headers, data) = fetch(&gw, "/encoded", Some("br, gzip;q=0")).await;
    assert_eq!(encoding(&headers), Some("br"));
    assert_eq!(decoded(&headers, &data), original.as_bytes());
}

#[tokio::test]
async fn a_transformed_answer_is_compressed_after_the_transform() {
    let backend = backend().await;
    // Listed after the transform or before, compress runs last.
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[
            ("squeeze", "{ type: compress }"),
            (
                "shape",
                "{ type: transform, response: { set: { added: true } } }",
            ),
        ],
        "",
    ))
    .await;
    let (status, headers, data) = fetch(&gw, "/big.json", Some("gzip")).await;
    assert_eq!(status, 200);
    assert_eq!(encoding(&headers), Some("gzip"));
    let doc: serde_json::Value = serde_json::from_slice(&decoded(&headers, &data)).unwrap();
    assert_eq!(doc["added"], true);
    assert_eq!(doc["items"].as_array().unwrap().len(), 400);
}

async fn post_encoded(
    gw: &TestGateway,
    coding: &str,
    data: Vec<u8>,
) -> (u16, http::HeaderMap, String) {
    let r = client()
        .post(gw.url("web", "/echo"))
        .header("content-type", "text/plain")
        .header("content-encoding", coding)
        .body(data)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

#[tokio::test]
async fn request_bodies_are_decoded_and_bombs_refused() {
    let backend = backend().await;
    let gw = gateway(
        backend.addr,
        "{ type: compress, request: { decompress: true, max_ratio: 50, max_size: 64KiB } }",
    )
    .await;
    let text = "hello from an encoded body ".repeat(20);
    let encoded: [(&str, Vec<u8>); 3] = [
        ("gzip", gzip(text.as_bytes())),
        ("br", {
            let mut out = Vec::new();
            brotli::CompressorWriter::new(&mut out, 4096, 5, 22)
                .write_all(text.as_bytes())
                .unwrap();
            out
        }),
        (
            "zstd",
            zstd::stream::encode_all(text.as_bytes(), 3).unwrap(),
        ),
    ];
    for (coding, data) in encoded {
        let (status, _, body) = post_encoded(&gw, coding, data).await;
        assert_eq!(status, 200, "{coding}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["encoding"], "", "{coding}");
        assert_eq!(v["text"], text.as_str(), "{coding}");
    }

    // A megabyte of zeros in a kilobyte: past the ratio and the size.
    let bomb = gzip(&vec![0u8; 1 << 20]);
    let (status, headers, body) = post_encoded(&gw, "gzip", bomb).await;
    assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &body,
        413,
    );

    let (status, headers, body) = post_encoded(&gw, "deflate", b"x".to_vec()).await;
    assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &body,
        415,
    );
    assert_eq!(headers["accept-encoding"], "zstd, br, gzip");

    let (status, headers, body) = post_encoded(&gw, "gzip", b"not gzip".to_vec()).await;
    assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &body,
        400,
    );
    assert_eq!(
        backend.seen().len(),
        3,
        "only the good bodies reached the upstream"
    );
}

#[test]
fn config_mistakes_are_reported_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - { name: web, address: \"127.0.0.1:0\" }
routes:
  - { name: r, policies: [squeeze], respond: { status: 200 } }
policies:
  squeeze:
    type: compress
    algorithms: [zstd, lzma]
    levels:
      br: 12
    content_types: [\"json\"]
",
    )
    .unwrap();
    let (ok, _, stderr) = run_cli("check", &["-c", file.to_str().unwrap()], "");
    assert!(!ok, "{stderr}");
    let line_of = |needle: &str| -> u32 {
        let line = stderr
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no error containing {needle:?}:\n{stderr}"));
        let rest = line.split("portcullis.yaml:").nth(1).unwrap();
        rest.split(':').next().unwrap().parse().unwrap()
    };
    assert_eq!(line_of("`lzma` is not an algorithm"), 8);
    assert_eq!(line_of("br levels go from 0 to 11"), 10);
    assert_eq!(line_of("`json` is not a media type"), 11);
}
