//! The PROXY protocol (HAProxy's, versions 1 and 2): reading the header an
//! L4 tier in front sends, and writing one to targets.
//!
//! A listener with `proxy_protocol: true` requires the header as the very
//! first bytes of every connection and takes the client address from it, so
//! X-Forwarded-For, `ip_hash`, rate limits and logs all see the original
//! client rather than the load balancer. An upstream with `proxy_protocol:
//! v1|v2` sends one to each target before any payload byte.
//!
//! Parsing is the `ppp` crate's; this module adds the streaming read (bytes
//! arrive in pieces, with a deadline), keeps whatever the client sent after
//! the header, and encodes headers for mixed address families.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Which PROXY protocol version to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text form: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary form, with a 12-byte signature.
    V2,
}

/// What a received header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client, or `None` for v1 `UNKNOWN` and v2 `LOCAL` (health
    /// checks of the sender itself), where the socket's peer stands.
    pub source: Option<SocketAddr>,
    /// The address the client originally connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The bytes are not a PROXY v1 or v2 header.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// The header did not arrive in time.
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// The client closed before a complete header.
    #[error("connection closed before a complete PROXY protocol header")]
    Closed,
    /// Reading failed.
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] io::Error),
}

/// Largest header accepted: the v2 fixed part plus a generous TLV area. The
/// spec allows 64KiB of TLVs, but no sender uses more than a few hundred
/// bytes, and a cap bounds what a hostile peer can make us buffer.
const MAX_HEADER: usize = 16 + 4096;

/// Outcome of looking at the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes.
    Done(ProxyHeader, usize),
}

/// Longest v1 header, `\r\n` included.
const MAX_V1: usize = 107;

fn parse(mut buf: &[u8]) -> Result<Parsed, ProxyError> {
    // ppp judges some cut-off v1 lines as complete (an empty port is
    // "invalid", not "missing"), and reads past a bare LF looking for a
    // CRLF, so its verdict could depend on how the bytes arrived. A v1 line
    // is parsed once its first LF has arrived, alone, and only when a CR
    // precedes that LF (found by fuzzing: `… 56324 \n4\r\r\n` was refused
    // whole and accepted a byte at a time).
    if buf.starts_with(b"PROXY ") {
        match buf.iter().take(MAX_V1).position(|b| *b == b'\n') {
            None if buf.len() < MAX_V1 => return Ok(Parsed::Incomplete),
            None => {}
            // lf >= 6: the line starts with "PROXY ".
            Some(lf) if buf[lf - 1] != b'\r' => {
                return Err(ProxyError::Malformed(
                    "the v1 header does not end in CRLF".into(),
                ));
            }
            Some(lf) => buf = &buf[..=lf],
        }
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Ok(Parsed::Incomplete);
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            let destination = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
                v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Done(
                ProxyHeader {
                    source,
                    destination,
                },
                h.header.len(),
            ))
        }
        HeaderResult::V2(Ok(h)) => {
            let (source, destination) = match (h.command, h.addresses) {
                // LOCAL: the sender speaks for itself (its own health checks).
                (v2::Command::Local, _) => (None, None),
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => (
                    Some(SocketAddr::from((a.source_address, a.source_port))),
                    Some(SocketAddr::from((
                        a.destination_address,
                        a.destination_port,
                    ))),
                ),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => (
                    Some(SocketAddr::from((a.source_address, a.source_port))),
                    Some(SocketAddr::from((
                        a.destination_address,
                        a.destination_port,
                    ))),
                ),
                // Unix sockets and unspecified families carry no IP address.
                (v2::Command::Proxy, _) => (None, None),
            };
            Ok(Parsed::Done(
                ProxyHeader {
                    source,
                    destination,
                },
                h.len(),
            ))
        }
        HeaderResult::V1(Err(e)) => Err(ProxyError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Malformed(e.to_string())),
    }
}

