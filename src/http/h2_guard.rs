//! Flood limits for HTTP/2 clients (the CVE-2019-9512..9518 family and
//! CVE-2023-44487, "rapid reset"): the frames a client sends are counted
//! by type as they pass on their way to the HTTP/2 library, per second and
//! per client address across all its connections. A client past a limit
//! gets GOAWAY with ENHANCE_YOUR_CALM, its connection is closed, and its
//! address is refused new connections for the `penalty` (so reconnecting
//! does not reset the count).
//!
//! Only frame headers are read (9 bytes per frame); payloads pass
//! untouched. Counts are kept in the connection and added to its
//! address's once per second and when it closes, so a busy connection
//! takes the shared table's lock about once a second.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::now_ms;

/// The client connection preface, which comes before the first frame.
const PREFACE_LEN: usize = 24;
/// The window the limits count in.
const WINDOW_MS: u64 = 1000;
/// The table forgets an address this long after its last flush.
const FORGET_MS: u64 = 60_000;
/// GOAWAY, last stream 0x7fffffff, ENHANCE_YOUR_CALM (RFC 9113 §7: 0xb).
const GOAWAY_CALM: [u8; 17] = [
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0xb,
];

/// Frames per second a client address may send, summed over its
/// connections; past one of them, GOAWAY ENHANCE_YOUR_CALM and `penalty`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodLimits {
    /// RST_STREAM frames.
    pub resets: u32,
    /// PING frames (not acknowledgements).
    pub pings: u32,
    /// SETTINGS frames (not acknowledgements).
    pub settings: u32,
    /// WINDOW_UPDATE frames.
    pub window_updates: u32,
    /// DATA, HEADERS and CONTINUATION frames with nothing in them and no
    /// END_STREAM.
    pub empty_frames: u32,
    /// How long an address that crossed a limit is refused.
    pub penalty: Duration,
}

impl Default for FloodLimits {
    fn default() -> FloodLimits {
        FloodLimits {
            resets: 200,
            pings: 50,
            settings: 50,
            window_updates: 2000,
            empty_frames: 200,
            penalty: Duration::from_secs(10),
        }
    }
}

/// The frame kinds counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// RST_STREAM.
    Resets,
    /// PING.
    Pings,
    /// SETTINGS.
    Settings,
    /// WINDOW_UPDATE.
    WindowUpdates,
    /// Empty DATA/HEADERS/CONTINUATION.
    EmptyFrames,
}

impl Flood {
    /// The metric's and the log's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Flood::Resets => "rst_stream",
            Flood::Pings => "ping",
            Flood::Settings => "settings",
            Flood::WindowUpdates => "window_update",
            Flood::EmptyFrames => "empty_frames",
        }
    }

    const ALL: [Flood; 5] = [
        Flood::Resets,
        Flood::Pings,
        Flood::Settings,
        Flood::WindowUpdates,
        Flood::EmptyFrames,
    ];

    fn limit(self, limits: &FloodLimits) -> u32 {
        match self {
            Flood::Resets => limits.resets,
            Flood::Pings => limits.pings,
            Flood::Settings => limits.settings,
            Flood::WindowUpdates => limits.window_updates,
            Flood::EmptyFrames => limits.empty_frames,
        }
    }
}

/// Counts of one window, by [`Flood`] kind.
#[derive(Clone, Copy, Default, Debug)]
struct Counts([u32; 5]);

impl Counts {
    fn add(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    /// The first kind past its limit.
    fn over(&self, limits: &FloodLimits) -> Option<Flood> {
        Flood::ALL
            .into_iter()
            .find(|k| self.0[*k as usize] > k.limit(limits))
    }
}

/// Every client address's recent frame counts and penalties.
#[derive(Default)]
pub struct FloodTable {
    by_ip: Mutex<HashMap<IpAddr, AddressCounts>>,
    /// When the last penalty given ends: before then, new connections look
    /// their address up; after, none is penalized and none needs to.
    penalties_until: AtomicU64,
}

struct AddressCounts {
    window_start: u64,
    counts: Counts,
    penalty_until: u64,
    last_seen: u64,
}

impl FloodTable {
    /// Whether `ip` is serving a penalty now.
    pub fn penalized(&self, ip: IpAddr) -> bool {
        let now = now_ms();
        if self.penalties_until.load(Ordering::Relaxed) <= now {
            return false;
        }
        crate::lock(&self.by_ip)
            .get(&ip)
            .is_some_and(|a| a.penalty_until > now)
    }

