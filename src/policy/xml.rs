//! JSON ↔ XML conversion for the `transform` policy, by one reversible
//! convention:
//!
//! | XML                                   | JSON                                  |
//! |---------------------------------------|---------------------------------------|
//! | `<order>…</order>` (the root)         | `{"order": …}`                        |
//! | `<id>7</id>` (text only)              | `"id": "7"`                           |
//! | `<id pc:type="number">7</id>`         | `"id": 7` (also `boolean`, `null`)    |
//! | `<a/><a/>` (repeated)                 | `"a": [ …, … ]`                       |
//! | `<a pc:array="true">x</a>` (one)      | `"a": ["x"]`                          |
//! | `<a pc:type="array"/>`                | `"a": []`                             |
//! | `<a pc:type="object"/>`               | `"a": {}`                             |
//! | `<a id="1">x</a>`                     | `"a": {"@id": "1", "#text": "x"}`     |
//! | `<soap:Body xmlns:soap="…">`          | `"soap:Body": {"@xmlns:soap": "…"}`   |
//!
//! The `pc:` markers live in the namespace [`MARKER_NS`], declared on the
//! root element when used; `pc:array` and `pc:type` are reserved names.
//! Text beside child elements is trimmed (it is mostly indentation); text
//! alone is kept exactly. Attribute values are strings both ways.
//!
//! json_to_xml of anything but a one-member object whose value is not an
//! array wraps it in `<root>`: an object's members become its children, an
//! array its `<item>` children, a scalar its text.
//!
//! Safety: a DOCTYPE is refused outright, so no DTD, no entity definitions,
//! no external entities (XXE) and no entity expansion (billion laughs).
//! Only the five predefined entities and numeric character references are
//! decoded. Nesting is limited to [`MAX_DEPTH`] levels.

use std::collections::HashSet;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// The namespace of the `pc:array` / `pc:type` markers.
pub const MARKER_NS: &str = "urn:portcullis:json";

/// The deepest element nesting converted (serde_json's own parse limit,
/// so that the converted document can be re-encoded without a deep stack).
pub const MAX_DEPTH: usize = 128;

const ARRAY_ATTR: &str = "pc:array";
const TYPE_ATTR: &str = "pc:type";
const NS_ATTR: &str = "xmlns:pc";

