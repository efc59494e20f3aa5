//! `Cache-Control`, `Expires`, `Age` and `Vary` as a cache reads them: any
//! bytes parse without a panic, delta-seconds stay within 2^31, the
//! freshness and age arithmetic never overflows, and splitting the same
//! text into header lines at a comma outside quotes changes nothing.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use portcullis::policy::cache::rules::{
    Heuristic, RequestDirectives, ResponseDirectives, freshness_lifetime, initial_age, vary_names,
};

fn map(name: header::HeaderName, lines: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            h.append(name.clone(), v);
        }
    }
    h
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let whole = map(header::CACHE_CONTROL, &[data]);
    let resp = ResponseDirectives::parse(&whole);
    let req = RequestDirectives::parse(&whole);
    for v in [
        resp.max_age,
        resp.s_maxage,
        resp.stale_if_error,
        resp.stale_while_revalidate,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v <= 1 << 31, "{v}");
    }
    // Splitting at commas outside quotes is the same list.
    if !data.contains(&b'"') && HeaderValue::from_bytes(data).is_ok() {
        let lines: Vec<&[u8]> = data.split(|b| *b == b',').collect();
        let split = map(header::CACHE_CONTROL, &lines);
        assert_eq!(ResponseDirectives::parse(&split), resp, "{data:?}");
        assert_eq!(RequestDirectives::parse(&split), req, "{data:?}");
    }
    // The same bytes as the date and age fields.
    let mut h = map(header::EXPIRES, &[data]);
    for (name, v) in [
        (header::DATE, data),
        (header::LAST_MODIFIED, data),
        (header::AGE, data),
        (header::VARY, data),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.insert(name, v);
        }
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let heuristic = Heuristic {
        max: Duration::from_secs(86_400),
        default_ttl: Duration::from_secs(60),
    };
    let _ = freshness_lifetime(&h, &resp, StatusCode::OK, now, heuristic);
    let _ = initial_age(&h, now, now + Duration::from_secs(1));
    let _ = vary_names(&h).count();
});
