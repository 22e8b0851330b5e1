//! The per-request context every backstop layer reads and some publish.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Duration, Instant};

// The current context: a thread-local pointer to a context that lives in the
// scope's own frame (a `sync_scope` closure's caller, or a pinned `Scoped`
// future during one poll), set for the length of the call or the poll and
// reset on the way out, also on unwind (`scoped_tls`). Publishing moves and
// copies nothing: a scope costs a pointer store and a pointer load.
scoped_tls::scoped_thread_local!(static CURRENT: Context);

/// What one request carries through the stack: its SLA deadline, the current
/// attempt's deadline, its attempt number and its id.
///
/// The admission ticket travels beside it, offered for one call at a time
/// (see [`admission`](crate::admission)): a context is cloned freely, a queue
/// slot must have exactly one holder.
///
/// A layer that publishes a value reads the outer context at `call` time
/// ([`Context::current`]), combines its own value with it (deadlines take the
/// minimum, so an inner layer can only shorten them), and scopes the result
/// around the inner `call()` ([`Context::sync_scope`]) and around every poll
/// of the inner future ([`Context::scope`]). Layers that only read call
/// [`Context::current`] in their `call()`.
///
/// The context behaves as a task-local (a thread-local pointer that every
/// scope sets to its own context for one synchronous call or one poll, and
/// resets after, so a scope moves and copies nothing): it does not cross a `tokio::spawn` or a
/// `tower::buffer::Buffer`, and hyper polls response bodies outside every
/// scope, so body wrappers capture what they need at call time. For HTTP,
/// `PropagateContextLayer` (feature `http`), placed innermost, copies it into
/// the request extensions.
///
/// Cloning is cheap: two `Instant`s, a number and one reference-counted
/// pointer. Publishing needs no clone beyond the one the layer keeps:
/// [`sync_scope_in_place`](Self::sync_scope_in_place) borrows, and layers
/// that only re-publish a context captured earlier use
/// [`rescope`](Self::rescope) / [`rescope_future`](Self::rescope_future),
/// the same scopes under names that say so.
#[derive(Clone, Default)]
pub struct Context {
    sla_deadline: Option<Instant>,
    attempt_deadline: Option<Instant>,
    attempt: Option<Attempt>,
    request_id: Option<RequestId>,
}

impl Context {
    /// An empty context: no deadlines, no attempt, no id.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// The context of the current scope, or an empty one outside any scope.
    #[inline]
    pub fn current() -> Self {
        Self::try_current().unwrap_or_default()
    }

    /// Runs `f` on the context of the current scope (an empty one outside any
    /// scope), without cloning it.
    #[inline]
    pub fn with_current<R>(f: impl FnOnce(&Self) -> R) -> R {
        if CURRENT.is_set() {
            CURRENT.with(f)
        } else {
            f(&Self::new())
        }
    }

    /// The context of the current scope, if the caller runs inside one.
    #[inline]
    pub fn try_current() -> Option<Self> {
        if CURRENT.is_set() {
            Some(CURRENT.with(Self::clone))
        } else {
            None
        }
    }

    /// The end-to-end deadline of the request.
    #[inline]
    pub fn sla_deadline(&self) -> Option<Instant> {
        self.sla_deadline
    }

    /// The deadline of the current attempt, already capped by the SLA
    /// deadline when both are known.
    #[inline]
    pub fn attempt_deadline(&self) -> Option<Instant> {
        min_opt(self.attempt_deadline, self.sla_deadline)
    }

