//! An upstream's HTTP/1 response, interim heads, head and body, as the
//! upstream client reads it; whole and byte by byte must agree.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::upstream::http1::fuzz_logic::response(data);
});
