//! Balancing: each `balance` algorithm's shares over weighted backends,
//! least_connections and p2c_ewma steering away from a slow backend,
//! consistent_hash and ip_hash keeping a key (or a client) on one backend,
//! and consistent_hash moving about 1/N of the keys when one of N targets is
//! removed by a reload, and restoring them when it comes back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::common::*;

/// Backends tagged by name, in the order given.
async fn backends(names: &[&'static str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for name in names {
        out.push(Backend::fixed(200, name).await);
    }
    out
}

/// A backend that answers `name` after `delay`.
async fn delayed(name: &'static str, delay: Duration) -> Backend {
    Backend::start(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(body(name))
    })
    .await
}

/// A config with an admin listener, listener `web`, one catch-all route to
/// upstream `app` balancing with `balance` over `targets` (address, weight).
fn config(balance: &str, extra: &str, targets: &[(SocketAddr, u32)]) -> String {
    let targets: String = targets
        .iter()
        .map(|(a, w)| format!("      - {{ address: \"{a}\", weight: {w} }}\n"))
        .collect();
    format!(
        r#"
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: r
    upstream: app
upstreams:
  - name: app
    balance: {balance}
{extra}    targets:
{targets}"#
    )
}

/// `backends` paired with `weights`.
fn weighted(backends: &[Backend], weights: &[u32]) -> Vec<(SocketAddr, u32)> {
    backends
        .iter()
        .map(|b| b.addr)
        .zip(weights.iter().copied())
        .collect()
}