/// Why a conversion failed, and where.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The XML is malformed or refused (line and column are 1-based; the
    /// column counts characters).
    #[error("line {line}, column {column}: {message}")]
    Xml {
        /// Line of the fault.
        line: usize,
        /// Column of the fault, in characters.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The JSON holds something XML cannot carry.
    #[error("at {path}: {message}")]
    Json {
        /// Where in the document, as a dotted path (`$` is the top).
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn xml_error(text: &str, offset: u64, message: impl Into<String>) -> XmlError {
    let (line, column) = line_column(text, usize::try_from(offset).unwrap_or(usize::MAX));
    XmlError::Xml {
        line,
        column,
        message: message.into(),
    }
}

/// An element being read.
struct Frame {
    name: String,
    attrs: Vec<(String, String)>,
    children: Map<String, Value>,
    /// Members that are arrays made from elements (repeated or marked), as
    /// opposed to a single element's value.
    arrays: HashSet<String>,
    text: String,
    has_children: bool,
    array_mark: bool,
    ty: Option<String>,
    start: u64,
}

/// What a closed element gives its parent.
enum Child {
    Value(Value, bool),
    EmptyArray,
}

fn open(text: &str, e: &BytesStart<'_>, start: u64) -> Result<Frame, XmlError> {
    let err = |m: String| xml_error(text, start, m);
    let name = e.name().as_ref().to_string();
    // quick-xml reads any bytes as a name; a name such as `@a` or `#text`
    // would read back as an attribute or a text node.
    if !is_name(&name) {
        return Err(err(format!("`{name}` is not an XML element name")));
    }
    let mut frame = Frame {
        name,
        attrs: Vec::new(),
        children: Map::new(),
        arrays: HashSet::new(),
        text: String::new(),
        has_children: false,
        array_mark: false,
        ty: None,
        start,
    };
    for attr in e.attributes() {
        let attr = attr.map_err(|e| err(e.to_string()))?;
        let key: &str = attr.key.as_ref();
        if !is_name(key) {
            return Err(err(format!("`{key}` is not an XML attribute name")));
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| err(e.to_string()))?
            .into_owned();
        match key {
            ARRAY_ATTR => frame.array_mark = value == "true",
            TYPE_ATTR => frame.ty = Some(value),
            NS_ATTR if value == MARKER_NS => {}
            _ => frame.attrs.push((key.to_string(), value)),
        }
    }
    Ok(frame)
}

fn close(text: &str, f: Frame) -> Result<Child, XmlError> {
    let err = |m: String| xml_error(text, f.start, m);
    let content = if f.has_children {
        f.text.trim().to_string()
    } else {
        f.text.clone()
    };
    let typed = match f.ty.as_deref() {
        None => (!content.is_empty() || f.attrs.is_empty() && !f.has_children)
            .then(|| Value::String(content.clone())),
        Some("number") => Some(Value::Number(
            serde_json::from_str(content.trim())
                .map_err(|_| err(format!("<{}>: `{content}` is not a number", f.name)))?,
        )),
        Some("boolean") => Some(Value::Bool(match content.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(err(format!("<{}>: `{content}` is not a boolean", f.name))),
        })),
        Some("null") => Some(Value::Null),
        Some("array") => return Ok(Child::EmptyArray),
        Some("object") => None,
        Some(other) => {
            return Err(err(format!(
                "<{}>: unknown {TYPE_ATTR} `{other}` (number, boolean, null, array, object)",
                f.name
            )));
        }
    };
    let value = match typed {
        Some(v) if f.attrs.is_empty() && !f.has_children => v,
        typed => {
            let mut m = Map::new();
            for (k, v) in f.attrs {
                m.insert(format!("@{k}"), Value::String(v));
            }
            m.extend(f.children);
            if let Some(t) = typed {
                m.insert("#text".into(), t);
            }
            Value::Object(m)
        }
    };
    Ok(Child::Value(value, f.array_mark))
}

fn adopt(parent: &mut Frame, name: String, child: Child) {
    parent.has_children = true;
    match child {
        Child::EmptyArray => {
            parent
                .children
                .entry(name.clone())
                .or_insert(Value::Array(Vec::new()));
            parent.arrays.insert(name);
        }
        Child::Value(v, marked) => match parent.children.get_mut(&name) {
            Some(Value::Array(items)) if parent.arrays.contains(&name) => items.push(v),
            Some(existing) => {
                let first = std::mem::take(existing);
                *existing = Value::Array(vec![first, v]);
                parent.arrays.insert(name);
            }
            None => {
                let v = if marked { Value::Array(vec![v]) } else { v };
                if marked {
                    parent.arrays.insert(name.clone());
                }
                parent.children.insert(name, v);
            }
        },
    }
}

fn resolve_ref(text: &str, r: &BytesRef<'_>, at: u64) -> Result<char, XmlError> {
    if let Some(c) = r
        .resolve_char_ref()
        .map_err(|e| xml_error(text, at, e.to_string()))?
    {
        return Ok(c);
    }
    match r.xml10_content().as_ref() {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        other => Err(xml_error(
            text,
            at,
            format!("unknown entity `&{other};` (only the five predefined ones are decoded)"),
        )),
    }
}

/// Converts an XML document (UTF-8) into JSON by the module's convention.
pub fn xml_to_json(bytes: &[u8]) -> Result<Value, XmlError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("");
            return Err(xml_error(good, good.len() as u64, "the body is not UTF-8"));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| xml_error(text, reader.error_position(), e.to_string()))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(xml_error(text, at, "a second root element"));
            }
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(xml_error(
                        text,
                        at,
                        format!("elements nested deeper than {MAX_DEPTH}"),
                    ));
                }
                stack.push(open(text, &e, at)?);
            }
            Event::Empty(e) => {
                let frame = open(text, &e, at)?;
                finish(text, &mut stack, &mut root, frame)?;
            }
            Event::End(_) => {
                // The reader checks that end names match their starts.
                let Some(frame) = stack.pop() else {
                    return Err(xml_error(text, at, "an end tag with no start"));
                };
                finish(text, &mut stack, &mut root, frame)?;
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(f) => f.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(xml_error(text, at, "text outside the root element")),
                }
            }
            Event::CData(c) => match stack.last_mut() {
                Some(f) => f.text.push_str(&c.xml10_content()),
                None => return Err(xml_error(text, at, "CDATA outside the root element")),
            },
            Event::GeneralRef(r) => {
                let c = resolve_ref(text, &r, at)?;
                match stack.last_mut() {
                    Some(f) => f.text.push(c),
                    None => {
                        return Err(xml_error(text, at, "a reference outside the root element"));
                    }
                }
            }
            Event::DocType(_) => {
                return Err(xml_error(
                    text,
                    at,
                    "a DOCTYPE is refused (no DTDs, entity definitions or external entities)",
                ));
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(xml_error(
            text,
            text.len() as u64,
            format!("<{}> is not closed", open.name),
        ));
    }
    root.ok_or_else(|| xml_error(text, text.len() as u64, "no root element"))
}

