//! A client's HTTP/1 request, head and body, as the server side reads it;
//! an accepted request must be forwarded as one that reads back the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::server::http1::fuzz_logic::request(data);
});
