//! `jwt`: the request must carry `Authorization: Bearer <JWT>` signed by a
//! trusted key, unexpired, from an accepted issuer, for an accepted audience,
//! with the required claims; its subject (or `consumer_claim`) becomes the
//! request's consumer (the entry of `consumers` of that name, if any) and
//! chosen claims go upstream as headers.
//!
//! Refusals follow RFC 6750: 401 with `WWW-Authenticate: Bearer` for a
//! missing or invalid token, 403 with `error="insufficient_scope"` for a
//! valid token that lacks a required claim. Headers named in
//! `forward_claims` are always removed from the client's request first, so
//! a client cannot send its own `x-user-id`.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::auth::{Refuser, bearer};
use super::jwks::{self, FetchError, KeySet, RemoteKeySet, RemoteSpec};
use super::service::CallError;
use super::token_cache::{TokenCache, Verified};
use super::{BuildEnv, Flow, Phase, Policy};
use crate::config::model::JwtDef;
use crate::http::body::Body;
use crate::policy::consumer::Consumers;
use crate::policy::context::{Identity, RequestCtx};

/// Where the keys come from.
enum Keys {
    /// A secret or a file, read at configuration load.
    Fixed(Arc<KeySet>),
    /// A URL, fetched in the background.
    Remote(Arc<RemoteKeySet>),
}

/// A claim the token must carry: every listed value must be present.
struct RequiredClaim {
    name: String,
    values: Vec<String>,
}

/// A compiled `jwt` policy.
pub struct Jwt {
    keys: Keys,
    /// One validation per algorithm (the crate checks the header's `alg`
    /// against the validation's list), built once.
    validations: Vec<(Algorithm, Validation)>,
    required: Vec<RequiredClaim>,
    forward: Vec<(String, HeaderName)>,
    forward_token: bool,
    /// Seconds of clock skew allowed on `exp`.
    leeway: u64,
    cache: Option<TokenCache>,
    /// The claim naming the consumer, and the consumers it may name.
    consumer_claim: String,
    consumers: Arc<Consumers>,
    refuser: Refuser,
}

/// RFC 7518 §3.2: an HMAC key at least as long as the hash.
const MIN_SECRET_BYTES: usize = 32;

/// Why a request was refused, as the metric's `reason` and the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    /// `crit` names header extensions (RFC 7515 §4.1.11); none is supported.
    Critical,
    /// `iss` or `sub` is not a string (RFC 7519 §4.1.1, §4.1.2).
    ClaimType,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim,
    Claims,
    KeysUnavailable,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed | Refusal::ClaimType => "malformed",
            Refusal::Critical => "critical_header",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::MissingClaim | Refusal::Claims => "claims",
            Refusal::KeysUnavailable => "keys_unavailable",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Refusal::Missing => "this service needs a bearer token in the Authorization header",
            Refusal::Malformed => "the bearer token is not a well-formed JWT",
            Refusal::Critical => {
                "the token's crit header names extensions this service does not support"
            }
            Refusal::ClaimType => "the token's iss and sub claims must be strings",
            Refusal::Algorithm => "the token's signing algorithm is not accepted",
            Refusal::UnknownKey => "the token was signed with a key this service does not know",
            Refusal::Signature => "the token's signature does not verify",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet",
            Refusal::Issuer => "the token's issuer is not accepted",
            Refusal::Audience => "the token is not meant for this service",
            Refusal::MissingClaim => {
                "the token lacks a claim this service requires (exp, iss or aud)"
            }
            Refusal::Claims => "the token does not grant what this route requires",
            Refusal::KeysUnavailable => "the keys to verify tokens are not available yet",
        }
    }

    fn from_kind(kind: &ErrorKind) -> Refusal {
        match kind {
            ErrorKind::InvalidSignature => Refusal::Signature,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::ImmatureSignature => Refusal::NotYetValid,
            ErrorKind::InvalidIssuer => Refusal::Issuer,
            ErrorKind::InvalidAudience => Refusal::Audience,
            ErrorKind::MissingRequiredClaim(_) => Refusal::MissingClaim,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
            _ => Refusal::Malformed,
        }
    }
}

