//! Loading a configuration file, YAML and TOML: any text gives a
//! configuration or errors, never a panic.
#![no_main]

use std::path::Path;

use portcullis::config::load::parse;
use portcullis::config::locate::Format;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (file, format) in [("fuzz.yaml", Format::Yaml), ("fuzz.toml", Format::Toml)] {
        if let Err(errors) = parse(Path::new(file), text, format) {
            assert!(!errors.0.is_empty(), "an error with no message");
        }
    }
});
