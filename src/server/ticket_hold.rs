//! Sending a TLS 1.3 server's session tickets with its first answer.
//!
//! A TLS 1.3 server sends its session tickets once it has read the client's
//! `Finished`, which arrives together with the first request: the ticket
//! goes out alone, and the answer a moment later in a second packet that the
//! client reads separately. Held back until the answer is written, the
//! tickets leave in the same write as the answer (one packet, one read for
//! the client), which counts when every request comes on a new connection.
//!
//! [`TicketHold`] wraps the socket under the TLS layer for the handshake.
//! While holding, a write made only of encrypted records (content type 23)
//! is kept: during a TLS 1.3 handshake that is what follows the server's
//! first flight (which begins with a plaintext ServerHello), that is, the
//! tickets, or an encrypted alert when the handshake fails. TLS 1.2 flights
//! always hold a plaintext handshake record and pass straight through.
//! [`TicketHold::release`] ends holding once the handshake is over; what is
//! held then leaves in front of the next write, or at the next flush.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// TLS record content type of encrypted (application data) records.
const ENCRYPTED: u8 = 23;
/// Length of a TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// Most slices a vectored write sends after the held bytes at once.
const MAX_SLICES: usize = 16;

/// A stream that holds back the session tickets written during the TLS
/// handshake; see the module documentation.
pub struct TicketHold<S> {
    inner: S,
    held: Vec<u8>,
    holding: bool,
}

impl<S> TicketHold<S> {
    /// Wraps `inner`, holding from the start.
    pub fn new(inner: S) -> TicketHold<S> {
        TicketHold {
            inner,
            held: Vec::new(),
            holding: true,
        }
    }

    /// Ends holding: held bytes go out in front of the next write, or at the
    /// next flush.
    pub fn release(&mut self) {
        self.holding = false;
    }
}

/// Whether `buf` is one or more whole TLS records, all encrypted.
fn only_encrypted_records(buf: &[u8]) -> bool {
    let mut rest = buf;
    while !rest.is_empty() {
        let Some(header) = rest.get(..RECORD_HEADER) else {
            return false;
        };
        if header[0] != ENCRYPTED {
            return false;
        }
        let len = RECORD_HEADER + usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(after) = rest.get(len..) else {
            return false;
        };
        rest = after;
    }
    !buf.is_empty()
}

impl<S: AsyncWrite + Unpin> TicketHold<S> {
    /// Drops the first `n` held bytes; once none are left, their buffer too
    /// (a connection keeps this wrapper for its whole life).
    fn sent(&mut self, n: usize) {
        if n >= self.held.len() {
            self.held = Vec::new();
        } else {
            self.held.drain(..n);
        }
    }

    /// Writes what is held, alone.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what is held followed by `bufs` in one vectored write; the
    /// answer counts only bytes of `bufs`. Once the held bytes are out, the
    /// rest is a plain write.
    fn poll_write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        while !self.held.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES + 1];
            slices[0] = IoSlice::new(&self.held);
            let count = bufs.len().min(MAX_SLICES);
            slices[1..=count].copy_from_slice(&bufs[..count]);
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..=count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let held = self.held.len();
            self.sent(n);
            if n > held {
                return Poll::Ready(Ok(n - held));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TicketHold<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TicketHold<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // The TLS layer writes whole records, each in a slice of its own.
        if this.holding && bufs.iter().all(|b| only_encrypted_records(b)) {
            let mut total = 0;
            for b in bufs {
                this.held.extend_from_slice(b);
                total += b.len();
            }
            return Poll::Ready(Ok(total));
        }
        if this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.poll_write_after_held(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.holding {
            ready!(this.poll_write_held(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.holding = false;
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn only_whole_encrypted_records_count() {
        let ticket = record(23, b"ticket");
        let two = [ticket.clone(), record(23, b"another")].concat();
        assert!(only_encrypted_records(&ticket));
        assert!(only_encrypted_records(&two));
        assert!(!only_encrypted_records(&[]));
        assert!(!only_encrypted_records(&ticket[..ticket.len() - 1]));
        assert!(!only_encrypted_records(&ticket[..3]));
        let flight = [record(22, b"server hello"), record(23, b"finished")].concat();
        assert!(!only_encrypted_records(&flight));
        assert!(!only_encrypted_records(&record(21, b"alert")));
    }

    #[tokio::test]
    async fn tickets_leave_with_the_first_answer() {
        let (near, mut far) = duplex(4096);
        let mut io = TicketHold::new(near);
        let hello = [record(22, b"server hello"), record(23, b"finished")].concat();
        io.write_all(&hello).await.unwrap();
        io.flush().await.unwrap();
        let mut got = vec![0; hello.len()];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, hello, "the first flight passes at once");

        let ticket = record(23, b"ticket");
        io.write_all(&ticket).await.unwrap();
        io.flush().await.unwrap();
        let mut probe = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut probe)).await;
        assert!(early.is_err(), "the ticket left before the answer");

        io.release();
        let answer = record(23, b"HTTP/1.1 200 OK");
        io.write_all(&answer).await.unwrap();
        io.flush().await.unwrap();
        let mut got = vec![0; ticket.len() + answer.len()];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [ticket, answer].concat());
        assert_eq!(io.held.capacity(), 0, "the connection keeps the buffer");
    }

    #[tokio::test]
    async fn held_bytes_leave_at_a_flush_or_shutdown_after_release() {
        let (near, mut far) = duplex(4096);
        let mut io = TicketHold::new(near);
        let alert = record(23, b"encrypted alert");
        io.write_all(&alert).await.unwrap();
        io.release();
        io.flush().await.unwrap();
        let mut got = vec![0; alert.len()];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, alert);

        let (near, mut far) = duplex(4096);
        let mut io = TicketHold::new(near);
        io.write_all(&alert).await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, alert);
    }

    #[tokio::test]
    async fn a_short_write_keeps_the_order() {
        // A pipe with room for 8 bytes at a time forces partial writes of
        // the held bytes and of the answer.
        let (near, mut far) = duplex(8);
        let mut io = TicketHold::new(near);
        let ticket = record(23, b"a ticket of some length");
        io.write_all(&ticket).await.unwrap();
        io.release();
        let answer = record(23, b"and an answer after it");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        io.write_all(&answer).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap(), [ticket, answer].concat());
    }
}
