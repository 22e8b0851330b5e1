//! Token estimate, and settling the token reservations from the response's
//! usage.
//!
//! The TPM limiters put their [`Reservation`] into the response's
//! [`Reservations`], one extension entry for both ([`GatherReservations`]).
//! [`SettleLayer`], between Retry and
//! QueueAdmission, sees every attempt's response: no 2xx refunds them all;
//! a 2xx gets a [`SettleBody`] that reads `usage.total_tokens` from the JSON
//! body or the SSE chunk that carries it and settles them. No usage: the
//! estimate stands.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use backstop::rate_limit::{Attach, GcraStore, Reservation};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::json::usage_total_tokens;
use crate::trace::RequestMeta;

/// The request's token estimate (in the request extensions, as part of
/// [`RequestMeta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate(pub u64);

/// Cost function of the TPM limiters.
pub fn token_cost<B>(req: &Request<B>) -> u64 {
    req.extensions()
        .get::<RequestMeta>()
        .map_or(0, |m| m.tokens.0)
}

/// The estimate of CONFIG.md: ceil(bytes / 4), plus for chat and completions
/// `max_completion_tokens`, else `max_tokens`, else the default.
pub fn estimate(
    path: &str,
    body_len: usize,
    requested: Option<u64>,
    default_completion: u64,
) -> u64 {
    if path == "/v1/models" {
        return 0;
    }
    let prompt = (body_len as u64).div_ceil(4);
    let completion = if path == "/v1/chat/completions" || path == "/v1/completions" {
        requested.unwrap_or(default_completion)
    } else {
        0
    };
    prompt.saturating_add(completion)
}

/// The reservations of one attempt, gathered by [`GatherReservations`].
///
/// A plain value (a reservation is one `Arc`, so this is `Clone` as
/// extensions need): the gateway's stack has at most two TPM limiters
/// (the client's and the global one), which fit inline; more would spill
/// into `more`.
#[derive(Debug, Clone, Default)]
pub struct Reservations {
    first: [Option<Reservation<GcraStore>>; 2],
    more: Vec<Reservation<GcraStore>>,
}

impl Reservations {
    fn push(&mut self, r: Reservation<GcraStore>) {
        match self.first.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(r),
            None => self.more.push(r),
        }
    }

    fn is_empty(&self) -> bool {
        self.first[0].is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &Reservation<GcraStore>> {
        self.first.iter().flatten().chain(&self.more)
    }
}

/// The TPM limiters' reservation policy
/// ([`RateLimitLayer::attach`](backstop::rate_limit::RateLimitLayer::attach)):
/// each admitted request's [`Reservation`] joins the response's
/// [`Reservations`] (one extension entry for both limiters), and a request
/// that gets no response at all (a connect error, a timeout) gives it back
/// in full, as a non-2xx does in [`Settle`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GatherReservations;

impl<B> Attach<Response<B>, GcraStore> for GatherReservations {
    fn attach(&self, response: &mut Response<B>, make: impl FnOnce() -> Reservation<GcraStore>) {
        response
            .extensions_mut()
            .get_or_insert_default::<Reservations>()
            .push(make());
    }

    fn refund_on_error(&self) -> bool {
        true
    }
}

/// Refunds or settles the reservations of each attempt's response.
#[derive(Debug, Clone, Copy, Default)]
pub struct SettleLayer;

impl<S> Layer<S> for SettleLayer {
    type Service = Settle<S>;
    fn layer(&self, inner: S) -> Settle<S> {
        Settle { inner }
    }
}

/// See [`SettleLayer`].
#[derive(Debug, Clone)]
pub struct Settle<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Settle<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<SettleBody<RB>>;
    type Error = S::Error;
    type Future = SettleFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        SettleFuture {
            fut: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`Settle`].
    ///
    /// # Cancellation
    ///
    /// Holds only the inner future.
    #[allow(missing_debug_implementations)]
    pub struct SettleFuture<F> {
        #[pin]
        fut: F,
    }
}

