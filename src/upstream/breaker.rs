//! Circuit breaking: caps on what one upstream may hold at once. Past a cap,
//! requests fail fast with 503 instead of queueing behind a struggling
//! upstream, and `portcullis_circuit_open_total{upstream}` counts them.
//!
//! - `max_requests`: requests in flight (until the response body is relayed).
//! - `max_connections`: upstream connections in use. An HTTP/1.1 connection
//!   carries one request at a time, so each request in flight holds one
//!   connection slot (idle pooled connections do not count); an L4
//!   connection holds one for its whole life.
//! - `max_pending`: requests allowed to wait for a connection slot; past it,
//!   503 at once. A waiting request gives up after the connect timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A compiled `circuit_breaker` section.
#[derive(Debug)]
pub struct CircuitBreaker {
    max_requests: u32,
    active: Arc<AtomicU32>,
    connections: Option<Arc<Semaphore>>,
    max_pending: u32,
    pending: AtomicU32,
}

/// A request (or L4 connection) admitted by the breaker; counted until dropped.
#[derive(Debug)]
pub struct Admitted {
    active: Arc<AtomicU32>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the breaker refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_requests` reached.
    #[error("max_requests reached")]
    Requests,
    /// `max_connections` reached and `max_pending` requests already waiting.
    #[error("max_connections reached and max_pending requests waiting")]
    Pending,
    /// Waited for a connection slot for the whole connect timeout.
    #[error("no connection slot within the connect timeout")]
    Waited,
}

impl CircuitBreaker {
    /// A breaker with the given caps (`None` = unlimited).
    pub fn new(
        max_requests: Option<u32>,
        max_connections: Option<u32>,
        max_pending: Option<u32>,
    ) -> CircuitBreaker {
        CircuitBreaker {
            max_requests: max_requests.unwrap_or(u32::MAX),
            active: Arc::new(AtomicU32::new(0)),
            connections: max_connections.map(|n| Arc::new(Semaphore::new(n as usize))),
            max_pending: max_pending.unwrap_or(u32::MAX),
            pending: AtomicU32::new(0),
        }
    }

    /// Admits one request, waiting up to `wait` for a connection slot when
    /// `max_connections` is set and `max_pending` allows waiting.
    pub async fn admit(&self, wait: Duration) -> Result<Admitted, Refused> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max_requests).then_some(n + 1)
            })
            .map_err(|_| Refused::Requests)?;
        // From here on, `admitted` gives the request slot back if we refuse.
        let mut admitted = Admitted {
            active: self.active.clone(),
            _connection: None,
        };
        let Some(slots) = &self.connections else {
            return Ok(admitted);
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            admitted._connection = Some(permit);
            return Ok(admitted);
        }
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refused::Pending);
        }
        let waited = tokio::time::timeout(wait, slots.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => {
                admitted._connection = Some(permit);
                Ok(admitted)
            }
            _ => Err(Refused::Waited),
        }
    }

    /// Requests admitted right now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection slot right now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn admits_up_to_max_requests_and_frees_on_drop() {
        let b = CircuitBreaker::new(Some(2), None, None);
        let a = b.admit(WAIT).await.unwrap();
        let c = b.admit(WAIT).await.unwrap();
        assert_eq!(b.admit(WAIT).await.unwrap_err(), Refused::Requests);
        drop(a);
        assert!(b.admit(WAIT).await.is_ok());
        drop(c);
        assert_eq!(b.active(), 0);
    }

    #[tokio::test]
    async fn past_max_connections_requests_wait_then_proceed() {
        let b = Arc::new(CircuitBreaker::new(None, Some(1), Some(5)));
        let first = b.admit(WAIT).await.unwrap();
        let b2 = b.clone();
        let waiter =
            tokio::spawn(async move { b2.admit(Duration::from_secs(5)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(b.pending(), 1);
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(b.pending(), 0);
    }

    #[tokio::test]
    async fn past_max_pending_requests_are_refused_at_once() {
        let b = Arc::new(CircuitBreaker::new(None, Some(1), Some(1)));
        let _first = b.admit(WAIT).await.unwrap();
        let b2 = b.clone();
        let _waiter =
            tokio::spawn(async move { b2.admit(Duration::from_secs(5)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let started = std::time::Instant::now();
        assert_eq!(b.admit(WAIT).await.unwrap_err(), Refused::Pending);
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(b.active(), 2, "the refused request gave its slot back");
    }

    #[tokio::test]
    async fn waiting_gives_up_after_the_wait() {
        let b = CircuitBreaker::new(None, Some(1), Some(4));
        let _first = b.admit(WAIT).await.unwrap();
        assert_eq!(
            b.admit(Duration::from_millis(50)).await.unwrap_err(),
            Refused::Waited
        );
        assert_eq!(b.pending(), 0);
    }
}
