//! The keys a `jwt` policy verifies signatures with: a shared secret, a JSON
//! Web Key Set file, or a key set fetched by URL and refreshed in the
//! background.
//!
//! A key carries the algorithms it may verify, fixed when the set is read
//! (a JWK's `alg`, else every algorithm of its key type and curve), so a
//! token can never choose to have an RSA public key used as an HMAC secret.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;

use super::service::{CallError, Service};
use crate::kept::KeptWhileUsed;

/// One verification key.
#[derive(Debug)]
pub struct Key {
    /// The JWK's `kid`, matched against the token header's.
    pub kid: Option<String>,
    /// The algorithms this key may verify.
    pub algorithms: Vec<Algorithm>,
    /// The key itself.
    pub decoding: DecodingKey,
}

/// The keys one policy trusts at a moment.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Keys in the order the set lists them.
    pub keys: Vec<Key>,
    /// Unique to this set in the process: what a verified token is
    /// remembered under, so a new set does not honour the old one's tokens.
    pub generation: u64,
}

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Every algorithm a key of some type may verify.
pub fn algorithms() -> impl Iterator<Item = Algorithm> {
    HMAC.into_iter()
        .chain(RSA)
        .chain([Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA])
}

impl KeySet {
    /// A set of one HMAC secret (HS256, HS384, HS512).
    pub fn secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![Key {
                kid: None,
                algorithms: HMAC.to_vec(),
                decoding: DecodingKey::from_secret(secret),
            }],
            generation: next_generation(),
        }
    }

    /// Parses a JWKS document. Keys meant for encryption (`use: enc`) are
    /// left out; a key this version cannot use is an error, so that a
    /// rotation never silently drops the key tokens are signed with.
    pub fn from_jwks(json: &str) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| format!("not a JSON Web Key Set ({e})"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let which = || match &jwk.common.key_id {
                Some(kid) => format!("key `{kid}`"),
                None => format!("key {i}"),
            };
            let by_type: Vec<Algorithm> = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => RSA.to_vec(),
                AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    ref other => {
                        return Err(format!("{}: curve {other:?} is not supported", which()));
                    }
                },
                AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                _ => return Err(format!("{}: key type not supported", which())),
            };
            let algorithms = match &jwk.common.key_algorithm {
                None => by_type,
                Some(alg) => match alg.to_string().parse::<Algorithm>() {
                    Ok(a) if by_type.contains(&a) => vec![a],
                    _ => {
                        return Err(format!(
                            "{}: `alg` {alg} does not fit its key type",
                            which()
                        ));
                    }
                },
            };
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: {e}", which()))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithms,
                decoding,
            });
        }
        if keys.is_empty() {
            return Err("the key set holds no signing keys".into());
        }
        Ok(KeySet {
            keys,
            generation: next_generation(),
        })
    }

    /// The keys that may verify a token signed with `alg` under `kid`: the
    /// key with that `kid`, or, for a token without one, every key that
    /// takes the algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    /// Whether some key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// How a remote key set is fetched: the key under which it is shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteSpec {
    /// The `jwks_url`.
    pub url: String,
    /// The `jwks_ca` file, if any.
    pub ca: Option<PathBuf>,
    /// How often the set is fetched again.
    pub refresh: Duration,
}

/// Remote key sets by spec, shared by every policy naming the same URL and
/// kept across reloads while some policy uses them.
pub type RemoteKeySets = KeptWhileUsed<RemoteSpec, RemoteKeySet>;

/// A key set fetched by URL; the newest good answer is kept.
pub struct RemoteKeySet {
    fetcher: Fetcher,
    refresh: Duration,
    current: ArcSwapOption<KeySet>,
    /// Wakes the fetch loop early (a token named a key the set lacks).
    wake: Notify,
    /// Milliseconds since `epoch` of the last early wake, to space them.
    last_wake_ms: AtomicU64,
    epoch: Instant,
}

/// A token naming an unknown key fetches the set again at most this often,
/// so a client sending made-up `kid`s cannot turn into a flood of fetches.
const MIN_EARLY_FETCH: Duration = Duration::from_secs(10);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest key set document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

impl RemoteKeySet {
    /// The set `spec` names, found in `sets` or made there; a new one
    /// starts fetching unless `check_only`. Errors: the URL or the CA file.
    pub fn shared(
        sets: &RemoteKeySets,
        spec: RemoteSpec,
        check_only: bool,
    ) -> Result<Arc<RemoteKeySet>, FetchError> {
        let (set, fresh) = sets.get_or_make(spec.clone(), || {
            Ok::<_, FetchError>(RemoteKeySet {
                fetcher: Fetcher::new(&spec.url, spec.ca.as_deref())?,
                refresh: spec.refresh,
                current: ArcSwapOption::empty(),
                wake: Notify::new(),
                last_wake_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            })
        })?;
        if fresh && !check_only {
            RemoteKeySet::run(Arc::downgrade(&set));
        }
        Ok(set)
    }

