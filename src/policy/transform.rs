//! `transform`: changes JSON bodies on their way to the upstream
//! (`request`) and back to the client (`response`): fields removed,
//! renamed and set by dotted path (`user.address.city`), in that order,
//! with values that may use the request's variables (`{consumer}`,
//! `{request_id}`, `{header.x-tenant}`, `{jwt.sub}`).
//!
//! Only bodies whose `Content-Type` is JSON (`application/json` or a
//! `+json` type) are touched; others pass as they are. A transformed body
//! is read whole, up to `max_body`: a request past it gets 413, malformed
//! JSON in a request 400 (saying where it broke). An upstream answer past
//! the limit or malformed is a 502, with the detail in the log.
//! `Content-Length` is set to the new length.
//!
//! Instead of field changes, a direction may convert: `xml_to_json` turns
//! an XML body (`application/xml`, `text/xml`, `+xml`) into JSON and
//! `json_to_xml` a JSON body into XML, by the convention in
//! [`super::xml`], setting `Content-Type` to the new type. Bodies of other
//! types pass as they are; malformed ones are refused as above (400 for a
//! request, saying where it broke; 502 for an answer). A DOCTYPE is
//! malformed here.

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::Value;

use super::template::Template;
use super::xml;
use super::{BuildEnv, Flow, Phase, Policy, ResponsePhase};
use crate::config::model::{FieldOpsDef, TransformDef, TransformStepDef};
use crate::http::body::{Body, ReadError, SLOW_BODY, full, read_whole};
use crate::http::headers::{is_json_media, is_xml_media, media_type};
use crate::http::problem::{GatewayAnswer, problem};
use crate::policy::context::RequestCtx;

/// A dotted path into a JSON document, split once.
type Path = Vec<String>;

/// A value to set: JSON as written, or a text with variables.
#[derive(Debug)]
enum SetValue {
    Json(Value),
    Text(Template),
}

/// The field changes for one direction.
#[derive(Debug, Default)]
struct FieldOps {
    remove: Vec<Path>,
    rename: Vec<(Path, Path)>,
    set: Vec<(Path, SetValue)>,
}

/// What one direction does.
#[derive(Debug)]
enum Step {
    Fields(FieldOps),
    XmlToJson,
    JsonToXml,
}

impl Step {
    /// Whether a body of this type is the step's to change: JSON for field
    /// changes and json_to_xml, XML for xml_to_json.
    fn applies(&self, headers: &HeaderMap) -> bool {
        match self {
            Step::Fields(_) | Step::JsonToXml => is_json(headers),
            Step::XmlToJson => is_xml(headers),
        }
    }

    /// The field changes, when this step makes them.
    fn fields(&self) -> Option<&FieldOps> {
        match self {
            Step::Fields(ops) => Some(ops),
            _ => None,
        }
    }
}

/// A compiled `transform` policy.
pub struct Transform {
    request: Option<Step>,
    response: Option<Step>,
    max_body: u64,
}

/// The response side's texts, filled in while the request was at hand.
#[derive(Clone)]
struct ResponseValues(Vec<Value>);

/// Noted for a HEAD request: its answer has no body whatever its headers
/// say, so the response side leaves it alone (an extension, not a field:
/// only HEAD requests pay for it).
#[derive(Clone, Copy)]
struct HeadRequest;

impl Transform {
    /// Checks the paths and the texts' variables.
    pub fn build(def: &TransformDef, _env: &BuildEnv) -> Result<Transform, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut side = |name: &str, step: &Option<TransformStepDef>| -> Option<Step> {
            match step.as_ref()? {
                TransformStepDef::Convert(kind) if kind == "xml_to_json" => Some(Step::XmlToJson),
                TransformStepDef::Convert(kind) if kind == "json_to_xml" => Some(Step::JsonToXml),
                TransformStepDef::Convert(kind) => {
                    errors.push((
                        name.to_string(),
                        format!(
                            "`{kind}` is not a conversion: use xml_to_json or json_to_xml, \
                             or {{ set, remove, rename }} field changes"
                        ),
                    ));
                    None
                }
                TransformStepDef::Fields(ops) => {
                    Some(Step::Fields(field_ops(name, ops, &mut errors)))
                }
            }
        };
        let request = side("request", &def.request);
        let response = side("response", &def.response);
        if def.request.is_none() && def.response.is_none() {
            errors.push((
                String::new(),
                "a transform needs `request` or `response` (or both)".into(),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Transform {
            request,
            response,
            max_body: def.max_body.0,
        })
    }
}

fn field_ops(side: &str, def: &FieldOpsDef, errors: &mut Vec<(String, String)>) -> FieldOps {
    fn path(errors: &mut Vec<(String, String)>, field: String, text: &str) -> Path {
        let p: Path = text.split('.').map(str::to_string).collect();
        if p.iter().any(String::is_empty) {
            errors.push((
                field,
                format!("`{text}` is not a dotted path like user.address.city"),
            ));
        }
        p
    }
    let mut ops = FieldOps::default();
    for (i, p) in def.remove.iter().enumerate() {
        ops.remove
            .push(path(errors, format!("{side}.remove.{i}"), p));
    }
    for (from, to) in &def.rename {
        let f = path(errors, format!("{side}.rename.{from}"), from);
        let t = path(errors, format!("{side}.rename.{from}"), to);
        ops.rename.push((f, t));
    }
    for (at, value) in &def.set {
        let p = path(errors, format!("{side}.set.{at}"), at);
        let value = match value {
            Value::String(text) => match Template::parse(text) {
                Ok(t) => match t.literal() {
                    Some(literal) => SetValue::Json(Value::String(literal)),
                    None => SetValue::Text(t),
                },
                Err(e) => {
                    errors.push((format!("{side}.set.{at}"), e));
                    continue;
                }
            },
            other => SetValue::Json(other.clone()),
        };
        ops.set.push((p, value));
    }
    ops
}

/// Whether `headers` say the body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(is_json_media)
}

