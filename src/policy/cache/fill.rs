//! An answer's body on its way to the client while a copy goes into the
//! cache: the client gets every chunk as it comes, and the entry is stored
//! when the last one has passed (never when the body broke or outgrew
//! `max_entry_size`, which ends the copying, not the answer).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use http_body_util::BodyExt;

use super::entry::Entry;
use super::rules::Heuristic;
use super::store::{CacheStore, FlightGuard};
use crate::http::body::{Body, TeeBody};

/// Everything an entry needs but its body.
pub struct Fill {
    /// Where it goes.
    pub store: Arc<CacheStore>,
    /// Its primary key.
    pub key: String,
    /// The answer's status.
    pub status: StatusCode,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// An answer to HEAD.
    pub head_only: bool,
    /// When the request left.
    pub request_time: SystemTime,
    /// When the answer came.
    pub response_time: SystemTime,
    /// The policy's heuristic freshness bounds.
    pub heuristic: Heuristic,
    /// Its secondary key.
    pub vary: Box<[(HeaderName, Option<Box<str>>)]>,
    /// Released when the entry is stored or given up, waking identical
    /// requests waiting for it.
    pub guard: Option<FlightGuard>,
}

impl Fill {
    fn store(self, body: Bytes) {
        let entry = Entry::new(
            Arc::from(self.key),
            self.status,
            self.headers,
            body,
            self.head_only,
            self.request_time,
            self.response_time,
            self.heuristic,
            self.vary,
        );
        self.store.insert(Arc::new(entry));
        // The guard drops here, after the insert: waiters find the entry.
    }
}

/// A body that copies itself into the cache as it streams: `limit` is
/// the policy's `max_entry_size`, past which the copy is given up.
pub fn filling(inner: Body, limit: usize, fill: Fill) -> Body {
    TeeBody::new(inner, limit, Box::new(move |body| fill.store(body))).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::{BoxError, full};
    use hyper::body::Frame;
    use std::time::Duration;

    fn fill(store: &Arc<CacheStore>, key: &str) -> Fill {
        let now = SystemTime::now();
        Fill {
            store: store.clone(),
            key: key.into(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            head_only: false,
            request_time: now,
            response_time: now,
            heuristic: Heuristic {
                max: Duration::ZERO,
                default_ttl: Duration::ZERO,
            },
            vary: Box::new([]),
            guard: None,
        }
    }

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn stores_after_the_last_chunk_and_passes_every_chunk() {
        let store = Arc::new(CacheStore::new("c".into(), 1 << 20, None, None));
        let body = filling(chunks(&["ab", "cd"]), 100, fill(&store, "k"));
        assert!(store.lookup("k", &HeaderMap::new(), true).is_none());
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abcd");
        assert_eq!(
            &store.lookup("k", &HeaderMap::new(), true).unwrap().body[..],
            b"abcd"
        );
    }

    #[tokio::test]
    async fn too_big_streams_on_but_is_not_stored() {
        let store = Arc::new(CacheStore::new("c".into(), 1 << 20, None, None));
        let body = filling(chunks(&["abc", "def"]), 4, fill(&store, "k"));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdef");
        assert!(store.lookup("k", &HeaderMap::new(), true).is_none());
    }

    #[tokio::test]
    async fn a_known_empty_body_is_stored_at_once() {
        let store = Arc::new(CacheStore::new("c".into(), 1 << 20, None, None));
        let _body = filling(crate::http::body::empty(), 4, fill(&store, "k"));
        assert!(store.lookup("k", &HeaderMap::new(), true).is_some());
        let _full = filling(full("xy"), 4, fill(&store, "k2"));
        let _ = _full.collect().await;
        assert!(store.lookup("k2", &HeaderMap::new(), true).is_some());
    }
}
