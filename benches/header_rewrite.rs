//! Cost of the header work every forwarded request pays: hop-by-hop removal,
//! X-Forwarded-* and X-Request-Id, and a route's compiled `set`/`add`/`remove`
//! operations, on the headers a browser and an API client typically send.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use portcullis::config::model;
use portcullis::http::headers::{
    HeaderOps, X_FORWARDED_FOR, forwarded_for, new_request_id, remove_hop_by_hop, set_forwarded,
};

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

/// What a browser sends through a keep-alive connection.
fn browser() -> HeaderMap {
    headers(&[
        ("host", "www.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        (
            "cookie",
            "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark",
        ),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
    ])
}

/// An API call that already crossed one proxy and names extra hop-by-hop headers.
fn api_client_behind_proxy() -> HeaderMap {
    headers(&[
        ("host", "api.example.com"),
        ("user-agent", "okhttp/4.12.0"),
        ("accept", "application/json"),
        ("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig"),
        ("content-type", "application/json"),
        ("connection", "keep-alive, x-hop-one, x-hop-two"),
        ("keep-alive", "timeout=5"),
        ("x-hop-one", "1"),
        ("x-hop-two", "2"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("x-forwarded-for", "203.0.113.7"),
    ])
}

fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOps {
    let def = model::HeaderOps {
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        add: add
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        remove: remove.iter().map(|k| k.to_string()).collect(),
    };
    match HeaderOps::build(&def) {
        Ok(ops) => ops,
        Err(e) => panic!("bench header ops do not compile: {e:?}"),
    }
}

fn bench_headers(c: &mut Criterion) {
    // Made once per connection in the gateway, so outside the measurement.
    let v4 = forwarded_for(IpAddr::from([192, 0, 2, 10]));
    let v6 = forwarded_for("2001:db8::10".parse().expect("an IPv6 address"));
    let cases = [
        ("browser", browser()),
        ("api_client_behind_proxy", api_client_behind_proxy()),
    ];

    let mut group = c.benchmark_group("headers");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));

    // Each iteration gets a fresh copy of the headers; the clone is outside
    // the measurement. The `clone_only` case shows the floor.
    for (name, base) in &cases {
        group.bench_function(format!("clone_only/{name}"), |b| {
            b.iter_batched_ref(
                || base.clone(),
                |h| black_box(h.len()),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("remove_hop_by_hop/{name}"), |b| {
            b.iter_batched_ref(
                || base.clone(),
                |h| remove_hop_by_hop(h, false),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("set_forwarded_v4/{name}"), |b| {
            let host = base.get("host").cloned();
            b.iter_batched_ref(
                || base.clone(),
                |h| set_forwarded(h, black_box(&v4), false, host.as_ref()),
                BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("set_forwarded_v6_append/api_client_behind_proxy", |b| {
        let base = api_client_behind_proxy();
        assert!(base.contains_key(&X_FORWARDED_FOR));
        let host = base.get("host").cloned();
        b.iter_batched_ref(
            || base.clone(),
            |h| set_forwarded(h, black_box(&v6), true, host.as_ref()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("new_request_id", |b| b.iter(new_request_id));

    // A route's compiled changes, as in examples/reverse-proxy.yaml and a
    // busier one.
    let one_each = ops(&[("x-gateway", "portcullis")], &[], &["server"]);
    let busy = ops(
        &[("x-gateway", "portcullis"), ("x-env", "production")],
        &[("via", "1.1 portcullis"), ("x-trace", "on")],
        &["cookie", "authorization", "x-powered-by"],
    );
    let empty = ops(&[], &[], &[]);
    for (name, ops) in [("empty", &empty), ("one_each", &one_each), ("busy", &busy)] {
        group.bench_function(format!("header_ops_apply/{name}/browser"), |b| {
            let base = browser();
            b.iter_batched_ref(|| base.clone(), |h| ops.apply(h), BatchSize::SmallInput)
        });
    }

    // Everything a plain forwarded request gets, in the pipeline's order.
    group.bench_function("all/browser", |b| {
        let base = browser();
        let host = base.get("host").cloned();
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                remove_hop_by_hop(h, false);
                set_forwarded(h, &v4, false, host.as_ref());
                h.insert(HeaderName::from_static("x-request-id"), new_request_id());
                one_each.apply(h);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_headers);
criterion_main!(benches);
