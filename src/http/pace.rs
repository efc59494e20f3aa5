//! How fast a client must send its request body: `body_read_timeout`
//! (the longest wait for its next bytes, nginx's `client_body_timeout`)
//! and `min_body_rate` after `min_body_rate_grace` (Kestrel's
//! `MinRequestBodyDataRate`). Only the time spent waiting on the client
//! counts: while the upstream is not reading, the body is not asked for,
//! and the client is not to blame.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A listener's demands on the pace of request bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyPace {
    /// Longest wait for the client's next bytes.
    pub read_timeout: Duration,
    /// Bytes per second of waiting the client must keep up; 0 is no minimum.
    pub min_rate: u64,
    /// Waiting time before the minimum rate applies.
    pub grace: Duration,
}

impl Default for BodyPace {
    fn default() -> BodyPace {
        BodyPace {
            read_timeout: Duration::from_secs(60),
            min_rate: 240,
            grace: Duration::from_secs(5),
        }
    }
}

/// Which demand a body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooSlow {
    /// No bytes for `body_read_timeout`.
    Stalled,
    /// Fewer than `min_rate` bytes per second of waiting.
    BelowMinRate,
}

impl TooSlow {
    /// The metric's `kind` label.
    pub fn kind(self) -> &'static str {
        match self {
            TooSlow::Stalled => "body_read_timeout",
            TooSlow::BelowMinRate => "min_body_rate",
        }
    }
}

/// The clock of one body: how long it has waited on its client.
pub struct PaceClock {
    pace: BodyPace,
    /// Waiting time of the waits that have ended.
    waited: Duration,
    /// When the current wait began.
    waiting_since: Option<Instant>,
    /// Made on the first wait and moved for later ones (no allocation per
    /// read).
    timer: Option<Pin<Box<Sleep>>>,
}

impl PaceClock {
    /// A body that has not waited yet.
    pub fn new(pace: BodyPace) -> PaceClock {
        PaceClock {
            pace,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// Notes that bytes (or the end) arrived: the current wait, if any, ends.
    pub fn arrived(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }

    /// Called when the client's body has nothing to give: starts or goes on
    /// waiting, and is ready with the verdict once the client, having sent
    /// `seen` bytes, has been too slow. The task is woken at the deadline.
    pub fn poll_waiting(&mut self, seen: u64, cx: &mut Context<'_>) -> Poll<TooSlow> {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let deadline = self.deadline(since, seen);
        if deadline <= now {
            return Poll::Ready(self.verdict(since, now));
        }
        match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
            }
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(self.verdict(since, Instant::now())),
            _ => Poll::Pending,
        }
    }

    /// When the wait begun at `since` fails, if no more bytes come.
    fn deadline(&self, since: Instant, seen: u64) -> Instant {
        let stalled = since + self.pace.read_timeout;
        if self.pace.min_rate == 0 {
            return stalled;
        }
        // The waiting time `seen` bytes pay for at the minimum rate, and
        // never less than the grace.
        let paid = Duration::from_secs_f64(seen as f64 / self.pace.min_rate as f64);
        let allowed = paid.max(self.pace.grace);
        let slow = since + allowed.saturating_sub(self.waited);
        stalled.min(slow)
    }

    /// Which demand failed at `now` (the stall when both did).
    fn verdict(&self, since: Instant, now: Instant) -> TooSlow {
        if now >= since + self.pace.read_timeout || self.pace.min_rate == 0 {
            TooSlow::Stalled
        } else {
            TooSlow::BelowMinRate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(read_ms: u64, rate: u64, grace_ms: u64) -> BodyPace {
        BodyPace {
            read_timeout: Duration::from_millis(read_ms),
            min_rate: rate,
            grace: Duration::from_millis(grace_ms),
        }
    }

    fn poll(clock: &mut PaceClock, seen: u64) -> Poll<TooSlow> {
        let waker = futures_util::task::noop_waker();
        clock.poll_waiting(seen, &mut Context::from_waker(&waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_read_timeout() {
        let mut clock = PaceClock::new(pace(1000, 0, 0));
        assert!(poll(&mut clock, 0).is_pending());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(poll(&mut clock, 0).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(poll(&mut clock, 0), Poll::Ready(TooSlow::Stalled));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_start_the_read_timeout_again() {
        let mut clock = PaceClock::new(pace(1000, 0, 0));
        for seen in 0..10 {
            assert!(poll(&mut clock, seen).is_pending());
            tokio::time::advance(Duration::from_millis(900)).await;
            clock.arrived();
        }
        assert!(poll(&mut clock, 10).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_the_minimum_rate_after_the_grace() {
        // 1 byte per 900 ms against 100 B/s after 3 s of waiting.
        let mut clock = PaceClock::new(pace(60_000, 100, 3000));
        let mut seen = 0;
        let verdict = loop {
            match poll(&mut clock, seen) {
                Poll::Ready(v) => break v,
                Poll::Pending => {}
            }
            tokio::time::advance(Duration::from_millis(900)).await;
            if let Poll::Ready(v) = poll(&mut clock, seen) {
                break v;
            }
            clock.arrived();
            seen += 1;
        };
        assert_eq!(verdict, TooSlow::BelowMinRate);
        assert!((3..=4).contains(&seen), "failed after {seen} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_is_never_cut_and_time_not_waiting_is_free() {
        let mut clock = PaceClock::new(pace(60_000, 1000, 1000));
        let mut seen = 0;
        for _ in 0..100 {
            assert!(poll(&mut clock, seen).is_pending());
            // 500 bytes per 400 ms of waiting: 1250 B/s.
            tokio::time::advance(Duration::from_millis(400)).await;
            clock.arrived();
            seen += 500;
            // The upstream is slow to ask for more: not the client's time.
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert!(poll(&mut clock, seen).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_wakes_the_reader_at_the_deadline() {
        let mut clock = PaceClock::new(pace(500, 0, 0));
        let verdict = std::future::poll_fn(|cx| clock.poll_waiting(0, cx)).await;
        assert_eq!(verdict, TooSlow::Stalled);
    }
}
