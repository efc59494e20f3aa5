//! The cache part of the admin API: `GET /api/v1/cache` (each cache's size,
//! hit ratio and busiest keys) and `POST /api/v1/cache/purge` (by exact
//! key, path prefix, host or tag).

use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::json_response;
use crate::http::body::Body;
use crate::http::problem::problem;
use crate::policy::cache::store::Purge;
use crate::server::runtime::Runtime;

/// Keys listed per cache by `GET /api/v1/cache`.
const TOP_KEYS: usize = 20;

/// Largest purge request read.
const MAX_PURGE_BODY: usize = 64 * 1024;

/// `GET /api/v1/cache`.
pub fn show(rt: &Runtime) -> Response<Body> {
    let mut stores = rt.caches.live();
    stores.sort_by(|a, b| a.name.cmp(&b.name));
    let caches: Vec<_> = stores
        .iter()
        .map(|store| {
            let s = store.stats();
            let asked = s.hits + s.misses;
            let mut tiers = json!({
                "memory": {
                    "entries": s.entries,
                    "bytes": s.bytes,
                    "max_bytes": s.max_bytes,
                    "evictions": s.evictions,
                },
            });
            if let Some((entries, bytes, max_bytes)) = store.disk_usage() {
                tiers["disk"] = json!({
                    "entries": entries,
                    "bytes": bytes,
                    "max_bytes": max_bytes,
                });
            }
            json!({
                "name": &*s.name,
                "tiers": tiers,
                "hits": s.hits,
                "misses": s.misses,
                "hit_ratio": if asked == 0 { 0.0 } else { s.hits as f64 / asked as f64 },
                "top_keys": store.top_keys(TOP_KEYS).into_iter().map(|(key, hits)| json!({
                    "key": &*key,
                    "hits": hits,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({ "caches": caches }))
}

/// The body of `POST /api/v1/cache/purge`: exactly one selector, and
/// optionally the cache to purge (all of them by default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    key: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    tag: Option<String>,
    cache: Option<String>,
}

/// `POST /api/v1/cache/purge`.
pub async fn purge(rt: &Runtime, body: Incoming) -> Response<Body> {
    let bad = |detail: &str| problem(StatusCode::BAD_REQUEST, detail, "-");
    let bytes = match Limited::new(body, MAX_PURGE_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad("the purge request could not be read (at most 64 KiB)"),
    };
    let req: PurgeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return bad(&format!(
                "the purge request is not valid JSON of the form {{\"key\"|\"prefix\"|\"host\"|\"tag\": \"...\"}}: {e}"
            ));
        }
    };
    let selectors = [
        req.key.map(Purge::Key),
        req.prefix.map(Purge::Prefix),
        req.host.map(Purge::Host),
        req.tag.map(Purge::Tag),
    ];
    let mut chosen = selectors.into_iter().flatten();
    let (Some(purge), None) = (chosen.next(), chosen.next()) else {
        return bad("give exactly one of key, prefix, host or tag");
    };
    if let Purge::Prefix(p) = &purge
        && !p.starts_with('/')
    {
        return bad("a prefix is a path and starts with /");
    }
    let stores: Vec<_> = rt
        .caches
        .live()
        .into_iter()
        .filter(|s| req.cache.as_deref().is_none_or(|c| *s.name == *c))
        .collect();
    if let Some(name) = &req.cache
        && stores.is_empty()
    {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no cache policy is named `{name}`"),
            "-",
        );
    }
    let (mut purged, mut disk, mut redis) = (0, 0, 0);
    for store in &stores {
        purged += store.purge(&purge);
        let (d, r) = store.purge_tiers(&purge).await;
        disk += d;
        redis += r;
    }
    json_response(
        StatusCode::OK,
        json!({ "purged": purged, "tiers": { "disk": disk, "redis": redis } }),
    )
}
