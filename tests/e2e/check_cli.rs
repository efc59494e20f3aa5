//! `portcullis check -c FILE`: exit 0 and `ok` for a valid file; exit 1 with
//! every mistake as `FILE:LINE:COL: message` plus a `hint:` line otherwise.
//! These tests run the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one `portcullis check` run produced.
struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Checked {
    /// The `(line, col, message)` of every `FILE:LINE:COL: message` line on stderr.
    fn errors(&self) -> Vec<(u32, u32, String)> {
        let prefix = format!("{}:", self.file.display());
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| {
                let mut parts = rest.splitn(3, ':');
                let line = parts.next().and_then(|s| s.parse().ok());
                let col = parts.next().and_then(|s| s.parse().ok());
                let message = parts.next().map(|s| s.trim().to_string());
                match (line, col, message) {
                    (Some(line), Some(col), Some(message)) => (line, col, message),
                    _ => panic!(
                        "not FILE:LINE:COL: message: {rest:?}\nstderr:\n{}",
                        self.stderr
                    ),
                }
            })
            .collect()
    }

    /// The hint printed right under the error whose message contains `needle`.
    fn hint_for(&self, needle: &str) -> String {
        let mut lines = self.stderr.lines();
        while let Some(l) = lines.next() {
            if l.contains(needle) {
                let next = lines.next().unwrap_or_default().trim();
                return next
                    .strip_prefix("hint: ")
                    .unwrap_or_else(|| panic!("no hint after {l:?}\nstderr:\n{}", self.stderr))
                    .to_string();
            }
        }
        panic!("no error containing {needle:?}\nstderr:\n{}", self.stderr)
    }

    /// The error whose message contains `needle`.
    fn error_with(&self, needle: &str) -> (u32, u32, String) {
        self.errors()
            .into_iter()
            .find(|(_, _, m)| m.contains(needle))
            .unwrap_or_else(|| panic!("no error containing {needle:?}\nstderr:\n{}", self.stderr))
    }
}

/// Writes `text` as `name` in a fresh temp dir and runs `portcullis check -c` on it.
fn check(name: &str, text: &str) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    let out = check_path(&file);
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        file,
        _dir: dir,
    }
}