    /// The earliest deadline that applies right now (attempt or SLA).
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        self.attempt_deadline()
    }

    /// Time left until [`deadline`](Self::deadline), measured from `now`.
    #[inline]
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.deadline().map(|d| d.saturating_duration_since(now))
    }

    /// The attempt number (1 for the first attempt), set by `Retry`.
    #[inline]
    pub fn attempt(&self) -> Option<Attempt> {
        self.attempt
    }

    /// The request id, set by the request-id layer.
    #[inline]
    pub fn request_id(&self) -> Option<&RequestId> {
        self.request_id.as_ref()
    }

    /// Sets the SLA deadline to the earlier of the current one and `at`.
    #[must_use]
    #[inline]
    pub fn with_sla_deadline(mut self, at: Instant) -> Self {
        self.sla_deadline = min_opt(self.sla_deadline, Some(at));
        self
    }

    /// Sets the attempt deadline to the earlier of the current one and `at`.
    #[must_use]
    #[inline]
    pub fn with_attempt_deadline(mut self, at: Instant) -> Self {
        self.attempt_deadline = min_opt(self.attempt_deadline, Some(at));
        self
    }

    /// Replaces the attempt number, and clears the previous attempt's
    /// deadline: a new attempt starts afresh.
    #[must_use]
    #[inline]
    pub fn with_attempt(mut self, attempt: Attempt) -> Self {
        self.attempt = Some(attempt);
        self.attempt_deadline = None;
        self
    }

    /// Whether it carries nothing at all (the default).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.sla_deadline.is_none()
            && self.attempt_deadline.is_none()
            && self.attempt.is_none()
            && self.request_id.is_none()
    }

    /// Replaces the request id.
    #[must_use]
    #[inline]
    pub fn with_request_id(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }

    /// Runs `f` with this context as the current one.
    ///
    /// Layers use it around the inner service's `call()`.
    #[inline]
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(&self, f)
    }

    /// Like [`sync_scope`](Self::sync_scope), but borrows the context
    /// instead of consuming it: a layer that also keeps the context (for
    /// [`scope`](Self::scope)) needs no clone.
    #[inline]
    pub fn sync_scope_in_place<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(self, f)
    }

    /// Makes this context the current one during every poll of `future`, and
    /// while it is dropped.
    #[inline]
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            ctx: self,
            inner: Some(future),
        }
    }

    /// Runs `f` with this context as the current one: the same as
    /// [`sync_scope_in_place`](Self::sync_scope_in_place), named for layers
    /// that *re-publish* a context they captured earlier (so that it is right
    /// even when their future is polled elsewhere).
    ///
    /// A scope is a pointer store, so it is set even when the current
    /// context already carries the same values: checking first
    /// ([`is_current`](Self::is_current)) would cost more than it saves.
    #[inline]
    pub fn rescope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(self, f)
    }

    /// Like [`scope`](Self::scope), for a context captured earlier: at every
    /// poll (and at drop) the inner future runs with this context. The same
    /// future as `scope` makes (see [`rescope`](Self::rescope)).
    #[inline]
    pub fn rescope_future<F: Future>(self, future: F) -> Rescoped<F> {
        self.scope(future)
    }

    /// Whether the current context carries the same values as this one (the
    /// same id, not merely an equal one).
    #[inline]
    pub fn is_current(&self) -> bool {
        CURRENT.is_set() && CURRENT.with(|cur| std::ptr::eq(cur, self) || cur.same(self))
    }

    #[inline]
    fn same(&self, other: &Self) -> bool {
        self.sla_deadline == other.sla_deadline
            && self.attempt_deadline == other.attempt_deadline
            && self.attempt == other.attempt
            && match (&self.request_id, &other.request_id) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a.0, &b.0),
                (None, None) => true,
                _ => false,
            }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("sla_deadline", &self.sla_deadline)
            .field("attempt_deadline", &self.attempt_deadline)
            .field("attempt", &self.attempt)
            .field("request_id", &self.request_id)
            .finish()
    }
}

#[inline]
fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

pin_project! {
    /// A future that runs with a [`Context`] as the current one.
    ///
    /// Returned by [`Context::scope`]. The context is in scope during every
    /// poll of the inner future and while the inner future is dropped.
    pub struct Scoped<F> {
        ctx: Context,
        #[pin]
        inner: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        #[inline]
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                CURRENT.set(this.ctx, || this.inner.set(None));
            }
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut inner = this.inner;
        CURRENT.set(this.ctx, || {
            let out = match inner.as_mut().as_pin_mut() {
                Some(fut) => fut.poll(cx),
                // Only after it completed.
                None => Poll::Pending,
            };
            if out.is_ready() {
                // Drop the finished future now, while in scope: dropping
                // this future later then needs no scope.
                inner.set(None);
            }
            out
        })
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped").finish_non_exhaustive()
    }
}

/// The future of [`Context::rescope_future`]: a [`Scoped`] future. Since a
/// scope costs a pointer store, re-publishing a captured context needs no
/// future of its own.
pub type Rescoped<F> = Scoped<F>;

