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
use std::fmt;

use jsonschema::JsonType;
use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
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

/// Reads a JSON body; `None` when it is not valid JSON, or when an object
/// repeats a name (a `Value` keeps the last one: such bodies take the
/// `Value` path rather than being read differently here).
pub fn parse(bytes: &[u8]) -> Option<BodyValue<'_>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de.deserialize_any(ValueVisitor).ok()?;
    de.end().ok()?;
    Some(value)
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

/// Builds a [`BodyValue`] from serde_json's deserializer, borrowing the
/// strings it hands over unescaped.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = BodyValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(BodyValue::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(BodyValue::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(BodyValue::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(BodyValue::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // As `Value` does: a non-finite float (which JSON cannot write) is null.
        Ok(Number::from_f64(v).map_or(BodyValue::Null, BodyValue::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(BodyValue::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(BodyValue::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(BodyValue::String(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(Seed)? {
            items.push(item);
        }
        Ok(BodyValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(Cow<'de, str>, BodyValue<'de>)> = Vec::new();
        while let Some(name) = map.next_key_seed(NameSeed)? {
            if members.len() < LINEAR_DUPLICATE_CHECK && members.iter().any(|(n, _)| *n == name) {
                return Err(de::Error::custom("repeated member name"));
            }
            let value = map.next_value_seed(Seed)?;
            members.push((name, value));
        }
        if members.len() > LINEAR_DUPLICATE_CHECK {
            let mut seen = HashSet::with_capacity(members.len());
            if !members.iter().all(|(n, _)| seen.insert(n.as_ref())) {
                return Err(de::Error::custom("repeated member name"));
            }
        }
        Ok(BodyValue::Object(members))
    }
}

/// Reads one value with [`ValueVisitor`].
struct Seed;

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = BodyValue<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Reads a member name, borrowed unless it had escapes.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

/// See [`NameSeed`].
struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The [`BodyValue`] representation, for `jsonschema::options_for`.
pub struct BodyJson;

impl Json for BodyJson {
    type Node<'a> = &'a BodyValue<'a>;
    type PreparedKey = String;
    type StringBuffer = ();

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