impl<F, RB, E> Future for SettleFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<SettleBody<RB>>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut res = ready!(self.project().fut.poll(cx))?;
        let reservations = res
            .extensions_mut()
            .remove::<Reservations>()
            .unwrap_or_default();
        if !res.status().is_success() {
            for r in reservations.iter() {
                r.refund();
            }
            return Poll::Ready(Ok(
                res.map(|b| SettleBody::new(b, Reservations::default(), Mode::None))
            ));
        }
        let mode = if reservations.is_empty() {
            Mode::None
        } else if res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
        {
            Mode::Sse
        } else {
            Mode::Json
        };
        Poll::Ready(Ok(res.map(|b| SettleBody::new(b, reservations, mode))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Json,
    Sse,
}

/// The most of a JSON response kept to read its usage.
const MAX_JSON: usize = 4 << 20;

/// A response body passed through frame by frame, read on the side for
/// `usage.total_tokens`.
#[allow(missing_debug_implementations)]
pub struct SettleBody<B> {
    inner: B,
    reservations: Reservations,
    mode: Mode,
    /// A JSON body that came as one frame, kept as it is (no copy).
    first: Option<Bytes>,
    buf: BytesMut,
}

impl<B> SettleBody<B> {
    fn new(inner: B, reservations: Reservations, mode: Mode) -> Self {
        Self {
            inner,
            reservations,
            mode,
            first: None,
            buf: BytesMut::new(),
        }
    }

    fn settle(&mut self, total: u64) {
        for r in std::mem::take(&mut self.reservations).iter() {
            r.settle(total);
        }
        self.mode = Mode::None;
        self.first = None;
        self.buf = BytesMut::new();
    }

    fn on_data(&mut self, data: &Bytes) {
        match self.mode {
            Mode::None => {}
            Mode::Json => {
                let held = self.first.as_ref().map_or(self.buf.len(), Bytes::len);
                if held + data.len() > MAX_JSON {
                    self.mode = Mode::None;
                    self.first = None;
                    self.buf = BytesMut::new();
                } else if held == 0 && self.first.is_none() {
                    // Usually the whole body: a reference, not a copy.
                    self.first = Some(data.clone());
                } else {
                    if let Some(first) = self.first.take() {
                        self.buf.extend_from_slice(&first);
                    }
                    self.buf.extend_from_slice(data);
                }
            }
            Mode::Sse => {
                self.buf.extend_from_slice(data);
                while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                    let line = self.buf.split_to(pos + 1);
                    if let Some(total) = sse_usage(&line) {
                        self.settle(total);
                        return;
                    }
                }
                if self.buf.len() > MAX_JSON {
                    self.mode = Mode::None;
                    self.buf = BytesMut::new();
                }
            }
        }
    }

    fn on_end(&mut self) {
        if self.mode == Mode::Json {
            let body = self.first.as_deref().unwrap_or(&self.buf);
            if let Some(total) = usage_total_tokens(body) {
                self.settle(total);
            }
        }
        self.mode = Mode::None;
    }
}

fn sse_usage(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let data = line.strip_prefix("data:")?.trim_start();
    if !data.contains("\"usage\"") {
        return None;
    }
    usage_total_tokens(data.as_bytes())
}

impl<B> Body for SettleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.on_data(d);
                }
                if this.inner.is_end_stream() {
                    this.on_end();
                }
            }
            None => this.on_end(),
            Some(Err(_)) => this.mode = Mode::None,
        }
        Poll::Ready(frame)
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
    use super::*;

    #[test]
    fn estimates() {
        assert_eq!(estimate("/v1/chat/completions", 9, Some(20), 1024), 3 + 20);
        assert_eq!(estimate("/v1/completions", 8, Some(10), 1024), 2 + 10);
        assert_eq!(estimate("/v1/chat/completions", 4, None, 1024), 1 + 1024);
        assert_eq!(estimate("/v1/embeddings", 5, Some(10), 1024), 2);
        assert_eq!(estimate("/v1/models", 0, None, 1024), 0);
    }

    #[test]
    fn json_bodies_are_held_whole_however_they_are_framed() {
        let held = |frames: &[&'static str]| {
            let mut body = SettleBody::new((), Reservations::default(), Mode::Json);
            for f in frames {
                body.on_data(&Bytes::from_static(f.as_bytes()));
            }
            body.first.as_deref().unwrap_or(&body.buf).to_vec()
        };
        assert_eq!(held(&[r#"{"usage":1}"#]), br#"{"usage":1}"#);
        assert_eq!(held(&[r#"{"us"#, r#"age":1}"#]), br#"{"usage":1}"#);
        assert_eq!(held(&["", "{", "}", ""]), b"{}");
        assert_eq!(held(&[]), b"");
    }

    #[test]
    fn usage_from_sse_line() {
        assert_eq!(
            sse_usage(b"data: {\"usage\":{\"total_tokens\":42}}\n"),
            Some(42)
        );
        assert_eq!(sse_usage(b"data: [DONE]\n"), None);
        assert_eq!(
            usage_total_tokens(br#"{"usage":{"total_tokens":7}}"#),
            Some(7)
        );
    }
}
