//! The connection's deadlines: the maximum stream duration for clients that
//! stop reading, and the time a client has to send its next request head.
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
//! # The head deadline
//!
//! The same watchdog enforces `server.header_read_timeout`, which hyper's
//! own option would enforce with a timer of its own for every request (a
//! boxed `Sleep` made, registered and dropped per request head). A
//! connection is given the timeout to send its first head when it is
//! accepted, and again each time its last live response ends; a head that
//! arrives ([`Watchdog::head_arrived`]) clears it. So, as with hyper's
//! option, a client that sends its head too slowly, or leaves a keep-alive
//! connection idle for longer than the timeout, is cut. An HTTP/2
//! connection gets the deadline for its first request only (its streams
//! are multiplexed: idleness between them is the protocol's business), and
//! none is set after a request on which the connection closes
//! (`Connection: close`, HTTP/1.0 without keep-alive): its response may
//! take as long to read as the stream deadline allows.
//!
//! # Cost per response
//!
//! A watch is a lock, a push on a short list and, at the end, a removal. The
//! waiting task is woken only when a new deadline comes before the instant
//! it will look anyway: on a keep-alive connection every response's deadline
//! (and every head deadline) lies after the previous one's, so the task
//! sleeps on until the earliest deadline it saw and then moves on to the
//! earliest one still alive, instead of being woken (one more poll of the
//! whole connection) by every request.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Deadlines of one connection: its live response bodies and its next
/// request head.
#[derive(Debug, Default)]
pub struct Watchdog {
    state: Mutex<State>,
    changed: Notify,
    /// `server.header_read_timeout`, if heads are watched.
    head_timeout: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Deadline and id of each live response. A list, not an ordered set:
    /// an HTTP/1 connection has one response alive at a time (an HTTP/2 one
    /// a few), so a scan is cheaper than a tree's insert and removal, and
    /// the list keeps its one allocation for the connection's life.
    live: Vec<(Instant, u64)>,
    /// When the next request head must have arrived, while one is awaited.
    head: Option<Instant>,
    /// No head is timed any more: HTTP/2 (its streams are multiplexed), or
    /// an HTTP/1 request after which the connection closes.
    heads_done: bool,
    /// When the waiting task looks at the deadlines next (it sleeps until
    /// then); `None` while it waits for a notification only. A new deadline
    /// before it (or any, when `None`) wakes the task.
    next_look: Option<Instant>,
}

