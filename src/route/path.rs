//! Path handling: dot-segment removal for requests and the segment-aware prefix keys
//! that let the table find prefixes by hash lookups instead of string scans.

use std::borrow::Cow;

/// Removes dot segments ("/a/./b/../c" -> "/a/c", also percent-encoded dots %2e / %2E) so that routing and the upstream see the same path and "/public/../admin" cannot dodge an /admin route. Never goes above "/". Returns Cow::Borrowed when nothing changes (the common case: no allocation).
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    // A dot segment needs a dot, plain or percent-encoded: most paths have neither.
    if !path.bytes().any(|b| b == b'.' || b == b'%')
        || !path.split('/').any(|s| dot_segment(s).is_some())
    {
        return Cow::Borrowed(path);
    }
    let (absolute, body) = match path.strip_prefix('/') {
        Some(body) => (true, body),
        None => (false, path),
    };
    let mut kept: Vec<&str> = Vec::new();
    // A path ending in a dot segment names a directory, so it keeps a trailing slash
    // (RFC 3986 §5.2.4: "/a/b/.." is "/a/", not "/a").
    let mut trailing_slash = false;
    for segment in body.split('/') {
        trailing_slash = false;
        match dot_segment(segment) {
            Some(Dots::One) => trailing_slash = true,
            Some(Dots::Two) => {
                kept.pop();
                trailing_slash = true;
            }
            None => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    if absolute {
        out.push('/');
    }
    out.push_str(&kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Which dot segment a path segment is, after percent-decoding its dots.
#[derive(Debug, PartialEq, Eq)]
enum Dots {
    One,
    Two,
}

fn dot_segment(segment: &str) -> Option<Dots> {
    // Shortest encoding of "." is 1 byte, longest of ".." is 6 ("%2e%2e").
    if segment.is_empty() || segment.len() > 6 {
        return None;
    }
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return None,
        };
        dots += 1;
    }
    match dots {
        1 => Some(Dots::One),
        2 => Some(Dots::Two),
        _ => None,
    }
}

/// The lookup key for a configured prefix: one trailing slash is dropped so that
/// `/api/` behaves like `/api`, and `/` becomes "", the prefix of every path.
pub(super) fn prefix_key(prefix: &str) -> &str {
    prefix.strip_suffix('/').unwrap_or(prefix)
}

/// The prefix keys a request path can match, longest first: the path itself, then the
/// path cut before each `/` from the right, ending with "" (which matches every path).
pub(super) fn prefix_candidates(path: &str) -> impl Iterator<Item = &str> {
    // A byte loop: paths are short, and `rmatch_indices` costs more to set up than it saves.
    let cuts = path
        .bytes()
        .enumerate()
        .rev()
        .filter(|&(_, b)| b == b'/')
        .map(|(i, _)| &path[..i]);
    // A path such as "*" has no leading slash, so "" would otherwise never come up.
    let root = (!path.is_empty() && !path.starts_with('/')).then_some("");
    std::iter::once(path).chain(cuts).chain(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_path_leaves_clean_paths_borrowed() {
        for p in ["/", "/a/b", "/a/b/", "/a/.b/c..", "/...", "*", ""] {
            assert!(
                matches!(normalize_path(p), Cow::Borrowed(b) if b == p),
                "{p}"
            );
        }
    }

    #[test]
    fn normalize_path_removes_dot_segments() {
        assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
        assert_eq!(normalize_path("/a/b/.."), "/a/");
        assert_eq!(normalize_path("/a/b/."), "/a/b/");
        assert_eq!(normalize_path("/./a"), "/a");
        assert_eq!(normalize_path("/public/../admin"), "/admin");
        assert_eq!(normalize_path("/a//../b"), "/a/b");
    }

    #[test]
    fn normalize_path_decodes_percent_encoded_dots() {
        assert_eq!(normalize_path("/public/%2e%2e/admin"), "/admin");
        assert_eq!(normalize_path("/public/%2E%2E/admin"), "/admin");
        assert_eq!(normalize_path("/public/.%2e/admin"), "/admin");
        assert_eq!(normalize_path("/public/%2e./admin"), "/admin");
        assert_eq!(normalize_path("/a/%2e/b"), "/a/b");
        assert_eq!(normalize_path("/a/%2e%2e%2e/b"), "/a/%2e%2e%2e/b");
    }

    #[test]
    fn normalize_path_never_goes_above_root() {
        assert_eq!(normalize_path("/.."), "/");
        assert_eq!(normalize_path("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(normalize_path("/a/../../b"), "/b");
        assert_eq!(normalize_path("/%2e%2e/%2e%2e/admin"), "/admin");
        assert_eq!(normalize_path("/."), "/");
    }

    #[test]
    fn prefix_trailing_slash_is_dropped() {
        assert_eq!(prefix_key("/api/"), "/api");
        assert_eq!(prefix_key("/api"), "/api");
        assert_eq!(prefix_key("/"), "");
    }

    #[test]
    fn prefix_candidates_are_longest_first() {
        let got: Vec<&str> = prefix_candidates("/api/v1/x").collect();
        assert_eq!(got, ["/api/v1/x", "/api/v1", "/api", ""]);
        let got: Vec<&str> = prefix_candidates("/api/").collect();
        assert_eq!(got, ["/api/", "/api", ""]);
        let got: Vec<&str> = prefix_candidates("*").collect();
        assert_eq!(got, ["*", ""]);
        let got: Vec<&str> = prefix_candidates("").collect();
        assert_eq!(got, [""]);
    }
}
