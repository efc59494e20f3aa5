//! Conditional and range requests (RFC 9110 §13 and §14) against a
//! representation's validators: shared by static files and the cache, which
//! both answer 304 and 206 themselves.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, header};

/// The validators of one representation.
#[derive(Clone, Debug, Default)]
pub struct Validators {
    /// Last-Modified in whole seconds since the epoch: HTTP dates have no
    /// finer precision.
    pub modified_secs: Option<u64>,
    /// The Last-Modified header as sent.
    pub last_modified: Option<HeaderValue>,
    /// The ETag header as sent (quoted, maybe `W/`).
    pub etag: Option<HeaderValue>,
}

impl Validators {
    /// The validators a stored response carries in its headers.
    pub fn of_response(headers: &HeaderMap) -> Validators {
        let last_modified = headers.get(header::LAST_MODIFIED).cloned();
        let modified_secs = last_modified
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        Validators {
            modified_secs,
            last_modified,
            etag: headers.get(header::ETAG).cloned(),
        }
    }

    /// Whether there is a validator to send a conditional request with.
    pub fn any(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// Puts the validators in a response's headers.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        if let Some(etag) = &self.etag {
            headers.insert(header::ETAG, etag.clone());
        }
        if let Some(date) = &self.last_modified {
            headers.insert(header::LAST_MODIFIED, date.clone());
        }
    }

    /// Our tag, parsed.
    fn tag(&self) -> Option<EntityTag<'_>> {
        let etag = self.etag.as_ref()?.to_str().ok()?;
        entity_tags(etag).into_iter().next()
    }

    /// RFC 9110 §13.2.2: If-None-Match (weak comparison) decides when
    /// present; otherwise If-Modified-Since, at second precision. For GET
    /// and HEAD requests (the caller checks).
    pub fn not_modified(&self, headers: &HeaderMap) -> bool {
        if headers.contains_key(header::IF_NONE_MATCH) {
            let ours = match self.tag() {
                Some(EntityTag::Tag { opaque, .. }) => Some(opaque),
                _ => None,
            };
            return headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(entity_tags)
                .any(|tag| match tag {
                    EntityTag::Any => true,
                    EntityTag::Tag { opaque, .. } => Some(opaque) == ours,
                });
        }
        let since = headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        match (since, self.modified_secs) {
            (Some(since), Some(modified)) => modified <= since.as_secs(),
            _ => false,
        }
    }

    /// RFC 9110 §13.1.5: a Range applies only if If-Range, when present,
    /// still names this representation (strong comparison for tags, exact
    /// date).
    pub fn if_range_allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::IF_RANGE) else {
            return true;
        };
        let Ok(value) = value.to_str().map(str::trim) else {
            return false;
        };
        if value.starts_with('"') || value.starts_with("W/") {
            return match (self.tag(), entity_tags(value).first()) {
                (
                    Some(EntityTag::Tag {
                        weak: false,
                        opaque: ours,
                    }),
                    Some(EntityTag::Tag {
                        weak: false,
                        opaque: theirs,
                    }),
                ) => ours == *theirs,
                _ => false,
            };
        }
        let date = httpdate::parse_http_date(value)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        match (date, self.modified_secs) {
            (Some(date), Some(modified)) => date.as_secs() == modified,
            _ => false,
        }
    }
}

/// An HTTP date for `secs` since the epoch.
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Seconds since the epoch of `t` (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One member of an entity-tag list.
#[derive(Debug, PartialEq)]
pub enum EntityTag<'a> {
    /// `*`: any current representation.
    Any,
    /// One tag.
    Tag {
        /// `W/` before it.
        weak: bool,
        /// With its quotes, as it appears in an ETag header.
        opaque: &'a str,
    },
}

/// Parses `*` or a comma-separated entity-tag list. Commas may appear inside
/// quotes, so this scans rather than splits; malformed members are skipped.
pub fn entity_tags(value: &str) -> Vec<EntityTag<'_>> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return tags;
        }
        if let Some(after) = rest.strip_prefix('*') {
            tags.push(EntityTag::Any);
            rest = after;
            continue;
        }
        let (weak, tag) = match rest.strip_prefix("W/") {
            Some(tag) => (true, tag),
            None => (false, rest),
        };
        if let Some(inner) = tag.strip_prefix('"')
            && let Some(close) = inner.find('"')
        {
            // Both quotes are ASCII, so these byte offsets are char boundaries.
            tags.push(EntityTag::Tag {
                weak,
                opaque: &tag[..close + 2],
            });
            rest = &inner[close + 1..];
        } else {
            rest = rest.find(',').map_or("", |i| &rest[i..]);
        }
    }
}

/// What a Range header asks of a file of a given size.
#[derive(Debug, PartialEq)]
pub enum ByteRange {
    /// No usable Range: serve the whole file.
    Whole,
    /// Inclusive byte positions, already clamped to the file.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// Starts past the end (416).
    Unsatisfiable,
}

