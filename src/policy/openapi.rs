//! `openapi`: checks each request against the operation an OpenAPI 3.0 or
//! 3.1 document describes for it (path, query, header and cookie
//! parameters, the body's content type and its JSON), and optionally the
//! upstream's answer too.
//!
//! The document (YAML or JSON, with `$ref`s inside it and to sibling
//! files) is read and every schema compiled when the configuration is
//! compiled ([`spec`]); a request costs one walk of the path trie
//! ([`matcher`]), the parameters' checks and, when the operation has a
//! JSON body schema, one read of the body up to `max_body` (413 past it)
//! and one validation. The body then goes upstream as it came.
//!
//! Every violation is reported, not just the first: 400 problem+json with
//! an `errors` list of `{pointer, rule, message}` (`/body/items/0/qty`,
//! `minimum`). A body whose type the operation does not list is 415.
//! `strict` answers undocumented paths 404 and undocumented methods 405
//! with `Allow`; otherwise they pass unchecked. `validate_responses: log`
//! logs an answer that breaks the document, `enforce` replaces it with 502.

pub mod doc;
mod matcher;
mod spec;

use std::borrow::Cow;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

pub use matcher::{Found, Matcher, TemplateError};
pub use spec::{SpecError, Version};

use self::spec::{In, MediaDef, ParamDef, Shape, Spec, StatusKey, Style, Types};
use super::{BuildEnv, Flow, Phase, Policy, ResponsePhase};
use crate::config::model::{OpenApiDef, ResponseValidation};
use crate::http::body::{Body, BoxError, full};
use crate::http::headers::{is_json_media, media_type};
use crate::http::problem::problem_with;
use crate::policy::context::RequestCtx;

/// The most violations one answer lists (the rest are counted).
const MAX_VIOLATIONS: usize = 50;

/// Longest JSON value a message quotes; longer ones are called "the value".
const MAX_QUOTED: usize = 80;

/// One way a request or an answer breaks the document.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Where: `/body/...`, `/path/id`, `/query/limit`, `/header/x-id`,
    /// `/cookie/session`, `/status`.
    pub pointer: String,
    /// The rule broken: a JSON Schema keyword (`minimum`, `required`,
    /// `format`), or `json`, `contentType`, `status`.
    pub rule: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// Why a request is refused.
#[derive(Debug)]
pub struct Refusal {
    /// 400, 404, 405, 413 or 415.
    pub status: StatusCode,
    /// The problem's `detail`.
    pub detail: String,
    /// Every violation found (empty for 404, 405 and 413).
    pub violations: Vec<Violation>,
    /// The documented methods, for a 405.
    pub allow: Option<HeaderValue>,
}

/// A compiled parameter.
struct Param {
    def: ParamDef,
    /// JSON pointer prefix of its violations (`/query/limit`).
    pointer: String,
    validator: Option<usize>,
}

/// A compiled media type of a body.
struct Media {
    media: String,
    validator: Option<usize>,
}

struct Answer {
    status: StatusKey,
    content: Vec<Media>,
}

struct Operation {
    method: Method,
    params: Vec<Param>,
    body: Option<(bool, Vec<Media>)>,
    responses: Vec<Answer>,
}

struct PathItem {
    template: String,
    operations: Vec<Operation>,
    allow: HeaderValue,
}

/// A compiled `openapi` policy.
pub struct OpenApi {
    name: String,
    matcher: Matcher,
    /// `/v1` from the first server's URL, or empty.
    base: String,
    items: Vec<PathItem>,
    validators: Vec<jsonschema::Validator>,
    /// For each of `validators` that checks a body, the same schema over
    /// [`doc::BodyValue`]: the fast check of a valid body.
    body_validators: Vec<Option<jsonschema::Validator<doc::BodyJson>>>,
    strict: bool,
    responses: ResponseValidation,
    max_body: u64,
}

/// What the request phase leaves for the body check.
#[derive(Clone)]
struct PendingBody {
    violations: Vec<Violation>,
    validator: usize,
    required: bool,
}

/// The operation a request matched, for the response phase.
#[derive(Clone, Copy)]
struct Matched {
    item: usize,
    op: usize,
    head: bool,
}

/// What the head of a request (method, path, headers) says.
enum Head {
    /// No operation documents it, and that is fine.
    Undocumented,
    /// Refused on its head alone.
    Refuse(Refusal),
    /// Its operation, the violations so far and what its body needs.
    Checked {
        matched: Matched,
        violations: Vec<Violation>,
        body: BodyPlan,
    },
}

/// What a request's body needs.
enum BodyPlan {
    /// Nothing to read.
    Nothing,
    /// Read it and validate it with this validator.
    Read {
        /// The body's schema.
        validator: usize,
        /// Whether an empty body breaks the document.
        required: bool,
    },
}

/// The documented media type a body of type `media` (any case) falls
/// under: exact, then `type/*`, then `*/*`. The documented ones are
/// lowercase (`spec::media_type`).
fn pick<'m>(content: &'m [Media], media: &str) -> Option<&'m Media> {
    let main = media.split('/').next().unwrap_or("");
    content
        .iter()
        .find(|m| m.media.eq_ignore_ascii_case(media))
        .or_else(|| {
            content.iter().find(|m| {
                m.media
                    .strip_suffix("/*")
                    .is_some_and(|t| t.eq_ignore_ascii_case(main) && t != "*")
            })
        })
        .or_else(|| content.iter().find(|m| m.media == "*/*"))
}

fn escape(token: &str) -> Cow<'_, str> {
    if token.contains(['~', '/']) {
        Cow::Owned(token.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(token)
    }
}

