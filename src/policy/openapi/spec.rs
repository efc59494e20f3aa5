//! Loading an OpenAPI 3.0 or 3.1 document for the `openapi` policy: the
//! file and the sibling files its `$ref`s name, the operations with their
//! parameters, bodies and answers, and every schema turned into JSON
//! Schema 2020-12 in one bundle.
//!
//! Each schema becomes an entry of the bundle's `$defs` and every `$ref`
//! between schemas becomes a `$ref` into the bundle, so a recursive schema
//! (a tree of categories) stays a cycle of references instead of an
//! endless inlining. Parameters, request bodies, answers and path items
//! that are `$ref`s are followed here, with a cap on the hops.
//!
//! OpenAPI 3.0 schemas are not JSON Schema: `nullable: true` becomes a
//! `null` in `type` (and in `enum`), boolean `exclusiveMinimum` and
//! `exclusiveMaximum` become the numeric form, and a `$ref`'s siblings are
//! dropped as 3.0 says. In either version a property that is `readOnly`
//! is not required of a request, nor a `writeOnly` one of an answer.
//! Unknown keywords (`discriminator`, `xml`, `example`) are annotations.
//!
//! Every mistake is reported at the document's own `file:line:column`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::config::locate::{Format, PathSeg, SourceMap};

/// The URI the bundle of schemas is registered under (never fetched).
pub const BUNDLE: &str = "urn:portcullis:openapi";

/// How many `$ref`s in a row are followed before calling it a cycle.
const MAX_HOPS: usize = 32;

/// The methods a path item may document, as they are written there.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The OpenAPI version of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 3.0.x: schemas are an extended subset of JSON Schema draft 5.
    V30,
    /// 3.1.x: schemas are JSON Schema 2020-12.
    V31,
}

/// Which way a schema is used: `readOnly` properties are not required of
/// requests, `writeOnly` ones not of answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A parameter or a request body.
    Request,
    /// An answer's body.
    Response,
}

/// A mistake in the document (or in a file it refers to).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read at all.
    #[error("{file}: cannot read the OpenAPI document: {why}")]
    Unreadable {
        /// The file as the configuration names it.
        file: String,
        /// The system's reason.
        why: String,
    },
    /// A mistake at a place in a file.
    #[error("{file}:{line}:{column}: {message}")]
    At {
        /// The file as the configuration names it.
        file: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// What is wrong.
        message: String,
    },
}

/// Where a parameter is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum In {
    /// A templated path segment.
    Path,
    /// The query string.
    Query,
    /// A header (names compared without case).
    Header,
    /// A cookie of the `Cookie` header.
    Cookie,
}

impl In {
    /// The pointer prefix violations of this kind of parameter get.
    pub fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
            In::Cookie => "cookie",
        }
    }
}

/// How a parameter's value is serialized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Comma-separated (path and header default).
    Simple,
    /// `name=value` pairs (query and cookie default).
    Form,
    /// Space-separated array.
    SpaceDelimited,
    /// `|`-separated array.
    PipeDelimited,
    /// `name[key]=value` objects.
    DeepObject,
}

/// The JSON types a schema allows at its top, for turning parameter text
/// into values before validating them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Types {
    /// `integer`.
    pub integer: bool,
    /// `number`.
    pub number: bool,
    /// `boolean`.
    pub boolean: bool,
}

/// What a parameter's value looks like once parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    Scalar(Types),
    /// A list of values.
    Array(Types),
    /// An object; the properties' types.
    Object(Vec<(String, Types)>),
}

/// A documented parameter.
#[derive(Debug)]
pub struct ParamDef {
    /// Its name (lower case for headers).
    pub name: String,
    /// Where it is sent.
    pub location: In,
    /// Whether a request must send it.
    pub required: bool,
    /// How its value is serialized.
    pub style: Style,
    /// Whether arrays and objects are spread over several parameters.
    pub explode: bool,
    /// How text becomes a value.
    pub shape: Shape,
    /// Its schema's entry in the bundle.
    pub schema: Option<usize>,
    /// The value is a JSON text (`content: application/json` instead of `schema`).
    pub json: bool,
}

/// One media type a body may have.
#[derive(Debug)]
pub struct MediaDef {
    /// `type/subtype` in lower case, possibly with `*`.
    pub media: String,
    /// Its schema's entry in the bundle.
    pub schema: Option<usize>,
}

/// A documented request body.
#[derive(Debug)]
pub struct BodyDef {
    /// Whether a request must have one.
    pub required: bool,
    /// The media types it may have.
    pub content: Vec<MediaDef>,
}

/// Which statuses a documented answer covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKey {
    /// One status (`200`).
    Exact(u16),
    /// A class (`2XX`), by its first digit.
    Range(u16),
    /// `default`: any other status.
    Default,
}

