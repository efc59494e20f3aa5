//! Routes that answer without an upstream: `static` (files under `root`, with
//! validators, ranges, index files and no way out of the root) and `respond`
//! (a fixed status, body and headers), checked through the running gateway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

const SECRET: &str = "TOP-SECRET-CONTENT";

/// A site on disk: `www/` is the static root; `secret.txt` sits beside it,
/// one level above the root, where no request may reach.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let site = Site {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(site.root().join("static/docs")).unwrap();
        std::fs::write(site.dir.path().join("secret.txt"), SECRET).unwrap();
        site.write("static/app.js", "console.log('nested');\n");
        site.write("app.js", "console.log('top');\n");
        site.write("hello.txt", "hello world");
        site.write("static/docs/index.html", "<h1>docs</h1>");
        site
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// A gateway with one listener `web` and the given `routes:` entries.
async fn gateway(routes: &str) -> TestGateway {
    TestGateway::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
{routes}
"
    ))
    .await
}

/// `path_prefix: /static` serving `root` as nginx's `root` does (no rewrite).
async fn static_gateway(root: &Path, index: Option<&str>) -> TestGateway {
    let index = index.map(|i| format!(", index: {i}")).unwrap_or_default();
    gateway(&format!(
        r#"  - name: assets
    match: {{ path_prefix: /static }}
    static: {{ root: "{}"{index} }}"#,
        root.display()
    ))
    .await
}

/// The same, with `rewrite: { strip_prefix: /static }`.
async fn stripped_static_gateway(root: &Path) -> TestGateway {
    gateway(&format!(
        r#"  - name: assets
    match: {{ path_prefix: /static }}
    rewrite: {{ strip_prefix: /static }}
    static: {{ root: "{}" }}"#,
        root.display()
    ))
    .await
}

async fn send(req: reqwest::RequestBuilder) -> (http::StatusCode, http::HeaderMap, String) {
    let r = req.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn static_request_path_resolves_under_root_including_the_route_prefix() {
    let site = Site::new();
    let gw = static_gateway(&site.root(), None).await;
    let (status, _, text) = get(&gw.url("web", "/static/app.js")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "console.log('nested');\n");
}

#[tokio::test]
async fn static_with_strip_prefix_resolves_the_rewritten_path_under_root() {
    let site = Site::new();
    let gw = stripped_static_gateway(&site.root()).await;
    let (status, _, text) = get(&gw.url("web", "/static/app.js")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "console.log('top');\n");
}

#[tokio::test]
async fn static_index_file_answers_for_a_directory() {
    let site = Site::new();
    let gw = static_gateway(&site.root(), Some("index.html")).await;
    let (status, headers, text) = get(&gw.url("web", "/static/docs/")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "<h1>docs</h1>");
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
}

#[tokio::test]
async fn static_directory_without_trailing_slash_redirects_to_it() {
    let site = Site::new();
    let gw = static_gateway(&site.root(), Some("index.html")).await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (status, headers, _) = send(no_redirects.get(gw.url("web", "/static/docs"))).await;
    assert_eq!(status, 301);
    assert_eq!(header(&headers, "location"), "./docs/");
}

#[tokio::test]
async fn static_missing_file_is_a_404_problem() {
    let site = Site::new();
    let gw = static_gateway(&site.root(), None).await;
    let (status, headers, text) = get(&gw.url("web", "/static/nope.js")).await;
    let v = assert_problem(status, &headers, &text, 404);
    assert!(!text.contains(&*site.root().to_string_lossy()), "{v}");
}

#[tokio::test]
async fn static_if_none_match_with_the_etag_gives_304() {
    let site = Site::new();
    let gw = stripped_static_gateway(&site.root()).await;
    let url = gw.url("web", "/static/hello.txt");
    let (status, headers, _) = get(&url).await;
    assert_eq!(status, 200);
    let etag = header(&headers, "etag").to_owned();
    assert!(etag.ends_with('"'), "{etag}");

    let (status, headers, text) = send(client().get(&url).header("if-none-match", &etag)).await;
    assert_eq!(status, 304);
    assert_eq!(text, "");
    assert_eq!(header(&headers, "etag"), etag);

    let (status, _, text) = send(client().get(&url).header("if-none-match", "\"other\"")).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "hello world"));
}