/// Reads a PROXY v1 or v2 header from `stream` within `timeout`. Returns the
/// header and the bytes read past it, which belong to the payload and must be
/// served before the rest of the stream (see [`Prefixed`]).
pub async fn read_header<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(ProxyHeader, Vec<u8>), ProxyError>
where
    S: AsyncRead + Unpin,
{
    let read = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            // Read in small steps: most headers are complete after the first.
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ProxyError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse(&buf)? {
                Parsed::Done(header, len) => {
                    buf.drain(..len);
                    return Ok((header, buf));
                }
                Parsed::Incomplete if buf.len() >= MAX_HEADER => {
                    return Err(ProxyError::Malformed("header too long".into()));
                }
                Parsed::Incomplete => {}
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::Timeout(timeout)),
    }
}

/// v1 and v2 want both addresses in one family; a v4 address next to a v6
/// one is written in its v4-mapped v6 form.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::from((ip.to_ipv6_mapped(), a.port())),
        IpAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

/// The header that tells a target that `source` connected to `destination`.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let addresses = v2::Addresses::from((source, destination));
            let family = if source.is_ipv4() {
                v2::AddressFamily::IPv4
            } else {
                v2::AddressFamily::IPv6
            };
            let built = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                addresses,
            )
            .build();
            match built {
                Ok(bytes) => bytes,
                // The builder only fails past 64KiB of payload; without TLVs
                // that cannot happen, but a hand-built header is easy.
                Err(_) => encode_v2_by_hand(family, source, destination),
            }
        }
    }
}

/// A header that carries no client: v1 `UNKNOWN`, v2 `LOCAL`. The sender's
/// own connections (health checks) use it; the receiver keeps the socket's
/// peer address.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            // Version 2, command LOCAL; family and protocol UNSPEC; no addresses.
            out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            out
        }
    }
}

/// The twelve bytes every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