/// Whether `headers` say the body is XML (`application/xml`, `text/xml`
/// or a `+xml` type).
fn is_xml(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(is_xml_media)
}

/// A conversion's result: the new body and its type, or what was wrong
/// with the old body.
fn convert(step: &Step, bytes: &[u8]) -> Option<Result<(Vec<u8>, &'static str), String>> {
    Some(match step {
        Step::Fields(_) => return None,
        Step::XmlToJson => match xml::xml_to_json(bytes) {
            // Serializing a Value cannot fail (its keys are strings).
            Ok(doc) => Ok((
                serde_json::to_vec(&doc).unwrap_or_default(),
                "application/json",
            )),
            Err(e) => Err(format!("not valid XML: {e}")),
        },
        Step::JsonToXml => match serde_json::from_slice::<Value>(bytes) {
            Ok(doc) => match xml::json_to_xml(&doc) {
                Ok(out) => Ok((out, "application/xml")),
                Err(e) => Err(format!("not convertible to XML: {e}")),
            },
            Err(e) => Err(format!("not valid JSON: {}", where_it_broke(&e))),
        },
    })
}

/// Puts a converted body in place with its type and length.
fn set_converted(headers: &mut HeaderMap, bytes: Vec<u8>, ctype: &'static str) -> Body {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    full(bytes)
}

impl FieldOps {
    /// Applies the changes: removals, renames, then sets (`values` holds
    /// the set values in order, texts already filled in).
    fn apply(&self, doc: &mut Value, values: &[Value]) {
        for p in &self.remove {
            take(doc, p);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(doc, from) {
                put(doc, to, v);
            }
        }
        for ((p, _), v) in self.set.iter().zip(values) {
            put(doc, p, v.clone());
        }
    }

    /// The set values for this request.
    fn values<B>(&self, ctx: &RequestCtx, req: &Request<B>) -> Vec<Value> {
        self.set
            .iter()
            .map(|(_, v)| match v {
                SetValue::Json(j) => j.clone(),
                SetValue::Text(t) => Value::String(t.render(ctx, req)),
            })
            .collect()
    }
}

