//! The policy phases end to end: requests through a real gateway whose
//! routes carry `probe` policies (unit tests only) that record what the
//! pipeline asks of them. See [`crate::policy`] for the rules tested here.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::policy::probe::events;
use crate::server::Gateway;

/// A gateway from `config` (YAML), with the directory holding its file.
async fn gateway(config: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, config).unwrap();
    match crate::gateway::start(path).await {
        Ok(g) => (g, dir),
        Err(e) => panic!("gateway did not start: {e}\n{config}"),
    }
}

/// A config with listener `web` and one route `r` (`action` in YAML flow
/// style, such as `respond: { body: hi }`) carrying `policies` in that
/// order; each policy is `(name, fields)` of a probe tagged `tag`.
fn config(tag: &str, action: &str, policies: &[(&str, &str)]) -> String {
    let names: Vec<&str> = policies.iter().map(|(n, _)| *n).collect();
    let defs: String = policies
        .iter()
        .map(|(n, fields)| format!("  {n}: {{ type: probe, tag: {tag}, {fields} }}\n"))
        .collect();
    format!(
        "listeners:\n  - {{ name: web, address: \"127.0.0.1:0\" }}\n\
         routes:\n  - {{ name: r, policies: [{}], {action} }}\n\
         policies:\n{defs}",
        names.join(", ")
    )
}

/// Sends `method path` with `body` and returns the status and body text.
async fn send(gw: &Gateway, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = format!("http://{}{path}", gw.listener_addr("web").unwrap());
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let resp = reqwest::Client::new()
        .request(method, url)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The events of `tag` once `n` have arrived (log hooks run after the
/// last byte, which can be a moment after the client has it).
async fn settled(tag: &str, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let seen = events(tag);
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    events(tag)
}

#[tokio::test]
async fn every_phase_runs_in_its_order_on_the_way_in_and_on_the_way_back() {
    let (gw, _dir) = gateway(&config(
        "order",
        "respond: { body: hello }",
        // Listed out of order on purpose.
        &[
            (
                "transform",
                "phase: RequestTransform, response_phase: Compress, logs: true",
            ),
            (
                "cache",
                "phase: CacheLookup, response_phase: CacheStore, logs: true",
            ),
            ("auth", "phase: Authenticate, logs: true"),
            (
                "cors",
                "phase: Filter, response_phase: ResponseTransform, logs: true",
            ),
            (
                "shape",
                "phase: Filter, response_phase: ResponseTransform, logs: true",
            ),
        ],
    ))
    .await;
    assert_eq!(send(&gw, "GET", "/", "").await, (200, "hello".into()));
    assert_eq!(
        settled("order", 14).await,
        [
            // In: by phase, list order within one.
            "cors:request",
            "shape:request",
            "auth:request",
            "cache:request",
            "transform:request",
            // Back: response transform (the later of the two first), cache
            // store, compress.
            "shape:response 200",
            "cors:response 200",
            "cache:response 200",
            "transform:response 200",
            // After the last byte: in request order.
            "cors:log 200 5 complete",
            "shape:log 200 5 complete",
            "auth:log 200 5 complete",
            "cache:log 200 5 complete",
            "transform:log 200 5 complete",
        ]
    );
}

#[tokio::test]
async fn an_early_answer_goes_back_through_the_policies_that_ran_and_no_others() {
    let (gw, _dir) = gateway(&config(
        "early",
        "respond: { body: never }",
        &[
            (
                "limit",
                "phase: RateLimit, response_phase: Compress, logs: true",
            ),
            (
                "auth",
                "phase: Authenticate, answer: 401, response_phase: ResponseTransform, logs: true",
            ),
            (
                "cors",
                "phase: Filter, response_phase: ResponseTransform, logs: true",
            ),
        ],
    ))
    .await;
    let (status, body) = send(&gw, "GET", "/", "").await;
    assert_eq!(status, 401, "{body}");
    let seen = settled("early", 6).await;
    assert_eq!(
        seen[..4],
        [
            "cors:request",
            "auth:request",
            "auth:response 401",
            "cors:response 401",
        ]
    );
    assert!(seen[4].starts_with("cors:log 401 "), "{seen:?}");
    assert!(seen[5].starts_with("auth:log 401 "), "{seen:?}");
    assert_eq!(
        seen.len(),
        6,
        "the rate limit, which never ran, was called: {seen:?}"
    );
}

#[tokio::test]
async fn a_failed_upstream_calls_the_error_hook_with_why_and_its_502_passes_back() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = config(
        "error",
        "upstream: gone",
        &[("cors", "phase: Filter, response_phase: ResponseTransform")],
    );
    cfg.push_str(&format!(
        "upstreams:\n  - {{ name: gone, targets: [\"{dead}\"] }}\n"
    ));
    let (gw, _dir) = gateway(&cfg).await;
    let (status, _) = send(&gw, "GET", "/", "").await;
    assert_eq!(status, 502);
    assert_eq!(
        settled("error", 3).await,
        [
            "cors:request",
            "cors:error connect_failed",
            "cors:response 502"
        ]
    );
}

#[tokio::test]
async fn a_request_no_route_takes_meets_no_policy() {
    let mut cfg = config(
        "unrouted",
        "respond: { body: hi }",
        &[("cors", "phase: Filter, response_phase: ResponseTransform")],
    );
    cfg = cfg.replace("name: r, ", "name: r, match: { path: /only }, ");
    let (gw, _dir) = gateway(&cfg).await;
    assert_eq!(send(&gw, "GET", "/elsewhere", "").await.0, 404);
    assert_eq!(send(&gw, "GET", "/only", "").await.0, 200);
    assert_eq!(
        settled("unrouted", 2).await,
        ["cors:request", "cors:response 200"]
    );
}

/// A backend that answers one request with a chunked body of `chunks`,
/// each written and flushed on its own.
async fn chunked_backend(chunks: Vec<String>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        for c in chunks {
            let _ = s
                .write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
                .await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    });
    addr
}

