//! The `openapi` policy's check of one request against
//! examples/specs/orders.yaml: `POST /v1/orders` with a 1 KiB JSON order
//! (eight lines, an address, a `oneOf` payment; formats, patterns and
//! `$ref`s to the sibling common.yaml), body parsing included, and a
//! `GET /v1/orders` with query and header parameters. The target:
//! a 1 KiB body adds at most 10 µs per request (issue 15).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use portcullis::config::model::{OpenApiDef, ResponseValidation};
use portcullis::config::units::Size;
use portcullis::policy::openapi::{OpenApi, doc};
use serde_json::json;

// The allocator the gateway's binary runs with (src/main.rs): parsing a
// JSON body allocates for every string, array and object in it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A valid order of about `bytes` of JSON.
fn order(bytes: usize) -> Vec<u8> {
    let mut lines = Vec::new();
    let mut i = 0;
    loop {
        lines.push(json!({
            "sku": format!("BKS-{:04}", 100 + i),
            "quantity": 1 + i % 3,
            "unit_price": {"amount": 9.5 + i as f64, "currency": "EUR"},
        }));
        i += 1;
        let doc = json!({
            "customer_email": "ada.lovelace@example.com",
            "lines": lines,
            "shipping_address": {"line1": "12 Analytical Engine Row", "line2": null, "city": "London", "postcode": "NW1 6XE", "country": "GB"},
            "payment": {"method": "card", "card_token": "tok_4242424242424242"},
            "deliver_after": "2026-12-24",
            "note": "Please leave the parcel with the neighbour at number 14 if nobody answers.",
        });
        let out = serde_json::to_vec(&doc).unwrap();
        if out.len() >= bytes {
            return out;
        }
    }
}

fn validate(c: &mut Criterion) {
    let def = OpenApiDef {
        spec: "orders.yaml".into(),
        strict: true,
        validate_responses: ResponseValidation::Off,
        max_body: Size(1 << 20),
    };
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/specs");
    let policy = OpenApi::load(&def, &base, "bench").unwrap();

    let body = order(1024);
    let post = Method::POST;
    let orders: Uri = "/v1/orders".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "idempotency-key",
        HeaderValue::from_static("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
    );
    assert!(
        policy
            .check_request(&post, &orders, &headers, &body)
            .is_ok()
    );

    let list: Uri = "/v1/orders?limit=20&status=paid&status=shipped&since=2026-12-01T10:00:00Z"
        .parse()
        .unwrap();
    let mut list_headers = HeaderMap::new();
    list_headers.insert("x-request-id", HeaderValue::from_static("0af7651916cd43dd"));
    assert!(
        policy
            .check_request(&Method::GET, &list, &list_headers, b"")
            .is_ok()
    );

    let mut group = c.benchmark_group("openapi_validate");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("post_order_1k", |b| {
        b.iter(|| {
            black_box(policy.check_request(
                black_box(&post),
                black_box(&orders),
                black_box(&headers),
                black_box(&body),
            ))
        })
    });
    // JSON parsing into a `Value` alone, for comparison: the check takes
    // this path only for an invalid body (to word its violations).
    group.bench_function("parse_order_1k", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap()))
    });
    // The reading the check above settles a valid body on (`doc::parse`,
    // the borrowed tree), which is what the check's parse costs now.
    group.bench_function("read_order_1k", |b| {
        b.iter(|| black_box(doc::parse(black_box(&body)).is_some()))
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_orders_query_and_header", |b| {
        b.iter(|| {
            black_box(policy.check_request(
                black_box(&Method::GET),
                black_box(&list),
                black_box(&list_headers),
                b"",
            ))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = validate
}
criterion_main!(benches);