/// A documented answer.
#[derive(Debug)]
pub struct ResponseDef {
    /// The statuses it covers.
    pub status: StatusKey,
    /// Its media types (empty: no body documented).
    pub content: Vec<MediaDef>,
}

/// A documented operation.
#[derive(Debug)]
pub struct OperationDef {
    /// The method, upper case.
    pub method: http::Method,
    /// Path-item and operation parameters merged (the operation's win).
    pub params: Vec<ParamDef>,
    /// The request body, if one is documented.
    pub body: Option<BodyDef>,
    /// The answers (only when answers are checked).
    pub responses: Vec<ResponseDef>,
}

/// A documented path.
#[derive(Debug)]
pub struct PathItemDef {
    /// The template (`/orders/{id}`).
    pub template: String,
    /// Its operations.
    pub operations: Vec<OperationDef>,
}

/// One file of the document.
struct File {
    path: PathBuf,
    display: String,
    text: String,
    value: Value,
    map: Option<Option<SourceMap>>,
}

/// Why a `$ref` could not be followed.
enum RefFail {
    /// Reported at the `$ref`.
    Here(String),
    /// Reported in the file it names (which does not parse).
    There(SpecError),
}

/// A loaded document: operations and the bundle of schemas.
pub struct Spec {
    /// The document's version.
    pub version: Version,
    /// Segments of the first server URL's path, stripped from request paths.
    pub base_path: Vec<String>,
    /// The documented paths.
    pub paths: Vec<PathItemDef>,
    /// The schemas, by entry (`$defs/<n>` of the bundle).
    pub defs: Vec<Value>,
    origins: Vec<(usize, Vec<PathSeg>)>,
    files: Vec<File>,
    by_path: HashMap<PathBuf, usize>,
    memo: HashMap<(usize, String, Direction), usize>,
    errors: Vec<SpecError>,
}

/// Reads one file as YAML or JSON (by its extension; JSON is also YAML).
fn parse(display: &str, text: &str, json: bool) -> Result<Value, SpecError> {
    let at = |line: usize, column: usize, message: String| SpecError::At {
        file: display.to_string(),
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
        message,
    };
    if json {
        return serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            at(e.line(), e.column(), format!("not valid JSON: {message}"))
        });
    }
    let yaml: Yaml = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 1));
        let message = e.without_snippet().to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        at(line, column, format!("not valid YAML: {message}"))
    })?;
    Ok(yaml.0)
}

/// A YAML value as JSON: keys that YAML reads as numbers or booleans
/// (`200:` under `responses`) become their text.
struct Yaml(Value);

impl<'de> serde::Deserialize<'de> for Yaml {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(YamlVisitor).map(Yaml)
    }
}

struct YamlVisitor;

impl<'de> serde::de::Visitor<'de> for YamlVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(YamlVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Yaml(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((Yaml(k), Yaml(v))) = map.next_entry()? {
            let key = match k {
                Value::String(s) => s,
                Value::Null => "null".to_string(),
                other => other.to_string(),
            };
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The path segments a JSON pointer names in `root`, when it names something.
fn pointer_segs(root: &Value, pointer: &str) -> Option<Vec<PathSeg>> {
    let mut out = Vec::new();
    if pointer.is_empty() {
        return Some(out);
    }
    let mut at = root;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        at = match at {
            Value::Object(m) => {
                let next = m.get(&token)?;
                out.push(PathSeg::Key(token));
                next
            }
            Value::Array(a) => {
                let i: usize = token.parse().ok()?;
                out.push(PathSeg::Index(i));
                a.get(i)?
            }
            _ => return None,
        };
    }
    Some(out)
}

/// The value at `path` below `root`.
fn value_at<'v>(root: &'v Value, path: &[PathSeg]) -> Option<&'v Value> {
    path.iter().try_fold(root, |at, seg| match (at, seg) {
        (Value::Object(m), PathSeg::Key(k)) => m.get(k),
        (Value::Array(a), PathSeg::Index(i)) => a.get(*i),
        _ => None,
    })
}