fn check_path(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

const MINIMAL: &str = "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
";

#[test]
fn check_accepts_a_minimal_file_and_prints_ok() {
    let out = check("portcullis.yaml", MINIMAL);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(out.stdout.contains("ok"), "stdout: {}", out.stdout);
    assert!(
        out.stdout.contains(&out.file.display().to_string()),
        "stdout: {}",
        out.stdout
    );
    assert!(out.errors().is_empty(), "stderr:\n{}", out.stderr);
}

#[test]
fn check_accepts_a_minimal_toml_file_and_prints_ok() {
    let out = check(
        "portcullis.toml",
        r#"
[[listeners]]
name = "web"
address = "127.0.0.1:0"

[[routes]]
name = "all"
upstream = "app"

[[upstreams]]
name = "app"
targets = ["127.0.0.1:9"]
"#,
    );
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(out.stdout.contains("ok"), "stdout: {}", out.stdout);
}

#[test]
fn check_accepts_durations_and_sizes_in_their_units() {
    let out = check(
        "portcullis.yaml",
        "\
shutdown_timeout: 2s
listeners:
  - name: web
    address: 127.0.0.1:0
    max_body: 8MiB
    max_header_size: 512KiB
    header_read_timeout: 250ms
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
    timeouts: { connect: 250ms, response_header: 1m, idle: 2s }
",
    );
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(out.stdout.contains("ok"), "stdout: {}", out.stdout);
}

#[test]
fn check_reports_a_misspelled_key_with_did_you_mean() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    adress: 127.0.0.1:0
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, col, message) = out.error_with("adress");
    assert_eq!((line, col), (3, 5), "{message}");
    assert!(message.contains("unknown field"), "{message}");
    assert!(
        out.hint_for("adress").contains("did you mean `address`"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_misspelled_upstream_reference_with_did_you_mean() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: usres
upstreams:
  - name: users
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("usres");
    assert_eq!(line, 6, "{message}");
    assert!(message.contains("not defined"), "{message}");
    assert!(
        out.hint_for("usres").contains("did you mean `users`"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_route_naming_a_missing_policy() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
    policies: [firewal]
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  firewall: { type: ip_filter, allow: [127.0.0.0/8] }
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("firewal`");
    assert_eq!(line, 7, "{message}");
    assert!(message.contains("policy"), "{message}");
    assert!(
        out.hint_for("firewal`").contains("did you mean `firewall`"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_bad_listener_address_with_a_hint() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:99999
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("127.0.0.1:99999");
    assert_eq!(line, 3, "{message}");
    assert!(
        out.hint_for("127.0.0.1:99999").contains("IP:port"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_duplicate_name_at_the_second_definition() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
  - name: app
    targets: [127.0.0.1:10]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("duplicate");
    assert_eq!(line, 10, "{message}");
    assert!(message.contains("app"), "{message}");
    assert!(!out.hint_for("duplicate").is_empty());
}

#[test]
fn check_reports_an_invalid_regex() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    match:
      path_regex: \"/users/(\\\\d+\"
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("regex");
    assert_eq!(line, 7, "{message}");
    assert!(!out.hint_for("regex").is_empty());
}

#[test]
fn check_refuses_h2c_and_malformed_names_in_a_routes_upgrades() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upgrades: [websocket, h2c, \"a b\"]
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, col, _) = out.error_with("`h2c` upgrades are never forwarded");
    assert_eq!((line, col), (6, 27));
    assert!(out.hint_for("h2c").contains("policies"));
    let (line, _, _) = out.error_with("is not a protocol name");
    assert_eq!(line, 6);
}

#[test]
fn check_reports_an_unreadable_certificate_file() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: websecure
    address: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - { cert: missing.pem, key: missing.key }
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("missing.");
    assert_eq!(line, 7, "{message}");
    assert!(!out.hint_for("missing.").is_empty());
}

#[test]
fn check_reports_a_key_that_is_not_pem() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("site.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("site.key"), "not a key\n").unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - name: websecure
    address: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - cert: site.pem
          key: site.key
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    )
    .unwrap();
    let out = check_path(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let prefix = format!("{}:7:", file.display());
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no error at line 7:\n{stderr}"));
    assert!(line.contains("site.key"), "{line}");
}

#[test]
fn check_reports_every_error_in_one_run_in_file_order() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: not-an-address
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    match: { path_regex: \"/(a\" }
    upstream: ap
    policies: [nope]
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let lines: Vec<u32> = out.errors().iter().map(|(l, _, _)| *l).collect();
    assert_eq!(lines, vec![3, 4, 8, 9, 10], "stderr:\n{}", out.stderr);
    assert_eq!(
        out.stderr.matches("hint: ").count(),
        5,
        "stderr:\n{}",
        out.stderr
    );
    assert!(
        out.hint_for("`ap`").contains("did you mean `app`"),
        "stderr:\n{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout);
}

#[test]
fn check_reports_a_malformed_duration_at_its_line() {
    let out = check(
        "portcullis.yaml",
        &format!("{MINIMAL}shutdown_timeout: 2 parsecs\n"),
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("parsecs");
    assert_eq!(line, 10, "{message}");
}

#[test]
fn check_reports_a_malformed_size_at_its_line() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
    max_body: 8 furlongs
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("furlongs");
    assert_eq!(line, 4, "{message}");
}

#[test]
fn check_reports_a_misspelled_toml_key_with_did_you_mean() {
    let out = check(
        "portcullis.toml",
        r#"[[listeners]]
name = "web"
adress = "127.0.0.1:0"

[[routes]]
name = "all"
upstream = "app"

[[upstreams]]
name = "app"
targets = ["127.0.0.1:9"]
"#,
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, col, message) = out.error_with("adress");
    assert_eq!((line, col), (3, 1), "{message}");
    assert!(
        out.hint_for("adress").contains("did you mean `address`"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_every_toml_error_at_its_line() {
    let out = check(
        "portcullis.toml",
        r#"[[listeners]]
name = "web"
address = "nope"

[[routes]]
name = "all"
upstream = "ap"

[[upstreams]]
name = "app"
targets = ["127.0.0.1:9"]
"#,
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let lines: Vec<u32> = out.errors().iter().map(|(l, _, _)| *l).collect();
    assert_eq!(lines, vec![3, 7], "stderr:\n{}", out.stderr);
    assert!(
        out.hint_for("`ap`").contains("did you mean `app`"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.yaml");
    let out = check_path(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("hint: "), "stderr:\n{stderr}");
}

#[test]
fn check_reports_a_misspelled_value_with_did_you_mean() {
    let out = check(
        "portcullis.yaml",
        &MINIMAL.replace("127.0.0.1:0\n", "127.0.0.1:0\n    protocol: htps\n"),
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("htps");
    assert_eq!(line, 4, "{message}");
    assert!(
        out.hint_for("htps").contains("did you mean `https`"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_yaml_syntax_error_at_its_line_with_a_hint() {
    // Line 6 is indented one space short.
    let out = check(
        "portcullis.yaml",
        &MINIMAL.replace("    upstream: app", "   upstream: app"),
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "stderr:\n{}", out.stderr);
    assert_eq!(errors[0].0, 6, "stderr:\n{}", out.stderr);
    assert!(!out.hint_for(&errors[0].2).is_empty());
}

#[test]
fn check_reports_a_missing_required_field_with_a_hint() {
    let out = check(
        "portcullis.yaml",
        &MINIMAL.replace("  - name: web\n    address", "  - address"),
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("name");
    assert_eq!(line, 2, "{message}");
    assert!(
        out.hint_for("name").contains("name"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_toml_syntax_error_at_its_line_with_a_hint() {
    let out = check(
        "portcullis.toml",
        "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n[[routes]\n",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "stderr:\n{}", out.stderr);
    assert_eq!(errors[0].0, 4, "stderr:\n{}", out.stderr);
    assert!(!out.hint_for(&errors[0].2).is_empty());
}

#[test]
fn check_reports_an_unknown_file_extension() {
    let out = check("portcullis.json", "{}");
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains(&out.file.display().to_string()),
        "stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(".toml"),
        "the hint names the accepted formats:\n{}",
        out.stderr
    );
}

#[test]
fn check_does_not_create_the_access_log_file() {
    let c = check(
        "portcullis.yaml",
        r#"listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: ping
    respond: { body: pong }
observability:
  access_log: { path: access.log }
"#,
    );
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert!(!c.file.with_file_name("access.log").exists());
}

#[test]
fn check_reports_an_access_log_in_a_missing_directory() {
    let c = check(
        "portcullis.yaml",
        r#"listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: ping
    respond: { body: pong }
observability:
  access_log: { path: no/such/dir/access.log }
"#,
    );
    assert_eq!(c.code, Some(1), "stdout:\n{}", c.stdout);
    let (line, _, _) = c.error_with("cannot open the access log");
    assert_eq!(line, 8);
}

#[test]
fn check_reports_jwt_and_rate_limit_mistakes_at_their_lines_and_not_again_where_used() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    policies: [auth, limit]
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  auth:
    type: jwt
    secret: short
    forward_claims: { sub: \"x user\" }
  limit:
    type: rate_limit
    key: ip
    limit: 10
    per: 1m
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    let lines: Vec<u32> = errors.iter().map(|(l, _, _)| *l).collect();
    assert_eq!(lines, vec![14, 15, 18], "stderr:\n{}", out.stderr);
    assert!(errors[0].2.contains("at least 32"), "{}", out.stderr);
    assert!(
        errors[2].2.contains("use client_ip, consumer"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("not defined"), "{}", out.stderr);
}

#[test]
fn check_reports_a_redis_store_without_a_stores_section_and_a_bad_redis_url() {
    let policy = "policies:\n  limit: { type: rate_limit, store: redis, limit: 5, per: 1s }\n";
    let out = check("portcullis.yaml", &format!("{MINIMAL}{policy}"));
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert_eq!(errors[0].0, 11, "{}", out.stderr);
    assert!(errors[0].2.contains("stores: { redis"), "{}", out.stderr);

    let out = check(
        "portcullis.yaml",
        &format!("{MINIMAL}{policy}stores:\n  redis: {{ url: 'http://cache:6379' }}\n"),
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert_eq!(errors[0].0, 13, "{}", out.stderr);
    assert!(errors[0].2.contains("redis://HOST:PORT"), "{}", out.stderr);
}

#[test]
fn check_does_not_fetch_a_jwks_url() {
    // Nothing listens there: checking must neither wait for it nor fail.
    let out = check(
        "portcullis.yaml",
        &format!(
            "{MINIMAL}policies:\n  auth: {{ type: jwt, jwks_url: 'http://127.0.0.1:9/keys' }}\n"
        ),
    );
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
}

#[test]
fn check_reports_every_jwt_key_source_and_rate_limit_quota_mistake() {
    let out = check(
        "portcullis.yaml",
        &format!(
            "{MINIMAL}\
policies:
  none: {{ type: jwt }}
  both: {{ type: jwt, secret: 0123456789abcdef0123456789abcdef, jwks_file: keys.json }}
  missing: {{ type: jwt, jwks_file: no-such-keys.json }}
  ca-alone: {{ type: jwt, secret: 0123456789abcdef0123456789abcdef, jwks_ca: ca.pem }}
  bad-ca: {{ type: jwt, jwks_url: 'https://idp.example.com/keys', jwks_ca: no-such-ca.pem }}
  never: {{ type: jwt, jwks_url: 'https://idp.example.com/keys', jwks_refresh: 0s }}
  no-burst: {{ type: rate_limit, limit: 5, per: 1s, burst: 0 }}
  too-fine: {{ type: rate_limit, limit: 5000000, per: 1s }}
"
        ),
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let found: Vec<(u32, &str)> = out
        .errors()
        .iter()
        .map(|(line, _, message)| {
            let what = [
                "one of `secret`, `jwks_file` or `jwks_url`",
                "only one of",
                // Before "cannot read", which its message also holds.
                "no-such-ca.pem",
                "cannot read",
                "applies to `jwks_url` only",
                "must be above zero",
                "`burst` must be at least 1",
                "more than one per microsecond",
            ]
            .into_iter()
            .find(|needle| message.contains(needle))
            .unwrap_or_else(|| panic!("unexpected error: {message}"));
            (*line, what)
        })
        .collect();
    let expected = [
        (11, "one of `secret`, `jwks_file` or `jwks_url`"),
        (12, "only one of"),
        (13, "cannot read"),
        (14, "applies to `jwks_url` only"),
        (15, "no-such-ca.pem"),
        (16, "must be above zero"),
        (17, "`burst` must be at least 1"),
        (18, "more than one per microsecond"),
    ];
    assert_eq!(found, expected, "stderr:\n{}", out.stderr);
}

#[test]
fn check_reports_consumer_mistakes_and_a_skip_of_no_listener_policy_at_their_lines() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
    policies: [keys]
routes:
  - name: health
    match: { path: /health }
    skip_policies: [key]
    respond: { status: 200 }
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  keys: { type: api_key }
  staff: { type: allow }
consumers:
  - name: acme
    api_keys: [secret-in-clear]
    rate_limits: { keys: { limit: 5, per: 1m } }
  - name: acme
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("SHA-256");
    assert_eq!(line, 20, "{message}");
    assert!(message.contains("hash-key"), "{message}");
    let (line, _, message) = out.error_with("not a rate_limit policy");
    assert_eq!(line, 21, "{message}");
    let (line, _, _) = out.error_with("duplicate consumer name `acme`");
    assert_eq!(line, 22);
    let (line, _, _) = out.error_with("needs a condition");
    assert_eq!(line, 17);
    let (line, _, _) = out.error_with("attaches policy `key`");
    assert_eq!(line, 8);
}

#[test]
fn check_refuses_a_quota_without_redis_and_a_rate_limit_without_numbers() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
    policies: [daily, vague, monthly]
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  daily: { type: rate_limit, quota: { limit: 100, per: 1d } }
  vague: { type: rate_limit, key: consumer }
  monthly: { type: rate_limit, quota: { limit: 5, per: fortnight }, store: local }
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("quota must outlive restarts");
    assert_eq!(line, 12, "{message}");
    let (line, _, _) = out.error_with("needs `limit` and `per`");
    assert_eq!(line, 13);
    let (line, _, message) = out.error_with("fortnight");
    assert_eq!(line, 14);
    assert!(message.contains("`month`"), "{message}");
}

#[test]
fn check_refuses_a_password_in_clear_at_its_line_with_the_hash_password_hint() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    policies: [staff-login]
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  staff-login: { type: basic_auth, realm: staff, max_failures: 0 }
consumers:
  - name: alice
    password_hash: hunter2
  - name: bob
    password_hash: \"$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("never as it is");
    assert_eq!(line, 15, "{message}");
    assert!(!out.stderr.contains("hunter2"), "stderr:\n{}", out.stderr);
    let hint = out.hint_for("never as it is");
    assert!(hint.contains("portcullis hash-password"), "{hint}");
    let (line, _, _) = out.error_with("use argon2id");
    assert_eq!(line, 17);
    let (line, _, message) = out.error_with("`max_failures` must be at least 1");
    assert_eq!(line, 12, "{message}");
}

#[test]
fn check_reports_redirect_and_variable_mistakes_at_their_lines() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
  - name: secure
    address: 127.0.0.1:0
    protocol: https
    https_redirect: true
routes:
  - name: a
    match: { path: /a }
    redirect: { status: 200, scheme: https }
  - name: b
    match: { path: /b }
    redirect: { path: \"/x{pth}\" }
  - name: c
    match: { path: /c }
    redirect: { status: 301 }
  - name: d
    match: { path: /d }
    respond: { body: \"hi {hots}\" }
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, _) = out.error_with("already https");
    assert_eq!(line, 7);
    let (line, _, _) = out.error_with("200 is not a redirect status");
    assert_eq!(line, 11);
    let (line, _, message) = out.error_with("`{pth}` is not a variable");
    assert_eq!(line, 14, "{message}");
    let (line, _, _) = out.error_with("back to the URL they asked for");
    assert_eq!(line, 17);
    let (line, _, _) = out.error_with("`{hots}` is not a variable");
    assert_eq!(line, 20);
}

#[test]
fn check_reports_transform_mistakes_at_their_lines() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
    policies: [xml, fields]
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  xml: { type: transform, response: json_to_yaml }
  fields: { type: transform, request: { remove: [a..b], set: { x: \"{tenant}\" } } }
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("`json_to_yaml` is not a conversion");
    assert!(message.contains("xml_to_json or json_to_xml"), "{message}");
    assert_eq!(line, 12);
    let (line, _, _) = out.error_with("`a..b` is not a dotted path");
    assert_eq!(line, 13);
    let (line, _, _) = out.error_with("`{tenant}` is not a variable");
    assert_eq!(line, 13);
}

#[test]
fn check_refuses_a_cors_policy_with_credentials_and_any_origin_and_a_bad_origin() {
    let out = check(
        "portcullis.yaml",
        &format!(
            "{MINIMAL}policies:\n  cors:\n    type: cors\n    allow_origins: [\"*\", \"https://app.example.com/\"]\n    allow_credentials: true\n"
        ),
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    assert_eq!(errors.len(), 2, "{}", out.stderr);
    assert!(errors[0].2.contains("allow_credentials"), "{}", out.stderr);
    assert!(errors[1].2.contains("has a path"), "{}", out.stderr);
    // Each at its own entry of the list.
    let at: Vec<(u32, u32)> = errors.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(at, [(13, 21), (13, 26)], "{}", out.stderr);
}

#[test]
fn check_refuses_two_cors_policies_on_one_route_at_the_route() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
    policies: [site-cors]
routes:
  - name: api
    match: { path_prefix: /api }
    policies: [api-cors]
    upstream: app
  - name: both
    match: { path_prefix: /both }
    skip_policies: [site-cors]
    policies: [api-cors, site-cors]
    upstream: app
  - name: replaced
    match: { path_prefix: /replaced }
    skip_policies: [site-cors]
    policies: [api-cors]
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  site-cors: { type: cors, allow_origins: [\"https://www.example.com\"] }
  api-cors: { type: cors, allow_origins: [\"https://app.example.com\"] }
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    assert_eq!(errors.len(), 2, "{}", out.stderr);
    // The listener's and the route's; then two of the route's own.
    assert_eq!(errors[0].0, 6, "{}", out.stderr);
    assert!(
        errors[0].2.contains("route `api` gets two cors policies"),
        "{}",
        out.stderr
    );
    assert_eq!(errors[1].0, 10, "{}", out.stderr);
    assert!(errors[1].2.contains("route `both`"), "{}", out.stderr);
    let hint = out.hint_for("route `api` gets two cors policies");
    assert!(hint.contains("skip_policies"), "{hint}");
}

#[test]
fn check_refuses_a_redirect_to_the_scheme_every_listener_of_its_route_has() {
    let out = check(
        "portcullis.yaml",
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
  - name: secure
    address: 127.0.0.1:0
    protocol: https
    tls: { certificates: [ { cert: missing.pem, key: missing.key } ] }
routes:
  - name: to-http
    listeners: [web]
    match: { path: /a }
    redirect: { scheme: http }
  - name: to-https
    listeners: [secure]
    match: { path: /b }
    redirect: { scheme: https, status: 308 }
  - name: upgrade
    match: { path: /c }
    redirect: { scheme: https, status: 308 }
  - name: moved
    listeners: [web]
    match: { path: /d }
    redirect: { scheme: http, path: /e }
upstreams:
  - name: app
    targets: [127.0.0.1:9]
",
    );
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let looping: Vec<(u32, String)> = out
        .errors()
        .into_iter()
        .filter(|(_, _, m)| m.contains("back to the URL they asked for"))
        .map(|(line, _, m)| (line, m))
        .collect();
    assert_eq!(looping.len(), 2, "{}", out.stderr);
    assert_eq!(looping[0].0, 12, "{}", out.stderr);
    assert!(looping[0].1.contains("already http"), "{}", out.stderr);
    assert_eq!(looping[1].0, 16, "{}", out.stderr);
    assert!(looping[1].1.contains("already https"), "{}", out.stderr);
    let hint = out.hint_for("every listener of route `to-http`");
    assert!(hint.contains("attach the route"), "{hint}");
}

/// Runs `portcullis check` on MINIMAL plus an `openapi` policy whose
/// description is `spec` (written as specs/orders.yaml beside the file).
fn check_openapi(spec: Option<&str>) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("specs")).unwrap();
    if let Some(spec) = spec {
        std::fs::write(dir.path().join("specs/orders.yaml"), spec).unwrap();
    }
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        format!(
            "{MINIMAL}policies:\n  orders-spec: {{ type: openapi, spec: specs/orders.yaml }}\n"
        ),
    )
    .unwrap();
    let out = check_path(&file);
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        file,
        _dir: dir,
    }
}

#[test]
fn check_reads_an_openapi_description_and_reports_its_mistakes_at_their_own_lines() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/specs/orders.yaml"),
    )
    .unwrap();
    // Without its sibling common.yaml the example's `$ref`s point nowhere.
    let out = check_openapi(Some(&example));
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read `specs/common.yaml`"),
        "{}",
        out.stderr
    );

    // A schema with a type that does not exist, on the spec's line 9.
    let out = check_openapi(Some(
        "openapi: 3.0.3
info: { title: t, version: '1' }
paths:
  /orders:
    post:
      requestBody:
        content:
          application/json:
            schema: { type: object, properties: { qty: { type: int } } }
      responses:
        '201': { description: created }
",
    ));
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("policy `orders-spec`");
    assert_eq!(line, 11, "the policy's line: {message}");
    assert!(message.contains("specs/orders.yaml:9:"), "{message}");
    assert!(message.contains("not a valid schema"), "{message}");

    // YAML that does not parse, on line 4.
    let out = check_openapi(Some("openapi: 3.1.0\npaths:\n  /a:\n    get: [\n"));
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("not valid YAML");
    assert_eq!(line, 11, "{message}");
    assert!(message.contains("specs/orders.yaml:"), "{message}");

    // No file at all.
    let out = check_openapi(None);
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let (line, _, message) = out.error_with("cannot read the OpenAPI document");
    assert_eq!(line, 11, "{message}");

    // A good description passes.
    let out = check_openapi(Some(
        "openapi: 3.1.0\ninfo: { title: t, version: '1' }\npaths:\n  /a:\n    get:\n      responses:\n        '200': { description: ok }\n",
    ));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
}
