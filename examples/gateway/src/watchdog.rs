//! The maximum stream duration for clients that stop reading.
//!
//! `HttpAttemptTimeout`'s body enforces `attempt.max_stream_duration`, but
//! only while it is polled; a client that stops reading stops hyper's polls
//! (backpressure), and the stream would stay open for ever. DESIGN asks for a
//! timer outside the body that drops the connection: each connection has a
//! [`Watchdog`], every response body on it holds a [`Watch`] with a deadline
//! of request arrival + `sla.timeout` + `attempt.max_stream_duration` (an
//! attempt starts before the SLA deadline, so this never cuts a stream the
//! body's own bound would allow), and the connection task drops the
//! connection when the earliest live deadline passes.
//!
//! With HTTP/2 one late stream cuts the whole connection, its other streams
//! included; the body's own bound, which fires first whenever the client
//! reads, keeps that to clients that have stopped reading.
//!
//! # Cost per response
//!
//! A watch is a lock, a set insert and, at the end, a removal. The waiting
//! task is woken only when a new deadline comes before the instant it will
//! look anyway: on a keep-alive connection every response's deadline lies
//! after the previous one's, so the task sleeps on until the earliest
//! deadline it saw and then moves on to the earliest one still alive,
//! instead of being woken (one more poll of the whole connection) by every
//! request.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Deadlines of the response bodies alive on one connection.
#[derive(Debug, Default)]
pub struct Watchdog {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Deadline and id of each live response. A list, not an ordered set:
    /// an HTTP/1 connection has one response alive at a time (an HTTP/2 one
    /// a few), so a scan is cheaper than a tree's insert and removal, and
    /// the list keeps its one allocation for the connection's life.
    live: Vec<(Instant, u64)>,
    /// When the waiting task looks at `live` next (it sleeps until then);
    /// `None` while it waits for a notification only. A new deadline
    /// before it (or any, when `None`) wakes the task.
    next_look: Option<Instant>,
}

impl Watchdog {
    /// A watchdog with nothing to watch.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Watches a response that must be finished by `deadline`; dropping the
    /// [`Watch`] stops watching it.
    pub fn watch(self: &Arc<Self>, deadline: Instant) -> Watch {
        let (key, wake) = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (deadline, state.next_id);
            state.next_id += 1;
            state.live.push(key);
            let wake = state.next_look.is_none_or(|at| deadline < at);
            if wake {
                state.next_look = Some(deadline);
            }
            (key, wake)
        };
        if wake {
            self.changed.notify_waiters();
        }
        Watch {
            dog: Arc::clone(self),
            key,
        }
    }

    /// How many responses are watched now.
    pub fn watched(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .live
            .len()
    }

    /// The earliest live deadline, which the waiting task will look at
    /// next (recorded for [`watch`](Self::watch)).
    fn next_look(&self) -> Option<Instant> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let earliest = state.live.iter().map(|(at, _)| *at).min();
        state.next_look = earliest;
        earliest
    }

    /// Resolves once a watched response is still alive at its deadline.
    pub async fn expired(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before reading the state, so no change is missed.
            changed.as_mut().enable();
            match self.next_look() {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// One watched response; dropping it (the body ended or was dropped) stops
/// the watch.
#[derive(Debug)]
pub struct Watch {
    dog: Arc<Watchdog>,
    key: (Instant, u64),
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self
            .dog
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = state.live.iter().position(|k| *k == self.key) {
            state.live.swap_remove(i);
        }
    }
}

pin_project! {
    /// A response body that holds a [`Watch`] until it ends.
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        watch: Option<Watch>,
    }
}

impl<B> WatchedBody<B> {
    /// Wraps `inner`, watched by `watch` (if any) until it ends or is
    /// dropped.
    pub fn new(inner: B, watch: impl Into<Option<Watch>>) -> Self {
        Self {
            inner,
            watch: watch.into(),
        }
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll_frame(cx));
        match &out {
            Some(Ok(_)) => {}
            // Ended or failed: nothing more will be written.
            None | Some(Err(_)) => *this.watch = None,
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::sync::mpsc;
    use tokio_test::{assert_pending, assert_ready, task};

    use super::*;

    struct ChanBody(mpsc::UnboundedReceiver<Bytes>);

    impl Body for ChanBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_reads_trips_at_its_deadline() {
        let dog = Watchdog::new();
        let (_tx, rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        // Never polled: the client stopped reading.
        let _body = WatchedBody::new(ChanBody(rx), dog.watch(start + Duration::from_secs(5)));
        let mut expired = task::spawn(dog.expired());
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_ready!(expired.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn ended_and_dropped_bodies_stop_the_watch() {
        let dog = Watchdog::new();
        let start = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = WatchedBody::new(ChanBody(rx), dog.watch(start + Duration::from_secs(5)));
        let dropped = WatchedBody::new(
            http_body_util::Empty::<Bytes>::new(),
            dog.watch(start + Duration::from_secs(1)),
        );
        let mut expired = task::spawn(dog.expired());
        assert_pending!(expired.poll());
        assert_eq!(dog.watched(), 2);
        drop(dropped);
        assert_eq!(dog.watched(), 1, "a dropped body stops its watch");
        tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
        drop(tx);
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b"data: 1\n\n");
        assert_eq!(dog.watched(), 1, "still streaming");
        assert!(body.frame().await.is_none());
        assert_eq!(dog.watched(), 0, "the body ended: nothing left to watch");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_pending!(expired.poll(), "nothing alive, nothing to cut");
        // A later response is watched afresh, and a new earlier deadline
        // wakes the waiting watchdog.
        let _late = dog.watch(Instant::now() + Duration::from_secs(1));
        assert!(expired.is_woken());
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_ready!(expired.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn later_deadlines_do_not_wake_the_waiting_task() {
        let dog = Watchdog::new();
        let start = Instant::now();
        let first = dog.watch(start + Duration::from_secs(5));
        let mut expired = task::spawn(dog.expired());
        assert_pending!(expired.poll());
        // Keep-alive: the first response ends, the next one is watched.
        drop(first);
        let second = dog.watch(start + Duration::from_secs(6));
        assert!(!expired.is_woken(), "a later deadline needs no wake-up");
        // The task looks again at the first deadline, then waits for the
        // second, which trips.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(expired.is_woken());
        assert_pending!(expired.poll());
        // An earlier deadline than the one it waits for wakes it.
        let third = dog.watch(start + Duration::from_millis(5_500));
        assert!(expired.is_woken(), "an earlier deadline wakes it");
        assert_pending!(expired.poll());
        drop(third);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_ready!(expired.poll());
        drop(second);
    }
}