fn decode(text: &str, plus_is_space: bool) -> String {
    if plus_is_space && text.contains('+') {
        let spaced = text.replace('+', " ");
        return percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned();
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Text as the value its schema's types say it is: an integer, a number
/// or a boolean when it reads as one, else the text (which the schema then
/// refuses with its own `type` message).
fn coerce(text: &str, types: Types) -> Value {
    if types.integer
        && let Ok(n) = text.parse::<i64>()
    {
        return Value::from(n);
    }
    if (types.number || types.integer)
        && let Ok(n) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(n)
    {
        return Value::Number(n);
    }
    if types.boolean {
        match text {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(text.to_string())
}

/// One parameter's raw texts, as the request sent them.
enum Raw {
    Absent,
    /// Every occurrence (decoded).
    Values(Vec<String>),
    /// deepObject or exploded form object properties (decoded).
    Pairs(Vec<(String, String)>),
}

/// The query string's pairs, decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k, true), decode(v, true))
        })
        .collect()
}

fn split_list(text: &str, sep: char) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split(sep).map(|s| s.trim().to_string()).collect()
}

/// The value of a parameter from its raw texts, per its style and shape;
/// None when it cannot be read as that shape.
fn value_of(def: &ParamDef, raw: Raw) -> Option<Value> {
    let sep = match def.style {
        Style::SpaceDelimited => ' ',
        Style::PipeDelimited => '|',
        _ => ',',
    };
    match (&def.shape, raw) {
        (_, Raw::Absent) => None,
        (Shape::Object(props), Raw::Pairs(pairs)) => {
            let types = |k: &str| {
                props
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or(Types::default(), |(_, t)| *t)
            };
            Some(Value::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| {
                        let value = coerce(&v, types(&k));
                        (k, value)
                    })
                    .collect(),
            ))
        }
        (Shape::Object(props), Raw::Values(values)) => {
            let text = values.into_iter().next().unwrap_or_default();
            let types = |k: &str| {
                props
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or(Types::default(), |(_, t)| *t)
            };
            let mut out = Map::new();
            if def.explode {
                // simple, exploded: `k=v,k2=v2`.
                for pair in split_list(&text, ',') {
                    let (k, v) = pair.split_once('=').unwrap_or((&pair, ""));
                    out.insert(k.to_string(), coerce(v, types(k)));
                }
            } else {
                // `k,v,k2,v2`.
                let list = split_list(&text, ',');
                for kv in list.chunks(2) {
                    let v = kv.get(1).map_or("", String::as_str);
                    out.insert(kv[0].clone(), coerce(v, types(&kv[0])));
                }
            }
            Some(Value::Object(out))
        }
        (Shape::Array(types), Raw::Values(values)) => {
            let items: Vec<String> =
                if def.location == In::Query && def.style == Style::Form && def.explode {
                    values
                } else {
                    values.iter().flat_map(|v| split_list(v, sep)).collect()
                };
            Some(Value::Array(
                items.iter().map(|v| coerce(v, *types)).collect(),
            ))
        }
        (Shape::Scalar(types), Raw::Values(values)) => values.first().map(|v| coerce(v, *types)),
        (_, Raw::Pairs(_)) => None,
    }
}

impl Param {
    /// The raw texts of this parameter in a request.
    fn raw(&self, path: &[(&str, &str)], query: &[(String, String)], headers: &HeaderMap) -> Raw {
        let name = self.def.name.as_str();
        match self.def.location {
            In::Path => match path.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => Raw::Values(vec![decode(v, false)]),
                None => Raw::Absent,
            },
            In::Query => {
                if let Shape::Object(props) = &self.def.shape {
                    if self.def.style == Style::DeepObject {
                        let pairs: Vec<(String, String)> = query
                            .iter()
                            .filter_map(|(k, v)| {
                                let key =
                                    k.strip_prefix(name)?.strip_prefix('[')?.strip_suffix(']')?;
                                Some((key.to_string(), v.clone()))
                            })
                            .collect();
                        return if pairs.is_empty() {
                            Raw::Absent
                        } else {
                            Raw::Pairs(pairs)
                        };
                    }
                    if self.def.explode {
                        let pairs: Vec<(String, String)> = query
                            .iter()
                            .filter(|(k, _)| props.iter().any(|(p, _)| p == k))
                            .cloned()
                            .collect();
                        return if pairs.is_empty() {
                            Raw::Absent
                        } else {
                            Raw::Pairs(pairs)
                        };
                    }
                }
                let values: Vec<String> = query
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .collect();
                if values.is_empty() {
                    Raw::Absent
                } else {
                    Raw::Values(values)
                }
            }
            In::Header => {
                let values: Vec<&str> = headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if values.is_empty() {
                    Raw::Absent
                } else {
                    Raw::Values(vec![values.join(", ")])
                }
            }
            In::Cookie => {
                let found = headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|c| c.trim().split_once('='))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| decode(v, false));
                match found {
                    Some(v) => Raw::Values(vec![v]),
                    None => Raw::Absent,
                }
            }
        }
    }
}

/// Adds the validator's complaints about `instance`, under `prefix`.
fn collect(
    validator: &jsonschema::Validator,
    instance: &Value,
    prefix: &str,
    out: &mut Vec<Violation>,
) {
    // The common case, a valid value, takes the validator's fast path;
    // the errors are gathered only for an invalid one.
    if validator.is_valid(instance) {
        return;
    }
    for e in validator.iter_errors(instance) {
        if out.len() >= MAX_VIOLATIONS {
            return;
        }
        let quoted = serde_json::to_string(e.instance().as_ref()).map_or(usize::MAX, |s| s.len());
        let message = if quoted <= MAX_QUOTED {
            e.to_string()
        } else {
            e.masked_with("the value").to_string()
        };
        out.push(Violation {
            pointer: format!("{prefix}{}", e.instance_path().as_str()),
            rule: e.kind().keyword().to_string(),
            message,
        });
    }
}

/// Where a JSON text broke.
fn json_violation(pointer: &str, e: &serde_json::Error) -> Violation {
    let message = e.to_string();
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => &message,
    };
    Violation {
        pointer: pointer.to_string(),
        rule: "json".into(),
        message: format!(
            "not valid JSON at line {}, column {}: {message}",
            e.line(),
            e.column()
        ),
    }
}

fn media(mut defs: Vec<MediaDef>, map: &[Option<usize>]) -> Vec<Media> {
    defs.drain(..)
        .map(|d| Media {
            validator: d.schema.and_then(|k| map.get(k).copied().flatten()),
            media: d.media,
        })
        .collect()
}

