//! Recording a finished request: metrics and the access-log line are written
//! when the response body has been sent in full (or the client went away),
//! so that durations and byte counts cover the whole exchange.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::http::body::{Body, BodyStats, BoxError};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{Metrics, RequestLabels, RouteMetrics};
use crate::policy::Outcome;
use crate::policy::consumer::Consumer;

/// Called with the outcome once the answer is over (the pipeline's hook
/// for the policies that asked for it).
pub type OnLog = Box<dyn FnOnce(&Outcome) + Send>;

/// What is known about a request when its response starts.
pub struct Record {
    /// Shared metric families.
    pub metrics: Arc<Metrics>,
    /// Listener, route and upstream names for the labels.
    pub labels: RequestLabels,
    /// The route's metrics, when a route matched.
    pub route: Option<Arc<RouteMetrics>>,
    /// When the request arrived.
    pub started: Instant,
    /// Fields only the access log needs (absent when the log is off).
    pub log: Option<LogFields>,
    /// Keeps the request counted as in flight on its connection until the
    /// response has been sent.
    pub busy: crate::proxy::connection::Busy,
    /// Policies' log hooks, when any asked for them.
    pub on_log: Option<OnLog>,
    /// The consumer an authentication policy resolved, for its analytics.
    pub consumer: Option<Arc<Consumer>>,
}

/// Access-log fields captured from the request.
pub struct LogFields {
    /// Where to write.
    pub sink: Arc<AccessLog>,
    /// Request id.
    pub request_id: HeaderValue,
    /// Client address.
    pub client: SocketAddr,
    /// Method.
    pub method: Method,
    /// The request target as the client sent it (path, query, and for
    /// HTTP/2 and absolute-form requests the authority); a clone shares the
    /// request's bytes.
    pub uri: Uri,
    /// The `Host` header, for requests whose target has no authority.
    pub host_header: Option<HeaderValue>,
    /// The upstream target that served the request.
    pub target: Option<Arc<str>>,
    /// The request body's byte count.
    pub body: Arc<BodyStats>,
}

impl Record {
    /// Writes the metrics and the log line, and calls the log hooks.
    fn finish(mut self, status: StatusCode, bytes_out: u64, complete: bool) {
        let elapsed = self.started.elapsed();
        if let Some(on_log) = self.on_log.take() {
            on_log(&Outcome {
                status,
                bytes_sent: bytes_out,
                duration: elapsed,
                complete,
            });
        }
        let mut labels = self.labels;
        labels.status = status.as_u16();
        match &self.route {
            Some(route) => {
                route
                    .requests(
                        &self.metrics,
                        &labels.listener,
                        &labels.upstream,
                        labels.status,
                    )
                    .inc();
                route.duration.observe(elapsed.as_secs_f64());
                if let Some(consumer) = &self.consumer
                    && let Some(counts) = route.consumer(consumer.slot)
                {
                    counts.count(labels.status);
                    consumer.series.observe(elapsed);
                    if let Some(a) = &consumer.activity {
                        a.note_request();
                    }
                }
            }
            None => {
                self.metrics.requests.get_or_create(&labels).inc();
            }
        }
        if let Some(log) = self.log {
            log.sink
                .append(|out| log.write_line(out, &labels, status, bytes_out, elapsed));
        }
    }
}

impl LogFields {
    /// The host as the client named it.
    fn host(&self) -> &str {
        crate::http::headers::host_from(&self.uri, self.host_header.as_ref()).unwrap_or("")
    }

    /// The path and query as the client sent them.
    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// Appends the JSON line, fields in the documented order, to `out`.
    /// Written by hand, without `fmt`: building a `serde_json::Value` first
    /// cost a dozen allocations per request (and sorted the keys), and
    /// `fmt`'s machinery cost more than the rest of the line.
    fn write_line(
        &self,
        out: &mut Vec<u8>,
        labels: &RequestLabels,
        status: StatusCode,
        bytes_out: u64,
        elapsed: std::time::Duration,
    ) {
        let path = self.path();
        out.reserve(320 + path.len());
        out.extend_from_slice(b"{\"time\":\"");
        push_rfc3339_millis(out, SystemTime::now());
        // Request ids and method names are tokens by construction (checked
        // or generated; the http crate's methods): nothing to escape.
        out.extend_from_slice(b"\",\"request_id\":\"");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\",\"client\":\"");
        push_socket_addr(out, self.client);
        out.extend_from_slice(b"\",\"listener\":");
        json_str(out, &labels.listener);
        out.extend_from_slice(b",\"method\":\"");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"host\":");
        json_str(out, self.host());
        out.extend_from_slice(b",\"path\":");
        json_str(out, path);
        out.extend_from_slice(b",\"status\":");
        push_digits(out, u64::from(status.as_u16()), 1);
        out.extend_from_slice(b",\"route\":");
        json_str(out, &labels.route);
        out.extend_from_slice(b",\"upstream\":");
        json_str(out, &labels.upstream);
        out.extend_from_slice(b",\"target\":");
        match &self.target {
            Some(t) => json_str(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"bytes_in\":");
        push_digits(out, self.body.bytes.load(Ordering::Relaxed), 1);
        out.extend_from_slice(b",\"bytes_out\":");
        push_digits(out, bytes_out, 1);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        out.extend_from_slice(b",\"duration_ms\":");
        push_digits(out, micros / 1000, 1);
        out.push(b'.');
        push_digits(out, micros % 1000, 3);
        out.push(b'}');
    }
}

