//! The access log: one JSON line per request, written by a dedicated thread
//! so that a slow disk or a blocked stdout never stalls a request.
//!
//! Each thread that serves requests builds its lines straight into a
//! buffer of its own (behind a lock only the writer ever contends for); the
//! writer wakes every [`DRAIN_EVERY`], swaps each buffer for an empty one
//! and writes what it took in one call. A request neither allocates for its
//! line, nor wakes the writer, nor hands anything across a channel: waking
//! the writer per line (a futex call and a context switch on the request's
//! core) once doubled the CPU time of a proxied request (bench scenario 9).
//! If the writer falls behind, a buffer stops growing at [`MAX_PENDING`]
//! and further lines are dropped and counted rather than queued without
//! limit.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// How often the writer drains the buffers; also the most a line waits.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Bytes a thread's buffer may hold before its new lines are dropped
/// (about 3,000 lines; at 20 ms per turn, 150,000 lines per second per
/// thread).
const MAX_PENDING: usize = 1 << 20;

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

/// One thread's pending lines.
type Buffer = Arc<Mutex<Vec<u8>>>;

/// What the request threads and the writer share.
#[derive(Default)]
struct Shared {
    /// Every thread's buffer, in the order the threads first wrote; the
    /// writer holds the list too, to drain it once more after the log is gone.
    buffers: Arc<Mutex<Vec<Buffer>>>,
    /// Lines dropped because the writer fell behind
    /// (`portcullis_access_log_dropped_total`).
    dropped: Counter,
    flushes: Flushes,
}

/// Flush requests and the writer's answers, for [`AccessLog::flush`].
#[derive(Default)]
struct Flushes {
    requested: AtomicU64,
    done: Mutex<u64>,
    answered: Condvar,
}

thread_local! {
    /// This thread's buffer for each open log (a process has one log per
    /// destination; a reload to a new file adds one).
    static MY_BUFFERS: RefCell<Vec<(Weak<Shared>, Buffer)>> = const { RefCell::new(Vec::new()) };
}

/// A handle to one access log and its writer thread.
pub struct AccessLog {
    destination: Destination,
    shared: Arc<Shared>,
    writer: std::thread::Thread,
}

impl AccessLog {
    /// Opens the destination and starts the writer thread; lines dropped
    /// because it fell behind are counted in `dropped`.
    pub fn open(destination: Destination, dropped: Counter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match &destination {
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let shared = Arc::new(Shared {
            dropped,
            ..Shared::default()
        });
        let weak = Arc::downgrade(&shared);
        let buffers = shared.buffers.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&weak, &buffers, out))?;
        Ok(AccessLog {
            destination,
            shared,
            writer: thread.thread().clone(),
        })
    }

    /// Writes out every line appended so far and waits (at most `within`)
    /// until they are; for shutdown, so that the last lines are not lost.
    pub fn flush(&self, within: Duration) -> bool {
        let flushes = &self.shared.flushes;
        let want = flushes.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.writer.unpark();
        let deadline = Instant::now() + within;
        let mut done = crate::lock(&flushes.done);
        while *done < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = match flushes.answered.wait_timeout(done, left) {
                Ok((d, _)) => d,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Where this log writes.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Appends one line, which `build` writes (UTF-8, without its newline)
    /// at the end of the buffer it is given; never blocks on the writer.
    pub fn append(&self, build: impl FnOnce(&mut Vec<u8>)) {
        MY_BUFFERS.with(|mine| {
            let mut mine = mine.borrow_mut();
            let me = Arc::as_ptr(&self.shared);
            let buffer = match mine.iter().position(|(log, _)| log.as_ptr() == me) {
                Some(at) => &mine[at].1,
                None => self.register(&mut mine),
            };
            append_line(&mut crate::lock(buffer), &self.shared.dropped, build);
        });
    }

    /// Makes this thread's buffer for this log and hands it to the writer.
    fn register<'m>(&self, mine: &'m mut Vec<(Weak<Shared>, Buffer)>) -> &'m Buffer {
        // Logs that are gone leave their buffers here; drop them now.
        mine.retain(|(log, _)| log.strong_count() > 0);
        let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
        crate::lock(&self.shared.buffers).push(buffer.clone());
        mine.push((Arc::downgrade(&self.shared), buffer));
        &mine[mine.len() - 1].1
    }

    /// Appends `line` (UTF-8, without its newline).
    #[cfg(test)]
    fn write(&self, line: &[u8]) {
        self.append(|out| out.extend_from_slice(line));
    }
}

/// Appends the line `build` writes, and its newline, to `pending`, unless
/// the writer has left [`MAX_PENDING`] bytes there: then the line is
/// counted in `dropped` instead.
fn append_line(pending: &mut Vec<u8>, dropped: &Counter, build: impl FnOnce(&mut Vec<u8>)) {
    if pending.len() >= MAX_PENDING {
        dropped.inc();
        return;
    }
    build(pending);
    pending.push(b'\n');
}

