//! A JSON body read for one validation: strings and member names borrow
//! from the body's bytes, objects are plain vectors.
//!
//! `serde_json::Value` keeps objects in an `IndexMap` (the crate-wide
//! `preserve_order` feature) and allocates every name and string: for a
//! 1 KiB order that tree costs most of the request's check, though the
//! validator only reads it once and drops it. This representation is what
//! jsonschema's custom-representation interface ([`Json`]) validates
//! instead; it answers only "valid", and an invalid body is checked again
//! as a `Value`, so every message stays exactly what it was.

use std::borrow::Cow;
use std::collections::HashSet;

use jsonschema::JsonType;
use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use serde_json::{Map, Number, Value};

/// Up to this many members an object is checked for a repeated name by
/// comparing names; past it, through a set (linear, not quadratic).
const LINEAR_DUPLICATE_CHECK: usize = 32;

/// One JSON value of a body.
#[derive(Debug, PartialEq)]
pub enum BodyValue<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as `serde_json` reads it (so every bound compares alike).
    Number(Number),
    /// A string; borrowed unless it had escapes.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<BodyValue<'a>>),
    /// An object's members, in the body's order, each name once.
    Object(Vec<(Cow<'a, str>, BodyValue<'a>)>),
}

/// Deepest nesting read here. serde_json refuses a body past 127 levels;
/// a deeper one than this takes the `Value` path, which words that refusal.
const MAX_DEPTH: usize = 100;

/// The largest integer an `f64` holds exactly (2^53).
const EXACT_F64_INT: u64 = 1 << 53;

/// The powers of ten an `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Reads a JSON body; `None` when it is not valid JSON, or when an object
/// repeats a name (a `Value` keeps the last one: such bodies take the
/// `Value` path rather than being read differently here).
///
/// This reader is the measured hot path of a body's check (issue 15), so
/// it is written out rather than driven through serde: one UTF-8 check of
/// the whole body instead of one per string, containers gathered on two
/// scratch stacks and allocated once at their exact size. It accepts only
/// what serde_json accepts and reads it to the same values; whatever it is
/// unsure of (deep nesting, surrogate escapes, numbers an `f64` cannot
/// take exactly) it leaves to serde_json, for the number, or to the
/// `Value` path, for the body.
pub fn parse(bytes: &[u8]) -> Option<BodyValue<'_>> {
    // JSON outside strings is ASCII, so a body serde_json accepts is valid
    // UTF-8 throughout, and one that is not, serde_json refuses too.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut reader = Reader {
        text,
        pos: 0,
        items: Vec::new(),
        members: Vec::new(),
    };
    reader.skip_ws();
    let value = reader.value(MAX_DEPTH)?;
    reader.skip_ws();
    (reader.pos == bytes.len()).then_some(value)
}

