//! Maps a path inside the configuration (`routes`, 2, `upstream`) back to a
//! line and column of the file the user wrote.
//!
//! The typed model loses where each value came from, and semantic validation
//! (an upstream that does not exist, a policy name with a typo) only knows the
//! path of the offending value. `portcullis check` must still print
//! `file:line:col: message`, so this module parses the same text a second time
//! into a tree that keeps nothing but positions, and answers "where is this
//! path?" for YAML and TOML alike. It also turns serde's "unknown field"
//! messages into did-you-mean hints.

use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The configuration file formats that `portcullis` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
}

impl Format {
    /// From the file extension: .yaml/.yml → Yaml, .toml → Toml, else None.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?;
        if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") {
            Some(Format::Yaml)
        } else if ext.eq_ignore_ascii_case("toml") {
            Some(Format::Toml)
        } else {
            None
        }
    }
}

/// One step of a path into the configuration: a map key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    /// A key of a mapping (YAML) or table (TOML).
    Key(String),
    /// A position in a sequence (YAML) or array, including arrays of tables (TOML).
    Index(usize),
}

/// A 1-based line and character column in the configuration text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line, counted from 1.
    pub line: u32,
    /// Column in characters (not bytes), counted from 1.
    pub column: u32,
}

impl Position {
    const START: Position = Position { line: 1, column: 1 };
}

/// The positions of every key and value of one parsed configuration text.
#[derive(Clone, Debug)]
pub struct SourceMap {
    root: Node,
}

/// A value and its position; `None` when the parser could not tell (then the
/// nearest ancestor that has one stands in for it).
#[derive(Clone, Debug)]
struct Node {
    pos: Option<Position>,
    tree: Tree,
}

#[derive(Clone, Debug)]
enum Tree {
    Leaf,
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Clone, Debug)]
struct Entry {
    key: String,
    key_pos: Option<Position>,
    value: Node,
}

impl Node {
    /// The child at `seg`, with the position that best stands for it: its
    /// own, or its key's when the value has none (an implicit TOML table).
    fn step(&self, seg: &PathSeg) -> Option<(&Node, Option<Position>)> {
        match (&self.tree, seg) {
            (Tree::Map(entries), PathSeg::Key(key)) => entries
                .iter()
                .find(|e| e.key == *key)
                .map(|e| (&e.value, e.value.pos.or(e.key_pos))),
            (Tree::Seq(items), PathSeg::Index(i)) => items.get(*i).map(|n| (n, n.pos)),
            _ => None,
        }
    }
}

impl SourceMap {
    /// Parses `text` into a tree of node positions; None when the text does not parse at all.
    pub fn parse(text: &str, format: Format) -> Option<SourceMap> {
        let root = match format {
            Format::Yaml => yaml::parse(text)?,
            Format::Toml => toml_tree::parse(text)?,
        };
        Some(SourceMap { root })
    }

    /// Position of the value at `path`; when part of the path does not exist, the position of the deepest node that does (e.g. the route mapping that lacks a key). Empty path or nothing found: line 1, column 1.
    pub fn locate(&self, path: &[PathSeg]) -> Position {
        // The root always answers 1:1, even when comments precede the first
        // key, because errors about the whole file belong at its top.
        let mut node = &self.root;
        let mut best = Position::START;
        for seg in path {
            let Some((next, pos)) = node.step(seg) else {
                break;
            };
            node = next;
            // A node without a position keeps its ancestor's.
            best = pos.unwrap_or(best);
        }
        best
    }

    /// Position of the *key* of the last path segment when it is a map key (for "unknown field" style errors); falls back to `locate`.
    pub fn locate_key(&self, path: &[PathSeg]) -> Position {
        node_key_pos(&self.root, path).unwrap_or_else(|| self.locate(path))
    }
}

fn node_key_pos(root: &Node, path: &[PathSeg]) -> Option<Position> {
    let (last, parents) = path.split_last()?;
    let PathSeg::Key(key) = last else {
        return None;
    };
    let mut node = root;
    for seg in parents {
        node = node.step(seg)?.0;
    }
    match &node.tree {
        Tree::Map(entries) => entries.iter().find(|e| e.key == *key)?.key_pos,
        _ => None,
    }
}