#[tokio::test]
async fn static_if_modified_since_the_last_modified_date_gives_304() {
    let site = Site::new();
    let gw = stripped_static_gateway(&site.root()).await;
    let url = gw.url("web", "/static/hello.txt");
    let (_, headers, _) = get(&url).await;
    let date = header(&headers, "last-modified").to_owned();

    let (status, _, text) = send(client().get(&url).header("if-modified-since", &date)).await;
    assert_eq!(status, 304);
    assert_eq!(text, "");

    let epoch = "Thu, 01 Jan 1970 00:00:00 GMT";
    let (status, _, text) = send(client().get(&url).header("if-modified-since", epoch)).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "hello world"));
}

#[tokio::test]
async fn static_single_range_gives_206_with_content_range() {
    let site = Site::new();
    let gw = stripped_static_gateway(&site.root()).await;
    let url = gw.url("web", "/static/hello.txt");
    let (status, headers, text) = send(client().get(&url).header("range", "bytes=6-")).await;
    assert_eq!(status, 206);
    assert_eq!(text, "world");
    assert_eq!(header(&headers, "content-range"), "bytes 6-10/11");
    assert_eq!(header(&headers, "content-length"), "5");

    let (status, _, text) = send(client().get(&url).header("range", "bytes=0-4")).await;
    assert_eq!((status.as_u16(), text.as_str()), (206, "hello"));
}

#[tokio::test]
async fn static_unsatisfiable_range_gives_416() {
    let site = Site::new();
    let gw = stripped_static_gateway(&site.root()).await;
    let url = gw.url("web", "/static/hello.txt");
    let (status, headers, text) = send(client().get(&url).header("range", "bytes=11-")).await;
    assert_problem(status, &headers, &text, 416);
    assert_eq!(header(&headers, "content-range"), "bytes */11");
}

#[tokio::test]
async fn static_head_answers_the_get_headers_without_a_body() {
    let site = Site::new();
    let gw = stripped_static_gateway(&site.root()).await;
    let url = gw.url("web", "/static/hello.txt");
    let (status, headers, text) = send(client().head(&url)).await;
    assert_eq!(status, 200);
    assert_eq!(text, "");
    assert_eq!(header(&headers, "content-length"), "11");
    assert_eq!(
        header(&headers, "content-type"),
        "text/plain; charset=utf-8"
    );
    let (_, get_headers, _) = get(&url).await;
    assert_eq!(header(&headers, "etag"), header(&get_headers, "etag"));
    assert_eq!(
        header(&headers, "last-modified"),
        header(&get_headers, "last-modified")
    );

    // On the wire, too: the HEAD answer ends after the headers.
    let head = raw(
        gw.addr("web"),
        b"HEAD /static/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head:?}");
}

#[tokio::test]
async fn static_content_type_follows_the_file_extension() {
    let site = Site::new();
    for (file, _) in CONTENT_TYPES {
        site.write(file, "x");
    }
    let gw = stripped_static_gateway(&site.root()).await;
    for (file, expected) in CONTENT_TYPES {
        let (status, headers, _) = get(&gw.url("web", &format!("/static/{file}"))).await;
        assert_eq!(status, 200, "{file}");
        assert_eq!(header(&headers, "content-type"), *expected, "{file}");
    }
}

const CONTENT_TYPES: &[(&str, &str)] = &[
    ("page.html", "text/html; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("data.json", "application/json"),
    ("image.png", "image/png"),
    ("font.woff2", "font/woff2"),
    ("blob.unknownext", "application/octet-stream"),
];

/// A gateway where every request lands on a static route over `www`: the
/// `/static` route strips its prefix (so `/static/../secret.txt` would be
/// `www/../secret.txt`, the secret) and a catch-all route serves the rest.
async fn traversal_gateway(site: &Site) -> TestGateway {
    let root = site.root();
    gateway(&format!(
        r#"  - name: assets
    match: {{ path_prefix: /static }}
    rewrite: {{ strip_prefix: /static }}
    static: {{ root: "{root}" }}
  - name: site
    match: {{ path_prefix: / }}
    static: {{ root: "{root}" }}"#,
        root = root.display()
    ))
    .await
}

/// Sends each target byte-exact and asserts that the secret never comes
/// back and the answer is a client error; a plain file is served first so
/// that the routes are known to work.
async fn assert_no_escape(gw: &TestGateway, targets: &[&str]) {
    let ok = raw_get(gw, "/static/hello.txt").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("hello world"), "{ok}");
    for target in targets {
        let answer = raw_get(gw, target).await;
        assert!(
            !answer.contains(SECRET),
            "{target} leaked the secret:\n{answer}"
        );
        assert!(
            answer.starts_with("HTTP/1.1 4"),
            "{target} was not refused:\n{answer}"
        );
    }
}