/// The writer thread: every [`DRAIN_EVERY`] (or at once when a flush is
/// asked for), takes every buffer's lines and writes them; once the log is
/// dropped, writes what is left and ends.
fn write_lines(
    shared: &Weak<Shared>,
    registered: &Mutex<Vec<Buffer>>,
    mut out: Box<dyn Write + Send>,
) {
    let mut taken: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buffers: Vec<Buffer> = Vec::new();
    loop {
        let log = shared.upgrade();
        // Flush requests made before this turn's drain are answered by it.
        let requested = log
            .as_ref()
            .map(|l| l.flushes.requested.load(Ordering::Acquire));
        // Read even when the log is gone: a thread may have added its
        // buffer, and lines, since the last turn.
        buffers.clone_from(&crate::lock(registered));
        let mut wrote = false;
        for buffer in &buffers {
            {
                let mut pending = crate::lock(buffer);
                if pending.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *pending, &mut taken);
            }
            if out.write_all(&taken).is_err() {
                return;
            }
            taken.clear();
            wrote = true;
        }
        if wrote {
            let _ = out.flush();
        }
        // Gone: no line can be added any more, and this turn wrote them all.
        let (Some(log), Some(requested)) = (log, requested) else {
            return;
        };
        *crate::lock(&log.flushes.done) = requested;
        log.flushes.answered.notify_all();
        // Not holding the log while asleep lets it go.
        drop(log);
        std::thread::park_timeout(DRAIN_EVERY);
    }
}

/// The access-log writers by destination, opened once and shared while
/// some snapshot uses them (a reload to another file lets the old writer
/// write its last lines and end).
#[derive(Default)]
pub struct AccessLogs(crate::kept::KeptWhileUsed<Destination, AccessLog>);

impl AccessLogs {
    /// The writer for `destination`, counting dropped lines in `metrics`.
    /// With `check_only` the destination is only checked and no writer is
    /// returned.
    pub fn open(
        &self,
        destination: Destination,
        check_only: bool,
        metrics: &super::metrics::Metrics,
    ) -> std::io::Result<Option<Arc<AccessLog>>> {
        if check_only {
            if let Destination::File(path) = &destination {
                check_writable(path)?;
            }
            return Ok(None);
        }
        let (log, _) = self.0.get_or_make(destination.clone(), || {
            let label = super::metrics::DestinationLabel {
                destination: match &destination {
                    Destination::Stdout => "stdout".to_string(),
                    Destination::File(path) => path.display().to_string(),
                },
            };
            let dropped = metrics.access_log_dropped.get_or_create_owned(&label);
            AccessLog::open(destination, dropped)
        })?;
        Ok(Some(log))
    }

    /// Writes out every line queued so far (at shutdown), waiting at most
    /// `within` for each log.
    pub fn flush_all(&self, within: Duration) {
        for log in self.0.live() {
            if !log.flush(within) {
                tracing::warn!("the access log could not be written out in {within:?}");
            }
        }
    }
}

/// Whether a log file could be opened for appending, without creating it.
fn check_writable(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::new(ErrorKind::IsADirectory, "it is a directory")),
        Ok(m) if m.permissions().readonly() => Err(Error::new(
            ErrorKind::PermissionDenied,
            "the file is read-only",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            match parent.map(std::fs::metadata) {
                Some(Ok(m)) if m.is_dir() => Ok(()),
                Some(Ok(_)) => Err(Error::new(
                    ErrorKind::NotADirectory,
                    "its parent is not a directory",
                )),
                Some(Err(e)) => Err(e),
                None => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_writes_out_every_queued_line_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone()), Counter::default()).unwrap();
        for i in 0..1000 {
            log.write(format!("{{\"n\":{i}}}").as_bytes());
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.ends_with("{\"n\":999}\n"));
    }

    #[cfg(unix)]
    #[test]
    fn a_flush_gives_up_on_a_destination_that_blocks() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("access.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A reader that never reads: the pipe fills and the writer blocks.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let log = AccessLog::open(Destination::File(fifo), Counter::default()).unwrap();
        let line = [b'x'; 1000];
        for _ in 0..200 {
            log.write(&line);
        }
        let started = Instant::now();
        assert!(!log.flush(Duration::from_millis(200)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // The reader gone, the blocked write fails and the writer ends.
        drop(reader);
    }

    #[test]
    fn lines_appended_just_before_the_log_is_dropped_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone()), Counter::default()).unwrap();
        // A thread that writes its first line (adding its buffer) and lets
        // the log go before the writer's next turn.
        std::thread::spawn(move || {
            log.write(b"{\"last\":true}");
            drop(log);
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&path).unwrap_or_default() != "{\"last\":true}\n" {
            assert!(Instant::now() < deadline, "the last line was lost");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log =
            Arc::new(AccessLog::open(Destination::File(path.clone()), Counter::default()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        log.write(format!("{{\"thread\":{t},\"n\":{i}}}").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 8_000);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["n"].as_u64().unwrap() < 2_000, "{line}");
        }
        // Each thread's lines stay in their order.
        let firsts: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"thread\":2,"))
            .collect();
        assert!(firsts[0].ends_with("\"n\":0}") && firsts[1999].ends_with("\"n\":1999}"));
        assert_eq!(log.shared.dropped.get(), 0);
    }

    #[test]
    fn past_the_limit_lines_are_dropped_and_counted_not_queued() {
        let dropped = Counter::default();
        let mut pending = Vec::new();
        let line = vec![b'x'; 1000];
        let mut kept = 0;
        for _ in 0..2_000 {
            let before = pending.len();
            append_line(&mut pending, &dropped, |out| out.extend_from_slice(&line));
            kept += usize::from(pending.len() > before);
        }
        // Lines go in until the buffer reaches 1 MiB; the rest are counted.
        assert_eq!(kept, MAX_PENDING.div_ceil(1001));
        assert_eq!(dropped.get() as usize, 2_000 - kept);
        assert!(pending.len() < MAX_PENDING + 1001);
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone()), Counter::default()).unwrap();
        log.write(b"{\"a\":1}");
        log.write(b"{\"a\":2}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "lines not written: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
