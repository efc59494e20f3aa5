//! Configuration texts with variables and the values filled into aggregate
//! call paths. Input: a template text, a newline, a parameter value. Any
//! text is parsed or refused without panicking, and renders without
//! panicking; a parameter value always lands in the path percent-encoded
//! (only unreserved bytes and `%XX`), and decodes back to itself, so no
//! value can add a segment or a query parameter.
#![no_main]

use std::borrow::Cow;

use http::{HeaderValue, Request};
use portcullis::policy::context::RequestCtx;
use portcullis::policy::template::{Scope, Template, Values};
use serde_json::Value;

struct Given<'a> {
    value: &'a str,
    answer: Value,
}

impl Values for Given<'_> {
    fn param(&self, _name: &str) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.value))
    }
    fn call(&self, _index: usize) -> Option<&Value> {
        Some(&self.answer)
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (template, value) = text.split_once('\n').unwrap_or((&text, ""));
    let ctx = RequestCtx::new(
        HeaderValue::from_static("rid"),
        ([127, 0, 0, 1], 1).into(),
        std::sync::Arc::from("web"),
        false,
        std::time::Instant::now(),
    );
    let req = Request::builder()
        .uri("/a/b?c=d")
        .header("host", "example.com")
        .body(())
        .unwrap();
    let given = Given {
        value,
        answer: serde_json::json!({ "id": value, "n": 1 }),
    };
    let calls = ["user"];
    let scope = Scope {
        params: true,
        calls: &calls,
    };
    if let Ok(t) = Template::parse(template) {
        let _ = t.render(&ctx, &req);
    }
    if let Ok(t) = Template::parse_in(template, scope) {
        let _ = t.render_url(&ctx, &req, &given);
    }
    for fixed in ["/x/{p}", "/x/{user.id}"] {
        let t = Template::parse_in(fixed, scope).unwrap();
        let out = t.render_url(&ctx, &req, &given).unwrap();
        let filled = out.strip_prefix("/x/").unwrap();
        assert!(
            filled
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
            "{value:?} -> {out:?}"
        );
        let decoded = percent_encoding::percent_decode_str(filled).decode_utf8_lossy();
        assert_eq!(decoded, value, "{out:?}");
    }
});
