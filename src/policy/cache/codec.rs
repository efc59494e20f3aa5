//! Stored answers as bytes, for the tiers outside memory (a directory, a
//! Redis server): every variant of one primary key in one record, so one
//! read brings a key back whole.
//!
//! ```text
//! "PCE1"  key_len:u32 key  tags:u32 (tag_len:u32 tag)*
//! count:u32, then per variant:
//!   status:u16 head_only:u8 response_time_ms:u64 initial_age_ms:u64
//!   headers:u32 (name_len:u16 name value_len:u32 value)*
//!   vary:u32 (name_len:u16 name present:u8 [value_len:u32 value])*
//!   body_len:u64 body
//! ```
//!
//! Numbers are big-endian. Freshness, directives and tags are not stored:
//! they are read again from the headers, under the policy's current
//! heuristic settings.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::entry::Entry;
use super::rules::Heuristic;

const MAGIC: &[u8; 4] = b"PCE1";

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a record of this format (or another version of it).
    #[error("not a cache record (bad magic)")]
    Magic,
    /// It ends before its fields do.
    #[error("the cache record is cut short")]
    Short,
    /// A field holds what no answer could.
    #[error("the cache record has a bad {0}")]
    Bad(&'static str),
}

/// Every variant of one key as one record.
pub fn encode(key: &str, variants: &[Arc<Entry>]) -> Bytes {
    let size: usize = variants.iter().map(|e| e.body.len() + 512).sum::<usize>() + key.len();
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(MAGIC);
    put_bytes32(&mut out, key.as_bytes());
    let mut tags: Vec<&str> = variants
        .iter()
        .flat_map(|e| e.tags.iter().map(|t| &**t))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    out.put_u32(tags.len() as u32);
    for t in tags {
        put_bytes32(&mut out, t.as_bytes());
    }
    out.put_u32(variants.len() as u32);
    for e in variants {
        out.put_u16(e.status.as_u16());
        out.put_u8(u8::from(e.head_only));
        out.put_u64(millis(
            e.response_time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        ));
        out.put_u64(millis(e.initial_age));
        out.put_u32(e.headers.len() as u32);
        for (name, value) in &e.headers {
            put_name(&mut out, name);
            put_bytes32(&mut out, value.as_bytes());
        }
        out.put_u32(e.vary.len() as u32);
        for (name, value) in e.vary.iter() {
            put_name(&mut out, name);
            match value {
                Some(v) => {
                    out.put_u8(1);
                    put_bytes32(&mut out, v.as_bytes());
                }
                None => out.put_u8(0),
            }
        }
        out.put_u64(e.body.len() as u64);
        out.put_slice(&e.body);
    }
    out.freeze()
}

/// The key and tags of a record, read from its start without the rest
/// (an index rebuilt at start, a purge by tag).
pub fn head_of(record: &[u8]) -> Result<(String, Vec<String>), DecodeError> {
    let mut buf = record;
    read_header(&mut buf)
}

/// A record's variants, as entries of the primary key it names.
pub fn decode(record: Bytes, heuristic: Heuristic) -> Result<Vec<Arc<Entry>>, DecodeError> {
    let mut buf = record.clone();
    let key: Arc<str> = Arc::from(read_header(&mut buf)?.0);
    let count = get_u32(&mut buf)? as usize;
    let mut out = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let status =
            StatusCode::from_u16(get_u16(&mut buf)?).map_err(|_| DecodeError::Bad("status"))?;
        let head_only = get_u8(&mut buf)? != 0;
        let response_time = UNIX_EPOCH + Duration::from_millis(get_u64(&mut buf)?);
        let initial_age = Duration::from_millis(get_u64(&mut buf)?);
        let n = get_u32(&mut buf)? as usize;
        let mut headers = HeaderMap::with_capacity(n.min(64));
        for _ in 0..n {
            let name = get_name(&mut buf)?;
            let value = get_bytes32(&mut buf)?;
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| DecodeError::Bad("header value"))?;
            headers.append(name, value);
        }
        let n = get_u32(&mut buf)? as usize;
        let mut vary = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let name = get_name(&mut buf)?;
            let value = match get_u8(&mut buf)? {
                0 => None,
                _ => {
                    let v = get_bytes32(&mut buf)?;
                    let v = std::str::from_utf8(&v).map_err(|_| DecodeError::Bad("vary value"))?;
                    Some(Box::from(v))
                }
            };
            vary.push((name, value));
        }
        let len = usize::try_from(get_u64(&mut buf)?).map_err(|_| DecodeError::Short)?;
        if buf.remaining() < len {
            return Err(DecodeError::Short);
        }
        let body = buf.split_to(len);
        out.push(Arc::new(Entry::restore(
            key.clone(),
            status,
            headers,
            body,
            head_only,
            response_time,
            initial_age,
            heuristic,
            vary.into_boxed_slice(),
        )));
    }
    Ok(out)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn read_header(buf: &mut impl Buf) -> Result<(String, Vec<String>), DecodeError> {
    if buf.remaining() < 4 || buf.copy_to_bytes(4) != MAGIC[..] {
        return Err(DecodeError::Magic);
    }
    let text = |b: Bytes, what| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Bad(what));
    let key = text(get_bytes32(buf)?, "key")?;
    let n = get_u32(buf)? as usize;
    let mut tags = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        tags.push(text(get_bytes32(buf)?, "tag")?);
    }
    Ok((key, tags))
}

