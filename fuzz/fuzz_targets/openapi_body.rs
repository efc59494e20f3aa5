//! The OpenAPI policy's fast reading of a JSON body: any bytes it accepts
//! are JSON that `serde_json::Value` reads to the same value, so the fast
//! check can never call valid a body the full check would see otherwise;
//! and no input panics it.
#![no_main]

use portcullis::policy::openapi::doc;
use serde_json::Value;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(fast) = doc::parse(data) {
        let full: Value = serde_json::from_slice(data)
            .unwrap_or_else(|e| panic!("the fast reading took what serde_json refuses: {e}"));
        assert_eq!(fast.to_value(), full);
    }
});
