//! `Accept-Encoding` negotiation: any bytes pick one of the offered
//! encodings or none, never panic, and the pick does not depend on how
//! the same text is split into header lines at a comma.
#![no_main]

use portcullis::policy::compress::Encoding;
use portcullis::policy::compress::negotiate::choose;

const OFFERS: [&[Encoding]; 3] = [
    &[Encoding::Zstd, Encoding::Br, Encoding::Gzip],
    &[Encoding::Gzip],
    &[Encoding::Br, Encoding::Gzip],
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for offered in OFFERS {
        let one = choose(|| std::iter::once(data), offered);
        if let Some(e) = one {
            assert!(offered.contains(&e), "{e:?} was not offered");
        }
        let lines: Vec<&[u8]> = data.split(|b| *b == b',').collect();
        assert_eq!(choose(|| lines.iter().copied(), offered), one, "{data:?}");
    }
});