fn encode_v2_by_hand(
    family: v2::AddressFamily,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let mut out = Vec::from(v2::PROTOCOL_PREFIX);
    out.push(0x21);
    out.push(if family == v2::AddressFamily::IPv4 {
        0x11
    } else {
        0x21
    });
    let mut body = Vec::new();
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
        }
        (s, d) => {
            body.extend_from_slice(&to_v6(s).octets());
            body.extend_from_slice(&to_v6(d).octets());
        }
    }
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A stream that first yields bytes already read from it (past a PROXY
/// header, or a peeked TLS ClientHello), then the stream itself.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Serves `prefix` before reading from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream alone when no prefix is left to serve.
    pub fn into_unprefixed(self) -> Result<S, Self> {
        if self.pos >= self.prefix.len() {
            Ok(self.inner)
        } else {
            Err(self)
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Give the memory back once the prefix is served.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_headers_parse_without_addresses() {
        for version in [Version::V1, Version::V2] {
            let bytes = encode_local(version);
            let Parsed::Done(h, len) = parse(&bytes).unwrap() else {
                panic!("incomplete {version:?}");
            };
            assert_eq!(len, bytes.len());
            assert_eq!(h.source, None);
        }
    }

    #[test]
    fn v1_round_trips_ipv4_and_ipv6() {
        for (src, dst) in [
            ("192.0.2.7:51000", "10.0.0.1:443"),
            ("[2001:db8::7]:51000", "[2001:db8::1]:443"),
        ] {
            let bytes = encode(Version::V1, addr(src), addr(dst));
            assert!(bytes.starts_with(b"PROXY TCP"));
            let Parsed::Done(h, len) = parse(&bytes).unwrap() else {
                panic!("incomplete");
            };
            assert_eq!(len, bytes.len());
            assert_eq!(h.source, Some(addr(src)));
            assert_eq!(h.destination, Some(addr(dst)));
        }
    }

    #[test]
    fn v2_round_trips_ipv4_and_ipv6() {
        for (src, dst) in [
            ("192.0.2.7:51000", "10.0.0.1:443"),
            ("[2001:db8::7]:51000", "[2001:db8::1]:443"),
        ] {
            let bytes = encode(Version::V2, addr(src), addr(dst));
            assert!(bytes.starts_with(v2::PROTOCOL_PREFIX));
            let Parsed::Done(h, len) = parse(&bytes).unwrap() else {
                panic!("incomplete");
            };
            assert_eq!(len, bytes.len());
            assert_eq!(h.source, Some(addr(src)));
        }
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        for v in [Version::V1, Version::V2] {
            let bytes = encode(v, addr("192.0.2.7:5"), addr("[2001:db8::1]:443"));
            let Parsed::Done(h, _) = parse(&bytes).unwrap() else {
                panic!("incomplete");
            };
            let src = h.source.unwrap();
            assert_eq!(src.port(), 5);
            assert_eq!(src.ip().to_canonical(), addr("192.0.2.7:5").ip());
        }
    }

    #[test]
    fn hand_built_v2_matches_the_builder() {
        for (src, dst) in [
            ("192.0.2.7:51000", "10.0.0.1:443"),
            ("[2001:db8::7]:51000", "[2001:db8::1]:443"),
        ] {
            let family = if addr(src).is_ipv4() {
                v2::AddressFamily::IPv4
            } else {
                v2::AddressFamily::IPv6
            };
            assert_eq!(
                encode_v2_by_hand(family, addr(src), addr(dst)),
                encode(Version::V2, addr(src), addr(dst))
            );
        }
    }

    #[test]
    fn unknown_and_local_keep_the_socket_peer() {
        let Parsed::Done(h, 15) = parse(b"PROXY UNKNOWN\r\n").unwrap() else {
            panic!("v1 UNKNOWN not parsed");
        };
        assert_eq!(h.source, None);
        let mut local = Vec::from(v2::PROTOCOL_PREFIX);
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        let Parsed::Done(h, 16) = parse(&local).unwrap() else {
            panic!("v2 LOCAL not parsed");
        };
        assert_eq!(h.source, None);
    }

    #[test]
    fn partial_headers_ask_for_more() {
        let v1 = encode(Version::V1, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        let v2 = encode(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        for bytes in [&v1, &v2] {
            for cut in 1..bytes.len() {
                assert_eq!(
                    parse(&bytes[..cut]).unwrap(),
                    Parsed::Incomplete,
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
            b"PROXY TCP4 nonsense 5.6.7.8 80 90\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 80 90\r\n",
            b"\x16\x03\x01\x00\x05hello",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut bad_v2 = Vec::from(v2::PROTOCOL_PREFIX);
        bad_v2.extend_from_slice(&[0x31, 0x11, 0, 12]);
        bad_v2.extend_from_slice(&[0; 12]);
        assert!(matches!(parse(&bad_v2), Err(ProxyError::Malformed(_))));
    }

    #[test]
    fn a_v1_line_is_judged_the_same_whole_or_in_pieces() {
        // A fuzzing find: refused whole, accepted when read a byte at a time.
        for wire in [
            &b"PROXY TCP4 192.168.0.1 10.0.0.1 5632 56324 \n4\r\r\n"[..],
            b"PROXY TCP4 192.168.0.1 10.0.0.1 1 2\n\r\n",
            b"PROXY TCP4 192.168.0.1 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n",
        ] {
            let whole = parse(wire).map_err(|e| e.to_string());
            for cut in 1..wire.len() {
                match parse(&wire[..cut]) {
                    Ok(Parsed::Incomplete) => {}
                    prefix => assert_eq!(
                        prefix.map_err(|e| e.to_string()),
                        whole,
                        "{:?} cut at {cut}",
                        String::from_utf8_lossy(wire)
                    ),
                }
            }
        }
    }

    #[tokio::test]
    async fn read_header_keeps_the_payload_after_the_header() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let header = encode(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        tokio::spawn(async move {
            // Byte by byte, as a slow sender would split it.
            for byte in &header {
                a.write_all(&[*byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            a.write_all(b"hello").await.unwrap();
        });
        let (h, rest) = read_header(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h.source, Some(addr("192.0.2.7:1")));
        let mut stream = Prefixed::new(rest, b);
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn read_header_times_out_and_notices_close() {
        let (_a, mut b) = tokio::io::duplex(64);
        let e = read_header(&mut b, Duration::from_millis(50)).await;
        assert!(matches!(e, Err(ProxyError::Timeout(_))));
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let e = read_header(&mut b, Duration::from_millis(50)).await;
        assert!(matches!(e, Err(ProxyError::Closed)));
    }
}
