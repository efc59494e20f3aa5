//! The access log: one JSON line per request, written by a dedicated thread
//! so that a slow disk or a blocked stdout never stalls a request.
//!
//! Requests hand finished lines to the writer through a bounded channel; if
//! the writer falls behind, lines are dropped and counted rather than queued
//! without limit.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

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
    sender: SyncSender<String>,
    dropped: AtomicU64,
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
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, writer))?;
        Ok(AccessLog {
            destination,
            sender,
            dropped: AtomicU64::new(0),
        })
    }

    /// Where this log writes.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Queues one line (without its newline); never blocks.
    pub fn write(&self, line: String) {
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

fn write_lines(receiver: Receiver<String>, writer: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, writer);
    loop {
        // Flush whenever the queue runs dry, so lines appear promptly at low
        // rates and are batched at high ones.
        let line = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if out.write_all(line.as_bytes()).is_err() || out.write_all(b"\n").is_err() {
            break;
        }
        while let Ok(line) = receiver.try_recv() {
            if out.write_all(line.as_bytes()).is_err() || out.write_all(b"\n").is_err() {
                return;
            }
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

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