    /// Adds a connection's counts of the window begun at `window_start` to
    /// its address's; the kind now past its limit, if any (the address is
    /// then penalized).
    fn flush(
        &self,
        ip: IpAddr,
        window_start: u64,
        counts: &Counts,
        limits: &FloodLimits,
        now: u64,
    ) -> Option<Flood> {
        let mut table = crate::lock(&self.by_ip);
        if table.len() >= 1024 {
            table.retain(|_, a| {
                a.penalty_until > now || a.last_seen.saturating_add(FORGET_MS) > now
            });
        }
        let entry = table.entry(ip).or_insert(AddressCounts {
            window_start,
            counts: Counts::default(),
            penalty_until: 0,
            last_seen: now,
        });
        entry.last_seen = now;
        if window_start >= entry.window_start.saturating_add(WINDOW_MS) {
            entry.window_start = window_start;
            entry.counts = Counts::default();
        }
        entry.counts.add(counts);
        let over = entry.counts.over(limits);
        if over.is_some() {
            entry.penalty_until = now.saturating_add(limits.penalty.as_millis() as u64);
            self.penalties_until
                .fetch_max(entry.penalty_until, Ordering::Relaxed);
        }
        over
    }
}

/// Reads frame headers off a byte stream.
#[derive(Default)]
struct FrameReader {
    /// Bytes of the preface still to pass.
    preface: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    head: [u8; 9],
    have: usize,
}

impl FrameReader {
    /// Feeds `bytes`, calling `frame(type, flags, payload length)` for each
    /// frame header completed.
    fn feed(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8, usize)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.have = 0;
                    let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                    self.skip = len as usize;
                    frame(self.head[3], self.head[4], len as usize);
                }
            }
        }
    }

    /// Whether the stream is between frames.
    fn at_boundary(&self) -> bool {
        self.preface == 0 && self.skip == 0 && self.have == 0
    }
}

/// A client connection's byte stream, its HTTP/2 frames counted.
pub struct FrameGuard<I> {
    io: I,
    ip: IpAddr,
    limits: FloodLimits,
    table: Arc<FloodTable>,
    inbound: FrameReader,
    /// Follows the gateway's own frames, so that GOAWAY goes in between two.
    outbound: FrameReader,
    window_start: u64,
    counts: Counts,
    /// Set once a limit was crossed: send GOAWAY, then end the connection.
    calm: Option<Flood>,
    goaway_sent: usize,
    /// Called once when a limit is crossed.
    on_flood: Option<Box<dyn FnOnce(Flood) + Send>>,
}

impl<I> FrameGuard<I> {
    /// Guards `io` from a client at `ip`, whose first bytes are the client
    /// connection preface. `on_flood` hears which limit it crossed.
    pub fn new(
        io: I,
        ip: IpAddr,
        limits: FloodLimits,
        table: Arc<FloodTable>,
        on_flood: Box<dyn FnOnce(Flood) + Send>,
    ) -> FrameGuard<I> {
        FrameGuard {
            io,
            ip,
            limits,
            table,
            inbound: FrameReader {
                preface: PREFACE_LEN,
                ..FrameReader::default()
            },
            outbound: FrameReader::default(),
            window_start: now_ms(),
            counts: Counts::default(),
            calm: None,
            goaway_sent: 0,
            on_flood: Some(on_flood),
        }
    }

    /// Counts the frames in `bytes` just read; sets `calm` past a limit.
    fn count(&mut self, bytes: &[u8]) {
        let counts = &mut self.counts;
        self.inbound.feed(bytes, |kind, flags, len| {
            let counted = match kind {
                0x3 => Some(Flood::Resets),
                0x6 if flags & 0x1 == 0 => Some(Flood::Pings),
                0x4 if flags & 0x1 == 0 => Some(Flood::Settings),
                0x8 => Some(Flood::WindowUpdates),
                // END_STREAM (0x1) makes an empty DATA or HEADERS useful.
                0x0 | 0x1 if len == 0 && flags & 0x1 == 0 => Some(Flood::EmptyFrames),
                0x9 if len == 0 => Some(Flood::EmptyFrames),
                _ => None,
            };
            if let Some(k) = counted {
                counts.0[k as usize] = counts.0[k as usize].saturating_add(1);
            }
        });
        let now = now_ms();
        let rolled = now >= self.window_start.saturating_add(WINDOW_MS);
        if rolled || self.counts.over(&self.limits).is_some() {
            self.flush(now);
            if rolled {
                self.window_start = now;
            }
        }
    }

