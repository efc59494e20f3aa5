//! The chunked decoder, whole and in pieces: both must read a body the same way.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::http::codec::fuzz_logic::chunked(data);
});
