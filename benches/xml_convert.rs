//! JSON ↔ XML conversion (the `transform` policy's `json_to_xml` and
//! `xml_to_json`) of a 100 KiB document: an order list with nested objects,
//! arrays, numbers, booleans, nulls and non-ASCII text, in bytes per second
//! of the input. Issue 15's target: JSON → XML at ≥ 100 MB/s on one core.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis::policy::xml::{json_to_xml, xml_to_json};
use serde_json::{Value, json};

/// About `bytes` of JSON: orders with lines, a customer and flags.
fn document(bytes: usize) -> Value {
    let mut orders = Vec::new();
    let mut i = 0;
    loop {
        orders.push(json!({
            "id": i,
            "customer": {"name": format!("Zoë Müller {i}"), "email": format!("c{i}@example.com"), "vip": i % 7 == 0},
            "lines": [
                {"sku": format!("SKU-{i:05}"), "qty": 2, "price": 19.99},
                {"sku": format!("SKU-{:05}", i + 1), "qty": 1, "price": 5.5}
            ],
            "note": null,
            "tags": ["express", "gift"],
        }));
        i += 1;
        if i % 16 == 0 && serde_json::to_vec(&orders).map_or(0, |v| v.len()) >= bytes {
            break;
        }
    }
    json!({"orders": {"order": orders}})
}

fn convert(c: &mut Criterion) {
    let doc = document(100 * 1024);
    let json_len = serde_json::to_vec(&doc).unwrap().len();
    let xml = json_to_xml(&doc).unwrap();
    assert_eq!(xml_to_json(&xml).unwrap(), doc, "the round trip is exact");

    let mut group = c.benchmark_group("xml_convert");
    group.throughput(Throughput::Bytes(json_len as u64));
    group.bench_function("json_to_xml_100k", |b| {
        b.iter(|| black_box(json_to_xml(black_box(&doc)).unwrap()))
    });
    group.throughput(Throughput::Bytes(xml.len() as u64));
    group.bench_function("xml_to_json_100k", |b| {
        b.iter(|| black_box(xml_to_json(black_box(&xml)).unwrap()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = convert
}
criterion_main!(benches);
