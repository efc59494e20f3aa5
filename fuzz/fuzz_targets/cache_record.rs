//! Records the cache's disk and Redis tiers read back: any bytes are a
//! record or an error, never a panic or an allocation the input does not
//! pay for; a record of decoded entries encodes to the same bytes.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use portcullis::policy::cache::codec::{decode, encode, head_of};
use portcullis::policy::cache::rules::Heuristic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let heuristic = Heuristic {
        max: Duration::from_secs(86_400),
        default_ttl: Duration::ZERO,
    };
    let head = head_of(data);
    if let Ok(entries) = decode(Bytes::copy_from_slice(data), heuristic) {
        let (key, _) = head.expect("a decodable record has a head");
        let again = encode(&key, &entries);
        let back = decode(again.clone(), heuristic).expect("our own record decodes");
        assert_eq!(back.len(), entries.len());
        assert_eq!(encode(&key, &back), again);
    }
});