/// The state of one [`parse`].
struct Reader<'a> {
    text: &'a str,
    /// The next byte to read; always on a character boundary between tokens.
    pos: usize,
    /// The elements of the arrays being read, innermost last.
    items: Vec<BodyValue<'a>>,
    /// The members of the objects being read, innermost last.
    members: Vec<(Cow<'a, str>, BodyValue<'a>)>,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips what serde_json takes for whitespace (and nothing else).
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Takes `byte` (after whitespace), or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// One value, at most `depth` containers deep; whitespace before it
    /// already skipped.
    fn value(&mut self, depth: usize) -> Option<BodyValue<'a>> {
        match self.peek()? {
            b'"' => {
                self.pos += 1;
                self.string().map(BodyValue::String)
            }
            b'{' => {
                self.pos += 1;
                self.object(depth.checked_sub(1)?)
            }
            b'[' => {
                self.pos += 1;
                self.array(depth.checked_sub(1)?)
            }
            b't' => self.literal("true", BodyValue::Bool(true)),
            b'f' => self.literal("false", BodyValue::Bool(false)),
            b'n' => self.literal("null", BodyValue::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str, value: BodyValue<'a>) -> Option<BodyValue<'a>> {
        let rest = self.text.as_bytes().get(self.pos..)?;
        rest.starts_with(word.as_bytes()).then(|| {
            self.pos += word.len();
            value
        })
    }

    /// An array's elements, after its `[`.
    fn array(&mut self, depth: usize) -> Option<BodyValue<'a>> {
        self.skip_ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(BodyValue::Array(Vec::new()));
        }
        let mark = self.items.len();
        loop {
            self.skip_ws();
            let item = self.value(depth)?;
            self.items.push(item);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    // `Drain` knows its length: one allocation of the exact size.
                    // One allocation of the exact size, one copy.
                    return Some(BodyValue::Array(self.items.split_off(mark)));
                }
                _ => return None,
            }
        }
    }

    /// An object's members, after its `{`.
    fn object(&mut self, depth: usize) -> Option<BodyValue<'a>> {
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(BodyValue::Object(Vec::new()));
        }
        let mark = self.members.len();
        loop {
            self.expect(b'"')?;
            let name = self.string()?;
            let read = self.members.get(mark..)?;
            if read.len() < LINEAR_DUPLICATE_CHECK && read.iter().any(|(n, _)| *n == name) {
                return None;
            }
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value(depth)?;
            self.members.push((name, value));
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    let members = self.members.split_off(mark);
                    if members.len() > LINEAR_DUPLICATE_CHECK {
                        let mut seen = HashSet::with_capacity(members.len());
                        if !members.iter().all(|(n, _)| seen.insert(n.as_ref())) {
                            return None;
                        }
                    }
                    return Some(BodyValue::Object(members));
                }
                _ => return None,
            }
        }
    }

    /// A string's text, after its opening quote: borrowed unless it has
    /// escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let pos = special(bytes, start)?;
        match *bytes.get(pos)? {
            b'"' => {
                self.pos = pos + 1;
                self.text.get(start..pos).map(Cow::Borrowed)
            }
            b'\\' => {
                let mut out = String::with_capacity(pos - start + 16);
                out.push_str(self.text.get(start..pos)?);
                self.pos = pos;
                self.escaped(out).map(Cow::Owned)
            }
            // serde_json refuses control characters in strings.
            _ => None,
        }
    }

    /// The rest of a string that has escapes, from the first `\`, onto `out`.
    fn escaped(&mut self, mut out: String) -> Option<String> {
        let bytes = self.text.as_bytes();
        loop {
            let start = self.pos;
            let pos = special(bytes, start)?;
            out.push_str(self.text.get(start..pos)?);
            match *bytes.get(pos)? {
                b'"' => {
                    self.pos = pos + 1;
                    return Some(out);
                }
                b'\\' => {
                    let unescaped = match *bytes.get(pos + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut code = hex4(bytes.get(pos + 2..pos + 6)?)?;
                            self.pos = pos + 6;
                            if (0xd800..0xdc00).contains(&code) {
                                // A pair (an emoji) is one character; a
                                // lone half is left to the `Value` path.
                                let low = bytes.get(pos + 6..pos + 12)?;
                                if !low.starts_with(b"\\u") {
                                    return None;
                                }
                                let low = hex4(low.get(2..)?)?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return None;
                                }
                                code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                                self.pos = pos + 12;
                            }
                            // `None` for a lone low half.
                            out.push(char::from_u32(code)?);
                            continue;
                        }
                        _ => return None,
                    };
                    out.push(unescaped);
                    self.pos = pos + 2;
                }
                _ => return None,
            }
        }
    }

    /// A number, as serde_json reads it: an integer without fraction or
    /// exponent as `u64` (or `i64` when negative), anything else as `f64`.
    fn number(&mut self) -> Option<BodyValue<'a>> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut pos = start;
        let negative = bytes.get(pos) == Some(&b'-');
        if negative {
            pos += 1;
        }
        // Every digit, integer and fraction, into one significand.
        let mut significand: u64 = 0;
        let mut exact = true;
        let mut digits = |pos: &mut usize| -> usize {
            let from = *pos;
            while let Some(d @ b'0'..=b'9') = bytes.get(*pos).copied() {
                match significand
                    .checked_mul(10)
                    .and_then(|s| s.checked_add(u64::from(d - b'0')))
                {
                    Some(s) => significand = s,
                    None => exact = false,
                }
                *pos += 1;
            }
            *pos - from
        };
        match bytes.get(pos)? {
            b'0' => {
                pos += 1;
                // One leading zero only.
                if bytes.get(pos).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                digits(&mut pos);
            }
            _ => return None,
        }
        let mut scale: i64 = 0;
        let mut float = false;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            float = true;
            let fraction = digits(&mut pos);
            if fraction == 0 {
                return None;
            }
            scale = -i64::try_from(fraction).ok()?;
        }
        if let Some(b'e' | b'E') = bytes.get(pos) {
            pos += 1;
            float = true;
            let minus = match bytes.get(pos) {
                Some(b'-') => {
                    pos += 1;
                    true
                }
                Some(b'+') => {
                    pos += 1;
                    false
                }
                _ => false,
            };
            let from = pos;
            let mut exponent: i64 = 0;
            while let Some(d @ b'0'..=b'9') = bytes.get(pos).copied() {
                // Past this the fast cases below are out of reach anyway.
                exponent = (exponent * 10 + i64::from(d - b'0')).min(1 << 20);
                pos += 1;
            }
            if pos == from {
                return None;
            }
            scale += if minus { -exponent } else { exponent };
        }
        self.pos = pos;
        if exact && !float {
            if !negative {
                return Some(BodyValue::Number(significand.into()));
            }
            // `-0` is a float to serde_json; it goes the slow way below.
            if significand != 0
                && let Some(n) = 0_i64.checked_sub_unsigned(significand)
            {
                return Some(BodyValue::Number(n.into()));
            }
        }
        // Both the significand and the power of ten exact in an `f64`: one
        // correctly rounded operation is the correctly rounded value, as
        // serde_json's reading is.
        if exact
            && float
            && significand <= EXACT_F64_INT
            && let Some(power) = usize::try_from(scale.unsigned_abs())
                .ok()
                .and_then(|i| POW10.get(i))
        {
            #[allow(clippy::cast_precision_loss)] // at most 2^53: exact
            let m = significand as f64;
            let v = if scale < 0 { m / power } else { m * power };
            let v = if negative { -v } else { v };
            return Number::from_f64(v).map(BodyValue::Number);
        }
        let literal = self.text.get(start..pos)?;
        serde_json::from_str::<Number>(literal)
            .ok()
            .map(BodyValue::Number)
    }
}

