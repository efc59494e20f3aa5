//! The one backend of the side-by-side benchmark (`bash bench/run.sh`): a tiny
//! keep-alive HTTP server that every proxy, and the direct baseline, talks to.
//!
//! A path ending in `/big` (`/big`, `/v1/users/big`) answers 1 MiB, one
//! ending in `/json` a JSON document of about 100 bytes (for
//! `bench/aggregate.sh`), one ending in `/kib` 1 KiB of text fresh for an
//! hour (`Cache-Control: max-age=3600`, for the cache scenario), one ending
//! in `/json100k` about 100 KiB of JSON (for the compression scenario);
//! every other request answers the same 100-byte body. HTTP/1.1 and HTTP/2 (h2c with prior knowledge) share the plain
//! port; with `--tls-listen`, `--cert` and `--key` a second port speaks
//! TLS 1.3 with ALPN `h2` and `http/1.1`, so the TLS scenarios have a
//! direct baseline too.
//!
//! ```sh
//! cargo run --release --example bench_backend -- --listen 127.0.0.1:18080
//! ```
//!
//! The runtime has as many worker threads as the CPUs the process may run on,
//! so `taskset` decides its size, as it does for the proxies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// The small answer: 100 bytes, newline included.
/// The answer to a path ending in `/json`: about 100 bytes of JSON.
const JSON: &[u8] =
    b"{\"id\":42,\"name\":\"portcullis bench\",\"tags\":[\"a\",\"b\",\"c\"],\"ok\":true,\"note\":\"one hundred bytes.\"}\n";

const SMALL: &[u8] =
    b"portcullis bench backend: a small answer of one hundred bytes, the same for every request here.....\n";

/// Size of the answer to a path ending in `/big`.
const BIG_LEN: usize = 1024 * 1024;

struct Args {
    listen: SocketAddr,
    tls_listen: Option<SocketAddr>,
    cert: Option<String>,
    key: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_backend --listen IP:PORT [--tls-listen IP:PORT --cert CERT.pem --key KEY.pem]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut listen = None;
    let mut tls_listen = None;
    let mut cert = None;
    let mut key = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().unwrap_or_else(|_| usage())),
            "--tls-listen" => tls_listen = Some(value.parse().unwrap_or_else(|_| usage())),
            "--cert" => cert = Some(value),
            "--key" => key = Some(value),
            _ => usage(),
        }
    }
    let Some(listen) = listen else { usage() };
    if tls_listen.is_some() && (cert.is_none() || key.is_none()) {
        usage()
    }
    Args {
        listen,
        tls_listen,
        cert,
        key,
    }
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// About 100 KiB of JSON: an array of records such as an API lists.
fn json_100k() -> Bytes {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < 100 * 1024 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":{i},\"name\":\"customer {i}\",\"email\":\"customer{i}@example.com\",\"plan\":\"{}\",\"active\":{},\"balance\":{}.{:02}}}",
            ["free", "team", "enterprise"][i % 3],
            i % 7 != 0,
            (i * 37) % 1000,
            i % 100
        ));
        i += 1;
    }
    out.push(']');
    Bytes::from(out)
}

async fn answer(req: Request<Incoming>, big: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    static KIB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    static JSON_100K: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let path = req.uri().path();
    if path.ends_with("/kib") {
        let body = KIB.get_or_init(|| Bytes::from(vec![b'k'; 1024])).clone();
        let mut resp = Response::new(Full::new(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("max-age=3600"),
        );
        return Ok(resp);
    }
    let (body, ctype) = if path.ends_with("/big") {
        (big, "text/plain")
    } else if path.ends_with("/json100k") {
        (JSON_100K.get_or_init(json_100k).clone(), "application/json")
    } else if path.ends_with("/json") {
        (Bytes::from_static(JSON), "application/json")
    } else {
        (Bytes::from_static(SMALL), "text/plain")
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

async fn serve_plain(listener: TcpListener, big: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let big = big.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, big.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, big: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let big = big.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |req| answer(req, big.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let big = Bytes::from(vec![b'x'; BIG_LEN]);
    let plain = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench_backend: cannot listen on {}: {e}", args.listen);
            std::process::exit(1)
        }
    };
    if let (Some(addr), Some(cert), Some(key)) = (args.tls_listen, &args.cert, &args.key) {
        let acceptor = match tls_acceptor(cert, key) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bench_backend: TLS: {e}");
                std::process::exit(1)
            }
        };
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(serve_tls(l, acceptor, big.clone()));
            }
            Err(e) => {
                eprintln!("bench_backend: cannot listen on {addr}: {e}");
                std::process::exit(1)
            }
        }
    }
    eprintln!("bench_backend: listening on {}", args.listen);
    serve_plain(plain, big).await;
}
