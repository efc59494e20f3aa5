//! PROXY protocol v1 and v2 headers as a listener reads them: whole or a
//! byte at a time, the verdict is the same, and what follows a header is
//! kept byte for byte. The input's first byte also picks addresses that are
//! encoded and must read back as they were.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use portcullis::net::proxy_protocol::{Version, encode, read_header};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out its bytes one at a time.
struct Trickle<'a>(&'a [u8]);

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some((first, rest)) = self.0.split_first() {
            buf.put_slice(&[*first]);
            self.0 = rest;
        }
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

/// Two addresses of one family, from the input's bytes.
fn addresses(data: &[u8]) -> (SocketAddr, SocketAddr) {
    let mut bytes = [0u8; 36];
    for (slot, b) in bytes.iter_mut().zip(data) {
        *slot = *b;
    }
    let port = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    if bytes[0] & 1 == 0 {
        let ip = |at: usize| {
            IpAddr::V4(Ipv4Addr::new(
                bytes[at],
                bytes[at + 1],
                bytes[at + 2],
                bytes[at + 3],
            ))
        };
        (
            SocketAddr::new(ip(2), port(10)),
            SocketAddr::new(ip(6), port(12)),
        )
    } else {
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        (
            SocketAddr::new(ip(2), port(34)),
            SocketAddr::new(ip(18), port(0)),
        )
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let wait = Duration::from_secs(1);
    runtime().block_on(async {
        // What a read keeps past the header depends on how the bytes came;
        // what it keeps plus what it left unread never does.
        let mut unread = data;
        let whole = read_header(&mut unread, wait).await;
        let mut trickle = Trickle(data);
        let trickled = read_header(&mut trickle, wait).await;
        match (whole, trickled) {
            (Ok((header, kept)), Ok((again, kept_again))) => {
                assert_eq!(header, again, "whole and a byte at a time");
                let after = [&kept[..], unread].concat();
                assert_eq!(after, [&kept_again[..], trickle.0].concat());
                assert!(data.ends_with(&after), "the bytes after the header changed");
            }
            (Err(_), Err(_)) => {}
            (whole, trickled) => panic!("whole: {whole:?}; a byte at a time: {trickled:?}"),
        }

        let (source, destination) = addresses(data);
        for version in [Version::V1, Version::V2] {
            let wire = encode(version, source, destination);
            let (header, rest) = read_header(&mut &wire[..], wait)
                .await
                .unwrap_or_else(|e| panic!("{version:?} {source} {destination}: {e}"));
            assert!(rest.is_empty());
            assert_eq!(header.source, Some(source), "{version:?}");
            assert_eq!(header.destination, Some(destination), "{version:?}");
        }
    });
});