    /// Adds this connection's counts to its address's.
    fn flush(&mut self, now: u64) {
        let counts = std::mem::take(&mut self.counts);
        let over = self
            .table
            .flush(self.ip, self.window_start, &counts, &self.limits, now);
        if let Some(flood) = over
            && self.calm.is_none()
        {
            self.calm = Some(flood);
            if let Some(on_flood) = self.on_flood.take() {
                on_flood(flood);
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> FrameGuard<I> {
    /// Writes GOAWAY ENHANCE_YOUR_CALM (if the gateway's own output is
    /// between frames), then says the connection is over.
    fn poll_calm(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.outbound.at_boundary() {
            while self.goaway_sent < GOAWAY_CALM.len() {
                match Pin::new(&mut self.io).poll_write(cx, &GOAWAY_CALM[self.goaway_sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => self.goaway_sent += n,
                    Poll::Pending => return Poll::Pending,
                    _ => break,
                }
            }
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the client crossed an HTTP/2 flood limit",
        ))
    }
}

impl<I> Drop for FrameGuard<I> {
    fn drop(&mut self) {
        if self.counts.0.iter().any(|c| *c > 0) {
            self.flush(now_ms());
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for FrameGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.calm.is_some() {
            return this.poll_calm(cx).map(Err);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let filled = &buf.filled()[before..];
            if !filled.is_empty() {
                this.count(filled);
                if this.calm.is_some() {
                    // What was read is dropped: hyper never sees the flood.
                    buf.set_filled(before);
                    return this.poll_calm(cx).map(Err);
                }
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FrameGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = written {
            this.outbound.feed(&data[..n], |_, _, _| {});
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: length, type, flags, stream 1.
    fn frame(len: usize, kind: u8, flags: u8) -> Vec<u8> {
        let l = (len as u32).to_be_bytes();
        let mut out = vec![l[1], l[2], l[3], kind, flags, 0, 0, 0, 1];
        out.resize(9 + len, 0);
        out
    }

    fn frames_of(wire: &[u8], step: usize) -> Vec<(u8, u8, usize)> {
        let mut reader = FrameReader {
            preface: PREFACE_LEN,
            ..FrameReader::default()
        };
        let mut seen = Vec::new();
        for piece in wire.chunks(step) {
            reader.feed(piece, |k, f, l| seen.push((k, f, l)));
        }
        assert!(reader.at_boundary());
        seen
    }

    #[test]
    fn frame_headers_are_found_whole_or_in_pieces() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(6, 0x4, 0));
        wire.extend(frame(8, 0x6, 0));
        wire.extend(frame(300, 0x0, 0x1));
        wire.extend(frame(4, 0x3, 0));
        let want = vec![(0x4, 0, 6), (0x6, 0, 8), (0x0, 0x1, 300), (0x3, 0, 4)];
        for step in [1, 2, 7, 9, 10, 64, wire.len()] {
            assert_eq!(frames_of(&wire, step), want, "in pieces of {step}");
        }
    }

    #[test]
    fn an_address_past_a_limit_is_penalized_over_all_its_connections() {
        let table = FloodTable::default();
        let limits = FloodLimits {
            resets: 50,
            ..FloodLimits::default()
        };
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        let mut nineteen = Counts::default();
        nineteen.0[Flood::Resets as usize] = 19;
        // Two connections of 19 resets each stay under 50 in a second...
        assert_eq!(table.flush(ip, 0, &nineteen, &limits, 10), None);
        assert_eq!(table.flush(ip, 0, &nineteen, &limits, 20), None);
        assert_eq!(table.flush(other, 0, &nineteen, &limits, 20), None);
        // ...the third does not.
        assert_eq!(
            table.flush(ip, 0, &nineteen, &limits, 30),
            Some(Flood::Resets)
        );
        let until = table.by_ip.lock().unwrap()[&ip].penalty_until;
        assert_eq!(until, 30 + 10_000);
        // A new second starts the count again.
        assert_eq!(table.flush(other, 1000, &nineteen, &limits, 1000), None);
    }

    #[test]
    fn acknowledgements_and_frames_that_end_a_stream_are_not_counted() {
        let table = Arc::new(FloodTable::default());
        let ip: IpAddr = "192.0.2.11".parse().unwrap();
        let mut guard = FrameGuard::new(
            tokio::io::empty(),
            ip,
            FloodLimits::default(),
            table,
            Box::new(|_| {}),
        );
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(8, 0x6, 0x1)); // PING ACK
        wire.extend(frame(0, 0x4, 0x1)); // SETTINGS ACK
        wire.extend(frame(0, 0x0, 0x1)); // empty DATA with END_STREAM
        wire.extend(frame(8, 0x6, 0)); // PING
        wire.extend(frame(0, 0x0, 0)); // empty DATA
        guard.count(&wire);
        assert_eq!(guard.counts.0[Flood::Pings as usize], 1);
        assert_eq!(guard.counts.0[Flood::Settings as usize], 0);
        assert_eq!(guard.counts.0[Flood::EmptyFrames as usize], 1);
    }
}