/// Whether `s` is standard base64 (the 3.0 `byte` format).
fn is_base64(s: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

impl OpenApi {
    /// Reads the document and compiles a validator for each of its schemas.
    pub fn build(def: &OpenApiDef, env: &BuildEnv) -> Result<OpenApi, Vec<(String, String)>> {
        OpenApi::load(def, env.base, env.name)
    }

    /// As [`OpenApi::build`], with `spec` relative to `base`, for a policy
    /// named `name` (in log lines).
    pub fn load(
        def: &OpenApiDef,
        base: &std::path::Path,
        name: &str,
    ) -> Result<OpenApi, Vec<(String, String)>> {
        let path = crate::config::resolve_path(base, &def.spec);
        let display = def.spec.display().to_string();
        let errors = |es: Vec<SpecError>| -> Vec<(String, String)> {
            es.into_iter()
                .map(|e| ("spec".to_string(), e.to_string()))
                .collect()
        };
        let mut spec = Spec::load(
            &path,
            &display,
            def.validate_responses != ResponseValidation::Off,
        )
        .map_err(errors)?;
        let Compiled {
            validators,
            body_validators,
            map,
        } = compile(&mut spec).map_err(errors)?;
        let mut matcher = Matcher::default();
        let mut items = Vec::new();
        let mut problems = Vec::new();
        for item in std::mem::take(&mut spec.paths) {
            if let Err(e) = matcher.insert(&item.template, items.len()) {
                problems.push(("spec".to_string(), format!("{display}: paths: {e}")));
                continue;
            }
            let mut methods: Vec<&str> =
                item.operations.iter().map(|o| o.method.as_str()).collect();
            if methods.contains(&"GET") && !methods.contains(&"HEAD") {
                methods.push("HEAD");
            }
            let allow =
                HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static(""));
            let operations = item
                .operations
                .into_iter()
                .map(|op| Operation {
                    method: op.method,
                    params: op
                        .params
                        .into_iter()
                        .map(|p| Param {
                            pointer: format!("/{}/{}", p.location.as_str(), escape(&p.name)),
                            validator: p.schema.and_then(|k| map.get(k).copied().flatten()),
                            def: p,
                        })
                        .collect(),
                    body: op.body.map(|b| (b.required, media(b.content, &map))),
                    responses: op
                        .responses
                        .into_iter()
                        .map(|r| Answer {
                            status: r.status,
                            content: media(r.content, &map),
                        })
                        .collect(),
                })
                .collect();
            items.push(PathItem {
                template: item.template,
                operations,
                allow,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let base = if spec.base_path.is_empty() {
            String::new()
        } else {
            format!("/{}", spec.base_path.join("/"))
        };
        Ok(OpenApi {
            name: name.to_string(),
            matcher,
            base,
            items,
            validators,
            body_validators,
            strict: def.strict,
            responses: def.validate_responses,
            max_body: def.max_body.0,
        })
    }

    /// The operation `method` on `uri` is, checked on its head: path,
    /// query, header and cookie parameters, and the body's type.
    fn head(&self, method: &Method, uri: &Uri, headers: &HeaderMap, has_body: bool) -> Head {
        let full_path = uri.path();
        let path = if self.base.is_empty() {
            Some(full_path)
        } else {
            full_path
                .strip_prefix(self.base.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                .map(|rest| if rest.is_empty() { "/" } else { rest })
        };
        let Some(found) = path.and_then(|p| self.matcher.find(p)) else {
            return if self.strict {
                Head::Refuse(Refusal {
                    status: StatusCode::NOT_FOUND,
                    detail: "the API description has no such path".into(),
                    violations: Vec::new(),
                    allow: None,
                })
            } else {
                Head::Undocumented
            };
        };
        let item = &self.items[found.item];
        let head = method == Method::HEAD;
        let position = item
            .operations
            .iter()
            .position(|o| o.method == method)
            .or_else(|| {
                // A HEAD is answered as a GET without its body.
                head.then(|| item.operations.iter().position(|o| o.method == Method::GET))
                    .flatten()
            });
        let Some(op_index) = position else {
            return if self.strict {
                Head::Refuse(Refusal {
                    status: StatusCode::METHOD_NOT_ALLOWED,
                    detail: format!("the API description has no {method} operation for this path"),
                    violations: Vec::new(),
                    allow: Some(item.allow.clone()),
                })
            } else {
                Head::Undocumented
            };
        };
        let op = &item.operations[op_index];
        let mut violations = Vec::new();
        let query = match uri.query() {
            Some(q) if op.params.iter().any(|p| p.def.location == In::Query) => query_pairs(q),
            _ => Vec::new(),
        };
        for p in &op.params {
            let raw = p.raw(&found.params, &query, headers);
            let absent = matches!(raw, Raw::Absent);
            if absent {
                if p.def.required {
                    violations.push(Violation {
                        pointer: p.pointer.clone(),
                        rule: "required".into(),
                        message: format!(
                            "the {} parameter `{}` is required",
                            p.def.location.as_str(),
                            p.def.name
                        ),
                    });
                }
                continue;
            }
            let Some(validator) = p.validator else {
                continue;
            };
            let value = if p.def.json {
                match raw {
                    Raw::Values(v) => {
                        match serde_json::from_str::<Value>(v.first().map_or("", String::as_str)) {
                            Ok(v) => v,
                            Err(e) => {
                                violations.push(json_violation(&p.pointer, &e));
                                continue;
                            }
                        }
                    }
                    _ => continue,
                }
            } else {
                match value_of(&p.def, raw) {
                    Some(v) => v,
                    None => continue,
                }
            };
            collect(
                &self.validators[validator],
                &value,
                &p.pointer,
                &mut violations,
            );
        }
        let matched = Matched {
            item: found.item,
            op: op_index,
            head,
        };
        let mut body = BodyPlan::Nothing;
        if let Some((required, content)) = &op.body {
            if !has_body {
                if *required {
                    violations.push(body_required());
                }
            } else if !content.is_empty() {
                // As sent: `pick` and `is_json_media` ignore case, so no
                // lowercased copy is made per request.
                let ctype = media_type(headers);
                let listed = || {
                    content
                        .iter()
                        .map(|m| m.media.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let unsupported = |detail: String, violations: Vec<Violation>| {
                    let mut violations = violations;
                    violations.push(Violation {
                        pointer: "/header/content-type".into(),
                        rule: "contentType".into(),
                        message: detail.clone(),
                    });
                    Head::Refuse(Refusal {
                        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        detail,
                        violations,
                        allow: None,
                    })
                };
                let Some(ctype) = ctype else {
                    return unsupported(
                        format!(
                            "the request body has no Content-Type; this operation accepts {}",
                            listed()
                        ),
                        violations,
                    );
                };
                let Some(m) = pick(content, ctype) else {
                    return unsupported(
                        format!(
                            "this operation does not accept `{ctype}`; it accepts {}",
                            listed()
                        ),
                        violations,
                    );
                };
                if let Some(v) = m.validator
                    && is_json_media(ctype)
                {
                    let encoded = headers
                        .get(header::CONTENT_ENCODING)
                        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
                    if encoded {
                        // An encoded body would pass unseen.
                        return unsupported(
                            "request bodies with a Content-Encoding cannot be validated".into(),
                            violations,
                        );
                    }
                    body = BodyPlan::Read {
                        validator: v,
                        required: *required,
                    };
                }
            }
        }
        Head::Checked {
            matched,
            violations,
            body,
        }
    }

    /// Checks a JSON body with validator `v`, adding its violations; an
    /// empty body is one only when it is `required`.
    fn body(&self, v: usize, bytes: &[u8], required: bool, violations: &mut Vec<Violation>) {
        if bytes.is_empty() {
            if required {
                violations.push(body_required());
            }
            return;
        }
        // The common case, a valid body, is settled on a borrowed reading
        // of it (no `Value` tree to build); anything else is read again as
        // a `Value`, which words the violations (or the JSON error).
        if let Some(Some(fast)) = self.body_validators.get(v)
            && let Some(doc) = doc::parse(bytes)
            && fast.is_valid(&doc)
        {
            return;
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(doc) => collect(&self.validators[v], &doc, "/body", violations),
            Err(e) => violations.push(json_violation("/body", &e)),
        }
    }

    /// Checks a whole request (its body already read): what the policy
    /// does per request, without the reading. `Ok` when it may pass.
    pub fn check_request(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Refusal> {
        match self.head(method, uri, headers, !body.is_empty()) {
            Head::Undocumented => Ok(()),
            Head::Refuse(r) => Err(r),
            Head::Checked {
                mut violations,
                body: plan,
                ..
            } => {
                if let BodyPlan::Read {
                    validator,
                    required,
                } = plan
                {
                    self.body(validator, body, required, &mut violations);
                }
                invalid(violations)
            }
        }
    }

    /// Checks an answer to the operation `matched` (its body already read,
    /// `None` when it is not needed): the violations found.
    fn check_response(
        &self,
        matched: Matched,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<Option<usize>, Vec<Violation>> {
        let item = &self.items[matched.item];
        let op = &item.operations[matched.op];
        let code = status.as_u16();
        let answer = op
            .responses
            .iter()
            .find(|a| a.status == StatusKey::Exact(code))
            .or_else(|| {
                op.responses
                    .iter()
                    .find(|a| a.status == StatusKey::Range(code / 100))
            })
            .or_else(|| op.responses.iter().find(|a| a.status == StatusKey::Default));
        let Some(answer) = answer else {
            return Err(vec![Violation {
                pointer: "/status".into(),
                rule: "status".into(),
                message: format!(
                    "status {code} is not documented for {} {}",
                    op.method, item.template
                ),
            }]);
        };
        if answer.content.is_empty()
            || matched.head
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(None);
        }
        let Some(ctype) = media_type(headers) else {
            if headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|l| l == "0")
            {
                return Ok(None);
            }
            return Err(vec![Violation {
                pointer: "/header/content-type".into(),
                rule: "contentType".into(),
                message: format!("the answer (status {code}) has no Content-Type"),
            }]);
        };
        let Some(m) = pick(&answer.content, ctype) else {
            return Err(vec![Violation {
                pointer: "/header/content-type".into(),
                rule: "contentType".into(),
                message: format!("`{ctype}` is not documented for status {code}"),
            }]);
        };
        let encoded = headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        match m.validator {
            Some(v) if is_json_media(ctype) && !encoded => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// What to do with an answer that breaks the document: log it, and
    /// under `enforce` replace it with 502.
    fn answer_broke(&self, ctx: &RequestCtx, resp: &mut Response<Body>, violations: &[Violation]) {
        let listed = serde_json::to_string(violations).unwrap_or_default();
        tracing::warn!(
            request_id = ctx.request_id_str(),
            policy = self.name.as_str(),
            status = resp.status().as_u16(),
            violations = listed.as_str(),
            "openapi: the upstream's answer does not match the API description"
        );
        if self.responses == ResponseValidation::Enforce {
            *resp = problem_with(
                StatusCode::BAD_GATEWAY,
                "the upstream's answer did not match the API description",
                ctx.request_id_str(),
                Map::new(),
            );
        }
    }
}

fn body_required() -> Violation {
    Violation {
        pointer: "/body".into(),
        rule: "required".into(),
        message: "this operation requires a request body".into(),
    }
}

/// `Ok` for no violations, else the 400.
fn invalid(violations: Vec<Violation>) -> Result<(), Refusal> {
    if violations.is_empty() {
        return Ok(());
    }
    let detail = if violations.len() == 1 {
        "the request does not match the API description: 1 violation".to_string()
    } else {
        format!(
            "the request does not match the API description: {} violations",
            violations.len()
        )
    };
    Err(Refusal {
        status: StatusCode::BAD_REQUEST,
        detail,
        violations,
        allow: None,
    })
}

impl Refusal {
    /// The problem+json answer, with `errors` and (for 405) `Allow`.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let mut extra = Map::new();
        if !self.violations.is_empty() {
            extra.insert("errors".into(), json!(self.violations));
        }
        let mut resp = problem_with(self.status, &self.detail, request_id, extra);
        if let Some(allow) = self.allow {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        resp
    }
}

/// The compiled schemas.
struct Compiled {
    /// A validator for each schema used.
    validators: Vec<jsonschema::Validator>,
    /// For each of `validators`, its twin over [`doc::BodyValue`] when a
    /// request or answer body uses that schema.
    body_validators: Vec<Option<jsonschema::Validator<doc::BodyJson>>>,
    /// For each bundle entry, its validator's index.
    map: Vec<Option<usize>>,
}

/// Compiles a validator for every schema a parameter or body names
/// directly (the shared ones come with them through `$ref`).
fn compile(spec: &mut Spec) -> Result<Compiled, Vec<SpecError>> {
    let mut used = vec![false; spec.defs.len()];
    let mut for_body = vec![false; spec.defs.len()];
    for item in &spec.paths {
        for op in &item.operations {
            for k in op.params.iter().filter_map(|p| p.schema) {
                used[k] = true;
            }
            let bodies = op
                .body
                .iter()
                .flat_map(|b| b.content.iter().filter_map(|m| m.schema));
            let answers = op
                .responses
                .iter()
                .flat_map(|r| r.content.iter().filter_map(|m| m.schema));
            for k in bodies.chain(answers) {
                used[k] = true;
                for_body[k] = true;
            }
        }
    }
    let defs: Map<String, Value> = spec
        .defs
        .iter()
        .enumerate()
        .map(|(i, d)| (i.to_string(), d.clone()))
        .collect();
    let bundle = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs});
    let fail = |e: String| {
        vec![SpecError::Unreadable {
            file: "the bundled schemas".into(),
            why: e,
        }]
    };
    let registry = jsonschema::Registry::new()
        .draft(jsonschema::Draft::Draft202012)
        .add(spec::BUNDLE, bundle)
        .and_then(|r| r.prepare())
        .map_err(|e| fail(e.to_string()))?;
    let options = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_registry(&registry)
        .should_validate_formats(true)
        .with_format("byte", is_base64);
    // The same options, for validators over a body's borrowed reading.
    let body_options = jsonschema::options_for::<doc::BodyJson>()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_registry(&registry)
        .should_validate_formats(true)
        .with_format("byte", is_base64);
    let mut validators = Vec::new();
    let mut body_validators = Vec::new();
    let mut map = vec![None; spec.defs.len()];
    let mut errors = Vec::new();
    for (key, used) in used.into_iter().enumerate() {
        if !used {
            continue;
        }
        let schema = json!({"$ref": format!("{}#/$defs/{key}", spec::BUNDLE)});
        let built = options.build(&schema).and_then(|v| {
            let twin = if for_body[key] {
                Some(body_options.build(&schema)?)
            } else {
                None
            };
            Ok((v, twin))
        });
        match built {
            Ok((v, twin)) => {
                map[key] = Some(validators.len());
                validators.push(v);
                body_validators.push(twin);
            }
            Err(e) => {
                let pointer = e.instance_path().as_str().to_string();
                errors.push(spec.schema_error(key, &pointer, format!("not a valid schema: {e}")));
            }
        }
    }
    if errors.is_empty() {
        Ok(Compiled {
            validators,
            body_validators,
            map,
        })
    } else {
        Err(errors)
    }
}

/// Whether a request comes with a body.
fn has_body(body: &Body) -> bool {
    use hyper::body::Body as _;
    !(body.is_end_stream() || body.size_hint().exact() == Some(0))
}

/// How reading an answer's body up to a limit went.
enum Read {
    /// All of it.
    Whole(Bytes),
    /// It is longer than the limit: the body again, as it was, for passing on.
    TooLarge(Body),
    /// It broke off.
    Broken(BoxError),
}

/// Reads `body` whole up to `limit`; past it, gives the body back whole
/// (the bytes read, then the rest as it streams).
async fn read_or_return(mut body: Body, limit: u64) -> Read {
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Read::Broken(e),
        };
        if let Ok(data) = frame.into_data() {
            kept.extend_from_slice(&data);
            if kept.len() as u64 > limit {
                let head = futures_util::stream::once(async move {
                    Ok::<_, BoxError>(hyper::body::Frame::data(kept.freeze()))
                });
                let rest = http_body_util::BodyStream::new(body);
                let stream = futures_util::StreamExt::chain(head, rest);
                return Read::TooLarge(http_body_util::StreamBody::new(stream).boxed_unsync());
            }
        }
    }
    Read::Whole(kept.freeze())
}

impl Policy for OpenApi {
    fn phase(&self) -> Phase {
        Phase::Validate
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let has_body = has_body(req.body());
        match self.head(req.method(), req.uri(), req.headers(), has_body) {
            Head::Undocumented => Flow::Continue,
            Head::Refuse(r) => Flow::Respond(r.into_response(ctx.request_id_str())),
            Head::Checked {
                matched,
                violations,
                body,
            } => {
                if self.responses != ResponseValidation::Off {
                    ctx.extensions.insert(matched);
                }
                match body {
                    BodyPlan::Read {
                        validator,
                        required,
                    } => {
                        ctx.extensions.insert(PendingBody {
                            violations,
                            validator,
                            required,
                        });
                        Flow::Continue
                    }
                    BodyPlan::Nothing => match invalid(violations) {
                        Ok(()) => Flow::Continue,
                        Err(r) => Flow::Respond(r.into_response(ctx.request_id_str())),
                    },
                }
            }
        }
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let pending = ctx.extensions.remove::<PendingBody>()?;
        Some(Box::pin(async move {
            let PendingBody {
                mut violations,
                validator,
                required,
            } = pending;
            let body = std::mem::replace(req.body_mut(), crate::http::body::empty());
            let bytes = match crate::http::body::read_whole(body, self.max_body).await {
                Ok(b) => b,
                Err(crate::http::body::ReadError::TooLarge(n)) => {
                    return too_large(ctx, n);
                }
                Err(crate::http::body::ReadError::OverListenerLimit) => {
                    return Flow::Respond(problem_with(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than this listener accepts",
                        ctx.request_id_str(),
                        Map::new(),
                    ));
                }
                Err(crate::http::body::ReadError::Broken(_)) => {
                    return Flow::Respond(problem_with(
                        StatusCode::BAD_REQUEST,
                        "the request body broke off",
                        ctx.request_id_str(),
                        Map::new(),
                    ));
                }
            };
            self.body(validator, &bytes, required, &mut violations);
            match invalid(violations) {
                Ok(()) => {
                    *req.body_mut() = full(bytes);
                    Flow::Continue
                }
                Err(r) => Flow::Respond(r.into_response(ctx.request_id_str())),
            }
        }))
    }

    fn response_phase(&self) -> Option<ResponsePhase> {
        (self.responses != ResponseValidation::Off).then_some(ResponsePhase::ResponseTransform)
    }

    fn on_response_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        resp: &'a mut Response<Body>,
    ) -> Option<BoxFuture<'a, ()>> {
        // Only the upstream's own answers are its to match the document.
        if !ctx.upstream_answered {
            return None;
        }
        let matched = *ctx.extensions.get::<Matched>()?;
        let validator = match self.check_response(matched, resp.status(), resp.headers()) {
            Ok(Some(v)) => v,
            Ok(None) => return None,
            Err(violations) => {
                self.answer_broke(ctx, resp, &violations);
                return None;
            }
        };
        let too_big = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > self.max_body);
        if too_big {
            self.answer_too_large(ctx, resp);
            return None;
        }
        Some(Box::pin(async move {
            let body = std::mem::replace(resp.body_mut(), crate::http::body::empty());
            let bytes = match read_or_return(body, self.max_body).await {
                Read::Whole(b) => b,
                Read::TooLarge(body) => {
                    *resp.body_mut() = body;
                    self.answer_too_large(ctx, resp);
                    return;
                }
                Read::Broken(e) => {
                    tracing::warn!(
                        request_id = ctx.request_id_str(),
                        policy = self.name.as_str(),
                        "openapi: the upstream's body broke off: {e}"
                    );
                    *resp = problem_with(
                        StatusCode::BAD_GATEWAY,
                        "the upstream's answer broke off",
                        ctx.request_id_str(),
                        Map::new(),
                    );
                    return;
                }
            };
            let mut violations = Vec::new();
            self.body(validator, &bytes, false, &mut violations);
            *resp.body_mut() = full(bytes);
            if !violations.is_empty() {
                self.answer_broke(ctx, resp, &violations);
            }
        }))
    }
}

impl OpenApi {
    /// An answer too long to check: passed on (log) or a 502 (enforce).
    fn answer_too_large(&self, ctx: &RequestCtx, resp: &mut Response<Body>) {
        tracing::warn!(
            request_id = ctx.request_id_str(),
            policy = self.name.as_str(),
            "openapi: the upstream's answer is larger than max_body ({} bytes) and was not checked",
            self.max_body
        );
        if self.responses == ResponseValidation::Enforce {
            *resp = problem_with(
                StatusCode::BAD_GATEWAY,
                "the upstream's answer did not match the API description",
                ctx.request_id_str(),
                Map::new(),
            );
        }
    }
}

fn too_large(ctx: &RequestCtx, limit: u64) -> Flow {
    Flow::Respond(problem_with(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("this route validates request bodies of at most {limit} bytes"),
        ctx.request_id_str(),
        Map::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use crate::policy::consumer::Consumers;
    use std::sync::Arc;

    const ORDERS: &str = r##"openapi: 3.0.3
info: { title: orders, version: "1" }
servers: [{ url: "https://api.example.com/v1" }]
paths:
  /orders:
    get:
      parameters:
        - { name: limit, in: query, schema: { type: integer, minimum: 1, maximum: 100 } }
        - { name: status, in: query, schema: { type: array, items: { type: string, enum: [open, paid] } } }
        - { name: filter, in: query, style: deepObject, schema: { type: object, properties: { min: { type: number } } } }
        - { name: x-tenant, in: header, required: true, schema: { type: string, format: uuid } }
      responses:
        "200":
          content:
            application/json:
              schema: { type: array, items: { $ref: "#/components/schemas/Order" } }
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/NewOrder" }
      responses:
        "201": { description: created }
  /orders/{id}:
    parameters:
      - { name: id, in: path, required: true, schema: { type: integer, exclusiveMinimum: true, minimum: 0 } }
    get:
      parameters:
        - { name: session, in: cookie, schema: { type: string, minLength: 4 } }
      responses:
        "200":
          content:
            application/json:
              schema: { $ref: "#/components/schemas/Order" }
        default: { description: error }
    delete:
      responses:
        "204": { description: gone }
  /orders/mine:
    get:
      responses:
        "200": { description: mine }
components:
  schemas:
    NewOrder:
      type: object
      required: [customer, items]
      additionalProperties: false
      properties:
        customer: { type: string, format: email }
        note: { type: string, nullable: true, maxLength: 10 }
        items:
          type: array
          minItems: 1
          items:
            type: object
            required: [sku, qty]
            properties:
              sku: { type: string, pattern: "^[A-Z]{3}-[0-9]+$" }
              qty: { type: integer, minimum: 1 }
        payment:
          oneOf:
            - { type: object, required: [card], properties: { card: { type: string } }, additionalProperties: false }
            - { type: object, required: [iban], properties: { iban: { type: string } }, additionalProperties: false }
    Order:
      type: object
      required: [id, status]
      properties:
        id: { type: integer }
        status: { type: string, enum: [open, paid] }
"##;

    fn policy(spec: &str, extra: &str) -> OpenApi {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("orders.yaml"), spec).unwrap();
        let def: crate::config::model::PolicyDef =
            serde_saphyr::from_str(&format!("{{ type: openapi, spec: orders.yaml{extra} }}"))
                .unwrap();
        let crate::config::model::PolicyDef::Openapi(def) = def else {
            panic!("not an openapi definition")
        };
        let metrics = Metrics::new();
        let consumers = Arc::new(Consumers::empty());
        let mut env = crate::policy::tests::env("orders-spec", &metrics, &consumers);
        env.base = dir.path();
        OpenApi::build(&def, &env).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn check(
        p: &OpenApi,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(), Refusal> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        p.check_request(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &uri.parse().unwrap(),
            &map,
            body.as_bytes(),
        )
    }

    fn violations(r: Result<(), Refusal>) -> Vec<(String, String)> {
        let r = r.expect_err("refused");
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
        r.violations
            .into_iter()
            .map(|v| (v.pointer, v.rule))
            .collect()
    }

    const TENANT: (&str, &str) = ("x-tenant", "7d5b1c2e-9a3f-4e8b-8c1d-2f6a0b9e4d3c");
    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn a_valid_request_passes() {
        let p = policy(ORDERS, "");
        check(
            &p,
            "GET",
            "/v1/orders?limit=10&status=open&status=paid&filter[min]=2.5",
            &[TENANT],
            "",
        )
        .unwrap();
        check(
            &p,
            "GET",
            "/v1/orders/42",
            &[("cookie", "a=b; session=abcdef")],
            "",
        )
        .unwrap();
        check(&p, "GET", "/v1/orders/mine", &[], "").unwrap();
        let body = r#"{"customer": "ada@example.com", "note": null, "items": [{"sku": "ABC-1", "qty": 2}], "payment": {"card": "4111"}}"#;
        check(&p, "POST", "/v1/orders", &[JSON], body).unwrap();
    }

    #[test]
    fn every_violation_of_a_body_is_listed_with_its_pointer_and_rule() {
        let p = policy(ORDERS, "");
        let body = r#"{"customer": "not-an-email", "note": "far too long a note", "items": [{"sku": "abc", "qty": 0}], "payment": {"card": "1", "iban": "2"}, "extra": 1}"#;
        let mut got = violations(check(&p, "POST", "/v1/orders", &[JSON], body));
        got.sort();
        let mut want: Vec<(String, String)> = [
            ("/body", "additionalProperties"),
            ("/body/customer", "format"),
            ("/body/note", "maxLength"),
            ("/body/items/0/sku", "pattern"),
            ("/body/items/0/qty", "minimum"),
            ("/body/payment", "oneOf"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        want.sort();
        assert_eq!(got, want);
        let r = check(&p, "POST", "/v1/orders", &[JSON], body).unwrap_err();
        let message = |pointer: &str| {
            r.violations
                .iter()
                .find(|v| v.pointer == pointer)
                .map(|v| v.message.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            message("/body/items/0/qty"),
            "0 is less than the minimum of 1"
        );
        assert_eq!(
            message("/body/customer"),
            r#""not-an-email" is not a "email""#
        );
        // Long values are not quoted back.
        let long = format!(
            r#"{{"customer": "a@b.c", "items": [], "note": "{}"}}"#,
            "x".repeat(100)
        );
        let r = check(&p, "POST", "/v1/orders", &[JSON], &long).unwrap_err();
        let note = r
            .violations
            .iter()
            .find(|v| v.pointer == "/body/note")
            .unwrap();
        assert!(!note.message.contains("xxxx"), "{}", note.message);
        assert!(note.message.starts_with("the value"), "{}", note.message);
    }

    #[test]
    fn the_borrowed_reading_of_a_body_agrees_with_value() {
        let p = policy(ORDERS, "");
        let bodies = [
            r#"{"customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": 2}]}"#,
            r#"{"customer": "ada@example.com", "note": null, "items": [{"sku": "ABC-1", "qty": 2.0}], "payment": {"iban": "DE1"}}"#,
            r#"{"customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": 1.5}]}"#,
            r#"{"customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": 18446744073709551615}]}"#,
            r#"{"customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": -1}]}"#,
            r#"{"customer": "ada@example.com", "items": []}"#,
            r#"{"customer": "ad\u0061@example.com", "items": [{"sku": "ABC-\u0031", "qty": 1}]}"#,
            r#"{"customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": 1}], "payment": {"card": "1", "iban": "2"}}"#,
            r#"{"customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": 1}], "extra": {}}"#,
            r#"{"items": [{"sku": "ABC-1", "qty": 1}]}"#,
            r#"[]"#,
            r#""text""#,
            r#"null"#,
        ];
        let checked: Vec<_> = p
            .body_validators
            .iter()
            .enumerate()
            .filter_map(|(i, fast)| fast.as_ref().map(|f| (&p.validators[i], f)))
            .collect();
        assert!(!checked.is_empty());
        for body in bodies {
            let value: Value = serde_json::from_str(body).unwrap();
            let read = doc::parse(body.as_bytes()).unwrap();
            for (slow, fast) in &checked {
                assert_eq!(slow.is_valid(&value), fast.is_valid(&read), "{body}");
            }
        }
    }

    #[test]
    fn a_body_with_a_repeated_name_is_read_as_value_reads_it() {
        let p = policy(ORDERS, "");
        // A `Value` keeps the last of repeated names.
        let body = r#"{"customer": "nope", "customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": 2}]}"#;
        check(&p, "POST", "/v1/orders", &[JSON], body).unwrap();
        let body = r#"{"customer": "ada@example.com", "customer": "nope", "items": [{"sku": "ABC-1", "qty": 2}]}"#;
        let got = violations(check(&p, "POST", "/v1/orders", &[JSON], body));
        assert_eq!(got, [("/body/customer".to_string(), "format".to_string())]);
        let got = violations(check(&p, "POST", "/v1/orders", &[JSON], "{\"customer\": "));
        assert_eq!(got, [("/body".to_string(), "json".to_string())]);
    }

    #[test]
    fn the_content_type_is_matched_in_any_case() {
        let p = policy(ORDERS, "");
        let body = r#"{"customer": "ada@example.com", "items": [{"sku": "ABC-1", "qty": 2}]}"#;
        let upper = ("content-type", "Application/JSON; charset=UTF-8");
        check(&p, "POST", "/v1/orders", &[upper], body).unwrap();
        let got = violations(check(&p, "POST", "/v1/orders", &[upper], "{}"));
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn parameters_are_typed_by_their_schemas() {
        let p = policy(ORDERS, "");
        let mut got = violations(check(
            &p,
            "GET",
            "/v1/orders?limit=0&status=shipped&filter[min]=x",
            &[("x-tenant", "nope")],
            "",
        ));
        got.sort();
        assert_eq!(
            got,
            [
                ("/header/x-tenant".to_string(), "format".to_string()),
                ("/query/filter/min".to_string(), "type".to_string()),
                ("/query/limit".to_string(), "minimum".to_string()),
                ("/query/status/0".to_string(), "enum".to_string()),
            ]
        );
        assert_eq!(
            violations(check(&p, "GET", "/v1/orders?limit=ten", &[TENANT], "")),
            [("/query/limit".to_string(), "type".to_string())]
        );
        assert_eq!(
            violations(check(&p, "GET", "/v1/orders", &[], "")),
            [("/header/x-tenant".to_string(), "required".to_string())]
        );
        // exclusiveMinimum: true (3.0) on the path parameter.
        assert_eq!(
            violations(check(&p, "DELETE", "/v1/orders/0", &[], "")),
            [("/path/id".to_string(), "exclusiveMinimum".to_string())]
        );
        assert_eq!(
            violations(check(
                &p,
                "GET",
                "/v1/orders/1",
                &[("cookie", "session=ab")],
                ""
            )),
            [("/cookie/session".to_string(), "minLength".to_string())]
        );
    }

    #[test]
    fn bodies_of_the_wrong_type_are_415_and_missing_ones_400() {
        let p = policy(ORDERS, "");
        let r = check(
            &p,
            "POST",
            "/v1/orders",
            &[("content-type", "text/plain")],
            "x",
        )
        .unwrap_err();
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(r.detail.contains("application/json"), "{}", r.detail);
        let r = check(&p, "POST", "/v1/orders", &[], "x").unwrap_err();
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            violations(check(&p, "POST", "/v1/orders", &[JSON], "")),
            [("/body".to_string(), "required".to_string())]
        );
        assert_eq!(
            violations(check(&p, "POST", "/v1/orders", &[JSON], "{\"customer\": ")),
            [("/body".to_string(), "json".to_string())]
        );
        let r = check(
            &p,
            "POST",
            "/v1/orders",
            &[JSON, ("content-encoding", "gzip")],
            "{}",
        )
        .unwrap_err();
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn strict_mode_answers_undocumented_paths_and_methods() {
        let lax = policy(ORDERS, "");
        check(&lax, "GET", "/v1/customers", &[], "").unwrap();
        check(&lax, "PUT", "/v1/orders/1", &[], "").unwrap();
        check(&lax, "GET", "/orders/1", &[], "").unwrap();

        let strict = policy(ORDERS, ", strict: true");
        let r = check(&strict, "GET", "/v1/customers", &[], "").unwrap_err();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = check(&strict, "GET", "/orders/1", &[], "").unwrap_err();
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "outside the server's base path"
        );
        let r = check(&strict, "PUT", "/v1/orders/1", &[], "").unwrap_err();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.allow.unwrap(), "GET, DELETE, HEAD");
        check(&strict, "HEAD", "/v1/orders/1", &[], "").unwrap();
    }

    #[test]
    fn answers_are_matched_by_status_range_and_default() {
        let p = policy(ORDERS, ", validate_responses: enforce");
        let get_one = Matched {
            item: p.matcher.find("/orders/{id}").unwrap().item,
            op: 0,
            head: false,
        };
        let json_headers = {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h
        };
        assert!(matches!(
            p.check_response(get_one, StatusCode::OK, &json_headers),
            Ok(Some(_))
        ));
        // `default` covers the rest, without a body documented.
        assert!(matches!(
            p.check_response(get_one, StatusCode::NOT_FOUND, &json_headers),
            Ok(None)
        ));
        let html = {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            h
        };
        let e = p
            .check_response(get_one, StatusCode::OK, &html)
            .unwrap_err();
        assert_eq!(e[0].rule, "contentType");
        let delete = Matched { op: 1, ..get_one };
        let e = p
            .check_response(delete, StatusCode::OK, &json_headers)
            .unwrap_err();
        assert_eq!(e[0].rule, "status");
        assert!(
            e[0].message.contains("DELETE /orders/{id}"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn openapi_31_type_arrays_and_recursion_validate() {
        let spec = r##"openapi: 3.1.0
paths:
  /nodes:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: "#/components/schemas/Node" }
components:
  schemas:
    Node:
      type: object
      required: [name]
      properties:
        name: { type: [string, "null"] }
        children: { type: array, items: { $ref: "#/components/schemas/Node" } }
"##;
        let p = policy(spec, "");
        check(
            &p,
            "POST",
            "/nodes",
            &[JSON],
            r#"{"name": null, "children": [{"name": "a", "children": [{"name": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            violations(check(
                &p,
                "POST",
                "/nodes",
                &[JSON],
                r#"{"name": "x", "children": [{"children": [{"name": 3}]}]}"#
            )),
            [
                ("/body/children/0".to_string(), "required".to_string()),
                (
                    "/body/children/0/children/0/name".to_string(),
                    "type".to_string()
                ),
            ]
        );
    }

    #[test]
    fn query_styles_split_arrays_their_way() {
        let def = |style: Style, explode: bool| ParamDef {
            name: "ids".into(),
            location: In::Query,
            required: false,
            style,
            explode,
            shape: Shape::Array(Types {
                integer: true,
                ..Types::default()
            }),
            schema: None,
            json: false,
        };
        let values = |v: &[&str]| Raw::Values(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            value_of(&def(Style::Form, true), values(&["1", "2"])),
            Some(json!([1, 2]))
        );
        assert_eq!(
            value_of(&def(Style::Form, false), values(&["1,2"])),
            Some(json!([1, 2]))
        );
        assert_eq!(
            value_of(&def(Style::PipeDelimited, false), values(&["1|x"])),
            Some(json!([1, "x"]))
        );
        assert_eq!(
            value_of(&def(Style::SpaceDelimited, false), values(&["3 4"])),
            Some(json!([3, 4]))
        );
        assert_eq!(
            query_pairs("a=1+2&b=%C3%A9&c"),
            [
                ("a".into(), "1 2".into()),
                ("b".into(), "é".into()),
                ("c".into(), String::new())
            ]
        );
    }
}
