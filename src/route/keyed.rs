//! A string-keyed map for the per-request lookups: a lookup walks several candidate
//! keys (path cut points, host suffixes), most of which no route uses, so keys of a
//! length no entry has are rejected before they are hashed.
//!
//! It hashes with FxHash rather than SipHash: the map is built once from trusted
//! configuration and never grows, so a request can choose which slot it probes but
//! cannot lengthen any probe sequence, and HashDoS resistance buys nothing here.

use rustc_hash::FxHashMap;

/// An immutable map from strings to `V`.
#[derive(Debug)]
pub(super) struct KeyedMap<V> {
    map: FxHashMap<Box<str>, V>,
    /// `lens[n]` says whether some key is `n` bytes long.
    lens: Box<[bool]>,
}

impl<V> KeyedMap<V> {
    /// Freezes the entries into a map.
    pub(super) fn new(entries: impl IntoIterator<Item = (String, V)>) -> KeyedMap<V> {
        let map: FxHashMap<Box<str>, V> = entries
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v))
            .collect();
        let longest = map.keys().map(|k| k.len()).max();
        let mut lens = vec![false; longest.map_or(0, |n| n + 1)];
        for key in map.keys() {
            lens[key.len()] = true;
        }
        KeyedMap {
            map,
            lens: lens.into(),
        }
    }

    /// The value for `key`, hashing it only when some key has its length.
    pub(super) fn get(&self, key: &str) -> Option<&V> {
        if self.lens.get(key.len()).copied().unwrap_or(false) {
            self.map.get(key)
        } else {
            None
        }
    }

    /// Whether the map has no entries.
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The number of entries.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_unused_lengths_are_not_found() {
        let map = KeyedMap::new([("/api".to_owned(), 1), (String::new(), 2)]);
        assert_eq!(map.get("/api"), Some(&1));
        assert_eq!(map.get(""), Some(&2));
        assert_eq!(map.get("/apx"), None);
        assert_eq!(map.get("/ap"), None);
        assert_eq!(map.get("/api/v1"), None);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn empty_map_finds_nothing() {
        let map: KeyedMap<u8> = KeyedMap::new([]);
        assert!(map.is_empty());
        assert_eq!(map.get(""), None);
    }
}