/// Appends `n` in decimal, zero-padded to `width` digits (at most 20).
fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = at.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[start..]);
}

/// Appends `addr` as `IP:port` (`[IPv6]:port`).
fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_digits(out, u64::from(octet), 1);
            }
        }
        SocketAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(b':');
    push_digits(out, u64::from(addr.port()), 1);
}

/// Whether `s` holds a byte a JSON string must escape (`"`, `\`, or a
/// control character). Eight bytes at a time (the bit tricks are "has a
/// byte less than n" and "has a zero byte" from Bit Twiddling Hacks):
/// nearly every value needs no escape, and this is most of the line's cost.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let less_than = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let hit = less_than(x, b' ')
            | zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')));
        if hit != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < b' ' || b == b'"' || b == b'\\')
}

/// Appends `s` as a JSON string: quoted, with `"`, `\` and control
/// characters escaped.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    for b in s.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < b' ' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
            }
            // Bytes of multi-byte characters pass through unchanged.
            other => out.push(other),
        }
    }
    out.push(b'"');
}

/// `t` as [`push_rfc3339_millis`] writes it, for the tests.
#[cfg(test)]
fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339_millis(&mut out, t);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends `t` as RFC 3339 in UTC with milliseconds
/// (`2026-11-23T08:16:38.123Z`). The date and time up to the second are
/// worked out once per second per thread and copied after.
fn push_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, text) = SECOND.get();
    if cached == secs {
        out.extend_from_slice(&text);
    } else {
        let start = out.len();
        push_date_time(out, secs);
        // Past the year 9999 the text is longer; not worth keeping.
        if let Ok(fixed) = <[u8; 19]>::try_from(&out[start..]) {
            SECOND.set((secs, fixed));
        }
    }
    out.push(b'.');
    push_digits(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
}

/// Appends `YYYY-MM-DDTHH:MM:SS` for `secs` since 1970.
fn push_date_time(out: &mut Vec<u8>, secs: u64) {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fields = [
        (year.max(0) as u64, 4, '-'),
        (month as u64, 2, '-'),
        (day as u64, 2, 'T'),
        (rem / 3600, 2, ':'),
        (rem % 3600 / 60, 2, ':'),
    ];
    for (value, width, after) in fields {
        push_digits(out, value, width);
        out.push(after as u8);
    }
    push_digits(out, rem % 60, 2);
}

/// A response body that records the request when it ends or is dropped.
pub struct RecordedBody {
    inner: Body,
    status: StatusCode,
    bytes: u64,
    record: Option<Record>,
    /// A chunk was handed out and the connection has not asked for the
    /// next yet: the client may not be reading (`send_timeout`).
    stalled: bool,
}

impl RecordedBody {
    /// Wraps `inner`, the body of a response with `status`.
    pub fn new(inner: Body, status: StatusCode, record: Record) -> Self {
        // The head goes out now; until the connection asks for the body,
        // the client may be refusing it (an HTTP/2 window of zero).
        let stalled = !inner.is_end_stream();
        if stalled {
            record.busy.stall();
        }
        RecordedBody {
            inner,
            status,
            bytes: 0,
            record: Some(record),
            stalled,
        }
    }

    /// The connection asked for more: the last chunk was taken.
    fn taken(&mut self) {
        if std::mem::take(&mut self.stalled)
            && let Some(r) = &self.record
        {
            r.busy.unstall();
        }
    }

    fn done(&mut self, complete: bool) {
        if let Some(r) = self.record.take() {
            r.finish(self.status, self.bytes, complete);
        }
    }
}

impl HttpBody for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.taken();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.done(true);
                } else if let Some(r) = &this.record {
                    r.busy.stall();
                    this.stalled = true;
                }
            }
            Poll::Ready(None) => this.done(true),
            Poll::Ready(Some(Err(_))) => this.done(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        // A client that disconnects mid-body still gets its line. (A body
        // that was empty from the start is complete when dropped unpolled.)
        let complete = self.inner.is_end_stream();
        self.taken();
        self.done(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#""a\"b\\c\nd\u0001é""#
        );
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn the_escape_check_finds_every_byte_that_needs_one_wherever_it_is() {
        for len in 0..40 {
            let plain = "a".repeat(len);
            assert!(!needs_escape(plain.as_bytes()));
            assert!(!needs_escape("é€ aZ~".repeat(len).as_bytes()));
            for at in 0..len {
                for bad in [b'"', b'\\', 0u8, b'\n', 0x1f] {
                    let mut s = plain.clone().into_bytes();
                    s[at] = bad;
                    assert!(needs_escape(&s), "{bad:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn digits_and_addresses_are_written_as_fmt_would() {
        for (n, width) in [(0, 1), (7, 3), (42, 2), (1234, 2), (u64::MAX, 1), (5, 4)] {
            let mut out = Vec::new();
            push_digits(&mut out, n, width);
            assert_eq!(out, format!("{n:0width$}").into_bytes());
        }
        for addr in [
            "10.0.0.1:80",
            "255.255.255.255:65535",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.1]:8",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, addr);
            assert_eq!(out, addr.to_string().into_bytes());
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_422_998_123);
        assert_eq!(rfc3339_millis(t), "2026-11-23T08:36:38.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
        // The same second again (from the per-second cache), another millisecond.
        let later = leap + Duration::from_millis(999);
        assert_eq!(rfc3339_millis(later), "2000-02-29T00:00:00.999Z");
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800); // 10000-01-01
        assert_eq!(rfc3339_millis(far), "10000-01-01T00:00:00.000Z");
    }
}