fn finish(
    text: &str,
    stack: &mut [Frame],
    root: &mut Option<Value>,
    frame: Frame,
) -> Result<(), XmlError> {
    let name = frame.name.clone();
    let child = close(text, frame)?;
    match stack.last_mut() {
        Some(parent) => adopt(parent, name, child),
        None => {
            let v = match child {
                Child::EmptyArray => Value::Array(Vec::new()),
                Child::Value(v, _) => v,
            };
            let mut m = Map::new();
            m.insert(name, v);
            *root = Some(Value::Object(m));
        }
    }
    Ok(())
}

/// Converts JSON into an XML document (UTF-8) by the module's convention.
pub fn json_to_xml(value: &Value) -> Result<Vec<u8>, XmlError> {
    let (name, inner): (&str, std::borrow::Cow<'_, Value>) = match value {
        Value::Object(m) if m.len() == 1 => match m.iter().next() {
            Some((k, v)) if is_name(k) && !v.is_array() => {
                (k.as_str(), std::borrow::Cow::Borrowed(v))
            }
            _ => ("root", std::borrow::Cow::Borrowed(value)),
        },
        Value::Array(_) => {
            let mut m = Map::new();
            m.insert("item".into(), value.clone());
            ("root", std::borrow::Cow::Owned(Value::Object(m)))
        }
        _ => ("root", std::borrow::Cow::Borrowed(value)),
    };
    let mut w = Writer {
        out: String::with_capacity(64 + 2 * value_size_hint(&inner)),
        marked: false,
    };
    w.out
        .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let root_at = w.out.len();
    w.element(name, &inner, false, &JsonPath::Root(name), 0)?;
    if w.marked {
        // Declared once on the root, after the name, for every marker below.
        let at = root_at + 1 + name.len();
        w.out.insert_str(at, &format!(" {NS_ATTR}=\"{MARKER_NS}\""));
    }
    Ok(w.out.into_bytes())
}

/// A rough size of `v` as JSON, to size the output once.
fn value_size_hint(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| k.len() + value_size_hint(v)).sum(),
        Value::Array(a) => a.iter().map(value_size_hint).sum(),
        Value::String(s) => s.len(),
        _ => 8,
    }
}

/// Where in the JSON document the writer is, kept as a chain on the stack
/// and written out only for an error message.
enum JsonPath<'a> {
    Root(&'a str),
    Member(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl std::fmt::Display for JsonPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonPath::Root(name) => write!(f, "$.{name}"),
            JsonPath::Member(parent, name) => write!(f, "{parent}.{name}"),
            JsonPath::Index(parent, i) => write!(f, "{parent}.{i}"),
        }
    }
}

/// Whether `s` is an XML name (prefixed names included).
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
}

struct Writer {
    out: String,
    marked: bool,
}

fn json_err(path: &JsonPath, message: impl Into<String>) -> XmlError {
    XmlError::Json {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Escapes text or an attribute value; line ends and tabs as references
/// so that neither end-of-line nor attribute normalization changes them.
/// Runs of bytes that need nothing are copied whole.
fn escape(path: &JsonPath, s: &str, out: &mut String) -> Result<(), XmlError> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let replacement = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\t' => "&#9;",
            b'\n' => "&#10;",
            b'\r' => "&#13;",
            0..=0x1f => {
                return Err(json_err(
                    path,
                    format!("U+{b:04X} cannot be written in XML 1.0"),
                ));
            }
            // U+FFFE and U+FFFF are EF BF BE and EF BF BF.
            0xef if bytes.get(i + 1) == Some(&0xbf)
                && matches!(bytes.get(i + 2), Some(0xbe | 0xbf)) =>
            {
                let c = if bytes[i + 2] == 0xbe { 0xfffe } else { 0xffff };
                return Err(json_err(
                    path,
                    format!("U+{c:04X} cannot be written in XML 1.0"),
                ));
            }
            _ => {
                i += 1;
                continue;
            }
        };
        // `i` is at an ASCII byte, so both slices end on char boundaries.
        out.push_str(&s[start..i]);
        out.push_str(replacement);
        i += 1;
        start = i;
    }
    out.push_str(&s[start..]);
    Ok(())
}