fn put_name(out: &mut BytesMut, name: &HeaderName) {
    out.put_u16(name.as_str().len() as u16);
    out.put_slice(name.as_str().as_bytes());
}

fn put_bytes32(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn get_name(buf: &mut impl Buf) -> Result<HeaderName, DecodeError> {
    let len = get_u16(buf)? as usize;
    if buf.remaining() < len {
        return Err(DecodeError::Short);
    }
    HeaderName::from_bytes(&buf.copy_to_bytes(len)).map_err(|_| DecodeError::Bad("header name"))
}

fn get_bytes32(buf: &mut impl Buf) -> Result<Bytes, DecodeError> {
    let len = get_u32(buf)? as usize;
    if buf.remaining() < len {
        return Err(DecodeError::Short);
    }
    Ok(buf.copy_to_bytes(len))
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, DecodeError> {
    buf.try_get_u8().map_err(|_| DecodeError::Short)
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, DecodeError> {
    buf.try_get_u16().map_err(|_| DecodeError::Short)
}

fn get_u32(buf: &mut impl Buf) -> Result<u32, DecodeError> {
    buf.try_get_u32().map_err(|_| DecodeError::Short)
}

fn get_u64(buf: &mut impl Buf) -> Result<u64, DecodeError> {
    buf.try_get_u64().map_err(|_| DecodeError::Short)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Heuristic = Heuristic {
        max: Duration::ZERO,
        default_ttl: Duration::ZERO,
    };

    fn entry(body: &'static str, lang: Option<&str>) -> Arc<Entry> {
        let mut h = HeaderMap::new();
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        h.append("x-two", HeaderValue::from_static("a"));
        h.append("x-two", HeaderValue::from_static("b"));
        h.insert("cache-tag", HeaderValue::from_static("t1, t2"));
        h.insert("x-bin", HeaderValue::from_bytes(&[0xff, b'x']).unwrap());
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Arc::new(Entry::new(
            Arc::from("https://h/p?q"),
            StatusCode::OK,
            h,
            Bytes::from_static(body.as_bytes()),
            false,
            t,
            t,
            H,
            vec![(
                HeaderName::from_static("accept-language"),
                lang.map(Box::from),
            )]
            .into_boxed_slice(),
        ))
    }

    #[test]
    fn round_trips_every_variant() {
        let variants = [entry("english", Some("en")), entry("none", None)];
        let record = encode("https://h/p?q", &variants);
        let (key, tags) = head_of(&record).unwrap();
        assert_eq!(key, "https://h/p?q");
        assert_eq!(tags, ["t1", "t2"]);
        let back = decode(record, H).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in variants.iter().zip(&back) {
            assert_eq!(a.status, b.status);
            assert_eq!(a.headers, b.headers);
            assert_eq!(a.body, b.body);
            assert_eq!(a.vary, b.vary);
            assert_eq!(a.response_time, b.response_time);
            assert_eq!(a.initial_age, b.initial_age);
            assert_eq!(a.lifetime, b.lifetime);
            assert_eq!(a.tags, b.tags);
            assert_eq!(&*b.key, "https://h/p?q");
        }
    }

    #[test]
    fn damaged_records_are_refused_never_a_panic() {
        let record = encode("k", &[entry("body", Some("en"))]);
        assert!(matches!(
            decode(Bytes::from_static(b"nope"), H),
            Err(DecodeError::Magic)
        ));
        for cut in 0..record.len() {
            assert!(decode(record.slice(..cut), H).is_err(), "cut at {cut}");
        }
        let mut bad = record.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        // A changed body byte is still a record (the tiers check nothing
        // more: their own storage keeps bytes intact).
        assert!(decode(Bytes::from(bad), H).is_ok());
    }
}
