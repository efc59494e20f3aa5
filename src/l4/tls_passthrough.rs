//! `protocol: tls` listeners: read the server name from the client's TLS
//! ClientHello without decrypting anything, pick the upstream by that name,
//! and forward the untouched bytes, so the client completes its handshake
//! with the backend's own certificate.
//!
//! The ClientHello may arrive in several TCP segments, or (with large key
//! shares) in several TLS records; bytes are read until the whole handshake
//! message is there, and every byte read is replayed to the target first.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{SniRoutes, connect, relay};

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet.
    Incomplete,
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
    /// A complete ClientHello and the server name it asks for, lower-cased.
    Complete(Option<String>),
}

/// Largest record payload TLS allows (2^14) plus the expansion a TLS 1.2
/// record may carry; anything longer is not TLS.
const MAX_RECORD: usize = 16384 + 2048;
/// Most ClientHello bytes buffered before giving up: post-quantum key shares
/// make hellos of a few KiB common, tens of KiB are not seen in practice.
const MAX_HELLO: usize = 64 * 1024;

/// Reads the server name from the start of a TLS connection in `buf`.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    // Reassemble the handshake message from the records seen so far.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return Hello::Incomplete;
        };
        // 22 = handshake record; major version 3 for SSL 3.0 and every TLS.
        if header[0] != 22 || header[1] != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Hello::NotTls;
        }
        let Some(payload) = buf.get(at + 5..at + 5 + len) else {
            return Hello::Incomplete;
        };
        handshake.extend_from_slice(payload);
        at += 5 + len;
        if handshake.len() < 4 {
            continue;
        }
        // 1 = ClientHello.
        if handshake[0] != 1 {
            return Hello::NotTls;
        }
        let body_len = usize::from(handshake[1]) << 16
            | usize::from(handshake[2]) << 8
            | usize::from(handshake[3]);
        if body_len > MAX_HELLO {
            return Hello::NotTls;
        }
        if handshake.len() >= 4 + body_len {
            return match server_name(&handshake[4..4 + body_len]) {
                Some(sni) => Hello::Complete(sni),
                None => Hello::NotTls,
            };
        }
    }
}

/// A cursor over a byte slice that fails (returns None) instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// The host name of the server_name extension of a ClientHello body:
/// `Some(None)` when the hello has no such extension, `None` when malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        // SSL 3.0-style hello without extensions.
        return Some(None);
    }
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut names = Reader(Reader(data).vec16()?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            // 0 = host_name, the only type defined.
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty() || !name.is_ascii() {
                    return None;
                }
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Why a ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The client did not send a complete ClientHello in time.
    #[error("no complete TLS ClientHello within {0:?}")]
    Timeout(Duration),
    /// The bytes are not TLS.
    #[error("the client did not start a TLS handshake")]
    NotTls,
    /// The client closed first, or reading failed.
    #[error("reading the ClientHello failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads from `stream` until a whole ClientHello is buffered; returns its
/// server name and every byte read (to be sent to the target first).
pub async fn read_client_hello<S>(
    stream: &mut S,
    mut buf: Vec<u8>,
    timeout: Duration,
) -> Result<(Option<String>, Vec<u8>), HelloError>
where
    S: AsyncRead + Unpin,
{
    let read = async {
        loop {
            match parse_client_hello(&buf) {
                Hello::Complete(sni) => return Ok(sni),
                Hello::NotTls => return Err(HelloError::NotTls),
                Hello::Incomplete if buf.len() > MAX_HELLO + 5 * 8 => {
                    return Err(HelloError::NotTls);
                }
                Hello::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HelloError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(sni)) => Ok((sni, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HelloError::Timeout(timeout)),
    }
}

/// Serves one client connection of a `tls` listener: routes it by SNI and
/// relays it untouched. `hello_timeout` bounds the wait for the ClientHello.
pub async fn serve<S>(
    mut stream: S,
    client: SocketAddr,
    destination: SocketAddr,
    routes: &SniRoutes,
    hello_timeout: Duration,
    listener: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sni, hello) = match read_client_hello(&mut stream, Vec::new(), hello_timeout).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%listener, %client, error = %e, "closing a TLS passthrough connection");
            return;
        }
    };
    let Some(upstream) = routes.route(sni.as_deref()) else {
        tracing::debug!(%listener, %client, sni = ?sni, "no upstream for this server name; closing");
        return;
    };
    let (mut target, _lease) = match connect(upstream, client, destination).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%listener, upstream = %upstream.name, %client, error = %e, "closing a TLS passthrough connection");
            return;
        }
    };
    if let Err(e) = target.write_all(&hello).await {
        tracing::debug!(%listener, %client, error = %e, "forwarding the ClientHello failed");
        return;
    }
    drop(hello);
    if let Err(e) = relay(stream, target, upstream.l4.idle_timeout).await {
        tracing::debug!(%listener, %client, error = %e, "TLS passthrough connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls writes it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let hello = client_hello("DB.Example.com");
        assert_eq!(
            parse_client_hello(&hello),
            Hello::Complete(Some("db.example.com".into()))
        );
    }

    #[test]
    fn every_prefix_of_a_hello_asks_for_more() {
        let hello = client_hello("a.test");
        for cut in 0..hello.len() {
            assert_eq!(
                parse_client_hello(&hello[..cut]),
                Hello::Incomplete,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_hello_split_over_two_records_is_reassembled() {
        let hello = client_hello("split.test");
        let payload = &hello[5..];
        let (a, b) = payload.split_at(payload.len() / 2);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[22, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(
            parse_client_hello(&two),
            Hello::Complete(Some("split.test".into()))
        );
    }

    #[test]
    fn a_hello_without_sni_has_no_name() {
        // An IP address as server name makes rustls leave SNI out.
        let hello = {
            use std::sync::Arc;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let server = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
            let mut out = Vec::new();
            conn.write_tls(&mut out).unwrap();
            out
        };
        assert_eq!(parse_client_hello(&hello), Hello::Complete(None));
    }

    #[test]
    fn other_protocols_and_garbage_are_not_tls() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse_client_hello(b"SSH-2.0-OpenSSH"), Hello::NotTls);
        // A handshake record that is not a ClientHello (a ServerHello).
        assert_eq!(
            parse_client_hello(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            Hello::NotTls
        );
        // A ClientHello whose inner lengths run past its end.
        assert_eq!(
            parse_client_hello(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0xff, 0xff]),
            Hello::NotTls
        );
    }

    #[tokio::test]
    async fn read_client_hello_waits_for_segments() {
        use tokio::io::AsyncWriteExt;
        let hello = client_hello("slow.test");
        let (mut a, mut b) = tokio::io::duplex(65536);
        let sent = hello.clone();
        tokio::spawn(async move {
            for piece in sent.chunks(7) {
                a.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            a.write_all(b"more").await.unwrap();
        });
        let (sni, buf) = read_client_hello(&mut b, Vec::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(sni.as_deref(), Some("slow.test"));
        assert!(buf.starts_with(&hello));
    }
}
