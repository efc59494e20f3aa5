//! Cost of `RouteTable::find`, the lookup every request pays, on a small table and on
//! a 10,000-route one; the two should cost about the same since nothing scans routes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use portcullis::route::{PathMatch, RouteSpec, RouteTable};

fn route(hosts: &[&str], path: PathMatch) -> RouteSpec {
    RouteSpec {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path,
        ..RouteSpec::default()
    }
}

/// The same kinds of routes in both tables, so only the size differs.
fn common_routes() -> Vec<RouteSpec> {
    let mut post_only = route(&["api.example.com"], PathMatch::Exact("/v1/orders".into()));
    post_only.methods = vec![Method::POST];
    vec![
        post_only,
        route(&["api.example.com"], PathMatch::Prefix("/v1/users".into())),
        route(&["api.example.com"], PathMatch::Prefix("/v1".into())),
        route(&["*.example.org"], PathMatch::Prefix("/static".into())),
        route(&["*.example.org"], PathMatch::Regex("/items/[0-9]+".into())),
        route(&[], PathMatch::Exact("/ping".into())),
        route(&[], PathMatch::Prefix("/v2/users".into())),
        route(&[], PathMatch::Prefix("/assets".into())),
        route(&[], PathMatch::Regex("/reports/[a-z]+/[0-9]{4}".into())),
        route(&[], PathMatch::Any),
    ]
}

fn ten_routes() -> RouteTable {
    RouteTable::build(common_routes()).unwrap()
}

fn ten_thousand_routes() -> RouteTable {
    let mut routes = common_routes();
    let filler = 10_000 - routes.len();
    routes.extend((0..filler).map(|i| {
        let host = format!("svc{}.example.com", i % 100);
        if i % 4 == 0 {
            route(&[&host], PathMatch::Exact(format!("/p{}/health", i / 100)))
        } else {
            route(&[&host], PathMatch::Prefix(format!("/p{}/api", i / 100)))
        }
    }));
    RouteTable::build(routes).unwrap()
}

/// (name, host, method, path): one of each way a lookup can go.
const CASES: &[(&str, Option<&str>, Method, &str)] = &[
    (
        "exact_host_prefix",
        Some("api.example.com"),
        Method::GET,
        "/v1/users/42/orders",
    ),
    (
        "uppercase_host_with_port",
        Some("API.Example.com:8443"),
        Method::GET,
        "/v1/users/42",
    ),
    (
        "method_fall_through",
        Some("api.example.com"),
        Method::GET,
        "/v1/orders",
    ),
    (
        "wildcard_host_regex",
        Some("shop.eu.example.org"),
        Method::GET,
        "/items/1234",
    ),
    ("hostless_exact", Some("other.net"), Method::GET, "/ping"),
    ("catch_all", None, Method::GET, "/a/b/c/d/e/f"),
    (
        "filler_host_prefix",
        Some("svc42.example.com"),
        Method::GET,
        "/p57/api/v1/x",
    ),
];

fn bench_find(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for (size, table) in [
        ("10_routes", ten_routes()),
        ("10000_routes", ten_thousand_routes()),
    ] {
        let mut group = c.benchmark_group(format!("find/{size}"));
        group.measurement_time(Duration::from_secs(2));
        group.warm_up_time(Duration::from_millis(500));
        for (name, host, method, path) in CASES {
            group.bench_function(*name, |b| {
                b.iter(|| {
                    table.find(
                        black_box(*host),
                        black_box(method),
                        black_box(path),
                        None,
                        &headers,
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_find);
criterion_main!(benches);