#[tokio::test]
async fn a_body_wrapper_sees_every_byte_in_order_and_the_client_gets_what_it_made() {
    let chunks: Vec<String> = (0..50).map(|i| format!("part-{i:02};")).collect();
    let backend = chunked_backend(chunks.clone()).await;
    let mut cfg = config(
        "wrap",
        "upstream: app",
        &[(
            "upper",
            "phase: Filter, response_phase: ResponseTransform, wrap: true",
        )],
    );
    cfg.push_str(&format!(
        "upstreams:\n  - {{ name: app, targets: [\"{backend}\"] }}\n"
    ));
    let (gw, _dir) = gateway(&cfg).await;
    let (status, body) = send(&gw, "GET", "/", "").await;
    assert_eq!(status, 200);
    let whole: String = chunks.concat();
    assert_eq!(body, whole.to_ascii_uppercase());
    let seen: String = events("wrap")
        .iter()
        .filter_map(|e| e.strip_prefix("upper:chunk "))
        .collect();
    assert_eq!(seen, whole, "the wrapper missed or reordered bytes");
}

#[tokio::test]
async fn a_buffering_policy_answers_413_past_its_limit_and_passes_smaller_bodies_whole() {
    let (gw, _dir) = gateway(&config(
        "buffer",
        "respond: { body: took }",
        &[(
            "reader",
            "phase: Validate, buffer_request: 10, response_phase: ResponseTransform",
        )],
    ))
    .await;
    assert_eq!(send(&gw, "POST", "/", "12345").await, (200, "took".into()));
    let (status, body) = send(&gw, "POST", "/", "12345678901").await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("problem") || body.contains("413"), "{body}");
    assert_eq!(
        settled("buffer", 5).await,
        [
            "reader:request",
            "reader:buffered 5",
            "reader:response 200",
            "reader:request",
            "reader:response 413",
        ]
    );
}

#[tokio::test]
async fn a_response_phase_may_read_the_whole_body_and_replace_it() {
    let (gw, _dir) = gateway(&config(
        "replace",
        "respond: { body: twelve bytes }",
        &[(
            "counter",
            "phase: Filter, response_phase: ResponseTransform, buffer_response: true, logs: true",
        )],
    ))
    .await;
    assert_eq!(send(&gw, "GET", "/", "").await, (200, "12 bytes".into()));
    assert_eq!(
        settled("replace", 3).await,
        [
            "counter:request",
            "counter:response 200",
            "counter:log 200 8 complete"
        ]
    );
}
