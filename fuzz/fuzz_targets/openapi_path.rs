//! The `openapi` policy's path-template matcher: any request path is
//! matched or not without a panic, and a match is honest: the template
//! with the parameters' values put back is the path itself, no value is
//! empty, and a path that is exactly a literal template finds that one.
#![no_main]

use portcullis::policy::openapi::Matcher;

const TEMPLATES: [&str; 8] = [
    "/orders",
    "/orders/{id}",
    "/orders/mine",
    "/orders/{id}/items/{item}",
    "/files/{name}.{ext}",
    "/files/{name}",
    "/v{major}.{minor}/x",
    "/a/{b}-{c}/d",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let mut m = Matcher::default();
    for (i, t) in TEMPLATES.iter().enumerate() {
        m.insert(t, i).unwrap();
    }
    let Some(found) = m.find(path) else {
        assert!(
            !TEMPLATES.contains(&path) || path.contains('{'),
            "{path:?} not found"
        );
        return;
    };
    let template = TEMPLATES[found.item];
    let mut rebuilt = String::new();
    let mut values = found.params.iter();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        rebuilt.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').unwrap();
        let (name, value) = values.next().expect("a value per parameter");
        assert_eq!(*name, &rest[open + 1..close]);
        assert!(!value.is_empty(), "{path:?}: empty {name}");
        rebuilt.push_str(value);
        rest = &rest[close + 1..];
    }
    rebuilt.push_str(rest);
    assert_eq!(rebuilt, path, "{template}");
    if TEMPLATES.contains(&path) && !path.contains('{') {
        assert_eq!(template, path, "a literal path finds its own template");
    }
});
