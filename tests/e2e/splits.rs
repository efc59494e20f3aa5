//! Route `split`: shares follow the weights within a few points over a
//! thousand requests, a share of weight 0 gets nothing, a split naming an
//! unknown upstream is a configuration error with a did-you-mean, and the
//! admin API lists the upstreams of a split.

use std::collections::HashMap;

use futures_util::{StreamExt, stream};

use crate::common::*;

/// A config with an admin listener, listener `web` and one catch-all route
/// `canary` splitting over `shares` (upstream name, weight); every upstream
/// named in `shares` gets the matching backend of `backends`.
fn split_config(shares: &[(&str, u32)], backends: &[&Backend]) -> String {
    let split: String = shares
        .iter()
        .map(|(name, w)| format!("      - {{ upstream: {name}, weight: {w} }}\n"))
        .collect();
    let upstreams: String = shares
        .iter()
        .zip(backends)
        .map(|((name, _), b)| format!("  - name: {name}\n    targets: [\"{}\"]\n", b.addr))
        .collect();
    format!(
        "\
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: canary
    split:
{split}upstreams:
{upstreams}"
    )
}

/// Backends answering their own name.
async fn named(names: &[&'static str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for name in names {
        out.push(Backend::fixed(200, name).await);
    }
    out
}

/// Sends `n` GETs to `url`, 8 at a time; answers per backend name.
async fn tally(url: &str, n: usize) -> HashMap<String, usize> {
    let client = client();
    let answers: Vec<String> = stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            async move {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.text().await.unwrap()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut counts = HashMap::new();
    for a in answers {
        *counts.entry(a).or_insert(0) += 1;
    }
    counts
}

/// Asserts each share of `counts` is within `points` percentage points of
/// its weight's share.
fn assert_shares(counts: &HashMap<String, usize>, weights: &[(&str, u32)], points: f64) {
    let total: usize = counts.values().sum();
    let weight_sum: u32 = weights.iter().map(|(_, w)| w).sum();
    for (name, w) in weights {
        let got = 100.0 * counts.get(*name).copied().unwrap_or(0) as f64 / total as f64;
        let want = 100.0 * f64::from(*w) / f64::from(weight_sum);
        assert!(
            (got - want).abs() <= points,
            "{name}: {got:.1}% of {total}, expected {want:.1}% ± {points} points ({counts:?})"
        );
    }
}

#[tokio::test]
async fn a_90_10_split_holds_within_3_points_over_1000_requests() {
    let b = named(&["stable", "next"]).await;
    let shares = [("stable", 90), ("next", 10)];
    let gw = TestGateway::start(&split_config(&shares, &[&b[0], &b[1]])).await;
    let counts = tally(&gw.url("web", "/"), 1000).await;
    assert_eq!(counts.values().sum::<usize>(), 1000, "{counts:?}");
    assert_shares(&counts, &shares, 3.0);
}

#[tokio::test]
async fn a_three_way_50_30_20_split_holds_within_3_points_over_1000_requests() {
    let b = named(&["v1", "v2", "v3"]).await;
    let shares = [("v1", 50), ("v2", 30), ("v3", 20)];
    let gw = TestGateway::start(&split_config(&shares, &[&b[0], &b[1], &b[2]])).await;
    let counts = tally(&gw.url("web", "/"), 1000).await;
    assert_eq!(counts.values().sum::<usize>(), 1000, "{counts:?}");
    assert_shares(&counts, &shares, 3.0);
}

#[tokio::test]
async fn a_share_of_weight_0_gets_nothing() {
    // The weight-0 share sits between the others, so it cannot be the
    // remainder of a cumulative range either.
    let b = named(&["left", "off", "right"]).await;
    let shares = [("left", 1), ("off", 0), ("right", 1)];
    let gw = TestGateway::start(&split_config(&shares, &[&b[0], &b[1], &b[2]])).await;
    let counts = tally(&gw.url("web", "/"), 400).await;
    assert_eq!(counts.get("off"), None, "{counts:?}");
    assert!(b[1].seen().is_empty(), "the weight-0 backend was asked");
    assert_shares(&counts, &shares, 3.0);
}

/// `Runtime::check` on `config` written to a temp file: the errors as
/// printed, with the file's path.
async fn check_errors(config: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, config).unwrap();
    let errors = match portcullis::server::Runtime::check(path.clone()).await {
        Ok(_) => panic!("accepted:\n{config}"),
        Err(e) => e.to_string(),
    };
    (errors, path.display().to_string())
}

