//! Cost of one step of the shared smooth weighted round-robin sequence
//! (`RoundRobin::next`), paid by every request to a round-robin upstream: on
//! one thread, and with every CPU's thread stepping the same sequence at once,
//! since the sequence is one atomic counter shared by all worker threads.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::upstream::balance::RoundRobin;

fn balancers() -> Vec<(&'static str, RoundRobin)> {
    let hundred: Vec<u32> = (0..100).map(|i| 1 + i % 3).collect();
    vec![
        ("1_target", RoundRobin::new(&[1])),
        ("3_targets_5_1_1", RoundRobin::new(&[5, 1, 1])),
        ("100_targets_weights_1_to_3", RoundRobin::new(&hundred)),
    ]
}

fn bench_pick(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let mut group = c.benchmark_group("round_robin_next");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    for (name, rr) in balancers() {
        group.bench_function(format!("one_thread/{name}"), |b| {
            b.iter(|| black_box(rr.next()))
        });
        // `threads` threads share the sequence; the figure is wall time per
        // pick of all of them together, so contention on the counter shows
        // as a cost above the one-thread figure divided by `threads`.
        group.bench_function(format!("{threads}_threads_shared/{name}"), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                let barrier = Barrier::new(threads + 1);
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            barrier.wait();
                            for _ in 0..per_thread {
                                black_box(rr.next());
                            }
                            barrier.wait();
                        });
                    }
                    barrier.wait();
                    let start = Instant::now();
                    barrier.wait();
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