/// The name of the backend that answered a GET of `url` with `headers`.
async fn answer(client: &reqwest::Client, url: &str, headers: &[(&str, String)]) -> String {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Sends `n` GETs to `url`, `concurrency` at a time; answers per backend.
async fn tally(url: &str, n: usize, concurrency: usize) -> HashMap<String, usize> {
    let client = client();
    let answers: Vec<String> = stream::iter(0..n)
        .map(|_| answer(&client, url, &[]))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut counts = HashMap::new();
    for a in answers {
        *counts.entry(a).or_insert(0) += 1;
    }
    counts
}

/// Asserts that each backend's share of `counts` is within `tolerance`
/// (absolute, as a fraction of all requests) of its weight's share.
fn assert_shares(counts: &HashMap<String, usize>, weights: &[(&str, u32)], tolerance: f64) {
    let total: usize = counts.values().sum();
    let weight_sum: u32 = weights.iter().map(|(_, w)| w).sum();
    for (name, w) in weights {
        let share = counts.get(*name).copied().unwrap_or(0) as f64 / total as f64;
        let expected = f64::from(*w) / f64::from(weight_sum);
        assert!(
            (share - expected).abs() <= tolerance,
            "{name}: share {share:.3}, expected {expected:.3} ± {tolerance} ({counts:?})"
        );
    }
}

const NAMES: [&str; 3] = ["a", "b", "c"];
const WEIGHTS: [u32; 3] = [5, 3, 2];

/// Starts three backends weighted 5/3/2 behind `balance` with `extra` lines.
async fn weighted_gateway(balance: &str, extra: &str) -> (Vec<Backend>, TestGateway) {
    let b = backends(&NAMES).await;
    let gw = TestGateway::start(&config(balance, extra, &weighted(&b, &WEIGHTS))).await;
    (b, gw)
}

fn expected() -> Vec<(&'static str, u32)> {
    NAMES.into_iter().zip(WEIGHTS).collect()
}

#[tokio::test]
async fn round_robin_follows_weights() {
    // One shared smooth sequence: 1000 requests split exactly 500/300/200
    // whatever the concurrency; tolerance 1 point.
    let (_b, gw) = weighted_gateway("round_robin", "").await;
    let counts = tally(&gw.url("web", "/"), 1000, 8).await;
    assert_shares(&counts, &expected(), 0.01);
}

#[tokio::test]
async fn random_follows_weights() {
    // 1000 independent draws: a share's standard deviation is at most 1.6
    // points; tolerance 6 points (over 3.7 deviations).
    let (_b, gw) = weighted_gateway("random", "").await;
    let counts = tally(&gw.url("web", "/"), 1000, 8).await;
    assert_shares(&counts, &expected(), 0.06);
}

#[tokio::test]
async fn least_connections_follows_weights_under_light_load() {
    // One request at a time: every backend is idle at each pick, so the
    // weighted tie-break decides. 1000 requests; tolerance 6 points.
    let (_b, gw) = weighted_gateway("least_connections", "").await;
    let counts = tally(&gw.url("web", "/"), 1000, 1).await;
    assert_shares(&counts, &expected(), 0.06);
}

#[tokio::test]
async fn p2c_ewma_follows_weights_over_equal_backends() {
    // Backends that all take 5 ms, 8 requests at a time: latencies compare
    // as equal (within an eighth), so weighted draws and in-flight / weight
    // decide. 1000 requests; tolerance 8 points, as timer jitter still tips
    // some comparisons.
    let mut b = Vec::new();
    for name in NAMES {
        b.push(delayed(name, Duration::from_millis(5)).await);
    }
    let gw = TestGateway::start(&config("p2c_ewma", "", &weighted(&b, &WEIGHTS))).await;
    let counts = tally(&gw.url("web", "/"), 1000, 8).await;
    assert_shares(&counts, &expected(), 0.08);
}

#[tokio::test]
async fn consistent_hash_follows_weights_over_many_keys() {
    // 1000 distinct users: table shares match weights within half a point,
    // key sampling adds a standard deviation of at most 1.6 points;
    // tolerance 6 points.
    let (_b, gw) = weighted_gateway("consistent_hash", "    hash_key: header:x-user\n").await;
    let client = client();
    let url = gw.url("web", "/");
    let answers: Vec<String> = stream::iter(0..1000)
        .map(|i| {
            let (client, url) = (&client, &url);
            async move { answer(client, url, &[("x-user", format!("user-{i}"))]).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut counts = HashMap::new();
    for a in answers {
        *counts.entry(a).or_insert(0) += 1;
    }
    assert_shares(&counts, &expected(), 0.06);
}

#[tokio::test]
async fn consistent_hash_sends_a_user_to_the_same_backend() {
    let b = backends(&NAMES).await;
    let gw = TestGateway::start(&config(
        "consistent_hash",
        "    hash_key: header:x-user\n",
        &weighted(&b, &[1, 1, 1]),
    ))
    .await;
    let client = client();
    let url = gw.url("web", "/some/path");
    let mut used = std::collections::HashSet::new();
    for i in 0..60 {
        let user = [("x-user", format!("user-{i}"))];
        let first = answer(&client, &url, &user).await;
        for _ in 0..3 {
            assert_eq!(answer(&client, &url, &user).await, first, "user-{i}");
        }
        used.insert(first);
    }
    // 60 users over three equal backends: all three get some.
    assert_eq!(used.len(), 3, "{used:?}");
}

/// Each user's backend, `users` of them, 8 requests at a time.
async fn assignment(url: &str, users: usize) -> Vec<String> {
    let client = client();
    stream::iter(0..users)
        .map(|i| {
            let client = &client;
            async move { answer(client, url, &[("x-user", format!("user-{i}"))]).await }
        })
        .buffered(8)
        .collect()
        .await
}

#[tokio::test]
async fn consistent_hash_moves_about_one_nth_when_a_target_goes_and_restores_when_it_returns() {
    let names = ["n0", "n1", "n2", "n3", "n4"];
    let b = backends(&names).await;
    let all = weighted(&b, &[1; 5]);
    let extra = "    hash_key: header:x-user\n";
    let gw = TestGateway::start(&config("consistent_hash", extra, &all)).await;
    let url = gw.url("web", "/");
    let users = 500;
    let before = assignment(&url, users).await;

    // Remove the middle target (not the last: positions must not matter).
    let mut four = all.clone();
    four.remove(2);
    gw.write_config(&config("consistent_hash", extra, &four));
    reload_ok(&gw).await;
    let after = assignment(&url, users).await;
    assert!(after.iter().all(|a| a != "n2"));
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    let on_removed = before.iter().filter(|a| *a == "n2").count();
    // Every key of the removed target moves; of the other keys at most 4%
    // (Maglev's small extra churn). In all, about 1/5: its share of 500 keys
    // has a standard deviation of 1.8 points.
    let stayers_moved = moved - on_removed;
    assert!(
        stayers_moved * 100 <= 4 * (users - on_removed),
        "{stayers_moved} keys moved between remaining targets"
    );
    let fraction = moved as f64 / users as f64;
    assert!((0.13..=0.29).contains(&fraction), "moved {fraction:.3}");

    // Put it back: every user returns to its first backend.
    gw.write_config(&config("consistent_hash", extra, &all));
    reload_ok(&gw).await;
    assert_eq!(assignment(&url, users).await, before);
}

/// The body of a GET / to `addr` over a new connection from `ip` (any
/// 127/8 address works on loopback).
async fn get_from(ip: IpAddr, addr: SocketAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "gateway.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn ip_hash_sticks_a_client_to_one_backend_and_spreads_clients_by_weight() {
    // 600 client addresses, each sending 3 requests on new connections
    // that must all reach one backend; shares of clients within 8 points of
    // the weights (a standard deviation of at most 2 points).
    let (_b, gw) = weighted_gateway("ip_hash", "").await;
    let addr = gw.addr("web");
    let answers: Vec<String> = stream::iter(0..600u32)
        .map(|i| async move {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8));
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(get_from(ip, addr).await);
            }
            assert!(seen.iter().all(|s| *s == seen[0]), "{ip}: {seen:?}");
            seen.swap_remove(0)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut counts = HashMap::new();
    for a in answers {
        *counts.entry(a).or_insert(0) += 1;
    }
    assert_shares(&counts, &expected(), 0.08);
}

/// Runs 240 requests 8 at a time against `balance` over two prompt backends
/// and one that answers after 200 ms; returns the slow one's count.
async fn requests_to_slow_backend(balance: &str) -> usize {
    let fast = backends(&["fast1", "fast2"]).await;
    let slow = delayed("slow", Duration::from_millis(200)).await;
    let targets = vec![(fast[0].addr, 1), (slow.addr, 1), (fast[1].addr, 1)];
    let gw = TestGateway::start(&config(balance, "", &targets)).await;
    let counts = tally(&gw.url("web", "/"), 240, 8).await;
    assert_eq!(counts.values().sum::<usize>(), 240);
    counts.get("slow").copied().unwrap_or(0)
}

#[tokio::test]
async fn least_connections_steers_away_from_a_slow_backend() {
    // A fair share would be 80 of 240; requests pile up on the slow one, so
    // it must get under a sixth (40).
    let slow = requests_to_slow_backend("least_connections").await;
    assert!(slow < 40, "slow backend got {slow} of 240");
}

#[tokio::test]
async fn p2c_ewma_steers_away_from_a_slow_backend() {
    // A fair share would be 80 of 240; the slow one must get under a sixth.
    let slow = requests_to_slow_backend("p2c_ewma").await;
    assert!(slow < 40, "slow backend got {slow} of 240");
}