#[tokio::test]
async fn a_split_naming_an_unknown_upstream_is_a_config_error_with_a_did_you_mean() {
    let config = "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: canary
    split:
      - { upstream: orders, weight: 90 }
      - { upstream: order-next, weight: 10 }
upstreams:
  - name: orders
    targets: [127.0.0.1:1]
  - name: orders-next
    targets: [127.0.0.1:2]
";
    let (errors, path) = check_errors(config).await;
    // Line 8 is the share naming `order-next`.
    assert!(errors.contains(&format!("{path}:8:")), "{errors}");
    assert!(
        errors.contains("upstream `order-next` is not defined"),
        "{errors}"
    );
    assert!(errors.contains("did you mean `orders-next`?"), "{errors}");

    // Every share at weight 0 is refused too.
    let config = "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: canary
    split:
      - { upstream: api-v1, weight: 0 }
upstreams:
  - name: api-v1
    targets: [127.0.0.1:1]
";
    let (errors, _) = check_errors(config).await;
    assert!(
        errors.contains("a split needs at least one share with a weight above 0"),
        "{errors}"
    );
}

#[tokio::test]
async fn the_admin_api_lists_the_upstreams_of_a_split() {
    let b = named(&["stable", "next"]).await;
    let gw = TestGateway::start(&split_config(
        &[("stable", 90), ("next", 10)],
        &[&b[0], &b[1]],
    ))
    .await;
    let (status, _, text) = get(&gw.admin_url("/api/v1/routes")).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let route = &v["listeners"][0]["routes"][0];
    assert_eq!(route["name"], "canary", "{v}");
    assert_eq!(
        route["action"]["split"],
        serde_json::json!(["stable", "next"]),
        "{v}"
    );
}

/// Sends `n` GETs to `url` one after another; the answering backend of each, in order.
async fn sequence(url: &str, n: usize) -> Vec<String> {
    let client = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        out.push(r.text().await.unwrap());
    }
    out
}

#[tokio::test]
async fn split_shares_hold_over_every_window_of_1000_requests() {
    // docs/configuration.md: "shares hold within a few percent over any
    // thousand requests". 6/4 is 3/2 written differently, and must split the
    // same way: every window of 1000 consecutive requests within 3 points.
    let b = named(&["six", "four"]).await;
    let shares = [("six", 6), ("four", 4)];
    let gw = TestGateway::start(&split_config(&shares, &[&b[0], &b[1]])).await;
    let picks = sequence(&gw.url("web", "/"), 2200).await;
    for start in 0..=picks.len() - 1000 {
        let mut counts = HashMap::new();
        for p in &picks[start..start + 1000] {
            *counts.entry(p.clone()).or_insert(0) += 1;
        }
        assert_shares(&counts, &shares, 3.0);
    }
}

#[tokio::test]
async fn every_unknown_upstream_of_a_split_is_reported() {
    let (errors, _) = check_errors(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: checkout
    split:
      - { upstream: ordrs, weight: 90 }
      - { upstream: order-next, weight: 10 }
upstreams:
  - name: orders
    targets: [127.0.0.1:1]
"#,
    )
    .await;
    assert!(errors.contains("`ordrs` is not defined"), "{errors}");
    assert!(errors.contains("`order-next` is not defined"), "{errors}");
}