/// Where the first `"`, `\\` or control character at or after `pos` is:
/// the end of a string's plain run. Eight bytes at a time, as strings are
/// most of a body's bytes.
fn special(bytes: &[u8], mut pos: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const SLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_ne_bytes([0x20; 8]);
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        // The classic "has a zero byte" and "has a byte below n" tests:
        // each marks its lowest match exactly (higher marks may be false,
        // and are never read).
        let quote = word ^ QUOTES;
        let slash = word ^ SLASHES;
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (word.wrapping_sub(SPACES) & !word))
            & HIGH;
        if found != 0 {
            // Little-endian: the first byte is the lowest.
            return Some(pos + (found.trailing_zeros() / 8) as usize);
        }
        pos += 8;
    }
    let rest = bytes.get(pos..)?;
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| pos + i)
}

/// Four hex digits' value.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0, |code, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(code * 16 + v)
    })
}

impl BodyValue<'_> {
    /// The same value as a `serde_json::Value` (for error messages and
    /// `const`/`enum`/`uniqueItems` comparisons, never the common case).
    pub fn to_value(&self) -> Value {
        match self {
            BodyValue::Null => Value::Null,
            BodyValue::Bool(b) => Value::Bool(*b),
            BodyValue::Number(n) => Value::Number(n.clone()),
            BodyValue::String(s) => Value::String(s.to_string()),
            BodyValue::Array(items) => Value::Array(items.iter().map(Self::to_value).collect()),
            BodyValue::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

/// The [`BodyValue`] representation, for `jsonschema::options_for`.
pub struct BodyJson;

impl Json for BodyJson {
    type Node<'a> = &'a BodyValue<'a>;
    type PreparedKey = String;
    type StringBuffer = ();

    // A body is a tree: no node is its own descendant, so the validator's
    // `$ref` cycle guard only needs to look at the node being validated.
    const ACYCLIC: bool = true;

    // `get` is a scan of the members (see `Object::get` below), so one
    // pass over them beats a lookup per required name for any object a
    // body reasonably holds.
    const KEYS_PER_LOOKUP: usize = 16;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(Self::Node<'_>) -> T) -> T {
        // Only `propertyNames` comes here; the name is borrowed, not copied.
        let node = BodyValue::String(Cow::Borrowed(string));
        f(&node)
    }
}

impl<'a> Node<'a, BodyJson> for &'a BodyValue<'a> {
    type Object = &'a [(Cow<'a, str>, BodyValue<'a>)];
    type Array = &'a [BodyValue<'a>];
    type Number = &'a Number;

    fn as_object(&self) -> Option<Self::Object> {
        match self {
            BodyValue::Object(members) => Some(members),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<Self::Array> {
        match self {
            BodyValue::Array(items) => Some(items),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            BodyValue::String(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self {
            BodyValue::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self {
            BodyValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, BodyValue::Null)
    }

    fn json_type(&self) -> JsonType {
        match self {
            BodyValue::Null => JsonType::Null,
            BodyValue::Bool(_) => JsonType::Boolean,
            BodyValue::Number(_) => JsonType::Number,
            BodyValue::String(_) => JsonType::String,
            BodyValue::Array(_) => JsonType::Array,
            BodyValue::Object(_) => JsonType::Object,
        }
    }

    fn equals_value(&self, expected: &Value) -> bool {
        match (self, expected) {
            // `enum`s of strings are the common case: no copy to compare.
            (BodyValue::String(s), _) => expected.as_str() == Some(s.as_ref()),
            (BodyValue::Null, _) => expected.is_null(),
            (BodyValue::Bool(b), _) => expected.as_bool() == Some(*b),
            _ => jsonschema::json::cmp::equal(&BodyValue::to_value(self), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(BodyValue::to_value(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<BodyValue>(*self) as usize
        ))
    }
}

impl<'a> Object<'a, BodyJson> for &'a [(Cow<'a, str>, BodyValue<'a>)] {
    type Node = &'a BodyValue<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        <[_]>::len(self)
    }

    fn get(&self, key: &String) -> Option<&'a BodyValue<'a>> {
        self.iter()
            .find(|(name, _)| name.as_ref() == key.as_str())
            .map(|(_, value)| value)
    }

    fn members(&self) -> Members<'a> {
        Members(self.iter())
    }
}

/// An object's members, as names and values.
pub struct Members<'a>(std::slice::Iter<'a, (Cow<'a, str>, BodyValue<'a>)>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, &'a BodyValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(name, value)| (name.as_ref(), value))
    }
}

impl<'a> Array<'a, BodyJson> for &'a [BodyValue<'a>] {
    type Node = &'a BodyValue<'a>;
    type ElementsIter = std::slice::Iter<'a, BodyValue<'a>>;

    fn len(&self) -> usize {
        <[_]>::len(self)
    }

    fn elements(&self) -> Self::ElementsIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_value_does() {
        let text =
            br#"{"a":[1,-2,2.5,1e3,"x\u00e9",null,true],"b\n":{"c":"d"},"e":18446744073709551615}"#;
        let doc = parse(text).expect("valid JSON");
        let value: Value = serde_json::from_slice(text).expect("valid JSON");
        assert_eq!(doc.to_value(), value);
        // Member order kept, unescaped strings borrowed.
        let BodyValue::Object(members) = &doc else {
            panic!("an object")
        };
        assert_eq!(members[0].0, "a");
        assert!(matches!(members[0].0, Cow::Borrowed(_)));
        assert!(matches!(members[1].0, Cow::Owned(_)));
    }

    /// `parse` accepts only what serde_json accepts, and reads it alike
    /// (the property `fuzz` checks, here over every one-byte change of a
    /// few bodies).
    fn agrees_with_serde_json(text: &[u8]) {
        if let Some(doc) = parse(text) {
            let value: Value = serde_json::from_slice(text).unwrap_or_else(|e| {
                panic!(
                    "{e}: {:?} read, serde_json refuses it",
                    String::from_utf8_lossy(text)
                )
            });
            assert_eq!(doc.to_value(), value, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn every_one_byte_change_is_read_as_serde_json_reads_it_or_not_at_all() {
        let seeds: [&[u8]; 6] = [
            br#"{"a": [1, -2, 2.5, -0.0, 1e3, 1E-2, 0.1e+2, "x\u00e9\n\"", null, true, false], "b": {}}"#,
            br#"[{"k":"v","l":[[],{}]}, 18446744073709551615, -9223372036854775808, 123456789012345678901]"#,
            br#" {"s":"\ud83d\ude00 \/ \b\f\r\t", "n": -0, "e": 4.9e-324, "m": 1.7976931348623157e308} "#,
            "{\"é\": \"ü€😀\", \"t\": \"tab\\there\"}".as_bytes(),
            br#"[9007199254740993, 0.30000000000000004, 123.456e-7, 1e22, 1e23, 5e-22]"#,
            br#""plain""#,
        ];
        let replacements = [
            b'"', b'\\', b',', b':', b'{', b'}', b'[', b']', b'0', b'9', b'-', b'+', b'.', b'e',
            b'u', b'd', b' ', b'\n', 0x1f, 0x7f, 0xc3, 0xff,
        ];
        for seed in seeds {
            assert!(parse(seed).is_some(), "{:?}", String::from_utf8_lossy(seed));
            agrees_with_serde_json(seed);
            for i in 0..seed.len() {
                let mut cut = seed.to_vec();
                cut.remove(i);
                agrees_with_serde_json(&cut);
                for &r in &replacements {
                    let mut changed = seed.to_vec();
                    changed[i] = r;
                    agrees_with_serde_json(&changed);
                    changed.insert(i, r);
                    agrees_with_serde_json(&changed);
                }
            }
        }
    }

    #[test]
    fn numbers_are_read_as_serde_json_reads_them() {
        for text in [
            "0",
            "-0",
            "1",
            "-1",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "0.5",
            "-0.0",
            "9.5",
            "1e22",
            "1e23",
            "1.5e-22",
            "123456789.123456789",
            "2.2250738585072014e-308",
            "1e-400",
            "9007199254740993.0",
            "0.1",
            "1E+2",
            "3.14159",
        ] {
            let read = parse(text.as_bytes()).expect(text);
            let value: Value = serde_json::from_str(text).expect(text);
            assert_eq!(read.to_value(), value, "{text}");
            if let (BodyValue::Number(a), Value::Number(b)) = (&read, &value) {
                // Same kind (u64, i64 or f64) and same bits, not just equal.
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}");
                assert_eq!(
                    a.as_f64().map(f64::to_bits),
                    b.as_f64().map(f64::to_bits),
                    "{text}"
                );
            }
        }
        for text in [
            "01", "-", "1.", ".5", "1e", "1e+", "+1", "1.5e400", "-01", "0x1",
        ] {
            assert!(parse(text.as_bytes()).is_none(), "{text}");
        }
    }

    #[test]
    fn the_end_of_a_plain_run_is_found_at_every_offset() {
        for special_byte in [b'"', b'\\', 0x00, 0x1f] {
            for len in 0..20 {
                for at in 0..=len {
                    let mut text: Vec<u8> =
                        (0..len).map(|i| [b'a', 0xc3, 0x7f, b' '][i % 4]).collect();
                    text.insert(at, special_byte);
                    assert_eq!(special(&text, 0), Some(at), "{text:?}");
                }
            }
        }
        assert_eq!(special(b"abcdefghijk", 0), None);
        assert_eq!(special(b"ab\"", 3), None);
    }

    #[test]
    fn deep_nesting_is_left_to_the_value_path() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(MAX_DEPTH).as_bytes()).is_some());
        assert!(parse(deep(MAX_DEPTH + 1).as_bytes()).is_none());
        assert!(parse(deep(200).as_bytes()).is_none());
    }

    #[test]
    fn refuses_what_value_reads_differently_or_not_at_all() {
        assert!(parse(br#"{"a":1,"a":2}"#).is_none());
        let many: String = (0..40)
            .map(|i| format!("\"k{i}\":{i}"))
            .chain(["\"k3\":0".to_string()])
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse(format!("{{{many}}}").as_bytes()).is_none());
        assert!(parse(b"{\"a\":1} x").is_none());
        assert!(parse(b"[1,").is_none());
        assert!(parse(b"").is_none());
    }
}
