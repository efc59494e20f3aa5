//! The access log: one JSON line per request, written by a dedicated thread
//! so that a slow disk or a blocked stdout never stalls a request.
//!
//! Requests hand finished lines to the writer through a bounded channel; if
//! the writer falls behind, lines are dropped and counted rather than queued
//! without limit. The writer is never woken by a request: it wakes every
//! [`DRAIN_EVERY`] and writes whatever has queued up. Waking it per line
//! (a futex call and a context switch on the request's core) once doubled
//! the CPU time of a proxied request (bench scenario 9).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines waiting for the writer before new ones are dropped: at 20 ms per
/// turn, room for 800,000 lines per second.
const QUEUE: usize = 16 * 1024;

/// How often the writer drains the queue; also the most a line waits.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

/// A handle that queues lines for the writer thread.
pub struct AccessLog {
    destination: Destination,
    sender: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
    writer: std::thread::Thread,
    flushes: Arc<Flushes>,
}

/// Flush requests and the writer's answers, for [`AccessLog::flush`].
#[derive(Default)]
struct Flushes {
    requested: AtomicU64,
    done: Mutex<u64>,
    answered: Condvar,
}

impl AccessLog {
    /// Opens the destination and starts the writer thread.
    pub fn open(destination: Destination) -> std::io::Result<AccessLog> {
        let writer: Box<dyn Write + Send> = match &destination {
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let flushes = Arc::new(Flushes::default());
        let shared = flushes.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, writer, &shared))?;
        Ok(AccessLog {
            destination,
            sender,
            dropped: AtomicU64::new(0),
            writer: thread.thread().clone(),
            flushes,
        })
    }

    /// Writes out every line queued so far and waits (at most `within`)
    /// until they are; for shutdown, so that the last lines are not lost.
    pub fn flush(&self, within: Duration) -> bool {
        let want = self.flushes.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.writer.unpark();
        let deadline = Instant::now() + within;
        let mut done = match self.flushes.done.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        while *done < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = match self.flushes.answered.wait_timeout(done, left) {
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

    /// Queues one line (UTF-8, without its newline); never blocks.
    pub fn write(&self, line: Vec<u8>) {
        match self.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_lines(receiver: Receiver<Vec<u8>>, writer: Box<dyn Write + Send>, flushes: &Flushes) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, writer);
    loop {
        // Flush requests made before this turn's drain are answered by it.
        let requested = flushes.requested.load(Ordering::Acquire);
        let mut open = true;
        let mut wrote = false;
        loop {
            match receiver.try_recv() {
                Ok(line) => {
                    if out.write_all(&line).is_err() || out.write_all(b"\n").is_err() {
                        return;
                    }
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
        {
            let mut done = match flushes.done.lock() {
                Ok(d) => d,
                Err(p) => p.into_inner(),
            };
            *done = requested;
        }
        flushes.answered.notify_all();
        if !open {
            return;
        }
        std::thread::park_timeout(DRAIN_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_writes_out_every_queued_line_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone())).unwrap();
        for i in 0..1000 {
            log.write(format!("{{\"n\":{i}}}").into());
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.ends_with("{\"n\":999}\n"));
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Destination::File(path.clone())).unwrap();
        log.write("{\"a\":1}".into());
        log.write("{\"a\":2}".into());
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
