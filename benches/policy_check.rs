//! Cost of the gateway policies on a request that passes them: a `jwt`
//! policy checking a bearer token (HS256 against a secret, ES256 and RS256
//! against a key set file; a token seen before, and one verified from
//! scratch), an `api_key` policy among 10 and among 100,000 consumers, a
//! `basic_auth` policy on a credential already verified (among 10
//! consumers, as `api_key_10_consumers`), and a `rate_limit` policy whose
//! budget is never spent (by client address and by header).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use portcullis::config::model::{ConsumerDef, ConsumerHeadersDef, PolicyDef};
use portcullis::http::body::{Body, empty};
use portcullis::observe::metrics::Metrics;
use portcullis::policy::basic_auth::{FailureRegistry, HashFormat, hash_password};
use portcullis::policy::cache::store::CacheRegistry;
use portcullis::policy::consumer::{Analytics, Consumers, hash_key};
use portcullis::policy::context::RequestCtx;
use portcullis::policy::jwks::RemoteKeySets;
use portcullis::policy::rate_limit::CounterRegistry;
use portcullis::policy::{self, BuildEnv, Flow, Policy};

const SECRET: &str = "bench-secret-of-at-least-32-bytes!!";

/// The long-lived states a policy is built against.
struct Env {
    metrics: Metrics,
    rate_limits: CounterRegistry,
    basic_auth_failures: FailureRegistry,
    key_sets: RemoteKeySets,
    caches: CacheRegistry,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(_rt: &tokio::runtime::Runtime) -> Env {
        Env {
            metrics: Metrics::new(),
            rate_limits: CounterRegistry::default(),
            basic_auth_failures: FailureRegistry::default(),
            key_sets: RemoteKeySets::default(),
            caches: CacheRegistry::default(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn policy(&self, yaml: &str) -> Arc<dyn Policy> {
        self.policy_with(yaml, &Arc::new(Consumers::empty()))
    }

    fn policy_with(&self, yaml: &str, consumers: &Arc<Consumers>) -> Arc<dyn Policy> {
        let def: PolicyDef = serde_saphyr::from_str(yaml).unwrap();
        let env = BuildEnv {
            name: "bench",
            metrics: &self.metrics,
            rate_limits: &self.rate_limits,
            basic_auth_failures: &self.basic_auth_failures,
            key_sets: &self.key_sets,
            check_only: false,
            base: self.dir.path(),
            redis: policy::Store::Absent,
            consumers,
            caches: &self.caches,
        };
        match policy::build(&def, &env) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "sub": "user-4711",
        "iss": "https://idp.example.com",
        "aud": "orders-api",
        "exp": now + 3600,
        "iat": now,
        "scope": "orders:read orders:write",
    })
}

/// A key pair for `alg`, its token over `claims()`, and its JWK under kid "k1".
fn signed(alg: Algorithm) -> (String, Jwk) {
    let rcgen_alg = match alg {
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        _ => &rcgen::PKCS_RSA_SHA256,
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(&pair.serialize_der()),
        _ => EncodingKey::from_rsa_der(pkcs1_of(&pair.serialize_der())),
    };
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some("k1".into());
    let mut header = Header::new(alg);
    header.kid = Some("k1".into());
    (encode(&header, &claims(), &encoding).unwrap(), jwk)
}

/// The PKCS#1 RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (what the JWT
/// crate's RSA signer takes): SEQUENCE { INTEGER, SEQUENCE, OCTET STRING }.
fn pkcs1_of(pkcs8: &[u8]) -> &[u8] {
    // (tag, content start, content end) of the DER element at `at`.
    fn element(der: &[u8], at: usize) -> (u8, usize, usize) {
        let first = der[at + 1] as usize;
        let (len, start) = if first < 0x80 {
            (first, at + 2)
        } else {
            let n = first & 0x7f;
            let len = der[at + 2..at + 2 + n]
                .iter()
                .fold(0usize, |l, b| l << 8 | *b as usize);
            (len, at + 2 + n)
        };
        (der[at], start, start + len)
    }
    let (_, body, _) = element(pkcs8, 0);
    let (_, _, version_end) = element(pkcs8, body);
    let (_, _, algorithm_end) = element(pkcs8, version_end);
    let (tag, start, end) = element(pkcs8, algorithm_end);
    assert_eq!(tag, 0x04, "an OCTET STRING");
    &pkcs8[start..end]
}

fn ctx() -> RequestCtx {
    let mut ctx = RequestCtx::new(
        HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c"),
        ([10, 1, 2, 3], 40000).into(),
        Arc::from("web"),
        false,
        Instant::now(),
    );
    ctx.route = Some(Arc::from("all"));
    ctx
}

fn request(authorization: &str) -> Request<Body> {
    Request::builder()
        .uri("/v1/orders/42")
        .header("host", "api.example.com")
        .header("authorization", authorization)
        .header("x-api-user", "user-4711")
        .header("x-api-key", "key-7")
        .body(empty())
        .unwrap()
}

/// Runs `policy` on a fresh request with a bearer `token` (built outside
/// the timing) per iteration.
fn bench_policy(c: &mut Criterion, name: &str, policy: &Arc<dyn Policy>, token: &str) {
    bench_with(c, name, policy, &format!("Bearer {token}"));
}

/// Runs `policy`'s synchronous hook on a fresh request carrying
/// `authorization` (built outside the timing) per iteration.
fn bench_with(c: &mut Criterion, name: &str, policy: &Arc<dyn Policy>, authorization: &str) {
    let template = request(authorization);
    assert!(matches!(
        policy.on_request(&mut ctx(), &mut request(authorization)),
        Flow::Continue
    ));
    c.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                let mut req = Request::new(empty());
                *req.uri_mut() = template.uri().clone();
                *req.headers_mut() = template.headers().clone();
                (ctx(), req)
            },
            |(ctx, req)| {
                black_box(matches!(policy.on_request(ctx, req), Flow::Continue));
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn policies(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = Env::new(&rt);
    let common = "issuer: https://idp.example.com, audiences: [orders-api], \
                  required_claims: { scope: 'orders:read' }, forward_claims: { sub: x-user-id }";

    // Each key type twice: the same token again (a cache hit, as every
    // request of a session after its first) and with the cache off (what
    // a token's first request costs).
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for (cache, suffix) in [("", ""), (", token_cache_size: 0", "_verify")] {
        let hs = env.policy(&format!(
            "{{ type: jwt, secret: '{SECRET}', {common}{cache} }}"
        ));
        bench_policy(c, &format!("jwt_hs256{suffix}"), &hs, &token);
    }
    for (alg, name) in [
        (Algorithm::ES256, "jwt_es256"),
        (Algorithm::RS256, "jwt_rs256"),
    ] {
        let (token, jwk) = signed(alg);
        let file = env.base().join(format!("{name}.json"));
        let set = JwkSet { keys: vec![jwk] };
        std::fs::write(&file, serde_json::to_string(&set).unwrap()).unwrap();
        for (cache, suffix) in [("", ""), (", token_cache_size: 0", "_verify")] {
            let p = env.policy(&format!(
                "{{ type: jwt, jwks_file: '{}', {common}{cache} }}",
                file.display()
            ));
            bench_policy(c, &format!("{name}{suffix}"), &p, &token);
        }
    }

    // The same key among few and many consumers: one hash, one probe.
    for n in [10, 100_000] {
        let defs: Vec<ConsumerDef> = (0..n)
            .map(|i| ConsumerDef {
                name: format!("consumer-{i}"),
                groups: vec!["partners".into()],
                api_keys: vec![hash_key(format!("key-{i}").as_bytes())],
                password_hash: None,
                rate_limits: Default::default(),
            })
            .collect();
        let analytics = Analytics {
            metrics: None,
            max_series: 1000,
        };
        let consumers = Arc::new(
            Consumers::build(&defs, &ConsumerHeadersDef::default(), |_| false, analytics).unwrap(),
        );
        let p = env.policy_with("{ type: api_key }", &consumers);
        bench_policy(c, &format!("api_key_{n}_consumers"), &p, "x");
    }

    // A password verified once (argon2id, the parameters `hash-password`
    // uses), then found in the cache: what every request of a session
    // after its first costs.
    let defs: Vec<ConsumerDef> = (0..10)
        .map(|i| ConsumerDef {
            name: format!("consumer-{i}"),
            groups: vec!["partners".into()],
            api_keys: vec![],
            password_hash: Some(
                hash_password(format!("password-{i}").as_bytes(), HashFormat::Argon2id).unwrap(),
            ),
            rate_limits: Default::default(),
        })
        .collect();
    let analytics = Analytics {
        metrics: None,
        max_series: 1000,
    };
    let consumers = Arc::new(
        Consumers::build(&defs, &ConsumerHeadersDef::default(), |_| false, analytics).unwrap(),
    );
    let p = env.policy_with("{ type: basic_auth }", &consumers);
    let basic = format!("Basic {}", BASE64.encode("consumer-7:password-7"));
    let (mut first_ctx, mut first) = (ctx(), request(&basic));
    assert!(matches!(
        policy_first_check(&rt, &p, &mut first_ctx, &mut first),
        Flow::Continue
    ));
    bench_with(c, "basic_auth_cached", &p, &basic);

    // A budget no benchmark loop can spend.
    let never = "limit: 1000000, per: 1s, burst: 4000000000";
    let by_ip = env.policy(&format!("{{ type: rate_limit, key: client_ip, {never} }}"));
    bench_policy(c, "rate_limit_client_ip", &by_ip, "x");
    let by_header = env.policy(&format!(
        "{{ type: rate_limit, key: 'header:x-api-user', {never} }}"
    ));
    bench_policy(c, "rate_limit_header", &by_header, "x");
}

/// Both request hooks, as the pipeline runs them (the first request of a
/// credential checks its password on a blocking thread).
fn policy_first_check(
    rt: &tokio::runtime::Runtime,
    policy: &Arc<dyn Policy>,
    ctx: &mut RequestCtx,
    req: &mut Request<Body>,
) -> Flow {
    match policy.on_request(ctx, req) {
        Flow::Continue => match policy.on_request_async(ctx, req) {
            Some(pending) => rt.block_on(pending),
            None => Flow::Continue,
        },
        answered => answered,
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = policies
}
criterion_main!(benches);
