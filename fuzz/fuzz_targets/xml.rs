//! JSON ↔ XML (`transform`): any bytes either fail to parse as XML or give
//! JSON; that JSON, written as XML and read back, is itself again (the
//! convention is reversible from the JSON side); nothing panics.
#![no_main]

use portcullis::policy::xml::{json_to_xml, xml_to_json};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(json) = xml_to_json(data) else {
        return;
    };
    let Ok(xml) = json_to_xml(&json) else {
        return;
    };
    let back = xml_to_json(&xml).unwrap_or_else(|e| panic!("own output refused: {e}"));
    assert_eq!(
        back,
        json,
        "not reversible via {}",
        String::from_utf8_lossy(&xml)
    );
});