/// Removes and returns the value at `path`.
fn take(doc: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut at = doc;
    for seg in parents {
        at = match at {
            Value::Object(m) => m.get_mut(seg)?,
            Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match at {
        // shift_remove, not remove: the members after it keep their order.
        Value::Object(m) => m.shift_remove(last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// Sets the value at `path`, making the objects on the way when missing;
/// a path through something that is not an object (or an array index) is
/// left alone.
fn put(doc: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = doc;
    for seg in parents {
        at = match at {
            Value::Object(m) => m
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new())),
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    match at {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *slot = value;
            }
        }
        _ => {}
    }
}

/// Where a JSON text broke, for the client or the log.
fn where_it_broke(e: &serde_json::Error) -> String {
    format!("line {}, column {}: {e}", e.line(), e.column())
}

/// The document re-encoded as the body, with its length.
fn set_body(headers: &mut HeaderMap, doc: &Value) -> Body {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    full(bytes)
}

impl Policy for Transform {
    fn phase(&self) -> Phase {
        Phase::RequestTransform
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        if self.response.is_some() && req.method() == Method::HEAD {
            ctx.extensions.insert(HeadRequest);
        }
        // The response side's texts need the request, which is gone by then.
        if let Some(ops) = self.response.as_ref().and_then(Step::fields)
            && ops.set.iter().any(|(_, v)| matches!(v, SetValue::Text(_)))
        {
            ctx.extensions.insert(ResponseValues(ops.values(ctx, req)));
        }
        Flow::Continue
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let step = self.request.as_ref()?;
        if !step.applies(req.headers()) {
            return None;
        }
        Some(Box::pin(async move {
            let body = std::mem::replace(req.body_mut(), crate::http::body::empty());
            let refuse =
                |status, detail: &str| Flow::Respond(problem(status, detail, ctx.request_id_str()));
            let bytes = match read_whole(body, self.max_body).await {
                Ok(b) => b,
                Err(ReadError::TooLarge(n)) => {
                    return refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("this route transforms request bodies of at most {n} bytes"),
                    );
                }
                Err(ReadError::OverListenerLimit) => {
                    return refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than this listener accepts",
                    );
                }
                Err(ReadError::Broken(_)) => {
                    return refuse(StatusCode::BAD_REQUEST, "the request body broke off");
                }
                Err(ReadError::TimedOut) => {
                    return refuse(StatusCode::REQUEST_TIMEOUT, SLOW_BODY);
                }
            };
            if bytes.is_empty() {
                // Nothing to transform (a GET that names its type).
                *req.body_mut() = full(bytes);
                return Flow::Continue;
            }
            let ops = match convert(step, &bytes) {
                None => step.fields(),
                Some(Ok((out, ctype))) => {
                    req.headers_mut().remove(header::TRANSFER_ENCODING);
                    *req.body_mut() = set_converted(req.headers_mut(), out, ctype);
                    return Flow::Continue;
                }
                Some(Err(why)) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        &format!("the request body is {why}"),
                    );
                }
            };
            let Some(ops) = ops else {
                return Flow::Continue;
            };
            let mut doc: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        &format!("the request body is not valid JSON: {}", where_it_broke(&e)),
                    );
                }
            };
            let values = ops.values(ctx, req);
            ops.apply(&mut doc, &values);
            req.headers_mut().remove(header::TRANSFER_ENCODING);
            *req.body_mut() = set_body(req.headers_mut(), &doc);
            Flow::Continue
        }))
    }

    fn response_phase(&self) -> Option<ResponsePhase> {
        self.response
            .as_ref()
            .map(|_| ResponsePhase::ResponseTransform)
    }

    fn on_response_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        resp: &'a mut Response<Body>,
    ) -> Option<BoxFuture<'a, ()>> {
        let step = self.response.as_ref()?;
        // The gateway's own answers (problem+json for a failed upstream, a
        // policy's refusal, this policy's own 400 or 413) are not the
        // upstream's documents; an answer to HEAD has no body to change.
        if !step.applies(resp.headers())
            || ctx.upstream_error.is_some()
            || resp.extensions().get::<GatewayAnswer>().is_some()
            || ctx.extensions.get::<HeadRequest>().is_some()
        {
            return None;
        }
        Some(Box::pin(async move {
            let body = std::mem::replace(resp.body_mut(), crate::http::body::empty());
            let failed = |detail: String| {
                tracing::warn!(request_id = ctx.request_id_str(), "transform: {detail}");
                problem(
                    StatusCode::BAD_GATEWAY,
                    "the upstream's answer could not be transformed",
                    ctx.request_id_str(),
                )
            };
            let bytes = match read_whole(body, self.max_body).await {
                Ok(b) => b,
                Err(e) => {
                    *resp = failed(format!("the upstream's body: {e}"));
                    return;
                }
            };
            if bytes.is_empty() {
                // Nothing to change (a 204 or 304 that names its type).
                *resp.body_mut() = full(bytes);
                return;
            }
            let ops = match convert(step, &bytes) {
                None => step.fields(),
                Some(Ok((out, ctype))) => {
                    let headers = resp.headers_mut();
                    headers.remove(header::TRANSFER_ENCODING);
                    // The old validators describe the old bytes.
                    headers.remove(header::ETAG);
                    *resp.body_mut() = set_converted(resp.headers_mut(), out, ctype);
                    return;
                }
                Some(Err(why)) => {
                    *resp = failed(format!("the upstream's body is {why}"));
                    return;
                }
            };
            let Some(ops) = ops else {
                return;
            };
            let mut doc: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    *resp = failed(format!(
                        "the upstream's body is not valid JSON: {}",
                        where_it_broke(&e)
                    ));
                    return;
                }
            };
            let values = match ctx.extensions.remove::<ResponseValues>() {
                Some(ResponseValues(v)) => v,
                None => ops
                    .set
                    .iter()
                    .map(|(_, v)| match v {
                        SetValue::Json(j) => j.clone(),
                        SetValue::Text(_) => Value::Null,
                    })
                    .collect(),
            };
            ops.apply(&mut doc, &values);
            let headers = resp.headers_mut();
            headers.remove(header::TRANSFER_ENCODING);
            // The old validators describe the old bytes.
            headers.remove(header::ETAG);
            *resp.body_mut() = set_body(resp.headers_mut(), &doc);
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn ops(remove: &[&str], rename: &[(&str, &str)], set: &[(&str, Value)]) -> FieldOps {
        let def = FieldOpsDef {
            remove: remove.iter().map(|s| s.to_string()).collect(),
            rename: rename
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        let mut errors = Vec::new();
        let ops = field_ops("request", &def, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        ops
    }

    #[test]
    fn removals_renames_and_sets_follow_dotted_paths() {
        let o = ops(
            &["password", "user.internal", "items.1", "missing.deep"],
            &[("user.name", "user.full_name"), ("nope", "x")],
            &[
                ("user.address.city", json!("Berlin")),
                ("meta.version", json!(2)),
                ("items.0.tag", json!(true)),
                ("flag", json!(null)),
            ],
        );
        let mut doc = json!({
            "password": "s3cret",
            "user": {"name": "Ada", "internal": 1},
            "items": [{"id": 1}, {"id": 2}, {"id": 3}],
        });
        let values: Vec<Value> = o
            .set
            .iter()
            .map(|(_, v)| match v {
                SetValue::Json(j) => j.clone(),
                SetValue::Text(_) => Value::Null,
            })
            .collect();
        o.apply(&mut doc, &values);
        assert_eq!(
            doc,
            json!({
                "user": {"full_name": "Ada", "address": {"city": "Berlin"}},
                "items": [{"id": 1, "tag": true}, {"id": 3}],
                "meta": {"version": 2},
                "flag": null,
            })
        );
    }

    #[test]
    fn members_keep_their_order_and_new_ones_come_last() {
        let o = ops(
            &["secret", "b.x"],
            &[("m", "renamed")],
            &[("b.new", json!(1)), ("added", json!(true))],
        );
        let mut doc: Value =
            serde_json::from_str(r#"{"z":1,"secret":0,"m":2,"b":{"y":1,"x":2,"a":3},"c":4}"#)
                .unwrap();
        // Set values come in path order (`added` before `b.new`).
        o.apply(&mut doc, &[json!(true), json!(1)]);
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"z":1,"b":{"y":1,"a":3,"new":1},"c":4,"renamed":2,"added":true}"#
        );
    }

    #[test]
    fn a_path_through_a_scalar_is_left_alone() {
        let o = ops(&[], &[], &[("name.first", json!("x"))]);
        let mut doc = json!({"name": "Ada"});
        o.apply(&mut doc, &[json!("x")]);
        assert_eq!(doc, json!({"name": "Ada"}));
    }

    #[test]
    fn json_media_types_are_recognised() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(is_json(&h("application/json")));
        assert!(is_json(&h("Application/JSON; charset=utf-8")));
        assert!(is_json(&h("application/problem+json")));
        assert!(!is_json(&h("text/plain")));
        assert!(!is_json(&h("application/jsonx")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn xml_media_types_are_recognised() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(is_xml(&h("application/xml")));
        assert!(is_xml(&h("Text/XML; charset=utf-8")));
        assert!(is_xml(&h("application/soap+xml")));
        assert!(!is_xml(&h("application/json")));
        assert!(!is_xml(&h("application/xmlx")));
    }

    #[test]
    fn conversions_change_the_body_and_its_type() {
        let (out, ctype) = convert(&Step::XmlToJson, b"<a><b>1</b></a>")
            .unwrap()
            .unwrap();
        assert_eq!(
            (out.as_slice(), ctype),
            (&br#"{"a":{"b":"1"}}"#[..], "application/json")
        );
        let (out, ctype) = convert(&Step::JsonToXml, br#"{"a":{"b":"1"}}"#)
            .unwrap()
            .unwrap();
        assert!(out.ends_with(b"<a><b>1</b></a>"));
        assert_eq!(ctype, "application/xml");
        let why = convert(&Step::XmlToJson, b"<a>\n<b></a>")
            .unwrap()
            .unwrap_err();
        assert!(why.starts_with("not valid XML: line 2, column"), "{why}");
        let why = convert(&Step::JsonToXml, b"{").unwrap().unwrap_err();
        assert!(why.starts_with("not valid JSON: line 1"), "{why}");
    }

    #[test]
    fn bad_paths_and_variables_are_refused() {
        let def = FieldOpsDef {
            remove: vec!["a..b".into()],
            rename: BTreeMap::new(),
            set: [("x".to_string(), json!("{hots}"))].into_iter().collect(),
        };
        let mut errors = Vec::new();
        field_ops("response", &def, &mut errors);
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["response.remove.0", "response.set.x"]);
    }
}
