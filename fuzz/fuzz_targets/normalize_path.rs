//! Request-path normalisation: the result has no dot segment left (it is
//! its own normal form), is never longer, and an absolute path stays
//! absolute. (A relative path may come out absolute, `a/../..//` as `/`;
//! request paths always start with `/`, so that is not asked of it.)
#![no_main]

use portcullis::route::normalize_path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let normal = normalize_path(path);
    assert_eq!(
        normalize_path(&normal),
        normal,
        "not a normal form: {path:?}"
    );
    assert!(normal.len() <= path.len(), "longer: {path:?} -> {normal:?}");
    if path.starts_with('/') {
        assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    }
});