/// Reads a single `bytes=` range. Anything else (absent, malformed, another
/// unit, several ranges) is ignored in favour of the whole file, which RFC
/// 9110 §14.2 allows and which spares us multipart/byteranges.
pub fn byte_range(headers: &HeaderMap, size: u64) -> ByteRange {
    let mut values = headers.get_all(header::RANGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return ByteRange::Whole;
    };
    let Some((unit, spec)) = value.to_str().ok().and_then(|v| v.split_once('=')) else {
        return ByteRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    if first.is_empty() {
        let Some(suffix) = decimal(last) else {
            return ByteRange::Whole;
        };
        if suffix == 0 || size == 0 {
            return ByteRange::Unsatisfiable;
        }
        return ByteRange::Part {
            start: size - suffix.min(size),
            end: size - 1,
        };
    }
    let Some(start) = decimal(first) else {
        return ByteRange::Whole;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match decimal(last) {
            Some(end) if end >= start => end,
            _ => return ByteRange::Whole,
        }
    };
    if start >= size {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part {
        start,
        end: end.min(size - 1),
    }
}

/// Parses ASCII digits, saturating: a position past `u64::MAX` is past the
/// end of any file, which the callers' clamping already handles.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// A Content-Range value.
pub enum ContentRange {
    /// `bytes START-END/SIZE`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
        /// The whole representation's length.
        size: u64,
    },
    /// For 416: only the size is known to the client.
    Size(u64),
}

impl From<ContentRange> for HeaderValue {
    fn from(range: ContentRange) -> HeaderValue {
        let text = match range {
            ContentRange::Part { start, end, size } => format!("bytes {start}-{end}/{size}"),
            ContentRange::Size(size) => format!("bytes */{size}"),
        };
        // Digits, spaces, `*`, `-` and `/` only: always a valid header value.
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (n.clone(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn entity_tag_list_parsing() {
        assert_eq!(
            entity_tags(" \"a,b\" ,W/\"c\", junk, *"),
            vec![
                EntityTag::Tag {
                    weak: false,
                    opaque: "\"a,b\""
                },
                EntityTag::Tag {
                    weak: true,
                    opaque: "\"c\""
                },
                EntityTag::Any,
            ]
        );
    }

    #[test]
    fn byte_range_parsing() {
        let range = |v: &str, size| byte_range(&headers(&[(header::RANGE, v)]), size);
        assert_eq!(range("bytes=0-0", 10), ByteRange::Part { start: 0, end: 0 });
        assert_eq!(range("BYTES=2-", 10), ByteRange::Part { start: 2, end: 9 });
        assert_eq!(range("bytes=-0", 10), ByteRange::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), ByteRange::Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), ByteRange::Unsatisfiable);
        assert_eq!(
            range("bytes=99999999999999999999999-", 10),
            ByteRange::Unsatisfiable
        );
        assert_eq!(
            range("bytes=0-99999999999999999999999", 10),
            ByteRange::Part { start: 0, end: 9 }
        );
        assert_eq!(range("bytes=1", 10), ByteRange::Whole);
        assert_eq!(range("bytes=+1-2", 10), ByteRange::Whole);
    }

    #[test]
    fn weak_tags_match_if_none_match_but_never_if_range() {
        let v = Validators::of_response(&headers(&[(header::ETAG, "W/\"v1\"")]));
        assert!(v.not_modified(&headers(&[(header::IF_NONE_MATCH, "\"v1\"")])));
        assert!(v.not_modified(&headers(&[(header::IF_NONE_MATCH, "W/\"v1\", \"x\"")])));
        assert!(!v.not_modified(&headers(&[(header::IF_NONE_MATCH, "\"v2\"")])));
        assert!(!v.if_range_allows(&headers(&[(header::IF_RANGE, "W/\"v1\"")])));
        let strong = Validators::of_response(&headers(&[(header::ETAG, "\"v1\"")]));
        assert!(strong.if_range_allows(&headers(&[(header::IF_RANGE, "\"v1\"")])));
        assert!(!strong.if_range_allows(&headers(&[(header::IF_RANGE, "\"v2\"")])));
    }

    #[test]
    fn if_modified_since_compares_seconds() {
        let v = Validators::of_response(&headers(&[(
            header::LAST_MODIFIED,
            "Sun, 06 Nov 1994 08:49:37 GMT",
        )]));
        assert!(v.not_modified(&headers(&[(
            header::IF_MODIFIED_SINCE,
            "Sun, 06 Nov 1994 08:49:37 GMT"
        )])));
        assert!(!v.not_modified(&headers(&[(
            header::IF_MODIFIED_SINCE,
            "Sun, 06 Nov 1994 08:49:36 GMT"
        )])));
    }
}
