//! Files served from a directory, as nginx's `root` does, for routes with a
//! `static` section, so a small site needs no separate web server beside the
//! gateway.
//!
//! This is the one place where a request path becomes a filesystem path, so
//! every defence against reading outside the root lives here: the path is
//! checked segment by segment before it touches the filesystem, and the file
//! it names is canonicalized and checked again after symbolic links are
//! followed. Responses carry validators (ETag, Last-Modified) and honour
//! conditional and single-range requests; bodies are streamed, never
//! buffered.

use std::io::{self, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::http::body::{Body, BoxError, empty};
use crate::http::conditional::{ByteRange, ContentRange, Validators, byte_range};
use crate::http::problem::problem;

/// Read size per body chunk: large enough that a big file costs few
/// syscalls, small enough that many concurrent downloads stay cheap.
const CHUNK_SIZE: usize = 64 * 1024;

/// First second of the year 10000. `httpdate` panics on later times (and on
/// times before 1970), and a file's mtime is whatever its owner set, so
/// mtimes outside that window are treated as unknown.
const HTTP_DATE_LIMIT_SECS: u64 = 253_402_300_800;

/// A directory whose files are served read-only; built once per config compile.
#[derive(Debug, Clone)]
pub struct StaticDir {
    /// Canonical form, so that the "still under the root" check compares
    /// like with like after symbolic links are followed.
    root: PathBuf,
    index: Option<String>,
}

/// Why a static file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// No file answers the path, or a directory has no index file.
    #[error("no such file")]
    NotFound,
    /// The path was refused: traversal, forbidden bytes, a symbolic link
    /// leading outside the root, or a file the gateway may not read.
    #[error("path refused")]
    Forbidden,
    /// Only GET and HEAD read files.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The requested byte range starts past the end of the file.
    #[error("range not satisfiable for a file of {size} bytes")]
    RangeNotSatisfiable {
        /// Length of the file in bytes.
        size: u64,
    },
    /// The configured root cannot be resolved.
    #[error("static root {}: {source}", path.display())]
    BadRoot {
        /// The root as configured.
        path: PathBuf,
        /// Why it cannot be resolved.
        source: io::Error,
    },
    /// The configured root exists but is not a directory.
    #[error("static root {} is not a directory", path.display())]
    RootNotDirectory {
        /// The root as configured.
        path: PathBuf,
    },
    /// The configured index is not a plain file name.
    #[error("static index {index:?} must be a plain file name such as index.html")]
    BadIndex {
        /// The index as configured.
        index: String,
    },
    /// Reading the file failed.
    #[error("reading a static file: {0}")]
    Io(#[from] io::Error),
}

impl StaticError {
    /// The problem+json answer for this error; never names a filesystem path.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        match self {
            StaticError::NotFound => problem(StatusCode::NOT_FOUND, "no such file", request_id),
            StaticError::Forbidden => problem(
                StatusCode::FORBIDDEN,
                "access to this path is not allowed",
                request_id,
            ),
            StaticError::MethodNotAllowed => {
                let mut resp = problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "static files answer only GET and HEAD",
                    request_id,
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                resp
            }
            StaticError::RangeNotSatisfiable { size } => {
                let mut resp = problem(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "the requested range starts past the end of the file",
                    request_id,
                );
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from(ContentRange::Size(size)),
                );
                resp
            }
            // The error's own text can carry paths; the client gets a fixed
            // detail and the operator gets the error through the caller's log.
            StaticError::BadRoot { .. }
            | StaticError::RootNotDirectory { .. }
            | StaticError::BadIndex { .. }
            | StaticError::Io(_) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the file could not be read",
                request_id,
            ),
        }
    }
}

impl StaticDir {
    /// `root` must be an existing directory; it is canonicalized once here.
    ///
    /// Uses blocking filesystem calls: it runs at config compile, not per request.
    pub fn new(root: &Path, index: Option<&str>) -> Result<StaticDir, StaticError> {
        let bad_root = |source| StaticError::BadRoot {
            path: root.to_path_buf(),
            source,
        };
        let canonical = std::fs::canonicalize(root).map_err(bad_root)?;
        if !std::fs::metadata(&canonical).map_err(bad_root)?.is_dir() {
            return Err(StaticError::RootNotDirectory {
                path: root.to_path_buf(),
            });
        }
        if let Some(name) = index
            && !is_plain_file_name(name)
        {
            return Err(StaticError::BadIndex {
                index: name.to_owned(),
            });
        }
        Ok(StaticDir {
            root: canonical,
            index: index.map(str::to_owned),
        })
    }