impl Jwt {
    /// Checks the definition and reads or starts fetching its keys.
    pub fn build(def: &JwtDef, env: &BuildEnv) -> Result<Jwt, Vec<(String, String)>> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let sources = [
            def.secret.is_some(),
            def.jwks_file.is_some(),
            def.jwks_url.is_some(),
        ];
        let keys = match sources.iter().filter(|s| **s).count() {
            0 => {
                errors.push((
                    String::new(),
                    "a jwt policy needs its keys: set one of `secret`, `jwks_file` or `jwks_url`"
                        .into(),
                ));
                None
            }
            1 => Self::keys(def, env, &mut errors),
            _ => {
                errors.push((
                    String::new(),
                    "set only one of `secret`, `jwks_file` and `jwks_url`".into(),
                ));
                None
            }
        };
        if def.jwks_ca.is_some() && def.jwks_url.is_none() {
            errors.push((
                "jwks_ca".into(),
                "`jwks_ca` applies to `jwks_url` only".into(),
            ));
        }
        let mut forward = Vec::with_capacity(def.forward_claims.len());
        for (claim, name) in &def.forward_claims {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => forward.push((claim.clone(), h)),
                Err(_) => errors.push((
                    format!("forward_claims.{claim}"),
                    format!("`{name}` is not a valid header name"),
                )),
            }
        }
        let required = def
            .required_claims
            .iter()
            .map(|(name, value)| RequiredClaim {
                name: name.clone(),
                values: value.split_whitespace().map(str::to_string).collect(),
            })
            .collect();
        let Some(keys) = keys.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let validations = jwks::algorithms()
            .map(|alg| (alg, Self::validation(def, alg)))
            .collect();
        Ok(Jwt {
            keys,
            validations,
            required,
            forward,
            forward_token: def.forward_token,
            leeway: def.leeway.0.as_secs(),
            cache: TokenCache::new(def.token_cache_size),
            consumer_claim: def.consumer_claim.clone(),
            consumers: env.consumers.clone(),
            refuser: Refuser::new(env.name, env.metrics),
        })
    }

    fn keys(def: &JwtDef, env: &BuildEnv, errors: &mut Vec<(String, String)>) -> Option<Keys> {
        if let Some(secret) = &def.secret {
            if secret.len() < MIN_SECRET_BYTES {
                errors.push((
                    "secret".into(),
                    format!(
                        "the secret is {} bytes; HMAC keys must be at least {MIN_SECRET_BYTES} (RFC 7518)",
                        secret.len()
                    ),
                ));
                return None;
            }
            return Some(Keys::Fixed(Arc::new(KeySet::secret(secret.as_bytes()))));
        }
        if let Some(file) = &def.jwks_file {
            let path = env.resolve(file);
            let read = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| {
                    KeySet::from_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))
                });
            return match read {
                Ok(set) => Some(Keys::Fixed(Arc::new(set))),
                Err(e) => {
                    errors.push(("jwks_file".into(), e));
                    None
                }
            };
        }
        let url = def.jwks_url.as_ref()?;
        if def.jwks_refresh.0.is_zero() {
            errors.push((
                "jwks_refresh".into(),
                "`jwks_refresh` must be above zero".into(),
            ));
            return None;
        }
        let spec = RemoteSpec {
            url: url.clone(),
            ca: def.jwks_ca.as_deref().map(|p| env.resolve(p)),
            refresh: def.jwks_refresh.0,
        };
        let check_only = env.check_only;
        match RemoteKeySet::shared(env.key_sets, spec, check_only) {
            Ok(set) => Some(Keys::Remote(set)),
            Err(e) => {
                let field = match e {
                    FetchError::Call(CallError::Ca(_)) => "jwks_ca",
                    _ => "jwks_url",
                };
                errors.push((field.into(), e.to_string()));
                None
            }
        }
    }

    fn validation(def: &JwtDef, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = def.leeway.0.as_secs();
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        if def.require_expiry {
            v.required_spec_claims.insert("exp".into());
        } else {
            v.validate_exp = false;
        }
        // The crate accepts a token without `iss` or `aud` even when told
        // which to expect, unless they are also required.
        if !def.issuer.is_empty() {
            v.set_issuer(&def.issuer);
            v.required_spec_claims.insert("iss".into());
        }
        if def.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&def.audiences);
            v.required_spec_claims.insert("aud".into());
        }
        v
    }

    /// What `token` grants: from the cache, or verified now (and cached).
    fn verified(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let fetched;
        let keys: &KeySet = match &self.keys {
            Keys::Fixed(set) => set,
            Keys::Remote(remote) => {
                fetched = remote.current().ok_or(Refusal::KeysUnavailable)?;
                &fetched
            }
        };
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(token, keys.generation, now))
        {
            return Ok(hit);
        }
        let claims = self.verify(token, keys)?;
        if !self.grants(&claims) {
            return Err(Refusal::Claims);
        }
        let exp = claims
            .get("exp")
            .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f.max(0.0) as u64)));
        // A subject that names a configured consumer is that consumer
        // (its groups and limits apply); another still authenticates, as
        // an anonymous consumer of that name.
        let consumer = claims
            .get(&self.consumer_claim)
            .and_then(Value::as_str)
            .map(|name| self.consumers.resolve(name));
        let verified = Arc::new(Verified {
            forwarded: self
                .forward
                .iter()
                .map(|(claim, _)| claims.get(claim).and_then(header_value))
                .collect(),
            expires: exp.map(|e| e.saturating_add(self.leeway)),
            generation: keys.generation,
            identity: Arc::new(Identity {
                consumer,
                claims: Arc::new(claims),
            }),
        });
        if let Some(cache) = &self.cache {
            cache.insert(token, verified.clone(), now);
        }
        Ok(verified)
    }

    /// Checks `token`'s signature and registered claims against `keys`.
    fn verify(&self, token: &str, keys: &KeySet) -> Result<Map<String, Value>, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        // Every extension a token marks critical must be understood, and
        // this verifier understands none (an empty list is malformed too).
        if header.crit.is_some() {
            return Err(Refusal::Critical);
        }
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Refusal::Algorithm);
        };
        let kid = header.kid.as_deref();
        let mut refusal = Refusal::UnknownKey;
        for key in keys.candidates(kid, header.alg) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => return string_claims(data.claims),
                Err(e) => {
                    refusal = Refusal::from_kind(e.kind());
                    // Another key may verify the signature; any other
                    // verdict is about the token, not the key.
                    if refusal != Refusal::Signature {
                        return Err(refusal);
                    }
                }
            }
        }
        if refusal == Refusal::UnknownKey
            && let (Keys::Remote(remote), Some(kid)) = (&self.keys, kid)
            && !keys.has_kid(kid)
        {
            // Perhaps the issuer rotated its keys since the last fetch.
            remote.fetch_soon();
        }
        Err(refusal)
    }

    fn grants(&self, claims: &Map<String, Value>) -> bool {
        self.required.iter().all(|r| {
            let Some(have) = claims.get(&r.name) else {
                return false;
            };
            r.values.iter().all(|want| has_member(have, want))
        })
    }

    fn refuse(&self, ctx: &RequestCtx, refusal: Refusal) -> Flow {
        let (status, challenge) = match refusal {
            Refusal::Missing => (StatusCode::UNAUTHORIZED, Some("Bearer")),
            Refusal::Claims => (
                StatusCode::FORBIDDEN,
                Some("Bearer error=\"insufficient_scope\""),
            ),
            Refusal::KeysUnavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            _ => (
                StatusCode::UNAUTHORIZED,
                Some("Bearer error=\"invalid_token\""),
            ),
        };
        let challenge = challenge.map(HeaderValue::from_static);
        self.refuser.refuse(
            ctx,
            refusal.reason(),
            status,
            refusal.detail(),
            challenge.as_ref(),
        )
    }
}