/// The attempt number of a request: 1 for the first attempt, 2 for the first
/// retry, and so on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(pub u32);

impl Attempt {
    /// The first attempt.
    pub const FIRST: Self = Self(1);

    /// The attempt number.
    #[inline]
    pub fn get(self) -> u32 {
        self.0
    }

    /// Whether this is a retry (attempt 2 or later).
    #[inline]
    pub fn is_retry(self) -> bool {
        self.0 > 1
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A request id: 1 to 128 bytes of visible ASCII, or a generated UUIDv7.
///
/// Cheap to clone (reference-counted).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The longest id accepted from a client.
    pub const MAX_LEN: usize = 128;

    /// A fresh UUIDv7 id (time-ordered, random tail).
    ///
    /// Ids from one thread are strictly ordered; across threads, by
    /// millisecond. Each thread keeps its own UUIDv7 counter (uuid's
    /// `now_v7` shares one behind a mutex, a lock per request).
    pub fn generate() -> Self {
        use uuid::timestamp::context::{ContextV7, ThreadLocalContext};
        thread_local! {
            static V7: ContextV7 = const { ContextV7::new() };
        }
        let ts = uuid::Timestamp::now(ThreadLocalContext::new(&V7));
        let mut buf = uuid::Uuid::encode_buffer();
        let s = uuid::Uuid::new_v7(ts).hyphenated().encode_lower(&mut buf);
        Self(Arc::from(&*s))
    }

    /// Accepts `bytes` as an id if it is 1 to 128 bytes of visible ASCII
    /// (`!` to `~`), else `None`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if Self::is_valid(bytes) {
            // Visible ASCII is valid UTF-8.
            std::str::from_utf8(bytes).ok().map(|s| Self(Arc::from(s)))
        } else {
            None
        }
    }

    /// Whether `bytes` is 1 to 128 bytes of visible ASCII.
    pub fn is_valid(bytes: &[u8]) -> bool {
        !bytes.is_empty() && bytes.len() <= Self::MAX_LEN && bytes.iter().all(u8::is_ascii_graphic)
    }

    /// The id as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RequestId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[tokio::test(start_paused = true)]
    async fn deadlines_take_the_minimum() {
        let now = Instant::now();
        let ctx = Context::new()
            .with_sla_deadline(now + Duration::from_secs(10))
            .with_sla_deadline(now + Duration::from_secs(20));
        assert_eq!(ctx.sla_deadline(), Some(now + Duration::from_secs(10)));
        let ctx = ctx.with_attempt_deadline(now + Duration::from_secs(30));
        // The attempt deadline never reads later than the SLA deadline.
        assert_eq!(ctx.attempt_deadline(), Some(now + Duration::from_secs(10)));
        let ctx = ctx.with_attempt_deadline(now + Duration::from_secs(3));
        assert_eq!(ctx.deadline(), Some(now + Duration::from_secs(3)));
        assert_eq!(ctx.remaining(now), Some(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn scopes_nest_and_unwind() {
        assert!(Context::try_current().is_none());
        let outer = Context::new().with_attempt(Attempt(2));
        let seen = outer
            .scope(async {
                let inner = Context::current().with_request_id(RequestId::generate());
                let inner_seen = inner.scope(async { Context::current() }).await;
                (Context::current(), inner_seen)
            })
            .await;
        assert_eq!(seen.0.attempt(), Some(Attempt(2)));
        assert!(seen.0.request_id().is_none());
        assert_eq!(seen.1.attempt(), Some(Attempt(2)));
        assert!(seen.1.request_id().is_some());
        assert!(Context::try_current().is_none());
    }

    #[test]
    fn sync_scope_works_without_a_runtime() {
        let id = RequestId::parse(b"abc").unwrap();
        let got = Context::new()
            .with_request_id(id.clone())
            .sync_scope(|| Context::current().request_id().cloned());
        assert_eq!(got, Some(id));
    }

    #[tokio::test]
    async fn rescope_sees_the_captured_context() {
        let id = RequestId::parse(b"abc").unwrap();
        let ctx = Context::new().with_request_id(id.clone());
        // Outside any scope: scoped for the call.
        assert!(!ctx.is_current());
        let seen = ctx.rescope(|| Context::current().request_id().cloned());
        assert_eq!(seen, Some(id.clone()));
        // Already current: runs as is.
        let inner = ctx.clone();
        let same = ctx
            .clone()
            .sync_scope(|| (inner.is_current(), inner.rescope(Context::current)));
        assert!(same.0);
        assert_eq!(same.1.request_id(), Some(&id));
        // Another context is current: the captured one wins.
        let other = Context::new().with_attempt(Attempt(3));
        let seen = other.sync_scope(|| ctx.rescope(Context::current));
        assert_eq!(seen.request_id(), Some(&id));
        assert_eq!(seen.attempt(), None);
        // The future variant, polled outside any scope and inside another.
        let fut = ctx
            .clone()
            .rescope_future(async { Context::current().request_id().cloned() });
        assert_eq!(fut.await, Some(id.clone()));
        let fut = ctx
            .clone()
            .rescope_future(async { Context::current().request_id().cloned() });
        let got = Context::new().with_attempt(Attempt(2)).scope(fut).await;
        assert_eq!(got, Some(id));
    }

    #[test]
    fn rescoped_drops_its_future_in_scope() {
        struct Probe(std::rc::Rc<std::cell::Cell<Option<Attempt>>>);
        impl Drop for Probe {
            #[inline]
            fn drop(&mut self) {
                self.0.set(Context::current().attempt());
            }
        }
        let seen = std::rc::Rc::new(std::cell::Cell::new(None));
        let probe = Probe(std::rc::Rc::clone(&seen));
        let fut = Context::new()
            .with_attempt(Attempt(4))
            .rescope_future(async move {
                let _probe = probe;
            });
        drop(fut);
        assert_eq!(seen.get(), Some(Attempt(4)));
    }

    #[test]
    fn sync_scope_in_place_restores_both() {
        let outer = Context::new().with_attempt(Attempt(1));
        let own = Context::new().with_attempt(Attempt(2));
        let (seen, after) = outer.sync_scope(|| {
            let seen = own.sync_scope_in_place(Context::current);
            (seen, Context::current())
        });
        assert_eq!(seen.attempt(), Some(Attempt(2)));
        assert_eq!(after.attempt(), Some(Attempt(1)));
        assert!(Context::try_current().is_none());
        // Also outside any scope, and on unwind.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            own.sync_scope_in_place(|| panic!("boom"));
        }));
        assert!(caught.is_err());
        assert!(Context::try_current().is_none());
    }

    #[test]
    fn scopes_work_while_the_thread_locals_are_torn_down() {
        // A future left in another thread-local is dropped by that local's
        // destructor, at thread exit; its drop still runs in its scope.
        struct Probe(std::sync::mpsc::Sender<Option<Attempt>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.0.send(Context::current().attempt());
            }
        }
        thread_local! {
            static PARKED: RefCell<Option<Pin<Box<dyn Future<Output = ()>>>>> =
                const { RefCell::new(None) };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let probe = Probe(tx);
            let fut = Context::new().with_attempt(Attempt(5)).scope(async move {
                let _probe = probe;
                std::future::pending::<()>().await;
            });
            PARKED.with(|p| *p.borrow_mut() = Some(Box::pin(fut)));
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), Some(Attempt(5)));
    }

    #[test]
    fn generated_ids_are_ordered_per_thread_and_unique_across_threads() {
        let per_thread = || (0..2000).map(|_| RequestId::generate()).collect::<Vec<_>>();
        let a = std::thread::spawn(per_thread).join().unwrap();
        let b = std::thread::spawn(per_thread).join().unwrap();
        // UUIDv7 text sorts by time, then by the thread's counter.
        assert!(a.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        let mut all: Vec<&str> = a.iter().chain(&b).map(RequestId::as_str).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4000);
    }

    #[test]
    fn request_id_rules() {
        assert!(RequestId::parse(b"").is_none());
        assert!(RequestId::parse(b"has space").is_none());
        assert!(RequestId::parse("é".as_bytes()).is_none());
        assert!(RequestId::parse(&[b'a'; 128]).is_some());
        assert!(RequestId::parse(&[b'a'; 129]).is_none());
        let id = RequestId::generate();
        assert_eq!(id.as_str().len(), 36);
        assert!(RequestId::is_valid(id.as_str().as_bytes()));
        // UUIDv7: version nibble 7.
        assert_eq!(&id.as_str()[14..15], "7");
    }
}
