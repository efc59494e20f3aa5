//! DNS names among targets (issue 3, item 1): each name resolves to one
//! target per address, is resolved again every `dns_refresh`, and addresses
//! that join or leave do not fail requests, in flight or new.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Response;
use portcullis::server::Gateway;
use portcullis::upstream::dns::ResolveFn;

use crate::common::*;

/// A resolver whose answers the test changes while the gateway runs.
#[derive(Clone, Default)]
struct FakeDns(Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>);

impl FakeDns {
    fn set(&self, name: &str, addrs: &[SocketAddr]) {
        self.0
            .lock()
            .unwrap()
            .insert(name.to_string(), addrs.to_vec());
    }

    fn resolver(&self) -> ResolveFn {
        let answers = self.0.clone();
        Arc::new(move |name: String| {
            let answer = answers
                .lock()
                .unwrap()
                .get(&name)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"));
            Box::pin(async move { answer })
        })
    }
}

async fn start(dns: &FakeDns, config: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, config).unwrap();
    let gw = portcullis::gateway::start_with_resolver(path, dns.resolver())
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    (gw, dir)
}

const CONFIG: &str = r#"
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    dns_refresh: 100ms
    targets: [app.test:80]
"#;

#[tokio::test]
async fn a_name_becomes_one_target_per_address() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let dns = FakeDns::default();
    dns.set("app.test:80", &[a.addr, b.addr]);
    let (gw, _dir) = start(&dns, CONFIG).await;
    let url = format!("http://{}/", gw.listener_addr("web").unwrap());
    for _ in 0..10 {
        let (status, _, _) = get(&url).await;
        assert_eq!(status, 200);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (5, 5));
    let admin = format!("http://{}/api/v1/upstreams", gw.admin_addr().unwrap());
    let (_, _, body) = get(&admin).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let targets = v["upstreams"][0]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{body}");
    assert!(targets.iter().all(|t| t["name"] == "app.test:80"), "{body}");
}

#[tokio::test]
async fn addresses_join_and_leave_without_failing_requests() {
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let hits = slow_hits.clone();
    // `a` answers /slow after a pause, to hold a request in flight across a change.
    let a = Backend::start(move |req: http::Request<hyper::body::Incoming>| {
        let hits = hits.clone();
        async move {
            if req.uri().path() == "/slow" {
                hits.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            Response::new(body("a"))
        }
    })
    .await;
    let b = Backend::fixed(200, "b").await;
    let dns = FakeDns::default();
    dns.set("app.test:80", &[a.addr]);
    let (gw, _dir) = start(&dns, CONFIG).await;
    let base = format!("http://{}", gw.listener_addr("web").unwrap());

    let in_flight = tokio::spawn({
        let url = format!("{base}/slow");
        async move { client().get(&url).send().await.map(|r| r.status().as_u16()) }
    });
    assert!(
        eventually(Duration::from_secs(3), || slow_hits.load(Ordering::SeqCst)
            == 1)
        .await
    );

    // b joins.
    dns.set("app.test:80", &[a.addr, b.addr]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.seen().is_empty() && Instant::now() < deadline {
        let (status, _, _) = get(&format!("{base}/")).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b.seen().is_empty(), "the new address never got a request");

    // a leaves while its slow request is still in flight.
    dns.set("app.test:80", &[b.addr]);
    let seen_a = a.seen().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..10 {
        let (status, _, text) = get(&format!("{base}/")).await;
        assert_eq!((status.as_u16(), text.as_str()), (200, "b"));
    }
    assert_eq!(
        a.seen().len(),
        seen_a,
        "a removed address still got requests"
    );
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request failed"
    );
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_previous_addresses() {
    let a = Backend::echo("a").await;
    let dns = FakeDns::default();
    dns.set("app.test:80", &[a.addr]);
    let (gw, _dir) = start(&dns, CONFIG).await;
    dns.0.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (status, _, _) = get(&format!("http://{}/", gw.listener_addr("web").unwrap())).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_unresolvable_name_is_a_config_error_at_its_line() {
    let dns = FakeDns::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let errors = match portcullis::server::Runtime::start_with_resolver(path, dns.resolver()).await
    {
        Ok(_) => panic!("accepted an unresolvable name"),
        Err(e) => e,
    };
    let e = &errors.0[0];
    assert!(
        e.message.contains("cannot resolve `app.test:80`"),
        "{errors}"
    );
    assert_eq!(e.line, 13, "{errors}");
}

#[tokio::test]
async fn localhost_resolves_through_the_system_resolver() {
    let a = Backend::echo("a").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["localhost:{}"]
    retries: {{ attempts: 1, on: [connect_error] }}
"#,
        a.addr.port()
    ))
    .await;
    for _ in 0..4 {
        let (status, _, text) = get(&gw.url("web", "/")).await;
        assert_eq!(status, 200, "{text}");
    }
}
