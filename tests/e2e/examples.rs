//! The configurations in `examples/` run as written: each test reads the file,
//! swaps only its fixed addresses (backends become test backends, listeners
//! take ephemeral ports) and checks every part the file's comments promise.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// Replaces every `127.0.0.1:PORT` in `text` by `swaps[PORT]`, reading each
/// port number whole (so `:5432` never matches inside `:54321`, whatever
/// ephemeral ports the test backends got). Panics on a fixed address that
/// `swaps` does not cover, so a new part of the example cannot go untested.
fn swap_addresses(text: &str, swaps: &HashMap<u16, String>) -> String {
    const HOST: &str = "127.0.0.1:";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(HOST) {
        out.push_str(&rest[..at]);
        let after = &rest[at + HOST.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(port) = after[..digits].parse::<u16>() else {
            // Prose, such as "all on 127.0.0.1:" in a comment.
            out.push_str(HOST);
            rest = after;
            continue;
        };
        let swapped = swaps.get(&port).unwrap_or_else(|| {
            panic!("the example uses {HOST}{port}, which the test does not swap")
        });
        out.push_str(swapped);
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// A TCP server that answers each connection with `{tag}:` and then echoes
/// every byte back, closing its side after the client's half-close.
async fn tagged_tcp_echo(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                // Health checks connect and close at once: errors are fine.
                if w.write_all(format!("{tag}:").as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `data` on a new connection to `addr`, half-closes, and returns
/// everything read back until the relay closes.
async fn tcp_round_trip(addr: SocketAddr, data: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the TCP relay did not close")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// GET `path` on listener `web` (with an `x-user-id` when given); the echo
/// backend's name and the path it saw.
async fn served_by(
    client: &reqwest::Client,
    gw: &TestGateway,
    path: &str,
    user: Option<&str>,
) -> (String, String) {
    let mut req = client.get(gw.url("web", path));
    if let Some(user) = user {
        req = req.header("x-user-id", user);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["backend"].as_str().unwrap().to_string(),
        v["path"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn load_balancer_example_runs_as_written() {
    let (a, b, c) = (
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    );
    let canary = Backend::echo("canary").await;
    let (replica1, replica2) = (tagged_tcp_echo("r1").await, tagged_tcp_echo("r2").await);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let text = std::fs::read_to_string(format!("{root}/load-balancer.yaml")).unwrap();
    // Only addresses change: the application servers, the canary and the
    // replicas become test servers; listeners take ephemeral ports.
    let swaps: HashMap<u16, String> = [
        (3001, a.addr.to_string()),
        (3002, b.addr.to_string()),
        (3003, c.addr.to_string()),
        (3004, canary.addr.to_string()),
        (5432, replica1.to_string()),
        (5433, replica2.to_string()),
        (8080, "127.0.0.1:0".to_string()),
        (6432, "127.0.0.1:0".to_string()),
        (9901, "127.0.0.1:0".to_string()),
    ]
    .into_iter()
    .collect();
    let text = swap_addresses(&text, &swaps);
    let gw = TestGateway::start(&text).await;
    let client = client();

    // Balanced: one request at a time, every target idle, so least_connections
    // breaks ties by weight (2/1/1): 300 requests reach all three, the
    // weight-2 target most (expected 150/75/75, standard deviations under 9).
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let (backend, _) = served_by(&client, &gw, "/orders", None).await;
        *counts.entry(backend).or_default() += 1;
    }
    let (na, nb, nc) = (counts["a"], counts["b"], counts["c"]);
    assert!(na > nb && na > nc && nb > 0 && nc > 0, "{counts:?}");
    assert_eq!(na + nb + nc, 300, "only the stable targets: {counts:?}");

    // Sticky: each user stays on one server; many users spread over several.
    let mut homes: HashMap<String, String> = HashMap::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        for _ in 0..4 {
            let (backend, path) = served_by(&client, &gw, "/account/cart", Some(&user)).await;
            assert_eq!(path, "/account/cart");
            assert!(["a", "b", "c"].contains(&backend.as_str()), "{backend}");
            let home = homes.entry(user.clone()).or_insert_with(|| backend.clone());
            assert_eq!(*home, backend, "{user} moved");
        }
    }
    let used: HashSet<&String> = homes.values().collect();
    assert!(used.len() >= 2, "30 users all on {used:?}");

    // Canary split 90/10: 400 checkouts reach both upstreams, the canary
    // about a tenth of them (40; the bounds hold even for independent draws,
    // whose standard deviation is 6).
    let (mut stable, mut to_canary) = (0, 0);
    for _ in 0..400 {
        match served_by(&client, &gw, "/checkout/pay", None)
            .await
            .0
            .as_str()
        {
            "canary" => to_canary += 1,
            _ => stable += 1,
        }
    }
    assert!((20..=60).contains(&to_canary), "canary {to_canary} of 400");
    assert_eq!(stable + to_canary, 400);
    // The canary sees checkouts only (and health checks).
    assert!(canary.seen().iter().all(|s| {
        s.uri.starts_with("/checkout")
            || s.headers.get("user-agent").and_then(|v| v.to_str().ok())
                == Some("portcullis-health-check")
    }));

    // TCP: bytes are relayed both ways, and connections reach both replicas.
    let mut replicas = HashSet::new();
    for i in 0..20 {
        let msg = format!("SELECT {i};");
        let reply = tcp_round_trip(gw.addr("db"), msg.as_bytes()).await;
        let (tag, echoed) = reply.split_once(':').unwrap_or(("", ""));
        assert_eq!(echoed, msg, "{reply}");
        replicas.insert(tag.to_string());
    }
    assert_eq!(
        replicas,
        HashSet::from(["r1".to_string(), "r2".to_string()]),
        "20 connections"
    );

    // The admin API lists every upstream of the file.
    let (status, _, body) = get(&gw.admin_url("/api/v1/upstreams")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<&str> = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["app", "app-canary", "app-sticky", "db"], "{v}");
}

/// A token from examples/mint-token.py, the way the example's comments say.
fn minted_token(sub: &str, scope: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mint-token.py");
    let out = std::process::Command::new("python3")
        .args([script, sub, "--scope", scope])
        .output()
        .expect("python3 must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn api_gateway_example_runs_as_written() {
    let orders = Backend::echo("orders").await;
    let catalog = Backend::echo("catalog").await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let text = std::fs::read_to_string(format!("{root}/api-gateway.yaml")).unwrap();
    let swaps: HashMap<u16, String> = [
        (3000, orders.addr.to_string()),
        (3001, catalog.addr.to_string()),
        (8080, "127.0.0.1:0".to_string()),
        (9901, "127.0.0.1:0".to_string()),
    ]
    .into_iter()
    .collect();
    // The test's config file lives in a temp dir: the description is
    // named by its place in examples/.
    let text = text.replace("spec: specs/", &format!("spec: {root}/specs/"));
    let gw = TestGateway::start(&swap_addresses(&text, &swaps)).await;
    let client = client();
    let url = |path: &str| gw.url("api", path);

    // Orders: no token, 401; a token without the scope, 403; with it, 200
    // and the user's identity upstream in place of the client's own.
    let r = client.get(url("/v1/orders/42")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let bob = minted_token("bob", "profile");
    let r = client
        .get(url("/v1/orders/42"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let alice = minted_token("alice", "orders:read");
    let r = client
        .get(url("/v1/orders/42"))
        .bearer_auth(&alice)
        .header("x-user-id", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(orders.seen()[0].headers["x-user-id"], "alice");

    // Per user: a burst of 10 (one used above), then 429; another user
    // still gets through.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = client
            .get(url("/v1/orders"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    let carol = minted_token("carol", "orders:read");
    let r = client
        .get(url("/v1/orders"))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Partners: an API key of a consumer in the partners group; the key
    // never reaches the catalogue, the consumer does.
    assert_eq!(status_with(&url("/v1/partners/stock"), &[]).await, 401);
    assert_eq!(
        status_with(
            &url("/v1/partners/stock"),
            &[("x-api-key", "initech-example-key")]
        )
        .await,
        403
    );
    let r = client
        .get(url("/v1/partners/stock"))
        .header("x-api-key", "acme-example-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"per-partner\";q=100;w=60"
    );
    let seen = catalog.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.headers["x-consumer"], "acme");
    assert_eq!(last.headers["x-consumer-groups"], "partners");
    assert!(!last.headers.contains_key("x-api-key"));
    // The catalogue's JSON answer, trimmed and stamped for the partner.
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["backend"], "catalog");
    assert_eq!(v["served_to"], "acme");
    // A preflight from the partners' web app is the gateway's to answer.
    let r = client
        .request(http::Method::OPTIONS, url("/v1/partners/stock"))
        .header("origin", "https://app.partners.example.com")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.partners.example.com"
    );
    assert_eq!(
        catalog.seen().len(),
        seen.len(),
        "preflights stay at the gateway"
    );

    // Orders are checked against examples/specs/orders.yaml: a path
    // parameter of the wrong type, a body that breaks the schema, a
    // method the description does not have.
    let dave = minted_token("dave", "orders:read");
    let seen_before = orders.seen().len();
    let (status, headers, text) = {
        let r = client
            .get(url("/v1/orders/abc"))
            .bearer_auth(&dave)
            .send()
            .await
            .unwrap();
        (r.status(), r.headers().clone(), r.text().await.unwrap())
    };
    let v = assert_problem(status, &headers, &text, 400);
    assert!(text.contains("orderId"), "{v}");
    let r = client
        .post(url("/v1/orders"))
        .bearer_auth(&dave)
        .header("content-type", "application/json")
        .body(r#"{"lines": "many"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(v["errors"].as_array().unwrap().len() >= 2, "{v}");
    let r = client
        .put(url("/v1/orders/42"))
        .bearer_auth(&dave)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("PATCH"));
    assert_eq!(
        orders.seen().len(),
        seen_before,
        "refused requests never reach the service"
    );

    // The summary: one request, the orders and catalogue services called
    // in parallel with the token's subject, one JSON answer.
    let r = client
        .get(url("/v1/me/summary"))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["orders"]["backend"], "orders", "{v}");
    assert_eq!(v["orders"]["path"], "/orders?user=carol&limit=5", "{v}");
    assert_eq!(v["picks"]["path"], "/recommendations?for=carol", "{v}");
    assert_eq!(
        status_with(&url("/v1/me/summary"), &[]).await,
        401,
        "the calls need the token too"
    );

    // Reports: basic auth against the consumer's argon2id hash.
    let r = client.get(url("/v1/reports/daily")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"staff\", charset=\"UTF-8\""
    );
    let r = client
        .get(url("/v1/reports/daily"))
        .basic_auth("ops", Some("staff-example-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = orders.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.headers["x-consumer"], "ops");
    assert!(!last.headers.contains_key("authorization"));

    // Catalogue: public, 20 at once per address, then 429.
    let mut passed = 0;
    for _ in 0..40 {
        if client
            .get(url("/v1/catalog/books"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            passed += 1;
        }
    }
    // 20 at once, plus whatever the 10/s refill added during the loop.
    assert!((20..40).contains(&passed), "{passed} of 40");

    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    for line in [
        r#"portcullis_auth_failures_total{route="orders",policy="jwt-auth",reason="missing"} 1"#,
        r#"portcullis_auth_failures_total{route="orders",policy="jwt-auth",reason="claims"} 1"#,
        r#"portcullis_rate_limited_total{route="orders",policy="per-user"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}
