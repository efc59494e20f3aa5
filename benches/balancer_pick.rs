//! Cost of `Balancer::pick`, paid once per request (more on retries), for
//! each algorithm over 3 and 100 targets, with every target eligible and with
//! a third of them down (which exercises the fallback paths).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::upstream::TargetState;
use portcullis::upstream::balance::Algorithm;
use portcullis::upstream::balance::{PickContext, Weighted, build};

const ALGORITHMS: [(&str, Algorithm); 6] = [
    ("round_robin", Algorithm::RoundRobin),
    ("least_connections", Algorithm::LeastConnections),
    ("random", Algorithm::Random),
    ("p2c_ewma", Algorithm::P2cEwma),
    ("ip_hash", Algorithm::IpHash),
    ("consistent_hash", Algorithm::ConsistentHash),
];

/// `n` targets with weights 1 to 3 and some load and latency figures, as a
/// running gateway would have.
fn targets(n: usize) -> Vec<Weighted> {
    (0..n)
        .map(|i| {
            let state = Arc::new(TargetState::default());
            state.observe_latency(Duration::from_micros(500 + 37 * i as u64));
            // Leases leaked on purpose: the load stays for the whole run.
            for _ in 0..i % 4 {
                std::mem::forget(state.lease());
            }
            Weighted {
                weight: 1 + (i % 3) as u32,
                address: Arc::from(format!("10.0.{}.{}:8080", i / 250, i % 250)),
                state,
            }
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    for n in [3, 100] {
        let targets = targets(n);
        let mut group = c.benchmark_group(format!("pick/{n}_targets"));
        group.measurement_time(Duration::from_secs(1));
        group.warm_up_time(Duration::from_millis(300));
        for (name, algorithm) in ALGORITHMS {
            let balancer = build(algorithm, &targets);
            let mut hash = 0u64;
            group.bench_function(name, |b| {
                b.iter(|| {
                    // A new key each time, as distinct clients would bring.
                    hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    balancer.pick(black_box(&PickContext { hash }), &|_| true)
                })
            });
            group.bench_function(format!("{name}/third_down"), |b| {
                b.iter(|| {
                    hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    balancer.pick(black_box(&PickContext { hash }), &|i| i % 3 != 1)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