/// Closest candidate by edit distance (case-insensitive), only when it is close enough to be a likely typo (e.g. distance <= max(1, len/3)).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word: Vec<char> = word.to_lowercase().chars().collect();
    if word.is_empty() {
        return None;
    }
    // A third of the word may be wrong: "adress" still finds "address", while
    // short words like "tls" do not match every other three-letter key.
    let limit = (word.len() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let lowered: Vec<char> = candidate.to_lowercase().chars().collect();
        let distance = edit_distance(&word, &lowered);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent swaps,
/// because swapped letters ("raod") are among the commonest typos.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = v;
        }
    }
    d[a.len() * width + b.len()]
}

/// Parses serde's "unknown field `adress`, expected one of `name`, `address`" (also "expected `a` or `b`", "expected `a`", "there are no fields", and "unknown variant `x`, expected one of ...") into (the unknown word, the expected words).
pub fn parse_unknown(message: &str) -> Option<(String, Vec<String>)> {
    // The format crates wrap serde's text: serde-saphyr prefixes
    // "error: line 3 column 5: " and appends a snippet, toml prefixes a
    // snippet; so search for the phrase and read one line from there.
    let start = ["unknown field `", "unknown variant `"]
        .iter()
        .filter_map(|phrase| message.find(phrase).map(|at| at + phrase.len()))
        .min()?;
    let line = message[start..].lines().next().unwrap_or_default();
    let (word, rest) = line.split_once('`')?;
    // "there are no fields" / "there are no variants" leave the list empty.
    let list: &str = rest
        .strip_prefix(", expected one of ")
        .or_else(|| rest.strip_prefix(", expected "))
        .unwrap_or_default();
    let list = strip_location_suffix(list);
    let expected = if list.contains('`') {
        // serde quotes every name; taking the quoted parts is immune to
        // separators (", " and " or ") appearing in the list.
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    } else {
        // serde-saphyr lists the names bare: "expected one of name, address".
        list.split(", ")
            .flat_map(|part| part.split(" or "))
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Some((word.to_owned(), expected))
}

/// serde-saphyr's `without_snippet()` Display ends the message with
/// " at line 3, column 5", which would otherwise read as two more bare names.
fn strip_location_suffix(list: &str) -> &str {
    let Some(at) = list.rfind(" at line ") else {
        return list;
    };
    let is_location = list[at + " at line ".len()..]
        .split_once(", column ")
        .is_some_and(|(line, column)| line.parse::<u64>().is_ok() && column.parse::<u64>().is_ok());
    if is_location { &list[..at] } else { list }
}

/// Converts a byte offset in `text` into a 1-based line and (character) column.
pub fn position_of_offset(text: &str, offset: usize) -> Position {
    let mut end = offset.min(text.len());
    // An offset inside a multi-byte character points at that character.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    Position {
        line: saturate(line),
        column: saturate(column),
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// YAML goes through serde-saphyr itself, so anchors, merges and every
/// scalar style are resolved exactly as when the typed model is loaded.
mod yaml {
    use super::*;
    use serde_saphyr::{Location, Spanned};

    pub(super) fn parse(text: &str) -> Option<Node> {
        let root: Spanned<Tree> = serde_saphyr::from_str(text).ok()?;
        Some(node(root))
    }

    fn position(location: Location) -> Option<Position> {
        // Location::UNKNOWN (line 0) is what serde-saphyr gives when it lost track.
        (location.line() > 0).then(|| Position {
            line: u32::try_from(location.line()).unwrap_or(u32::MAX),
            column: u32::try_from(location.column().max(1)).unwrap_or(u32::MAX),
        })
    }

    fn node(spanned: Spanned<Tree>) -> Node {
        Node {
            pos: position(spanned.referenced),
            tree: spanned.value,
        }
    }

    impl<'de> Deserialize<'de> for Tree {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(TreeVisitor)
        }
    }

    struct TreeVisitor;

    impl<'de> Visitor<'de> for TreeVisitor {
        type Value = Tree;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any YAML value")
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }
        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree, D::Error> {
            Tree::deserialize(deserializer)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Tree, D::Error> {
            Tree::deserialize(deserializer)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<Spanned<Tree>>()? {
                items.push(node(item));
            }
            Ok(Tree::Seq(items))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
            let mut entries = Vec::new();
            while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                let value = map.next_value::<Spanned<Tree>>()?;
                entries.push(Entry {
                    key: key.value.0,
                    key_pos: position(key.referenced),
                    value: node(value),
                });
            }
            Ok(Tree::Map(entries))
        }
    }

    /// A mapping key as the text a path would name it by (`200` for an
    /// integer key); complex keys are kept as an empty name no path matches.
    struct KeyText(String);

    impl<'de> Deserialize<'de> for KeyText {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(KeyVisitor)
        }
    }

    struct KeyVisitor;

    impl<'de> Visitor<'de> for KeyVisitor {
        type Value = KeyText;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping key")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
            Ok(KeyText(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
            Ok(KeyText(v.to_string()))
        }
        fn visit_i128<E: de::Error>(self, v: i128) -> Result<KeyText, E> {
            Ok(KeyText(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
            Ok(KeyText(v.to_string()))
        }
        fn visit_u128<E: de::Error>(self, v: u128) -> Result<KeyText, E> {
            Ok(KeyText(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
            Ok(KeyText(v.to_string()))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
            Ok(KeyText(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<KeyText, E> {
            Ok(KeyText(v))
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<KeyText, E> {
            Ok(KeyText(String::from_utf8_lossy(v).into_owned()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
            Ok(KeyText(String::new()))
        }
        fn visit_none<E: de::Error>(self) -> Result<KeyText, E> {
            Ok(KeyText(String::new()))
        }
        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<KeyText, D::Error> {
            KeyText::deserialize(deserializer)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<KeyText, D::Error> {
            KeyText::deserialize(deserializer)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyText, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(KeyText(String::new()))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyText, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(KeyText(String::new()))
        }
    }
}

/// TOML goes through toml's own spanned document parser, which keeps a byte
/// span for every key and value, including each `[[table]]` of an array.
mod toml_tree {
    use super::*;
    use toml::Spanned;
    use toml::de::{DeTable, DeValue};

    pub(super) fn parse(text: &str) -> Option<Node> {
        let root = DeTable::parse(text).ok()?;
        Some(Node {
            pos: Some(Position::START),
            tree: table(text, root.get_ref()),
        })
    }

    fn position(text: &str, span: std::ops::Range<usize>) -> Option<Position> {
        // Tables that are only implied (`a` in `[a.b]` or `a.b = 1`) have no
        // text of their own: toml 1.2 spans their key, but should a span come
        // back empty, the key's position is the better answer (see `step`).
        (!span.is_empty()).then(|| position_of_offset(text, span.start))
    }

    fn table(text: &str, table: &DeTable<'_>) -> Tree {
        let mut entries: Vec<Entry> = table
            .iter()
            .map(|(key, value)| Entry {
                key: key.get_ref().to_string(),
                key_pos: position(text, key.span()),
                value: node(text, value),
            })
            .collect();
        // toml keeps keys sorted by name; file order keeps the tree
        // comparable with YAML's when debugging.
        entries.sort_by_key(|e| e.key_pos.map(|p| (p.line, p.column)));
        Tree::Map(entries)
    }

    fn node(text: &str, value: &Spanned<DeValue<'_>>) -> Node {
        let tree = match value.get_ref() {
            DeValue::Table(t) => table(text, t),
            DeValue::Array(items) => Tree::Seq(items.iter().map(|v| node(text, v)).collect()),
            _ => Tree::Leaf,
        };
        Node {
            pos: position(text, value.span()),
            tree,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segs: &[&str]) -> Vec<PathSeg> {
        segs.iter()
            .map(|s| match s.parse::<usize>() {
                Ok(i) => PathSeg::Index(i),
                Err(_) => PathSeg::Key((*s).to_owned()),
            })
            .collect()
    }

    fn pos(line: u32, column: u32) -> Position {
        Position { line, column }
    }

    const YAML: &str = "\
# gateway
listeners:
  - name: web
    address: 0.0.0.0:8080
routes:
  - name: users
    match:
      path_prefix: /v1/users
    upstream: users-v1
  - name: ping
    match: { path: /ping }
    policies: [jwt-auth, per-user]
";

    fn yaml() -> SourceMap {
        SourceMap::parse(YAML, Format::Yaml).unwrap()
    }

    #[test]
    fn format_follows_extension() {
        assert_eq!(Format::from_path(Path::new("a/p.yaml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("p.YML")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("p.toml")), Some(Format::Toml));
        assert_eq!(Format::from_path(Path::new("p.json")), None);
        assert_eq!(Format::from_path(Path::new("portcullis")), None);
    }

    #[test]
    fn yaml_locates_nested_value() {
        let map = yaml();
        assert_eq!(
            map.locate(&path(&["routes", "0", "match", "path_prefix"])),
            pos(8, 20)
        );
        assert_eq!(map.locate(&path(&["routes", "0", "upstream"])), pos(9, 15));
        assert_eq!(
            map.locate(&path(&["routes", "1", "match", "path"])),
            pos(11, 20)
        );
    }

    #[test]
    fn yaml_locates_sequence_item() {
        let map = yaml();
        assert_eq!(map.locate(&path(&["routes", "1"])), pos(10, 5));
        assert_eq!(
            map.locate(&path(&["routes", "1", "policies", "1"])),
            pos(12, 26)
        );
        assert_eq!(
            map.locate(&path(&["listeners", "0", "address"])),
            pos(4, 14)
        );
    }

    #[test]
    fn yaml_missing_key_points_at_parent() {
        let map = yaml();
        assert_eq!(map.locate(&path(&["routes", "1", "upstream"])), pos(10, 5));
        assert_eq!(
            map.locate(&path(&["routes", "7", "upstream"])),
            map.locate(&path(&["routes"]))
        );
        assert_eq!(map.locate(&path(&["upstreams"])), pos(1, 1));
        assert_eq!(map.locate(&[]), pos(1, 1));
    }

    #[test]
    fn yaml_locate_key_points_at_key() {
        let map = yaml();
        assert_eq!(
            map.locate_key(&path(&["routes", "0", "upstream"])),
            pos(9, 5)
        );
        assert_eq!(
            map.locate_key(&path(&["routes", "1", "match", "path"])),
            pos(11, 14)
        );
        // An index has no key: the item itself is the answer.
        assert_eq!(map.locate_key(&path(&["routes", "1"])), pos(10, 5));
        // A missing key falls back to the deepest node that exists.
        assert_eq!(map.locate_key(&path(&["routes", "1", "nope"])), pos(10, 5));
    }

    #[test]
    fn yaml_counts_columns_in_characters() {
        let map = SourceMap::parse("é: { ü: x }\n", Format::Yaml).unwrap();
        assert_eq!(map.locate(&path(&["é", "ü"])), pos(1, 9));
    }

    #[test]
    fn yaml_resolves_aliases_merges_and_integer_keys() {
        let text = "\
base: &b
  retries: 2
other: *b
merged:
  <<: *b
  own: 1
codes:
  404: gone
";
        let map = SourceMap::parse(text, Format::Yaml).unwrap();
        let key = |k: &str| PathSeg::Key(k.to_owned());
        assert_eq!(map.locate(&[key("codes"), key("404")]), pos(8, 8));
        // Values reached through an alias or a merge are reported where they
        // are used, which is where the user reads the section that is wrong.
        assert_eq!(map.locate(&[key("other"), key("retries")]), pos(3, 8));
        assert_eq!(map.locate(&[key("merged"), key("retries")]).line, 5);
        assert_eq!(map.locate(&[key("merged"), key("own")]), pos(6, 8));
    }

    const TOML: &str = r#"# gateway
[[listeners]]
name = "web"
address = "0.0.0.0:8080"

[[routes]]
name = "users"
upstream = "users-v1"
[routes.match]
path_prefix = "/v1/users"

[[routes]]
name = "ping"
match = { path = "/ping", methods = ["GET", "HEAD"] }
"#;

    fn toml() -> SourceMap {
        SourceMap::parse(TOML, Format::Toml).unwrap()
    }

    #[test]
    fn toml_locates_value_in_array_of_tables() {
        let map = toml();
        assert_eq!(map.locate(&path(&["routes", "0", "upstream"])), pos(8, 12));
        assert_eq!(map.locate(&path(&["routes", "1", "name"])), pos(13, 8));
        assert_eq!(map.locate(&path(&["routes", "1"])), pos(12, 1));
        assert_eq!(
            map.locate(&path(&["routes", "0", "match", "path_prefix"])),
            pos(10, 15)
        );
        // A missing key points at the table that lacks it.
        assert_eq!(map.locate(&path(&["routes", "1", "upstream"])), pos(12, 1));
        assert_eq!(
            map.locate_key(&path(&["routes", "0", "upstream"])),
            pos(8, 1)
        );
    }

    #[test]
    fn toml_locates_inline_table_value() {
        let map = toml();
        assert_eq!(
            map.locate(&path(&["routes", "1", "match", "path"])),
            pos(14, 18)
        );
        assert_eq!(
            map.locate(&path(&["routes", "1", "match", "methods", "1"])),
            pos(14, 45)
        );
        assert_eq!(
            map.locate_key(&path(&["routes", "1", "match", "methods"])),
            pos(14, 27)
        );
    }

    #[test]
    fn toml_implicit_tables_are_located_by_their_keys() {
        let text = "x.y = 2\n[a.b]\nc = 1\n";
        let map = SourceMap::parse(text, Format::Toml).unwrap();
        assert_eq!(map.locate(&path(&["x"])), pos(1, 1));
        assert_eq!(map.locate(&path(&["x", "y"])), pos(1, 7));
        assert_eq!(map.locate(&path(&["a"])), pos(2, 2));
        assert_eq!(map.locate(&path(&["a", "b"])), pos(2, 1));
        assert_eq!(map.locate(&path(&["a", "b", "c"])), pos(3, 5));
    }

    #[test]
    fn invalid_text_gives_none() {
        assert!(SourceMap::parse("routes: [a, b\nx: {", Format::Yaml).is_none());
        assert!(SourceMap::parse("a: b: c\n", Format::Yaml).is_none());
        assert!(SourceMap::parse("[[routes]\nname = ", Format::Toml).is_none());
        assert!(SourceMap::parse("a = 1\na = 2\n", Format::Toml).is_none());
    }

    #[test]
    fn empty_text_locates_at_start() {
        for format in [Format::Yaml, Format::Toml] {
            let map = SourceMap::parse("", format).unwrap();
            assert_eq!(map.locate(&path(&["routes", "0"])), pos(1, 1));
        }
    }

    #[test]
    fn did_you_mean_finds_typo() {
        let keys = ["name", "address", "protocol", "tls"];
        assert_eq!(did_you_mean("adress", keys), Some("address"));
        assert_eq!(did_you_mean("Protocl", keys), Some("protocol"));
        assert_eq!(did_you_mean("nmae", keys), Some("name"));
        assert_eq!(
            did_you_mean("users-v3", ["orders", "users-v1", "users-v2"]),
            Some("users-v1")
        );
    }

    #[test]
    fn did_you_mean_ignores_distant_words() {
        let keys = ["name", "address", "protocol", "tls"];
        assert_eq!(did_you_mean("upstream", keys), None);
        assert_eq!(did_you_mean("ssl", keys), None);
        assert_eq!(did_you_mean("", keys), None);
        assert_eq!(did_you_mean("name", []), None);
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn parse_unknown_field_message() {
        assert_eq!(
            parse_unknown("unknown field `adress`, expected one of `name`, `address`, `tls`"),
            Some(("adress".to_owned(), strings(&["name", "address", "tls"])))
        );
        assert_eq!(
            parse_unknown("unknown field `adress`, expected `name` or `address`"),
            Some(("adress".to_owned(), strings(&["name", "address"])))
        );
        assert_eq!(
            parse_unknown("unknown field `nam`, expected `name`"),
            Some(("nam".to_owned(), strings(&["name"])))
        );
        assert_eq!(
            parse_unknown("unknown field `x`, there are no fields"),
            Some(("x".to_owned(), vec![]))
        );
        assert_eq!(parse_unknown("missing field `name`"), None);
        assert_eq!(
            parse_unknown("invalid type: string \"x\", expected u16"),
            None
        );
    }

    #[test]
    fn parse_unknown_variant_message() {
        assert_eq!(
            parse_unknown("unknown variant `round_robn`, expected one of `round_robin`, `random`"),
            Some(("round_robn".to_owned(), strings(&["round_robin", "random"])))
        );
        assert_eq!(
            parse_unknown("unknown variant `udp`, expected `http` or `https`"),
            Some(("udp".to_owned(), strings(&["http", "https"])))
        );
        assert_eq!(
            parse_unknown("unknown variant `x`, there are no variants"),
            Some(("x".to_owned(), vec![]))
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Listener {
        name: String,
        address: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        listeners: Vec<Listener>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Balance {
        RoundRobin,
        Random,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Upstream {
        balance: Balance,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nothing {}

    #[test]
    fn parse_unknown_reads_serde_saphyr_errors() {
        // serde-saphyr prefixes "error: line 3 column 5: ", lists the names
        // without backticks and appends a source snippet.
        let text = "listeners:\n  - name: web\n    adress: x\n";
        let err = serde_saphyr::from_str::<Doc>(text).unwrap_err();
        let (word, expected) = parse_unknown(&err.to_string()).unwrap();
        assert_eq!(word, "adress");
        assert_eq!(expected, strings(&["name", "address"]));
        assert_eq!(
            did_you_mean(&word, expected.iter().map(String::as_str)),
            Some("address")
        );
        let location = err.location().unwrap();
        assert_eq!((location.line(), location.column()), (3, 5));

        // Without the snippet, the location moves to the end instead.
        assert_eq!(
            parse_unknown(&err.without_snippet().to_string()),
            Some(("adress".to_owned(), strings(&["name", "address"])))
        );
        // A struct with no fields leaves "expected one of " with nothing after.
        let err = serde_saphyr::from_str::<Nothing>("stray: 1\n").unwrap_err();
        assert_eq!(
            parse_unknown(&err.to_string()),
            Some(("stray".to_owned(), vec![]))
        );
        assert_eq!(
            parse_unknown(&err.without_snippet().to_string()),
            Some(("stray".to_owned(), vec![]))
        );

        let err = serde_saphyr::from_str::<Upstream>("balance: round_robn\n").unwrap_err();
        assert_eq!(
            parse_unknown(&err.to_string()),
            Some(("round_robn".to_owned(), strings(&["round_robin", "random"])))
        );
    }

    #[test]
    fn parse_unknown_reads_toml_errors() {
        // toml puts "TOML parse error at line 3, column 1" and a snippet
        // before serde's message; the span is a byte range.
        let text = "[[listeners]]\nname = \"web\"\nadress = \"x\"\n";
        let err = toml::from_str::<Doc>(text).unwrap_err();
        assert_eq!(
            parse_unknown(&err.to_string()),
            Some(("adress".to_owned(), strings(&["name", "address"])))
        );
        assert_eq!(
            parse_unknown(err.message()),
            parse_unknown(&err.to_string())
        );
        let span = err.span().unwrap();
        assert_eq!(position_of_offset(text, span.start), pos(3, 1));

        let err = toml::from_str::<Nothing>("stray = 1\n").unwrap_err();
        assert_eq!(
            parse_unknown(&err.to_string()),
            Some(("stray".to_owned(), vec![]))
        );

        let err = toml::from_str::<Upstream>("balance = \"round_robn\"\n").unwrap_err();
        assert_eq!(
            parse_unknown(&err.to_string()),
            Some(("round_robn".to_owned(), strings(&["round_robin", "random"])))
        );
    }

    #[test]
    fn position_of_offset_counts_lines_and_chars() {
        let text = "ab\ncé d\n\nx";
        assert_eq!(position_of_offset(text, 0), pos(1, 1));
        assert_eq!(position_of_offset(text, 2), pos(1, 3));
        assert_eq!(position_of_offset(text, 3), pos(2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(position_of_offset(text, 7), pos(2, 4));
        // Inside 'é': the character that contains the byte.
        assert_eq!(position_of_offset(text, 5), pos(2, 2));
        assert_eq!(position_of_offset(text, 6), pos(2, 3));
        assert_eq!(position_of_offset(text, 9), pos(3, 1));
        assert_eq!(position_of_offset(text, 10), pos(4, 1));
        // Past the end: the end.
        assert_eq!(position_of_offset(text, 99), pos(4, 2));
    }
}