impl State {
    /// Records `deadline` as one the waiting task must see; whether the
    /// task must be woken for it.
    fn wake_for(&mut self, deadline: Instant) -> bool {
        let wake = self.next_look.is_none_or(|at| deadline < at);
        if wake {
            self.next_look = Some(deadline);
        }
        wake
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A response was still being written at its deadline.
    Stream,
    /// No complete request head arrived in time.
    Head,
}

impl Watchdog {
    /// A watchdog with nothing to watch and heads not watched.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A watchdog for a connection accepted now (at `accepted`): its first
    /// request head, and each next one once no response is live, must
    /// arrive within `head_timeout`.
    pub fn with_head_timeout(head_timeout: Duration, accepted: Instant) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                head: Some(accepted + head_timeout),
                ..State::default()
            }),
            changed: Notify::new(),
            head_timeout: Some(head_timeout),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request head arrived: no head is awaited until its response (and
    /// any other live one) ends. `last`: no head is timed from now on,
    /// because the connection is HTTP/2 (idleness between its streams is
    /// the protocol's business) or closes after this request's response (a
    /// slow reader of that response is not cut for a head that will not
    /// come).
    pub fn head_arrived(&self, last: bool) {
        if self.head_timeout.is_some() {
            let mut state = self.state();
            state.head = None;
            state.heads_done |= last;
        }
    }

    /// Watches a response that must be finished by `deadline`; dropping the
    /// [`Watch`] stops watching it.
    pub fn watch(self: &Arc<Self>, deadline: Instant) -> Watch {
        let (key, wake) = {
            let mut state = self.state();
            let key = (deadline, state.next_id);
            state.next_id += 1;
            state.live.push(key);
            (key, state.wake_for(deadline))
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
        self.state().live.len()
    }

    /// The earliest deadline, which the waiting task will look at next
    /// (recorded for [`watch`](Self::watch)), and which one it is.
    fn next_look(&self) -> Option<(Instant, Expired)> {
        let mut state = self.state();
        let stream = state.live.iter().map(|(at, _)| *at).min();
        let earliest = match (stream, state.head) {
            (Some(s), Some(h)) if h < s => Some((h, Expired::Head)),
            (Some(s), _) => Some((s, Expired::Stream)),
            (None, h) => h.map(|h| (h, Expired::Head)),
        };
        state.next_look = earliest.map(|(at, _)| at);
        earliest
    }

    /// Resolves once a watched response is still alive at its deadline, or
    /// an awaited request head has not arrived by its own.
    pub async fn expired(&self) -> Expired {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before reading the state, so no change is missed.
            changed.as_mut().enable();
            match self.next_look() {
                Some((at, which)) if at <= Instant::now() => return which,
                Some((at, _)) => {
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
/// the watch, and when it was the last one live, starts the wait for the
/// next request head.
#[derive(Debug)]
pub struct Watch {
    dog: Arc<Watchdog>,
    key: (Instant, u64),
}

impl Drop for Watch {
    fn drop(&mut self) {
        let dog = &*self.dog;
        let wake = {
            let mut state = dog.state();
            if let Some(i) = state.live.iter().position(|k| *k == self.key) {
                state.live.swap_remove(i);
            }
            match dog.head_timeout {
                Some(timeout) if state.live.is_empty() && !state.heads_done => {
                    let by = Instant::now() + timeout;
                    state.head = Some(by);
                    state.wake_for(by)
                }
                _ => false,
            }
        };
        if wake {
            dog.changed.notify_waiters();
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

    #[tokio::test(start_paused = true)]
    async fn a_head_that_does_not_come_trips_the_head_deadline() {
        let start = Instant::now();
        let dog = Watchdog::with_head_timeout(Duration::from_secs(10), start);
        let mut expired = task::spawn(dog.expired());
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(assert_ready!(expired.poll()), Expired::Head);
    }

    #[tokio::test(start_paused = true)]
    async fn heads_clear_the_deadline_and_ended_responses_restart_it() {
        let start = Instant::now();
        let head = Duration::from_secs(10);
        let dog = Watchdog::with_head_timeout(head, start);
        let mut expired = task::spawn(dog.expired());
        assert_pending!(expired.poll());
        // The first head comes at 4 s; its response lives until 30 s: no
        // head is awaited meanwhile, whatever the time.
        tokio::time::advance(Duration::from_secs(4)).await;
        dog.head_arrived(false);
        let response = dog.watch(start + Duration::from_secs(600));
        tokio::time::advance(Duration::from_secs(26)).await;
        assert_pending!(expired.poll());
        // It ends at 30 s: the next head is due by 40 s.
        drop(response);
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(assert_ready!(expired.poll()), Expired::Head);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_stream_is_told_from_a_late_head() {
        let start = Instant::now();
        let dog = Watchdog::with_head_timeout(Duration::from_secs(10), start);
        dog.head_arrived(false);
        let _stuck = dog.watch(start + Duration::from_secs(20));
        let mut expired = task::spawn(dog.expired());
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(assert_ready!(expired.poll()), Expired::Stream);
    }

    /// A request after which the connection closes (`Connection: close`,
    /// or HTTP/1.0 without keep-alive) is the last head: a slow reader of
    /// its response is cut by the stream deadline only, not for a next
    /// head that will not come.
    #[tokio::test(start_paused = true)]
    async fn no_head_is_awaited_after_the_last_one() {
        let start = Instant::now();
        let dog = Watchdog::with_head_timeout(Duration::from_secs(10), start);
        dog.head_arrived(true);
        // The response's last frame is handed to hyper at 1 s; the client
        // reads it for a minute.
        let response = dog.watch(start + Duration::from_secs(600));
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(response);
        let mut expired = task::spawn(dog.expired());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_pending!(expired.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_are_not_cut_for_idling_between_streams() {
        let start = Instant::now();
        let dog = Watchdog::with_head_timeout(Duration::from_secs(10), start);
        dog.head_arrived(true);
        drop(dog.watch(start + Duration::from_secs(60)));
        let mut expired = task::spawn(dog.expired());
        assert_pending!(expired.poll());
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert_pending!(expired.poll());
    }
}