    /// The keys of the last good fetch (None until one succeeded).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Asks for an early fetch, at most once per [`MIN_EARLY_FETCH`].
    pub fn fetch_soon(&self) {
        // Offset by the spacing, so the very first early fetch is allowed.
        let now = (self.epoch.elapsed() + MIN_EARLY_FETCH).as_millis() as u64;
        let last = self.last_wake_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < MIN_EARLY_FETCH.as_millis() as u64 {
            return;
        }
        if self
            .last_wake_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// Fetches the set now and then every `refresh` (sooner after a
    /// failure), for as long as some policy holds it.
    fn run(this: Weak<RemoteKeySet>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let mut retry = Duration::from_secs(1);
            // Each turn holds the set only while it fetches and sleeps; once
            // no policy holds it either, the next turn ends the loop.
            while let Some(set) = this.upgrade() {
                let outcome = match set.fetcher.fetch().await {
                    Ok(text) => KeySet::from_jwks(&text).map_err(|e| format!("refused: {e}")),
                    Err(e) => Err(format!("fetch failed: {e}")),
                };
                let wait = match outcome {
                    Ok(keys) => {
                        set.current.store(Some(Arc::new(keys)));
                        retry = Duration::from_secs(1);
                        set.refresh
                    }
                    Err(e) => {
                        let url = set.fetcher.service.url();
                        tracing::warn!(%url, "JWKS {e}; trying again in {retry:?}");
                        let wait = retry;
                        retry = (retry * 2).min(set.refresh);
                        wait
                    }
                };
                let _ = tokio::time::timeout(wait, set.wake.notified()).await;
            }
        });
    }
}

/// Why a key set URL cannot be used, or a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or the CA file cannot be used, or the call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The server answered something other than 200.
    #[error("the server answered {0}")]
    Status(StatusCode),
    /// The document is too large or not text.
    #[error("the answer is not a key set of at most 1 MiB of UTF-8")]
    Body,
}

/// A key set URL and the gateway's own client to fetch it with.
struct Fetcher {
    service: Service,
}

impl Fetcher {
    /// Checks `url` (http or https with a host) and `ca` (for https; the
    /// Mozilla roots by default), without connecting.
    fn new(url: &str, ca: Option<&Path>) -> Result<Fetcher, FetchError> {
        let service = Service::new(url, ca, FETCH_TIMEOUT)?;
        Ok(Fetcher { service })
    }

    /// GETs the URL and returns its body.
    async fn fetch(&self) -> Result<String, FetchError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_once()).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(FETCH_TIMEOUT).into()),
        }
    }

    async fn fetch_once(&self) -> Result<String, FetchError> {
        let mut req = self.service.request(crate::http::body::empty());
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let response = self.service.call(req).await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(FetchError::Status(status));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| FetchError::Body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    #[test]
    fn every_key_type_has_its_algorithms_listed_once() {
        let all: Vec<Algorithm> = algorithms().collect();
        let distinct: std::collections::HashSet<Algorithm> = all.iter().copied().collect();
        assert_eq!(all.len(), 12);
        assert_eq!(distinct.len(), 12);
        for alg in HMAC.into_iter().chain(RSA) {
            assert!(all.contains(&alg));
        }
    }

    #[test]
    fn a_secret_verifies_hmac_only() {
        let set = KeySet::secret(b"0123456789abcdef0123456789abcdef");
        assert_eq!(set.candidates(None, Algorithm::HS256).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 0);
    }

    #[test]
    fn jwk_alg_narrows_and_kid_selects() {
        let json = format!(
            r#"{{"keys":[
                {{"kty":"RSA","kid":"a","alg":"RS256","n":"{RSA_N}","e":"AQAB"}},
                {{"kty":"RSA","kid":"b","n":"{RSA_N}","e":"AQAB"}},
                {{"kty":"RSA","kid":"enc","use":"enc","n":"{RSA_N}","e":"AQAB"}}
            ]}}"#
        );
        let set = KeySet::from_jwks(&json).unwrap();
        assert_eq!(set.keys.len(), 2, "the encryption key is left out");
        assert_eq!(set.candidates(Some("a"), Algorithm::RS256).count(), 1);
        assert_eq!(set.candidates(Some("a"), Algorithm::PS256).count(), 0);
        assert_eq!(set.candidates(Some("b"), Algorithm::PS256).count(), 1);
        // An RSA key is never an HMAC secret, whatever the token says.
        assert_eq!(set.candidates(Some("b"), Algorithm::HS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 2);
        assert!(set.has_kid("b") && !set.has_kid("enc"));
    }

    #[test]
    fn unusable_sets_say_why() {
        assert!(
            KeySet::from_jwks("{")
                .unwrap_err()
                .contains("not a JSON Web Key Set")
        );
        assert!(
            KeySet::from_jwks(r#"{"keys":[]}"#)
                .unwrap_err()
                .contains("no signing keys")
        );
        let wrong_alg = format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"a","alg":"ES256","n":"{RSA_N}","e":"AQAB"}}]}}"#
        );
        assert!(
            KeySet::from_jwks(&wrong_alg)
                .unwrap_err()
                .contains("key `a`")
        );
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_fetched() {
        let check_url = |url: &str| Fetcher::new(url, None).map(|f| f.service.target().clone());
        assert!(check_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:9000/keys").is_ok());
        for bad in [
            "ftp://x/keys",
            "/keys",
            "idp.example.com/keys",
            "https:///keys",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        // The port comes from the scheme when the URL has none.
        let target = |url| check_url(url).unwrap().to_string();
        assert_eq!(target("https://idp.example.com/k"), "idp.example.com:443");
        assert_eq!(target("http://[::1]/k"), "[::1]:80");
    }
}