    /// `path` is the request path after the route's rewrite (still percent-encoded, no query string).
    pub async fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, StaticError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(StaticError::MethodNotAllowed);
        }
        let mut target = self.root.clone();
        target.extend(decode_segments(path)?);
        let mut file_path = self.confine(&target).await?;
        let mut meta = tokio::fs::metadata(&file_path).await.map_err(fs_error)?;

        if meta.is_dir() {
            let Some(index) = &self.index else {
                return Err(StaticError::NotFound);
            };
            let index_path = self.confine(&file_path.join(index)).await?;
            let index_meta = tokio::fs::metadata(&index_path).await.map_err(fs_error)?;
            if !index_meta.is_file() {
                return Err(StaticError::NotFound);
            }
            if let Some(resp) = redirect_to_slash(path) {
                return Ok(resp);
            }
            file_path = index_path;
            meta = index_meta;
        }
        // Checked before opening as well as after: opening a FIFO or a device
        // could block a worker thread or read forever.
        if !meta.is_file() {
            return Err(StaticError::NotFound);
        }

        // A writer able to swap a directory for a symbolic link between the
        // check above and this open could still win the race; closing that
        // needs openat2(RESOLVE_BENEATH), and only matters when untrusted
        // parties can write under the root.
        let mut file = tokio::fs::File::open(&file_path).await.map_err(fs_error)?;
        // Headers describe the file actually opened, not the one checked.
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(StaticError::NotFound);
        }
        let size = meta.len();
        let validators = file_validators(&meta);

        if validators.not_modified(headers) {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            validators.insert_into(resp.headers_mut());
            return Ok(resp);
        }

        // RFC 9110 defines Range for GET only; HEAD answers as a full GET would.
        let range = if method == Method::GET && validators.if_range_allows(headers) {
            byte_range(headers, size)
        } else {
            ByteRange::Whole
        };
        let (status, start, len) = match range {
            ByteRange::Whole => (StatusCode::OK, 0, size),
            ByteRange::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            ByteRange::Unsatisfiable => return Err(StaticError::RangeNotSatisfiable { size }),
        };

        let body = if method == Method::HEAD {
            empty()
        } else {
            if start > 0 {
                file.seek(SeekFrom::Start(start)).await?;
            }
            // `take` also keeps a file that grows while it is sent from
            // overrunning the Content-Length already promised.
            let frames = ReaderStream::with_capacity(file.take(len), CHUNK_SIZE)
                .map_ok(Frame::data)
                .map_err(|e| -> BoxError { Box::new(e) });
            StreamBody::new(frames).boxed_unsync()
        };

        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type(&file_path));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if status == StatusCode::PARTIAL_CONTENT {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from(ContentRange::Part {
                    start,
                    end: start + len - 1,
                    size,
                }),
            );
        }
        validators.insert_into(h);
        Ok(resp)
    }

    /// Follows every symbolic link in `path` and refuses the result unless it
    /// is still under the root.
    async fn confine(&self, path: &Path) -> Result<PathBuf, StaticError> {
        let real = tokio::fs::canonicalize(path).await.map_err(fs_error)?;
        // `Path::starts_with` compares whole components, so a sibling such as
        // `/srv/www2` does not pass for a root of `/srv/www`.
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(StaticError::Forbidden)
        }
    }
}

/// Splits a percent-encoded request path into decoded segments that can be
/// pushed onto the root one by one.
///
/// Refusals here answer 403, not 404: they are decided from the path's text
/// alone, so they reveal nothing about the filesystem, and access logs then
/// tell traversal probes apart from missing files. Segments are split before
/// decoding, so `%2f` cannot join two segments into a traversal.
fn decode_segments(path: &str) -> Result<Vec<String>, StaticError> {
    let mut segments = Vec::new();
    for raw in path.split('/') {
        let bytes = percent_decode(raw).ok_or(StaticError::Forbidden)?;
        // No file name we serve can hold invalid UTF-8, so this is a miss,
        // not an attack.
        let segment = String::from_utf8(bytes).map_err(|_| StaticError::NotFound)?;
        if segment.is_empty() || segment == "." {
            continue;
        }
        if !is_plain_file_name(&segment) {
            return Err(StaticError::Forbidden);
        }
        segments.push(segment);
    }
    Ok(segments)
}