/// `claims` when `iss` and `sub`, if present, are strings. The crate
/// accepts an `iss` array holding the expected issuer, which would let a
/// token name several issuers at once.
fn string_claims(claims: Map<String, Value>) -> Result<Map<String, Value>, Refusal> {
    let not_string = |name| claims.get(name).is_some_and(|v: &Value| !v.is_string());
    if not_string("iss") || not_string("sub") {
        return Err(Refusal::ClaimType);
    }
    Ok(claims)
}

/// Whether claim `have` holds `want`: equal, a member of an array, or a
/// word of a space-separated list (OAuth's `scope`).
pub fn has_member(have: &Value, want: &str) -> bool {
    match have {
        Value::String(s) => s == want || s.split_whitespace().any(|w| w == want),
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want)),
        Value::Bool(b) => want == if *b { "true" } else { "false" },
        Value::Number(n) => n.to_string() == want,
        _ => false,
    }
}

/// A claim as a header value: strings as they are, arrays of strings
/// comma-separated, anything else as JSON; None when it cannot be one.
fn header_value(claim: &Value) -> Option<HeaderValue> {
    let text = match claim {
        Value::String(s) => return HeaderValue::from_str(s).ok(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

impl Policy for Jwt {
    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        for (_, name) in &self.forward {
            req.headers_mut().remove(name);
        }
        let Some(token) = bearer(req) else {
            return self.refuse(ctx, Refusal::Missing);
        };
        let verified = match self.verified(token) {
            Ok(v) => v,
            Err(refusal) => return self.refuse(ctx, refusal),
        };
        let headers = req.headers_mut();
        for ((_, name), value) in self.forward.iter().zip(&verified.forwarded) {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
        if !self.forward_token {
            headers.remove(header::AUTHORIZATION);
        }
        ctx.identity = Some(verified.identity.clone());
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn required_values_match_members_of_lists() {
        let scope = json!("orders:read orders:write");
        assert!(has_member(&scope, "orders:read"));
        assert!(!has_member(&scope, "orders"));
        let roles = json!(["admin", "ops"]);
        assert!(has_member(&roles, "ops"));
        assert!(!has_member(&roles, "dev"));
        assert!(has_member(&json!(true), "true"));
        assert!(has_member(&json!(42), "42"));
        assert!(!has_member(&json!({"a": 1}), "a"));
    }

    #[test]
    fn claims_become_header_values() {
        assert_eq!(header_value(&json!("alice")).unwrap(), "alice");
        assert_eq!(header_value(&json!(["a", "b"])).unwrap(), "a,b");
        assert_eq!(header_value(&json!(7)).unwrap(), "7");
        assert_eq!(header_value(&json!({"k": 1})).unwrap(), "{\"k\":1}");
        // A value a header cannot carry is left out rather than mangled.
        assert!(header_value(&json!("line\nbreak")).is_none());
    }

    #[test]
    fn iss_and_sub_must_be_strings() {
        let ok = |v: Value| string_claims(v.as_object().unwrap().clone()).is_ok();
        assert!(ok(json!({"iss": "idp", "sub": "alice", "aud": ["a", "b"]})));
        assert!(ok(json!({"exp": 1})));
        assert!(!ok(json!({"iss": ["idp"], "sub": "alice"})));
        assert!(!ok(json!({"iss": "idp", "sub": 7})));
        assert!(!ok(json!({"sub": null})));
    }

    #[test]
    fn every_verification_error_has_a_reason() {
        assert_eq!(
            Refusal::from_kind(&ErrorKind::ExpiredSignature).reason(),
            "expired"
        );
        assert_eq!(
            Refusal::from_kind(&ErrorKind::InvalidAudience).reason(),
            "audience"
        );
        assert_eq!(
            Refusal::from_kind(&ErrorKind::InvalidToken).reason(),
            "malformed"
        );
    }
}