/// A path as a JSON pointer (for memo keys).
fn pointer_of(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        out.push('/');
        match seg {
            PathSeg::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
            PathSeg::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

fn child(path: &[PathSeg], key: &str) -> Vec<PathSeg> {
    let mut p = path.to_vec();
    p.push(PathSeg::Key(key.to_string()));
    p
}

fn index(path: &[PathSeg], i: usize) -> Vec<PathSeg> {
    let mut p = path.to_vec();
    p.push(PathSeg::Index(i));
    p
}

/// The media type of a `Content-Type` or a `content` key: lower case,
/// without parameters.
pub fn media_type(text: &str) -> String {
    text.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The JSON types a schema names in `type` (a string, or a list in 3.1).
fn types_of(schema: &Value) -> (Types, Vec<String>) {
    let names: Vec<String> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let has = |n: &str| names.iter().any(|t| t == n);
    (
        Types {
            integer: has("integer"),
            number: has("number"),
            boolean: has("boolean"),
        },
        names,
    )
}

impl Spec {
    /// Loads the document at `path` (named `display` in messages) and the
    /// files it refers to; `responses` says whether answers are compiled.
    pub fn load(path: &Path, display: &str, responses: bool) -> Result<Spec, Vec<SpecError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![SpecError::Unreadable {
                file: display.to_string(),
                why: e.to_string(),
            }]
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let value = parse(display, &text, json).map_err(|e| vec![e])?;
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut spec = Spec {
            version: Version::V31,
            base_path: Vec::new(),
            paths: Vec::new(),
            defs: Vec::new(),
            origins: Vec::new(),
            files: vec![File {
                path: abs.clone(),
                display: display.to_string(),
                text,
                value,
                map: None,
            }],
            by_path: HashMap::from([(abs, 0)]),
            memo: HashMap::new(),
            errors: Vec::new(),
        };
        spec.document(responses);
        if spec.errors.is_empty() {
            spec.check_schemas();
        }
        if spec.errors.is_empty() {
            Ok(spec)
        } else {
            Err(std::mem::take(&mut spec.errors))
        }
    }

    /// An error at `path` of file `file`.
    fn error(&mut self, file: usize, path: &[PathSeg], message: impl Into<String>) {
        let e = self.error_at(file, path, message.into());
        self.errors.push(e);
    }

    /// The error at `path` of file `file`, located in its text.
    fn error_at(&mut self, file: usize, path: &[PathSeg], message: String) -> SpecError {
        let f = &mut self.files[file];
        let map = f
            .map
            .get_or_insert_with(|| SourceMap::parse(&f.text, Format::Yaml));
        let pos = map
            .as_ref()
            .map(|m| m.locate(path))
            .map_or((1, 1), |p| (p.line, p.column));
        SpecError::At {
            file: f.display.clone(),
            line: pos.0,
            column: pos.1,
            message,
        }
    }

    /// The error for a schema entry's inner `pointer` (from a validator).
    pub fn schema_error(&mut self, def: usize, pointer: &str, message: String) -> SpecError {
        let (file, mut path) = self.origins.get(def).cloned().unwrap_or((0, Vec::new()));
        if let Some(inner) = self.defs.get(def).and_then(|d| pointer_segs(d, pointer)) {
            path.extend(inner);
        }
        self.error_at(file, &path, message)
    }

    fn value(&self, file: usize, path: &[PathSeg]) -> Value {
        value_at(&self.files[file].value, path)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Reads a file a `$ref` names, relative to the file it is in.
    fn file(&mut self, from: usize, rel: &str) -> Result<usize, RefFail> {
        let rel = percent_encoding::percent_decode_str(rel)
            .decode_utf8_lossy()
            .into_owned();
        let dir = self.files[from].path.parent().unwrap_or(Path::new(""));
        let path = dir.join(&rel);
        let abs = std::fs::canonicalize(&path).unwrap_or(path);
        if let Some(&i) = self.by_path.get(&abs) {
            return Ok(i);
        }
        let display = Path::new(&self.files[from].display)
            .parent()
            .unwrap_or(Path::new(""))
            .join(&rel)
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&abs)
            .map_err(|e| RefFail::Here(format!("cannot read `{display}`: {e}")))?;
        let json = abs
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let value = parse(&display, &text, json).map_err(RefFail::There)?;
        self.files.push(File {
            path: abs.clone(),
            display,
            text,
            value,
            map: None,
        });
        let i = self.files.len() - 1;
        self.by_path.insert(abs, i);
        Ok(i)
    }

    /// Where `reference` (written in file `file`) points.
    fn resolve(&mut self, file: usize, reference: &str) -> Result<(usize, Vec<PathSeg>), RefFail> {
        let (doc, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        if doc.contains("://") || doc.starts_with("//") {
            return Err(RefFail::Here(format!(
                "`{reference}`: remote references are not fetched; keep the document \
                 next to this one and name it by a relative path"
            )));
        }
        let target = if doc.is_empty() {
            file
        } else {
            self.file(file, doc)?
        };
        let fragment = percent_encoding::percent_decode_str(fragment).decode_utf8_lossy();
        if !fragment.is_empty() && !fragment.starts_with('/') {
            return Err(RefFail::Here(format!(
                "`{reference}`: only JSON pointer fragments (`#/components/…`) are supported"
            )));
        }
        let segs = pointer_segs(&self.files[target].value, &fragment)
            .ok_or_else(|| RefFail::Here(format!("`{reference}` points at nothing")))?;
        Ok((target, segs))
    }

    /// Follows `$ref`s from the object at `path` to the object itself.
    fn deref(&mut self, mut file: usize, mut path: Vec<PathSeg>) -> Option<(usize, Vec<PathSeg>)> {
        for _ in 0..MAX_HOPS {
            let reference =
                match value_at(&self.files[file].value, &path).and_then(|v| v.get("$ref")) {
                    Some(Value::String(r)) => r.clone(),
                    _ => return Some((file, path)),
                };
            match self.resolve(file, &reference) {
                Ok((f, p)) => (file, path) = (f, p),
                Err(RefFail::Here(why)) => {
                    self.error(file, &child(&path, "$ref"), why);
                    return None;
                }
                Err(RefFail::There(e)) => {
                    self.errors.push(e);
                    return None;
                }
            }
        }
        self.error(file, &path, "a cycle of `$ref`s");
        None
    }

    /// Reads the whole document.
    fn document(&mut self, responses: bool) {
        let root = self.files[0].value.clone();
        match root.get("openapi").and_then(Value::as_str) {
            Some(v) if v == "3.0" || v.starts_with("3.0.") => self.version = Version::V30,
            Some(v) if v == "3.1" || v.starts_with("3.1.") => self.version = Version::V31,
            Some(v) => {
                let v = v.to_string();
                self.error(
                    0,
                    &[PathSeg::Key("openapi".into())],
                    format!("OpenAPI `{v}` is not supported: use 3.0 or 3.1"),
                );
                return;
            }
            None if root.get("swagger").is_some() => {
                self.error(
                    0,
                    &[PathSeg::Key("swagger".into())],
                    "Swagger 2.0 is not supported: convert the document to OpenAPI 3.0 or 3.1",
                );
                return;
            }
            None => {
                self.error(
                    0,
                    &[],
                    "not an OpenAPI document: `openapi: 3.0.x` or `3.1.x` is missing",
                );
                return;
            }
        }
        self.base_path = base_path(&root);
        let paths = match root.get("paths") {
            None => return,
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                self.error(
                    0,
                    &[PathSeg::Key("paths".into())],
                    "`paths` must be a mapping",
                );
                return;
            }
        };
        for (template, _) in paths {
            let at = vec![PathSeg::Key("paths".into()), PathSeg::Key(template.clone())];
            let Some((f, p)) = self.deref(0, at) else {
                continue;
            };
            let operations = self.path_item(f, &p, responses);
            self.paths.push(PathItemDef {
                template,
                operations,
            });
        }
    }

    fn path_item(&mut self, file: usize, path: &[PathSeg], responses: bool) -> Vec<OperationDef> {
        let item = self.value(file, path);
        if !item.is_object() {
            self.error(file, path, "a path item must be a mapping");
            return Vec::new();
        }
        let common = self.param_list(file, path);
        let mut out = Vec::new();
        for method in METHODS {
            if item.get(method).is_none() {
                continue;
            }
            let op_path = child(path, method);
            let mut params = common.clone();
            for (f, p, name, location) in self.param_list(file, &op_path) {
                params.retain(|(_, _, n, l)| !(*n == name && *l == location));
                params.push((f, p, name, location));
            }
            let params = params
                .into_iter()
                .filter_map(|(f, p, _, _)| self.param(f, &p))
                .collect();
            let body = match self.value(file, &op_path).get("requestBody") {
                Some(_) => self
                    .deref(file, child(&op_path, "requestBody"))
                    .map(|(f, p)| self.body(f, &p)),
                None => None,
            };
            let responses = if responses {
                self.responses(file, &child(&op_path, "responses"))
            } else {
                Vec::new()
            };
            out.push(OperationDef {
                method: http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .unwrap_or(http::Method::GET),
                params,
                body,
                responses,
            });
        }
        out
    }

    /// The parameters listed at `path/parameters`, each dereferenced, with
    /// their names and places (for merging).
    fn param_list(
        &mut self,
        file: usize,
        path: &[PathSeg],
    ) -> Vec<(usize, Vec<PathSeg>, String, String)> {
        let list_path = child(path, "parameters");
        let list = match self.value(file, &list_path) {
            Value::Null => return Vec::new(),
            Value::Array(a) => a,
            _ => {
                self.error(file, &list_path, "`parameters` must be a list");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for i in 0..list.len() {
            let Some((f, p)) = self.deref(file, index(&list_path, i)) else {
                continue;
            };
            let v = self.value(f, &p);
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let location = v
                .get("in")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            out.push((f, p, name, location));
        }
        out
    }

    fn param(&mut self, file: usize, path: &[PathSeg]) -> Option<ParamDef> {
        let v = self.value(file, path);
        let Some(name) = v.get("name").and_then(Value::as_str) else {
            self.error(file, path, "a parameter needs a `name`");
            return None;
        };
        let location = match v.get("in").and_then(Value::as_str) {
            Some("path") => In::Path,
            Some("query") => In::Query,
            Some("header") => In::Header,
            Some("cookie") => In::Cookie,
            _ => {
                self.error(
                    file,
                    &child(path, "in"),
                    "a parameter's `in` must be path, query, header or cookie",
                );
                return None;
            }
        };
        // The specification says these three are described elsewhere.
        if location == In::Header
            && ["accept", "content-type", "authorization"]
                .contains(&name.to_ascii_lowercase().as_str())
        {
            return None;
        }
        let style = match v.get("style").and_then(Value::as_str) {
            None => match location {
                In::Path | In::Header => Style::Simple,
                In::Query | In::Cookie => Style::Form,
            },
            Some("simple") => Style::Simple,
            Some("form") => Style::Form,
            Some("spaceDelimited") => Style::SpaceDelimited,
            Some("pipeDelimited") => Style::PipeDelimited,
            Some("deepObject") => Style::DeepObject,
            Some(other) => {
                let other = other.to_string();
                self.error(
                    file,
                    &child(path, "style"),
                    format!(
                        "style `{other}` is not supported: use simple, form, spaceDelimited, \
                         pipeDelimited or deepObject"
                    ),
                );
                return None;
            }
        };
        let explode = v
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(style == Style::Form);
        let required = v
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(location == In::Path);
        let name = if location == In::Header {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        let (schema, shape, json) = if v.get("schema").is_some() {
            let at = child(path, "schema");
            let shape = self.shape(file, &at);
            (
                Some(self.schema(file, at, Direction::Request)),
                shape,
                false,
            )
        } else if let Some(Value::Object(content)) = v.get("content") {
            let schema = content.iter().next().and_then(|(media, m)| {
                m.get("schema").map(|_| {
                    let at = child(&child(&child(path, "content"), media), "schema");
                    self.schema(file, at, Direction::Request)
                })
            });
            (schema, Shape::Scalar(Types::default()), true)
        } else {
            (None, Shape::Scalar(Types::default()), false)
        };
        Some(ParamDef {
            name,
            location,
            required,
            style,
            explode,
            shape,
            schema,
            json,
        })
    }

    fn content(&mut self, file: usize, path: &[PathSeg], dir: Direction) -> Vec<MediaDef> {
        let at = child(path, "content");
        let content = match self.value(file, &at) {
            Value::Object(m) => m,
            Value::Null => return Vec::new(),
            _ => {
                self.error(file, &at, "`content` must be a mapping of media types");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (media, m) in content {
            let schema = m
                .get("schema")
                .map(|_| self.schema(file, child(&child(&at, &media), "schema"), dir));
            out.push(MediaDef {
                media: media_type(&media),
                schema,
            });
        }
        out
    }

    fn body(&mut self, file: usize, path: &[PathSeg]) -> BodyDef {
        let required = self
            .value(file, path)
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        BodyDef {
            required,
            content: self.content(file, path, Direction::Request),
        }
    }

    fn responses(&mut self, file: usize, path: &[PathSeg]) -> Vec<ResponseDef> {
        let Value::Object(map) = self.value(file, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (code, _) in map {
            let status = if code == "default" {
                StatusKey::Default
            } else if let Ok(n) = code.parse::<u16>()
                && (100..600).contains(&n)
            {
                StatusKey::Exact(n)
            } else if code.len() == 3
                && code[1..].eq_ignore_ascii_case("xx")
                && let Some(d) = code[..1].parse::<u16>().ok().filter(|d| (1..6).contains(d))
            {
                StatusKey::Range(d)
            } else {
                if code.starts_with("x-") {
                    continue;
                }
                self.error(
                    file,
                    &child(path, &code),
                    format!("`{code}` is not a status, a range like 2XX, or `default`"),
                );
                continue;
            };
            if let Some((f, p)) = self.deref(file, child(path, &code)) {
                let content = self.content(f, &p, Direction::Response);
                out.push(ResponseDef { status, content });
            }
        }
        out
    }

    /// The bundle entry for the schema at `path` (written there, not
    /// shared: converted once per use).
    fn schema(&mut self, file: usize, path: Vec<PathSeg>, dir: Direction) -> usize {
        let key = self.defs.len();
        self.defs.push(Value::Null);
        self.origins.push((file, path.clone()));
        let v = self.value(file, &path);
        self.defs[key] = self.convert(file, &path, &v, dir);
        key
    }

    /// The bundle entry for the schema a `$ref` points at: one per target
    /// and direction, entered before its own `$ref`s are followed, so that
    /// cycles end.
    fn shared(&mut self, file: usize, path: Vec<PathSeg>, dir: Direction) -> usize {
        let memo = (file, pointer_of(&path), dir);
        if let Some(&k) = self.memo.get(&memo) {
            return k;
        }
        let key = self.defs.len();
        self.memo.insert(memo, key);
        self.defs.push(Value::Null);
        self.origins.push((file, path.clone()));
        let v = self.value(file, &path);
        self.defs[key] = self.convert(file, &path, &v, dir);
        key
    }

    /// Follows a schema's `$ref`s (for the flags and types that decide how
    /// it is used); errors are reported by [`Spec::convert`].
    fn follow(&mut self, mut file: usize, mut v: Value) -> Value {
        for _ in 0..MAX_HOPS {
            let Some(Value::String(r)) = v.get("$ref").cloned() else {
                return v;
            };
            match self.resolve(file, &r) {
                Ok((f, p)) => {
                    file = f;
                    v = self.value(f, &p);
                }
                Err(_) => return v,
            }
        }
        v
    }

    /// How a parameter's text becomes a value, from its schema's types.
    fn shape(&mut self, file: usize, path: &[PathSeg]) -> Shape {
        let v = self.value(file, path);
        let v = self.follow(file, v);
        let (types, names) = types_of(&v);
        if names.iter().any(|n| n == "array") {
            let items = v.get("items").cloned().unwrap_or(Value::Null);
            return Shape::Array(types_of(&self.follow(file, items)).0);
        }
        if names.iter().any(|n| n == "object") {
            let props = match v.get("properties") {
                Some(Value::Object(m)) => m.clone(),
                _ => Map::new(),
            };
            let props = props
                .into_iter()
                .map(|(k, p)| (k, types_of(&self.follow(file, p)).0))
                .collect();
            return Shape::Object(props);
        }
        Shape::Scalar(types)
    }

    /// Whether the schema `v` (or the one it refers to) says `flag: true`.
    fn flagged(&mut self, file: usize, v: &Value, flag: &str) -> bool {
        self.follow(file, v.clone()).get(flag) == Some(&Value::Bool(true))
    }

    /// The schema at `path` as JSON Schema 2020-12, its `$ref`s pointing
    /// into the bundle.
    fn convert(&mut self, file: usize, path: &[PathSeg], v: &Value, dir: Direction) -> Value {
        let Value::Object(m) = v else {
            return v.clone();
        };
        let mut out = Map::new();
        if let Some(r) = m.get("$ref") {
            let target = match r {
                Value::String(r) => self.resolve(file, r),
                _ => Err(RefFail::Here("`$ref` must be a string".into())),
            };
            match target {
                Ok((f, p)) => {
                    let key = self.shared(f, p, dir);
                    out.insert("$ref".into(), json!(format!("{BUNDLE}#/$defs/{key}")));
                }
                Err(RefFail::Here(why)) => self.error(file, &child(path, "$ref"), why),
                Err(RefFail::There(e)) => self.errors.push(e),
            }
            if self.version == Version::V30 {
                return Value::Object(out);
            }
        }
        for (k, sub) in m {
            let at = child(path, k);
            let converted = match (k.as_str(), sub) {
                ("$ref", _) => continue,
                (
                    "properties" | "patternProperties" | "$defs" | "definitions"
                    | "dependentSchemas",
                    Value::Object(map),
                ) => Value::Object(
                    map.iter()
                        .map(|(name, s)| {
                            (name.clone(), self.convert(file, &child(&at, name), s, dir))
                        })
                        .collect(),
                ),
                ("allOf" | "anyOf" | "oneOf" | "prefixItems" | "items", Value::Array(list)) => {
                    Value::Array(
                        list.iter()
                            .enumerate()
                            .map(|(i, s)| self.convert(file, &index(&at, i), s, dir))
                            .collect(),
                    )
                }
                (
                    "items"
                    | "additionalProperties"
                    | "not"
                    | "propertyNames"
                    | "contains"
                    | "if"
                    | "then"
                    | "else"
                    | "unevaluatedProperties"
                    | "unevaluatedItems"
                    | "additionalItems"
                    | "contentSchema",
                    s,
                ) => self.convert(file, &at, s, dir),
                _ => sub.clone(),
            };
            out.insert(k.clone(), converted);
        }
        if self.version == Version::V30 {
            from_openapi_30(&mut out);
        }
        // A property the server fills (readOnly) is not asked of a
        // request, one the client only sends (writeOnly) not of an answer.
        let skip = match dir {
            Direction::Request => "readOnly",
            Direction::Response => "writeOnly",
        };
        if let (Some(Value::Array(required)), Some(Value::Object(props))) =
            (out.get("required").cloned(), m.get("properties"))
        {
            let kept: Vec<Value> = required
                .into_iter()
                .filter(|name| {
                    let prop = name.as_str().and_then(|n| props.get(n));
                    !prop.is_some_and(|p| self.flagged(file, p, skip))
                })
                .collect();
            out.insert("required".into(), Value::Array(kept));
        }
        if self.version == Version::V30 && out.remove("nullable") == Some(Value::Bool(true)) {
            return nullable(out);
        }
        Value::Object(out)
    }

    /// Checks every converted schema against the JSON Schema 2020-12
    /// meta-schema, so a typo in a schema fails at its line.
    fn check_schemas(&mut self) {
        let meta = jsonschema::draft202012::meta::validator();
        let mut found = Vec::new();
        for (key, def) in self.defs.iter().enumerate() {
            if let Err(e) = meta.validate(def) {
                found.push((key, e.instance_path().as_str().to_string(), e.to_string()));
            }
        }
        for (key, pointer, message) in found {
            let e = self.schema_error(key, &pointer, format!("not a valid schema: {message}"));
            self.errors.push(e);
        }
    }
}

/// The 3.0-only keywords of one schema in their JSON Schema 2020-12 form
/// (`nullable` is left for [`nullable`]).
fn from_openapi_30(out: &mut Map<String, Value>) {
    for (exclusive, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match out.get(exclusive) {
            Some(Value::Bool(true)) => match out.remove(bound) {
                Some(limit) => {
                    out.insert(exclusive.into(), limit);
                }
                None => {
                    out.remove(exclusive);
                }
            },
            Some(Value::Bool(false)) => {
                out.remove(exclusive);
            }
            _ => {}
        }
    }
}

/// A 3.0 `nullable: true` schema: `null` added to its `type` (and its
/// `enum`); a schema without `type` (an `allOf` of a `$ref`) becomes
/// "null, or the schema".
fn nullable(mut out: Map<String, Value>) -> Value {
    let null = Value::String("null".into());
    match out.get_mut("type") {
        Some(Value::String(t)) => {
            let t = Value::String(std::mem::take(t));
            out.insert("type".into(), Value::Array(vec![t, null]));
        }
        Some(Value::Array(ts)) => {
            if !ts.contains(&null) {
                ts.push(null);
            }
        }
        _ => return json!({"anyOf": [{"type": "null"}, Value::Object(out)]}),
    }
    if let Some(Value::Array(values)) = out.get_mut("enum")
        && !values.contains(&Value::Null)
    {
        values.push(Value::Null);
    }
    Value::Object(out)
}

/// The path of the first server's URL (`https://api.example.com/v1` →
/// `["v1"]`), its variables replaced by their defaults.
fn base_path(root: &Value) -> Vec<String> {
    let Some(server) = root
        .get("servers")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
    else {
        return Vec::new();
    };
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(Value::Object(vars)) = server.get("variables") {
        for (name, var) in vars {
            if let Some(d) = var.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), d);
            }
        }
    }
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => url.as_str(),
    };
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load(text: &str) -> Result<Spec, Vec<SpecError>> {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "api.yaml", text);
        Spec::load(&p, "specs/api.yaml", true)
    }

    fn messages(r: Result<Spec, Vec<SpecError>>) -> Vec<String> {
        match r {
            Ok(_) => panic!("the document loaded"),
            Err(es) => es.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn yaml_status_keys_are_text_and_refs_are_bundled() {
        let spec = load(
            "openapi: 3.0.3
paths:
  /things/{id}:
    parameters:
      - { name: id, in: path, required: true, schema: { type: integer } }
    get:
      responses:
        200:
          content:
            application/json:
              schema: { $ref: '#/components/schemas/Thing' }
        4XX: { description: client error }
components:
  schemas:
    Thing:
      type: object
      properties:
        child: { $ref: '#/components/schemas/Thing' }
",
        )
        .unwrap();
        let op = &spec.paths[0].operations[0];
        assert_eq!(op.method, http::Method::GET);
        assert_eq!(
            op.params[0].shape,
            Shape::Scalar(Types {
                integer: true,
                ..Types::default()
            })
        );
        let statuses: Vec<StatusKey> = op.responses.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [StatusKey::Exact(200), StatusKey::Range(4)]);
        // The response schema refers to the shared Thing, which refers to itself.
        let body = op.responses[0].content[0].schema.unwrap();
        let thing = spec.defs[body]["$ref"].as_str().unwrap().to_string();
        let key: usize = thing.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(spec.defs[key]["properties"]["child"]["$ref"], json!(thing));
    }

    #[test]
    fn openapi_30_keywords_become_json_schema() {
        let mut out = json!({"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 9, "exclusiveMaximum": false})
            .as_object()
            .unwrap()
            .clone();
        from_openapi_30(&mut out);
        assert_eq!(
            Value::Object(out),
            json!({"type": "number", "exclusiveMinimum": 0, "maximum": 9})
        );
        let out = nullable(
            json!({"type": "string", "enum": ["a"]})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(
            out,
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        let out = nullable(
            json!({"allOf": [{"$ref": "x"}]})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(
            out,
            json!({"anyOf": [{"type": "null"}, {"allOf": [{"$ref": "x"}]}]})
        );
    }

    #[test]
    fn read_only_properties_are_not_required_of_requests() {
        let spec = load(
            "openapi: 3.1.0
paths:
  /t:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: '#/components/schemas/T' }
      responses:
        '201':
          content:
            application/json:
              schema: { $ref: '#/components/schemas/T' }
components:
  schemas:
    Id: { type: string, readOnly: true }
    T:
      type: object
      required: [id, secret, name]
      properties:
        id: { $ref: '#/components/schemas/Id' }
        secret: { type: string, writeOnly: true }
        name: { type: string }
",
        )
        .unwrap();
        let required: Vec<Vec<Value>> = spec
            .defs
            .iter()
            .filter_map(|d| d.get("required").and_then(Value::as_array).cloned())
            .collect();
        assert!(
            required.contains(&vec![json!("secret"), json!("name")]),
            "{required:?}"
        );
        assert!(
            required.contains(&vec![json!("id"), json!("name")]),
            "{required:?}"
        );
    }

    #[test]
    fn mistakes_are_reported_at_the_documents_own_lines() {
        let m = messages(load(
            "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      parameters:\n        - { name: x, in: body }\n",
        ));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("specs/api.yaml:6:"), "{m:?}");
        assert!(m[0].contains("`in` must be"), "{m:?}");

        let m = messages(load(
            "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      responses:\n        '200':\n          content:\n            application/json:\n              schema: { $ref: '#/components/schemas/Nope' }\n",
        ));
        assert!(m[0].starts_with("specs/api.yaml:9:"), "{m:?}");
        assert!(m[0].contains("points at nothing"), "{m:?}");

        let m = messages(load(
            "openapi: 3.1.0\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema:\n              type: object\n              properties:\n                n: { type: strin }\n",
        ));
        assert!(m[0].starts_with("specs/api.yaml:11:"), "{m:?}");
        assert!(m[0].contains("not a valid schema"), "{m:?}");
        assert!(
            m[0].contains(
                r#""strin" is not valid under any of the schemas listed in the 'anyOf' keyword"#
            ),
            "{m:?}"
        );

        let m = messages(load("openapi: 3.0.0\npaths:\n  /a: [\n"));
        assert!(m[0].starts_with("specs/api.yaml:"), "{m:?}");
        assert!(m[0].contains("not valid YAML"), "{m:?}");

        let m = messages(load("swagger: '2.0'\n"));
        assert!(m[0].contains("Swagger 2.0 is not supported"), "{m:?}");

        let m = messages(load(
            "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      requestBody: { $ref: 'https://example.com/x.yaml#/B' }\n",
        ));
        assert!(m[0].contains("remote references are not fetched"), "{m:?}");
    }

    #[test]
    fn sibling_files_are_read_relative_to_the_document() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        write(
            &dir.path().join("shared"),
            "common.json",
            r##"{"components": {"schemas": {"Money": {"type": "number", "nullable": true}, "Bad": {"$ref": "#/nope"}}}}"##,
        );
        let p = write(
            dir.path(),
            "api.yaml",
            "openapi: 3.0.3
paths:
  /p:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: 'shared/common.json#/components/schemas/Money' }
",
        );
        let spec = Spec::load(&p, "specs/api.yaml", false).unwrap();
        assert!(
            spec.defs.contains(&json!({"type": ["number", "null"]})),
            "{:?}",
            spec.defs
        );

        let p = write(
            dir.path(),
            "bad.yaml",
            "openapi: 3.0.3
paths:
  /p:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: 'shared/common.json#/components/schemas/Bad' }
",
        );
        let m = messages(Spec::load(&p, "specs/bad.yaml", false));
        assert!(m[0].starts_with("specs/shared/common.json:1:"), "{m:?}");
    }

    #[test]
    fn the_first_servers_path_is_the_base() {
        assert_eq!(
            base_path(&json!({"servers": [{"url": "https://api.example.com/v1/"}]})),
            ["v1"]
        );
        assert_eq!(
            base_path(
                &json!({"servers": [{"url": "/api/{version}", "variables": {"version": {"default": "v2"}}}]})
            ),
            ["api", "v2"]
        );
        assert!(base_path(&json!({"servers": [{"url": "https://api.example.com"}]})).is_empty());
        assert!(base_path(&json!({})).is_empty());
    }
}