/// True when `name` names one entry inside a directory and nothing else.
fn is_plain_file_name(name: &str) -> bool {
    if name.is_empty() || name == ".." || name.contains(['/', '\\', '\0']) {
        return false;
    }
    // Catches what the checks above miss on other platforms, such as a
    // Windows drive prefix, which `PathBuf::push` would let replace the root.
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// Decodes `%XX` escapes; `None` when an escape is malformed, because such a
/// path has no single meaning.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Maps filesystem errors to what the client may learn from them.
fn fs_error(e: io::Error) -> StaticError {
    match e.kind() {
        // NotADirectory: a path such as `/file.txt/more`.
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename => {
            StaticError::NotFound
        }
        io::ErrorKind::PermissionDenied => StaticError::Forbidden,
        _ => StaticError::Io(e),
    }
}

/// Redirects a directory requested without its trailing slash, as nginx
/// does, so relative links in its index resolve inside it. `None` when the
/// slash is already there.
///
/// The `Location` is relative (`./name/`) because `path` may have been
/// rewritten: only its last segment is known to match what the client sent.
/// The `./` keeps a segment holding a colon from reading as a URI scheme.
fn redirect_to_slash(path: &str) -> Option<Response<Body>> {
    let last = path.rsplit('/').next().unwrap_or_default();
    // An empty last segment is either the slash itself or a path rewritten
    // to nothing, whose client-side name is unknown: serve the index as is.
    if last.is_empty() {
        return None;
    }
    let location = HeaderValue::try_from(format!("./{last}/")).ok()?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    resp.headers_mut().insert(header::LOCATION, location);
    Some(resp)
}

/// Content-Type from the file's extension. Text types get an explicit UTF-8
/// charset, which browsers otherwise guess.
fn content_type(path: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let wants_charset = (mime.type_() == mime_guess::mime::TEXT
        || mime.essence_str() == "application/javascript")
        && mime.get_param(mime_guess::mime::CHARSET).is_none();
    let value = if wants_charset {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::try_from(value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// The validators of one file: a strong tag from its mtime and size.
fn file_validators(meta: &std::fs::Metadata) -> Validators {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .filter(|d| d.as_secs() < HTTP_DATE_LIMIT_SECS);
    let Some(modified) = modified else {
        return Validators {
            modified_secs: None,
            last_modified: None,
            etag: None,
        };
    };
    let secs = modified.as_secs();
    let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    let etag = format!(
        "\"{secs:x}-{:x}-{:x}\"",
        modified.subsec_nanos(),
        meta.len()
    );
    Validators {
        modified_secs: Some(secs),
        last_modified: HeaderValue::try_from(date).ok(),
        etag: HeaderValue::try_from(etag).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const HELLO: &str = "hello world";

    /// A temp dir holding `root/` (served) and `secret.txt` beside it, which
    /// no request may read.
    struct Site {
        dir: tempfile::TempDir,
    }

    impl Site {
        fn new() -> Site {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            fs::write(root.join("hello.txt"), HELLO).unwrap();
            fs::write(dir.path().join("secret.txt"), "secret").unwrap();
            Site { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn serve_dir(&self, index: Option<&str>) -> StaticDir {
            StaticDir::new(&self.root(), index).unwrap()
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    async fn get(dir: &StaticDir, path: &str, h: &[(header::HeaderName, &str)]) -> Response<Body> {
        dir.serve(&Method::GET, path, &headers(h)).await.unwrap()
    }

    async fn get_err(dir: &StaticDir, path: &str) -> StaticError {
        match dir.serve(&Method::GET, path, &HeaderMap::new()).await {
            Ok(resp) => panic!("{path}: expected an error, got {}", resp.status()),
            Err(e) => e,
        }
    }

    async fn body_text(resp: Response<Body>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn header_str(resp: &Response<Body>, name: header::HeaderName) -> &str {
        resp.headers()
            .get(&name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .unwrap()
    }

    #[test]
    fn static_dir_and_serve_future_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<StaticDir>();
        let site = Site::new();
        let dir = site.serve_dir(None);
        let h = HeaderMap::new();
        send(&dir.serve(&Method::GET, "/", &h));
    }

    #[tokio::test]
    async fn serves_file_with_type_and_length() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let resp = get(&dir, "/hello.txt", &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header_str(&resp, header::CONTENT_TYPE),
            "text/plain; charset=utf-8"
        );
        assert_eq!(header_str(&resp, header::CONTENT_LENGTH), "11");
        assert_eq!(header_str(&resp, header::ACCEPT_RANGES), "bytes");
        let etag = header_str(&resp, header::ETAG);
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let date = header_str(&resp, header::LAST_MODIFIED);
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(body_text(resp).await, HELLO);
    }

    #[tokio::test]
    async fn unknown_extension_is_octet_stream() {
        let site = Site::new();
        fs::write(site.root().join("blob.unknownext"), [0u8, 1, 2]).unwrap();
        let dir = site.serve_dir(None);
        let resp = get(&dir, "/blob.unknownext", &[]).await;
        assert_eq!(
            header_str(&resp, header::CONTENT_TYPE),
            "application/octet-stream"
        );
    }

    #[tokio::test]
    async fn percent_encoded_name_is_decoded() {
        let site = Site::new();
        fs::write(site.root().join("a b.txt"), "spaced").unwrap();
        let dir = site.serve_dir(None);
        assert_eq!(
            body_text(get(&dir, "/a%20b.txt", &[]).await).await,
            "spaced"
        );
    }

    #[tokio::test]
    async fn large_file_streams_in_full() {
        let site = Site::new();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(site.root().join("big.bin"), &data).unwrap();
        let dir = site.serve_dir(None);
        let resp = get(&dir, "/big.bin", &[]).await;
        assert_eq!(header_str(&resp, header::CONTENT_LENGTH), "200000");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.as_ref(), data.as_slice());
    }

    #[tokio::test]
    async fn head_has_no_body() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let resp = dir
            .serve(&Method::HEAD, "/hello.txt", &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header_str(&resp, header::CONTENT_LENGTH), "11");
        assert_eq!(
            header_str(&resp, header::CONTENT_TYPE),
            "text/plain; charset=utf-8"
        );
        assert!(resp.headers().contains_key(header::ETAG));
        assert_eq!(body_text(resp).await, "");
    }

    #[tokio::test]
    async fn etag_if_none_match_gives_304() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let first = get(&dir, "/hello.txt", &[]).await;
        let etag = header_str(&first, header::ETAG).to_owned();

        // Weak comparison: a W/ form of our tag in a list still matches.
        let list = format!("\"other,tag\", W/{etag}");
        let resp = get(&dir, "/hello.txt", &[(header::IF_NONE_MATCH, &list)]).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header_str(&resp, header::ETAG), etag);
        assert!(resp.headers().contains_key(header::LAST_MODIFIED));
        assert_eq!(body_text(resp).await, "");

        let resp = get(&dir, "/hello.txt", &[(header::IF_NONE_MATCH, "*")]).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

        let resp = get(&dir, "/hello.txt", &[(header::IF_NONE_MATCH, "\"nope\"")]).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn if_none_match_overrides_if_modified_since() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let first = get(&dir, "/hello.txt", &[]).await;
        let date = header_str(&first, header::LAST_MODIFIED).to_owned();
        let resp = get(
            &dir,
            "/hello.txt",
            &[
                (header::IF_NONE_MATCH, "\"nope\""),
                (header::IF_MODIFIED_SINCE, &date),
            ],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn if_modified_since_gives_304() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let first = get(&dir, "/hello.txt", &[]).await;
        let date = header_str(&first, header::LAST_MODIFIED).to_owned();

        let resp = get(&dir, "/hello.txt", &[(header::IF_MODIFIED_SINCE, &date)]).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert!(resp.headers().contains_key(header::ETAG));
        assert_eq!(body_text(resp).await, "");

        let old = "Thu, 01 Jan 1970 00:00:00 GMT";
        let resp = get(&dir, "/hello.txt", &[(header::IF_MODIFIED_SINCE, old)]).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn single_range_gives_206() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let resp = get(&dir, "/hello.txt", &[(header::RANGE, "bytes=0-4")]).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(header_str(&resp, header::CONTENT_RANGE), "bytes 0-4/11");
        assert_eq!(header_str(&resp, header::CONTENT_LENGTH), "5");
        assert_eq!(body_text(resp).await, "hello");

        let resp = get(&dir, "/hello.txt", &[(header::RANGE, "bytes=6-")]).await;
        assert_eq!(header_str(&resp, header::CONTENT_RANGE), "bytes 6-10/11");
        assert_eq!(body_text(resp).await, "world");

        // An end past the file is clamped, not refused.
        let resp = get(&dir, "/hello.txt", &[(header::RANGE, "bytes=6-999")]).await;
        assert_eq!(header_str(&resp, header::CONTENT_RANGE), "bytes 6-10/11");
        assert_eq!(header_str(&resp, header::CONTENT_LENGTH), "5");
    }

    #[tokio::test]
    async fn suffix_range() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let resp = get(&dir, "/hello.txt", &[(header::RANGE, "bytes=-5")]).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(header_str(&resp, header::CONTENT_RANGE), "bytes 6-10/11");
        assert_eq!(body_text(resp).await, "world");

        // A suffix longer than the file means the whole file.
        let resp = get(&dir, "/hello.txt", &[(header::RANGE, "bytes=-100")]).await;
        assert_eq!(header_str(&resp, header::CONTENT_RANGE), "bytes 0-10/11");
        assert_eq!(body_text(resp).await, HELLO);
    }

    #[tokio::test]
    async fn unsatisfiable_range_gives_416() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let h = headers(&[(header::RANGE, "bytes=11-")]);
        let err = dir.serve(&Method::GET, "/hello.txt", &h).await.unwrap_err();
        assert!(
            matches!(err, StaticError::RangeNotSatisfiable { size: 11 }),
            "{err:?}"
        );
        let resp = err.into_response("req-1");
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header_str(&resp, header::CONTENT_RANGE), "bytes */11");
        assert_eq!(
            header_str(&resp, header::CONTENT_TYPE),
            "application/problem+json"
        );
    }

    #[tokio::test]
    async fn multi_range_serves_whole_file() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        for range in ["bytes=0-1,3-4", "bytes=5-3", "bytes=x-", "items=0-1"] {
            let resp = get(&dir, "/hello.txt", &[(header::RANGE, range)]).await;
            assert_eq!(resp.status(), StatusCode::OK, "{range}");
            assert_eq!(body_text(resp).await, HELLO, "{range}");
        }
    }

    #[tokio::test]
    async fn if_range_mismatch_serves_whole_file() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let first = get(&dir, "/hello.txt", &[]).await;
        let etag = header_str(&first, header::ETAG).to_owned();
        let date = header_str(&first, header::LAST_MODIFIED).to_owned();

        for validator in [etag.as_str(), date.as_str()] {
            let h = [(header::RANGE, "bytes=0-4"), (header::IF_RANGE, validator)];
            let resp = get(&dir, "/hello.txt", &h).await;
            assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{validator}");
        }
        let weak = format!("W/{etag}");
        for validator in ["\"stale\"", weak.as_str(), "Thu, 01 Jan 1970 00:00:00 GMT"] {
            let h = [(header::RANGE, "bytes=0-4"), (header::IF_RANGE, validator)];
            let resp = get(&dir, "/hello.txt", &h).await;
            assert_eq!(resp.status(), StatusCode::OK, "{validator}");
        }
    }

    #[tokio::test]
    async fn index_file_for_directory() {
        let site = Site::new();
        fs::create_dir(site.root().join("docs")).unwrap();
        fs::write(site.root().join("docs/index.html"), "<h1>docs</h1>").unwrap();
        fs::write(site.root().join("index.html"), "<h1>home</h1>").unwrap();
        let dir = site.serve_dir(Some("index.html"));

        let resp = get(&dir, "/docs/", &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header_str(&resp, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(body_text(resp).await, "<h1>docs</h1>");

        assert_eq!(body_text(get(&dir, "/", &[]).await).await, "<h1>home</h1>");

        let resp = get(&dir, "/docs", &[]).await;
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(header_str(&resp, header::LOCATION), "./docs/");
    }

    #[tokio::test]
    async fn directory_without_index_is_404() {
        let site = Site::new();
        fs::create_dir(site.root().join("empty")).unwrap();
        let no_index = site.serve_dir(None);
        assert!(matches!(
            get_err(&no_index, "/empty/").await,
            StaticError::NotFound
        ));
        assert!(matches!(
            get_err(&no_index, "/").await,
            StaticError::NotFound
        ));
        let missing_index = site.serve_dir(Some("index.html"));
        assert!(matches!(
            get_err(&missing_index, "/empty/").await,
            StaticError::NotFound
        ));
        assert!(matches!(
            get_err(&missing_index, "/empty").await,
            StaticError::NotFound
        ));
    }

    #[tokio::test]
    async fn dotdot_is_refused() {
        let site = Site::new();
        fs::create_dir(site.root().join("sub")).unwrap();
        let dir = site.serve_dir(None);
        for path in ["/../secret.txt", "/sub/../../secret.txt", "/sub/..", "/.."] {
            assert!(
                matches!(get_err(&dir, path).await, StaticError::Forbidden),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn encoded_dotdot_is_refused() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        for path in [
            "/%2e%2e/secret.txt",
            "/%2E%2e/secret.txt",
            "/.%2E/secret.txt",
            "/..%2fsecret.txt",
            "/%2e%2e%2Fsecret.txt",
            "/x%2f..%2f..%2fsecret.txt",
            "/%2fetc%2fpasswd",
        ] {
            assert!(
                matches!(get_err(&dir, path).await, StaticError::Forbidden),
                "{path}"
            );
        }
        // A malformed escape has no single meaning.
        assert!(matches!(
            get_err(&dir, "/%zz").await,
            StaticError::Forbidden
        ));
        assert!(matches!(get_err(&dir, "/%2").await, StaticError::Forbidden));
    }

    #[tokio::test]
    async fn backslash_is_refused() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        for path in ["/..\\secret.txt", "/%5c..%5csecret.txt", "/a%5Cb"] {
            assert!(
                matches!(get_err(&dir, path).await, StaticError::Forbidden),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn nul_byte_is_refused() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        assert!(matches!(
            get_err(&dir, "/hello.txt%00.png").await,
            StaticError::Forbidden
        ));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlink_outside_root_is_refused() {
        use std::os::unix::fs::symlink;
        let site = Site::new();
        let root = site.root();
        symlink(site.dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
        symlink(site.dir.path(), root.join("up")).unwrap();
        let dir = site.serve_dir(None);
        for path in ["/leak.txt", "/up/secret.txt"] {
            assert!(
                matches!(get_err(&dir, path).await, StaticError::Forbidden),
                "{path}"
            );
        }
        // An index that is a link out of the root is refused too.
        fs::create_dir(root.join("d")).unwrap();
        symlink(
            site.dir.path().join("secret.txt"),
            root.join("d/index.html"),
        )
        .unwrap();
        let with_index = site.serve_dir(Some("index.html"));
        assert!(matches!(
            get_err(&with_index, "/d/").await,
            StaticError::Forbidden
        ));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlink_inside_root_is_served() {
        use std::os::unix::fs::symlink;
        let site = Site::new();
        symlink(site.root().join("hello.txt"), site.root().join("alias.txt")).unwrap();
        let dir = site.serve_dir(None);
        assert_eq!(body_text(get(&dir, "/alias.txt", &[]).await).await, HELLO);
    }

    #[tokio::test]
    async fn post_is_405() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        let err = dir
            .serve(&Method::POST, "/hello.txt", &HeaderMap::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StaticError::MethodNotAllowed), "{err:?}");
        let resp = err.into_response("req-1");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header_str(&resp, header::ALLOW), "GET, HEAD");
    }

    #[tokio::test]
    async fn missing_file_is_404() {
        let site = Site::new();
        let dir = site.serve_dir(None);
        for path in ["/nope.txt", "/hello.txt/more", "/nope/deeper.txt"] {
            assert!(
                matches!(get_err(&dir, path).await, StaticError::NotFound),
                "{path}"
            );
        }
        let resp = get_err(&dir, "/nope.txt").await.into_response("req-9");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
        assert_eq!(v["request_id"], "req-9");
    }

    #[tokio::test]
    async fn io_error_answer_hides_paths() {
        let err = StaticError::Io(io::Error::other("/srv/secret/path exploded"));
        let body = body_text(err.into_response("r")).await;
        assert!(!body.contains("/srv"), "{body}");
    }

    #[test]
    fn bad_root_or_index_is_rejected() {
        let site = Site::new();
        let missing = site.dir.path().join("missing");
        assert!(matches!(
            StaticDir::new(&missing, None),
            Err(StaticError::BadRoot { .. })
        ));
        let file = site.dir.path().join("secret.txt");
        assert!(matches!(
            StaticDir::new(&file, None),
            Err(StaticError::RootNotDirectory { .. })
        ));
        for index in ["", "..", "a/b", "a\\b"] {
            assert!(
                matches!(
                    StaticDir::new(&site.root(), Some(index)),
                    Err(StaticError::BadIndex { .. })
                ),
                "{index:?}"
            );
        }
    }
}
