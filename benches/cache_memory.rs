//! Memory per cached entry: fills a cache policy's memory tier with
//! 1,000,000 small answers (a 100-byte body, the headers a typical API
//! answer carries, a 40-byte key) and reports the bytes allocated per
//! entry beyond its body and header bytes, beside the overhead the tier
//! charges each entry against `max_size` (`ENTRY_OVERHEAD`), so the
//! documented bound can be checked: the charged overhead must not be below
//! what is really used.
//!
//! `cargo bench --bench cache_memory` (ENTRIES=N to change the count).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use portcullis::policy::cache::entry::{ENTRY_OVERHEAD, Entry, HEADER_OVERHEAD};
use portcullis::policy::cache::rules::Heuristic;
use portcullis::policy::cache::store::CacheStore;

/// mimalloc (the gateway's allocator), counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let n: usize = std::env::var("ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let store = CacheStore::new("bench".into(), 64 << 30, None, None);
    let now = SystemTime::now();
    let heuristic = Heuristic {
        max: Duration::ZERO,
        default_ttl: Duration::ZERO,
    };
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        "date",
        HeaderValue::from_static("Mon, 07 Dec 2026 12:00:00 GMT"),
    );
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let body = [b'x'; 100];
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        let key = format!("https://shop.example/products/{i:010}");
        let mut h = headers.clone();
        h.insert(
            "etag",
            HeaderValue::from_str(&format!("\"{i:016x}\"")).expect("a valid etag"),
        );
        let entry = Entry::new(
            Arc::from(key),
            StatusCode::OK,
            h,
            Bytes::copy_from_slice(&body),
            false,
            now,
            now,
            heuristic,
            Box::new([]),
        );
        store.insert(Arc::new(entry));
    }
    let stats = store.stats();
    let after = LIVE.load(Ordering::Relaxed);
    let per_entry = (after - before) as f64 / n as f64;
    let etag = 4 + 18;
    let payload = (body.len() + header_bytes + etag + 40) as f64;
    println!("entries stored:            {}", stats.entries);
    println!("allocated per entry:       {per_entry:.0} bytes");
    println!("of which body+headers+key: {payload:.0} bytes");
    println!(
        "overhead per entry:        {:.0} bytes",
        per_entry - payload
    );
    println!(
        "charged per entry:         {:.0} bytes (ENTRY_OVERHEAD {ENTRY_OVERHEAD} + {HEADER_OVERHEAD} per header)",
        stats.bytes as f64 / stats.entries.max(1) as f64
    );
    println!(
        "1,000,000 such entries:    {:.0} MiB allocated, {:.0} MiB charged against max_size",
        per_entry * 1e6 / 1048576.0,
        stats.bytes as f64 / stats.entries.max(1) as f64 * 1e6 / 1048576.0
    );
}
