//! The smallest working configuration, and the demo's configuration.

use crate::common::*;

#[tokio::test]
async fn minimal_config_proxies_a_request() {
    let backend = Backend::echo("only").await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    let (status, headers, text) = get(&gw.url("web", "/hello?x=1")).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["backend"], "only");
    assert_eq!(v["path"], "/hello?x=1");
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn minimal_toml_config_proxies_a_request() {
    let backend = Backend::echo("toml").await;
    let gw = TestGateway::start_named(
        "portcullis.toml",
        &format!(
            r#"
[[listeners]]
name = "web"
address = "127.0.0.1:0"

[[routes]]
name = "all"
upstream = "app"

[[upstreams]]
name = "app"
targets = ["{}"]
"#,
            backend.addr
        ),
    )
    .await;
    let (status, _, text) = get(&gw.url("web", "/")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"toml\""));
}

#[tokio::test]
async fn demo_configuration_is_valid() {
    let a = portcullis::demo::start_backend("a").await.unwrap();
    let b = portcullis::demo::start_backend("b").await.unwrap();
    let c = portcullis::demo::start_backend("c").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The demo's fixed ports are swapped for ephemeral ones so tests can run in parallel.
    let text = portcullis::demo::config(a, b, c, &dir.path().display().to_string())
        .replace(portcullis::demo::GATEWAY, "127.0.0.1:0")
        .replace(portcullis::demo::ADMIN, "127.0.0.1:0");
    let gw = TestGateway::start(&text).await;
    // The API-key route: 401 without a key; acme's 5 a minute, globex's own 20.
    let partners = gw.url("web", "/partners/report");
    assert_eq!(status_with(&partners, &[]).await, 401);
    let [acme, globex] = portcullis::demo::DEMO_KEYS;
    let mut acme_statuses = Vec::new();
    for _ in 0..6 {
        acme_statuses.push(status_with(&partners, &[("x-api-key", acme)]).await);
    }
    assert_eq!(acme_statuses, [200, 200, 200, 200, 200, 429]);
    for _ in 0..6 {
        assert_eq!(status_with(&partners, &[("x-api-key", globex)]).await, 200);
    }
    let (status, _, text) = get(&gw.url("web", "/users/1")).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("users-") || text.contains("\"a\"") || text.contains("\"b\""),
        "{text}"
    );
    let (status, _, text) = get(&gw.url("web", "/ping")).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "pong\n"));
    // The aggregated dashboard: the user, the orders made with the user's
    // answer, and the optional news (nothing listens there) as null.
    let (status, _, text) = get(&gw.url("web", "/dashboard?id=42")).await;
    assert_eq!(status, 200, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["user"]["path"], "/users/42", "{doc}");
    let orders = doc["orders"].as_str().unwrap();
    assert!(orders.starts_with("/orders?for="), "{doc}");
    assert!(orders.ends_with("&limit=5"), "{doc}");
    assert_eq!(doc["news"], serde_json::Value::Null);
    assert_eq!(doc["_errors"][0]["call"], "news", "{doc}");
}

#[tokio::test]
async fn reverse_proxy_example_runs_as_written() {
    let api = Backend::echo("api").await;
    let site = Backend::echo("site").await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let text = std::fs::read_to_string(format!("{root}/reverse-proxy.yaml")).unwrap();
    // Only addresses and the static root change: fixed ports become ephemeral
    // and the example's backends become test backends.
    let text = text
        .replace("127.0.0.1:3000", &api.addr.to_string())
        .replace("127.0.0.1:3001", &site.addr.to_string())
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("root: public", &format!("root: {root}/public"))
        .replace("path: stdout", "path: off");
    let gw = TestGateway::start(&text).await;

    let (status, _, body) = get(&gw.url("web", "/api/users")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["backend"].as_str(), v["path"].as_str()),
        (Some("api"), Some("/users"))
    );
    assert_eq!(v["headers"]["x-gateway"], "portcullis");

    let (status, _, body) = get(&gw.url("web", "/anything")).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"site\""), "{body}");

    let (status, _, body) = get(&gw.url("web", "/assets/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("Static files"), "{body}");

    let (status, _, body) = get(&gw.url("web", "/healthz")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
}