async fn raw_get(gw: &TestGateway, target: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    raw(gw.addr("web"), request.as_bytes(), Duration::from_secs(5)).await
}

#[tokio::test]
async fn static_dot_dot_segments_do_not_escape_the_root() {
    let site = Site::new();
    let gw = traversal_gateway(&site).await;
    assert_no_escape(
        &gw,
        &[
            "/static/../secret.txt",
            "/static/../../secret.txt",
            "/../secret.txt",
            "/static/docs/../../../secret.txt",
        ],
    )
    .await;
}

#[tokio::test]
async fn static_encoded_dots_do_not_escape_the_root() {
    let site = Site::new();
    let gw = traversal_gateway(&site).await;
    assert_no_escape(
        &gw,
        &[
            "/static/%2e%2e/secret.txt",
            "/static/%2E%2E/secret.txt",
            "/static/.%2e/secret.txt",
            "/%2e%2e/secret.txt",
        ],
    )
    .await;
}

#[tokio::test]
async fn static_encoded_slashes_do_not_escape_the_root() {
    let site = Site::new();
    let gw = traversal_gateway(&site).await;
    assert_no_escape(
        &gw,
        &[
            "/static/..%2fsecret.txt",
            "/static/..%2Fsecret.txt",
            "/static/%2e%2e%2fsecret.txt",
            "/static/docs%2f..%2f..%2fsecret.txt",
        ],
    )
    .await;
}

#[tokio::test]
async fn static_backslashes_do_not_escape_the_root() {
    let site = Site::new();
    let gw = traversal_gateway(&site).await;
    assert_no_escape(
        &gw,
        &[
            "/static/..\\secret.txt",
            "/static/..%5csecret.txt",
            "/static/%5c..%5csecret.txt",
        ],
    )
    .await;
}

#[cfg(unix)]
#[tokio::test]
async fn static_symbolic_link_out_of_the_root_is_refused() {
    use std::os::unix::fs::symlink;
    let site = Site::new();
    symlink(
        site.dir.path().join("secret.txt"),
        site.root().join("leak.txt"),
    )
    .unwrap();
    symlink(site.dir.path(), site.root().join("up")).unwrap();
    // A link that stays inside the root is an ordinary file.
    symlink(site.root().join("hello.txt"), site.root().join("alias.txt")).unwrap();
    let gw = traversal_gateway(&site).await;
    assert_no_escape(
        &gw,
        &["/static/leak.txt", "/static/up/secret.txt", "/leak.txt"],
    )
    .await;
    let alias = raw_get(&gw, "/static/alias.txt").await;
    assert!(alias.starts_with("HTTP/1.1 200"), "{alias}");
    assert!(alias.ends_with("hello world"), "{alias}");
}

#[tokio::test]
async fn respond_route_answers_with_its_status_body_and_headers() {
    let backend = Backend::echo("never").await;
    let gw = gateway(&format!(
        r#"  - name: gone
    match: {{ path: /old }}
    respond:
      status: 410
      body: "moved on"
      headers: {{ content-type: text/plain, x-reason: retired }}
  - name: rest
    upstream: app
upstreams:
  - name: app
    targets: [{}]"#,
        backend.addr
    ))
    .await;
    let (status, headers, text) = get(&gw.url("web", "/old")).await;
    assert_eq!(status, 410);
    assert_eq!(text, "moved on");
    assert_eq!(header(&headers, "content-type"), "text/plain");
    assert_eq!(header(&headers, "x-reason"), "retired");
    assert!(headers.contains_key("x-request-id"));
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn respond_route_defaults_to_200_with_an_empty_body() {
    let gw = gateway(
        r#"  - name: health
    match: { path: /healthz }
    respond: {}"#,
    )
    .await;
    let (status, headers, text) = get(&gw.url("web", "/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(text, "");
    assert_eq!(header(&headers, "content-length"), "0");
}
