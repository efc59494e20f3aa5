//! `portcullis demo`: a self-contained tour. Starts small demo backends inside
//! the process, writes a configuration that uses them, and runs the gateway on
//! 127.0.0.1:8080 with the admin API on 127.0.0.1:9901.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::http::body::{Body, full};
use crate::server::StartError;

/// Gateway address of the demo.
pub const GATEWAY: &str = "127.0.0.1:8080";
/// Admin address of the demo.
pub const ADMIN: &str = "127.0.0.1:9901";

/// Starts a demo backend called `name` on an ephemeral loopback port. It
/// answers every request with JSON naming itself and echoing what it saw, so
/// balancing, rewrites and header changes are visible.
pub async fn start_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req| backend_answer(name, req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn backend_answer(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-") || *k == header::HOST)
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    let mut resp = Response::new(full(format!("{body:#}\n")));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::SERVER,
        http::HeaderValue::from_static("demo-backend"),
    );
    Ok(resp)
}

/// The demo's API keys: acme's (5 requests a minute) and globex's (its
/// own 20 a minute). Printed for the curl lines; the file holds only their
/// SHA-256, as a real one would.
pub const DEMO_KEYS: [&str; 2] = ["acme-demo-key", "globex-demo-key"];

/// The demo configuration for backends at `users_a`, `users_b` and `orders`,
/// serving files from `public`.
pub fn config(
    users_a: SocketAddr,
    users_b: SocketAddr,
    orders: SocketAddr,
    public: &str,
) -> String {
    let acme_key = crate::policy::consumer::hash_key(DEMO_KEYS[0].as_bytes());
    let globex_key = crate::policy::consumer::hash_key(DEMO_KEYS[1].as_bytes());
    format!(
        r#"# Written by `portcullis demo`; edit it and send SIGHUP (or POST /api/v1/reload) to reload.
admin:
  address: {ADMIN}
listeners:
  - name: web
    address: {GATEWAY}
routes:
  - name: ping
    match: {{ path: /ping }}
    respond: {{ status: 200, body: "pong\n", headers: {{ content-type: text/plain }} }}
  - name: users
    match: {{ path_prefix: /users }}
    request_headers: {{ set: {{ x-gateway: portcullis }} }}
    response_headers: {{ remove: [server] }}
    upstream: users
  - name: orders
    match: {{ path_prefix: /api/orders, methods: [GET, POST] }}
    rewrite: {{ strip_prefix: /api }}
    upstream: orders
  - name: checkout-canary
    match: {{ path_prefix: /checkout }}
    split:
      - {{ upstream: orders, weight: 90 }}
      - {{ upstream: users, weight: 10 }}
  - name: admin-only
    match: {{ path_prefix: /internal }}
    policies: [nobody]
    upstream: orders
  - name: partners
    match: {{ path_prefix: /partners }}
    policies: [partner-keys, per-partner]
    upstream: orders
  - name: dashboard
    match: {{ path: /dashboard }}
    aggregate:                      # one call, three upstreams, one JSON answer
      timeout: 2s
      calls:
        user:   {{ upstream: users, path: "/users/{{id}}" }}                # ?id=42
        orders: {{ upstream: orders, path: "/orders?for={{user.backend}}&limit=5", select: path }}
        news:   {{ upstream: news, path: /unread, optional: true }}      # nothing listens: null
  - name: assets
    match: {{ path_prefix: /static }}
    rewrite: {{ strip_prefix: /static }}
    static: {{ root: {public}, index: index.html }}
upstreams:
  - name: users
    balance: round_robin
    targets:
      - {{ address: {users_a}, weight: 2 }}
      - {users_b}
  - name: orders
    targets: [{orders}]
  - name: news
    targets: [127.0.0.1:9]          # the discard port: nothing answers here
policies:
  nobody: {{ type: ip_filter, deny: [0.0.0.0/0, "::/0"] }}
  partner-keys: {{ type: api_key }}
  per-partner: {{ type: rate_limit, key: consumer, limit: 5, per: 1m }}
consumers:
  - name: acme
    groups: [partners]
    api_keys: ["{acme_key}"]          # sha256 of {acme}
  - name: globex
    groups: [partners]
    api_keys: ["{globex_key}"]        # sha256 of {globex}
    rate_limits: {{ per-partner: {{ limit: 20, per: 1m }} }}
observability:
  access_log: {{ path: stdout, format: json }}
"#,
        acme = DEMO_KEYS[0],
        globex = DEMO_KEYS[1],
    )
}

fn demo_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("public"))?;
    std::fs::write(
        dir.join("public").join("index.html"),
        "<!doctype html><title>portcullis demo</title><h1>Served by portcullis</h1>\n",
    )?;
    Ok(dir)
}

/// Runs the demo until SIGINT or SIGTERM.
pub async fn run() -> ExitCode {
    let started = async {
        let users_a = start_backend("users-a").await?;
        let users_b = start_backend("users-b").await?;
        let orders = start_backend("orders").await?;
        let dir = demo_dir()?;
        let public = dir.join("public");
        let path = dir.join("portcullis.yaml");
        std::fs::write(
            &path,
            config(users_a, users_b, orders, &public.display().to_string()),
        )?;
        Ok::<_, std::io::Error>(path)
    };
    let path = match started.await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("portcullis demo: cannot prepare the demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match crate::gateway::start(path.clone()).await {
        Ok(g) => g,
        Err(StartError::Bind {
            address, source, ..
        }) => {
            eprintln!(
                "portcullis demo: cannot listen on {address}: {source}; is another demo running?"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("portcullis demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        r#"
portcullis demo is running. Configuration: {config}

Try:
  curl -i http://{GATEWAY}/ping                      # a direct response
  curl -s http://{GATEWAY}/users/42                  # balanced 2:1 over users-a and users-b (run it a few times)
  curl -s http://{GATEWAY}/api/orders/7              # /api stripped before forwarding to orders
  curl -s -X DELETE -i http://{GATEWAY}/api/orders/7 # method not routed: 404 problem+json
  curl -s http://{GATEWAY}/checkout                  # weighted split: 90% orders, 10% users
  curl -s 'http://{GATEWAY}/dashboard?id=42'         # aggregate: users, then orders with the user's answer, news optional
  curl -i http://{GATEWAY}/internal/secrets          # ip_filter: 403 problem+json
  curl -i http://{GATEWAY}/partners/report           # api_key: 401 without a key
  curl -si -H 'x-api-key: {acme}' http://{GATEWAY}/partners/report
                                                     # acme's key: X-Consumer reaches the backend, RateLimit headers come back
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'x-api-key: {acme}' http://{GATEWAY}/partners/report; done; echo
                                                     # 5 a minute for acme: the 6th is 429 (globex, with '{globex}', has 20)
  curl -s http://{ADMIN}/api/v1/consumers            # consumers with their request counts
  curl -i http://{GATEWAY}/static/                   # static file with ETag and Last-Modified
  curl -s http://{ADMIN}/api/v1/routes               # admin API: routes in match order
  curl -s http://{ADMIN}/metrics | grep portcullis_  # Prometheus metrics
  curl -s -X POST http://{ADMIN}/api/v1/reload       # reload the configuration file

Access log lines appear below. Ctrl-C stops the demo.
"#,
        config = path.display(),
        acme = DEMO_KEYS[0],
        globex = DEMO_KEYS[1],
    );
    crate::server::serve_until_signal(gateway).await
}
