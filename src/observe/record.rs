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
use http::{HeaderValue, Method, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::access_log::AccessLog;
use super::metrics::{Metrics, RequestLabels, RouteMetrics};
use crate::proxy::body::{Body, BodyStats, BoxError};

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
    pub busy: crate::server::registry::Busy,
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
    /// Host as the client sent it.
    pub host: String,
    /// Path and query as the client sent them.
    pub path: String,
    /// The upstream target that served the request.
    pub target: Option<Arc<str>>,
    /// The request body's byte count.
    pub body: Arc<BodyStats>,
}

impl Record {
    /// Writes the metrics and the log line.
    fn finish(self, status: StatusCode, bytes_out: u64) {
        let elapsed = self.started.elapsed();
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
            }
            None => {
                self.metrics.requests.get_or_create(&labels).inc();
            }
        }
        if let Some(log) = self.log {
            let line = log.line(&labels, status, bytes_out, elapsed);
            log.sink.write(line);
        }
    }
}

impl LogFields {
    /// The JSON line, fields in the documented order. Written by hand into
    /// one buffer: building a `serde_json::Value` first cost a dozen
    /// allocations per request (and sorted the keys).
    fn line(
        &self,
        labels: &RequestLabels,
        status: StatusCode,
        bytes_out: u64,
        elapsed: std::time::Duration,
    ) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(320 + self.path.len());
        out.push_str("{\"time\":\"");
        push_rfc3339_millis(&mut out, SystemTime::now());
        out.push_str("\",\"request_id\":");
        json_str(&mut out, self.request_id.to_str().unwrap_or("-"));
        // Writing into a String cannot fail.
        let _ = write!(out, ",\"client\":\"{}\"", self.client);
        out.push_str(",\"listener\":");
        json_str(&mut out, &labels.listener);
        out.push_str(",\"method\":");
        json_str(&mut out, self.method.as_str());
        out.push_str(",\"host\":");
        json_str(&mut out, &self.host);
        out.push_str(",\"path\":");
        json_str(&mut out, &self.path);
        let _ = write!(out, ",\"status\":{}", status.as_u16());
        out.push_str(",\"route\":");
        json_str(&mut out, &labels.route);
        out.push_str(",\"upstream\":");
        json_str(&mut out, &labels.upstream);
        out.push_str(",\"target\":");
        match &self.target {
            Some(t) => json_str(&mut out, t),
            None => out.push_str("null"),
        }
        let micros = elapsed.as_micros();
        let _ = write!(
            out,
            ",\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{}.{:03}}}",
            self.body.bytes.load(Ordering::Relaxed),
            bytes_out,
            micros / 1000,
            micros % 1000,
        );
        out
    }
}

/// Appends `s` as a JSON string: quoted, with `"`, `\` and control
/// characters escaped.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or(' ');
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            other => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", other as u32);
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

/// Formats `t` as RFC 3339 in UTC with milliseconds (`2026-11-23T08:16:38.123Z`).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339_millis(&mut out, t);
    out
}

/// Appends `t` as [`rfc3339_millis`] does.
fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
    use std::fmt::Write as _;
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
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
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// A response body that records the request when it ends or is dropped.
pub struct RecordedBody {
    inner: Body,
    status: StatusCode,
    bytes: u64,
    record: Option<Record>,
}

impl RecordedBody {
    /// Wraps `inner`, the body of a response with `status`.
    pub fn new(inner: Body, status: StatusCode, record: Record) -> Self {
        RecordedBody {
            inner,
            status,
            bytes: 0,
            record: Some(record),
        }
    }

    fn done(&mut self) {
        if let Some(r) = self.record.take() {
            r.finish(self.status, self.bytes);
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.done(),
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
        // A client that disconnects mid-body still gets its line.
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut out = String::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_422_998_123);
        assert_eq!(rfc3339_millis(t), "2026-11-23T08:36:38.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }
}