impl Writer {
    fn attr(&mut self, path: &JsonPath, name: &str, value: &str) -> Result<(), XmlError> {
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        escape(path, value, &mut self.out)?;
        self.out.push('"');
        Ok(())
    }

    fn marker(&mut self, name: &str, value: &str) {
        self.marked = true;
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        self.out.push_str(value);
        self.out.push('"');
    }

    /// Writes `<name …>value</name>`; `array` marks an array of one.
    fn element(
        &mut self,
        name: &str,
        value: &Value,
        array: bool,
        path: &JsonPath,
        depth: usize,
    ) -> Result<(), XmlError> {
        if !is_name(name) || name.starts_with("xmlns") {
            return Err(json_err(
                path,
                format!("`{name}` is not an XML element name"),
            ));
        }
        if depth >= MAX_DEPTH {
            return Err(json_err(path, format!("nested deeper than {MAX_DEPTH}")));
        }
        self.out.push('<');
        self.out.push_str(name);
        if array {
            self.marker(ARRAY_ATTR, "true");
        }
        // Attributes and text first (they belong in the start tag and
        // before the children), then the members, in a second pass.
        let mut text = None;
        let mut has_members = false;
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    if let Some(attr) = k.strip_prefix('@') {
                        let at = JsonPath::Member(path, k);
                        if !is_name(attr) {
                            return Err(json_err(
                                &at,
                                format!("`{attr}` is not an attribute name"),
                            ));
                        }
                        match v {
                            Value::String(s) => self.attr(&at, attr, s)?,
                            Value::Number(_) | Value::Bool(_) => {
                                self.attr(&at, attr, &v.to_string())?
                            }
                            Value::Null => self.attr(&at, attr, "")?,
                            _ => return Err(json_err(&at, "an attribute must be a scalar")),
                        }
                    } else if k == "#text" {
                        if v.is_array() || v.is_object() {
                            return Err(json_err(
                                &JsonPath::Member(path, "#text"),
                                "text must be a scalar",
                            ));
                        }
                        text = Some(v);
                    } else {
                        has_members = true;
                    }
                }
                if m.is_empty() {
                    self.marker(TYPE_ATTR, "object");
                }
            }
            Value::Array(_) => return Err(json_err(path, "an array directly inside an array")),
            scalar => text = Some(scalar),
        }
        let text_path = JsonPath::Member(path, "#text");
        // The text as it will be written, and its type marker.
        let mut number = String::new();
        let text: &str = match text {
            None => "",
            Some(Value::String(s)) => s,
            Some(Value::Null) => {
                self.marker(TYPE_ATTR, "null");
                ""
            }
            Some(Value::Number(n)) => {
                self.marker(TYPE_ATTR, "number");
                let _ = write!(number, "{n}");
                &number
            }
            Some(Value::Bool(b)) => {
                self.marker(TYPE_ATTR, "boolean");
                if *b { "true" } else { "false" }
            }
            Some(_) => "",
        };
        if !has_members && text.is_empty() {
            self.out.push_str("/>");
            return Ok(());
        }
        self.out.push('>');
        escape(&text_path, text, &mut self.out)?;
        if let Value::Object(m) = value {
            for (k, v) in m {
                if k.starts_with('@') || k == "#text" {
                    continue;
                }
                let at = JsonPath::Member(path, k);
                match v {
                    Value::Array(items) if items.is_empty() => {
                        if !is_name(k) {
                            return Err(json_err(&at, format!("`{k}` is not an XML element name")));
                        }
                        self.out.push('<');
                        self.out.push_str(k);
                        self.marker(TYPE_ATTR, "array");
                        self.out.push_str("/>");
                    }
                    Value::Array(items) => {
                        let one = items.len() == 1;
                        for (i, item) in items.iter().enumerate() {
                            self.element(k, item, one, &JsonPath::Index(&at, i), depth + 1)?;
                        }
                    }
                    v => self.element(k, v, false, &at, depth + 1)?,
                }
            }
        }
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: Value) {
        let xml = json_to_xml(&v).unwrap();
        let text = String::from_utf8(xml).unwrap();
        let back = xml_to_json(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, v, "through {text}");
    }

    #[test]
    fn json_round_trips_through_xml() {
        round_trip(json!({"order": {
            "id": 7, "total": 12.5, "paid": true, "note": null, "code": "007",
            "items": {"item": [{"sku": "a", "qty": 1}]},
            "tags": ["x"], "many": ["a", "b", "c"], "none": [], "empty": {},
            "blank": "", "text": "  spaced\n\ttabs\r\n  ",
            "esc": "<a href=\"x\">&amp;</a> ]]> 'q'",
            "unicode": "Grüße, 東京, 🦀",
            "el": {"@id": "42", "@lang": "de", "#text": "Hallo"},
            "typed": {"@unit": "kg", "#text": 3},
            "mixed": {"@a": "1", "child": "c", "#text": "t"},
            "objs": [{"a": "1"}, {"a": "2", "b": ["only"]}],
            "deep": {"a": {"b": {"c": [{"d": [false]}]}}},
        }}));
        round_trip(json!({"soap:Envelope": {
            "@xmlns:soap": "http://schemas.xmlsoap.org/soap/envelope/",
            "@xmlns:m": "urn:m",
            "soap:Body": {"m:GetPrice": {"m:Item": ["Äpfel"]}},
        }}));
        round_trip(json!({"n": -1e-7}));
        round_trip(json!({"s": "plain"}));
    }

    #[test]
    fn members_and_elements_keep_their_order_both_ways() {
        // Schema-ordered XML (SOAP: Header before Body) needs JSON member
        // order kept, not sorted.
        let doc: Value =
            serde_json::from_str(r#"{"Envelope":{"Header":{"z":"1","a":"2"},"Body":{"Op":"x"}}}"#)
                .unwrap();
        let xml = String::from_utf8(json_to_xml(&doc).unwrap()).unwrap();
        assert!(
            xml.ends_with(
                "<Envelope><Header><z>1</z><a>2</a></Header><Body><Op>x</Op></Body></Envelope>"
            ),
            "{xml}"
        );
        let back = xml_to_json(b"<r><z>1</z><b>2</b><a x=\"1\">3</a></r>").unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            r##"{"r":{"z":"1","b":"2","a":{"@x":"1","#text":"3"}}}"##
        );
    }

    #[test]
    fn other_json_is_wrapped_in_root() {
        let x = |v: Value| String::from_utf8(json_to_xml(&v).unwrap()).unwrap();
        assert_eq!(
            x(json!({"a": 1, "b": "é"})),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <root xmlns:pc=\"urn:portcullis:json\"><a pc:type=\"number\">1</a><b>é</b></root>"
        );
        assert_eq!(
            x(json!({"a": "x"})),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a>x</a>"
        );
        assert_eq!(
            xml_to_json(&json_to_xml(&json!([1, "x"])).unwrap()).unwrap(),
            json!({"root": {"item": [1, "x"]}})
        );
        assert_eq!(
            xml_to_json(&json_to_xml(&json!({"a": [1, 2]})).unwrap()).unwrap(),
            json!({"root": {"a": [1, 2]}})
        );
        assert_eq!(
            xml_to_json(&json_to_xml(&json!("hi")).unwrap()).unwrap(),
            json!({"root": "hi"})
        );
    }

    #[test]
    fn json_that_xml_cannot_carry_is_refused_with_its_path() {
        let e = json_to_xml(&json!({"a": {"first name": 1}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "at $.a.first name: `first name` is not an XML element name"
        );
        let e = json_to_xml(&json!({"a": {"b": [[1]]}})).unwrap_err();
        assert!(e.to_string().starts_with("at $.a.b.0:"), "{e}");
        let e = json_to_xml(&json!({"a": "\u{1}"})).unwrap_err();
        assert!(e.to_string().contains("U+0001"), "{e}");
    }

    #[test]
    fn names_json_would_read_as_attributes_or_text_are_refused() {
        // Found by the xml fuzz target: `<@A_/>` came back from the JSON
        // side as an attribute of a `<root>`.
        for bad in [
            "<@A_/>",
            "<#text>x</#text>",
            "<a @b=\"1\"/>",
            "<a><1b/></a>",
        ] {
            let err = xml_to_json(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("is not an XML"), "{bad}: {err}");
        }
        assert!(xml_to_json(b"<s:a xmlns:s=\"urn:x\" s:b=\"1\"/>").is_ok());
    }

    #[test]
    fn xml_to_json_table() {
        let cases: &[(&str, Value)] = &[
            ("<a>x</a>", json!({"a": "x"})),
            ("<a/>", json!({"a": ""})),
            (
                "<a><b>1</b><b>2</b><c/></a>",
                json!({"a": {"b": ["1", "2"], "c": ""}}),
            ),
            ("<a id=\"1\"/>", json!({"a": {"@id": "1"}})),
            (
                "<a id=\"1\">t</a>",
                json!({"a": {"@id": "1", "#text": "t"}}),
            ),
            ("<a>\n  <b>x</b>\n</a>", json!({"a": {"b": "x"}})),
            (
                "<a>&lt;&amp;&gt;&quot;&apos;&#233;&#x1F980;</a>",
                json!({"a": "<&>\"'é🦀"}),
            ),
            ("<a><![CDATA[<raw> & ]]></a>", json!({"a": "<raw> & "})),
            (
                "<?xml version=\"1.0\"?><!-- c --><a><?pi x?>v</a>",
                json!({"a": "v"}),
            ),
            ("\u{feff}<a>bom</a>", json!({"a": "bom"})),
            (
                "<x:a xmlns:x=\"urn:x\"><x:b>1</x:b></x:a>",
                json!({"x:a": {"@xmlns:x": "urn:x", "x:b": "1"}}),
            ),
            (
                "<a xmlns:pc=\"urn:portcullis:json\"><n pc:type=\"number\"> 5 </n></a>",
                json!({"a": {"n": 5}}),
            ),
            (
                "<a><b pc:array=\"true\">1</b></a>",
                json!({"a": {"b": ["1"]}}),
            ),
            ("<a>x<b>y</b>z</a>", json!({"a": {"b": "y", "#text": "xz"}})),
        ];
        for (xml, want) in cases {
            let got = xml_to_json(xml.as_bytes()).unwrap_or_else(|e| panic!("{xml}: {e}"));
            assert_eq!(&got, want, "{xml}");
        }
    }

    fn fails(xml: &str) -> String {
        match xml_to_json(xml.as_bytes()) {
            Ok(v) => panic!("{xml} gave {v}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_xml_says_where() {
        let e = fails("<a>\n  <b>x</c>\n</a>");
        assert!(e.starts_with("line 2, column "), "{e}");
        let e = fails("<a>\n<b>");
        assert!(
            e.starts_with("line 2, column 4: ") && e.contains("not closed"),
            "{e}"
        );
        assert!(fails("<a/><b/>").contains("second root"));
        assert!(fails("hello").contains("outside the root"));
        assert!(fails("").contains("no root element"));
        assert!(fails("<a>&nbsp;</a>").contains("unknown entity"));
        assert!(fails("<a pc:type=\"number\">x</a>").contains("not a number"));
        let e = xml_to_json(b"<a>\xff</a>").unwrap_err().to_string();
        assert!(
            e.starts_with("line 1, column 4: ") && e.contains("UTF-8"),
            "{e}"
        );
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(fails(&deep).contains("nested deeper"));
    }

    #[test]
    fn doctypes_and_entities_are_refused() {
        let laughs = "<?xml version=\"1.0\"?>\n<!DOCTYPE x [<!ENTITY a \"lol\"><!ENTITY b \"&a;&a;&a;\">]>\n<x>&b;</x>";
        let e = fails(laughs);
        assert!(
            e.starts_with("line 2, column 1: a DOCTYPE is refused"),
            "{e}"
        );
        let xxe = "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>";
        assert!(fails(xxe).contains("DOCTYPE is refused"));
        let external = "<!DOCTYPE x SYSTEM \"http://example.com/x.dtd\"><x/>";
        assert!(fails(external).contains("DOCTYPE is refused"));
        // Without a DOCTYPE an entity reference is unknown, never fetched.
        assert!(fails("<x>&e;</x>").contains("unknown entity `&e;`"));
        assert!(fails("<x a=\"&e;\"/>").starts_with("line 1, column 1"));
    }
}
