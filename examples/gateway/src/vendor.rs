//! The simulated vendor: an OpenAI-shaped axum app for tests, demos and
//! benchmarks.
//!
//! Routes: `POST /v1/chat/completions` (JSON, or SSE with `"stream": true`),
//! `POST /v1/completions`, `POST /v1/embeddings`, `GET /v1/models`, and
//! `GET /sim/stats` (attempts seen per request id, streams cancelled).
//! Usage is in every response and in the final stream chunk, then
//! `data: [DONE]`.
//!
//! Knobs ([`VendorOptions`]) apply to every request; a request may override
//! them with headers (the gateway forwards them like any end-to-end header):
//! `x-sim-latency-ms`, `x-sim-status` (answer this status),
//! `x-sim-fail-attempts` (answer 500 to the first N attempts of one
//! `x-request-id`), `x-sim-stream-chunks`, `x-sim-chunk-interval-ms`,
//! `x-sim-stall-ms` (stall this long before the first body byte),
//! `x-sim-slow-attempts` with `x-sim-slow-ms` (the first N attempts of one
//! `x-request-id` take this long before the head).

// Handlers answer `Result<_, Response>`: the error is the response.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The vendor's knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct VendorOptions {
    /// Latency before the response head, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Uniform jitter added to the latency, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub jitter_ms: u64,
    /// Fraction of requests answered 500 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction of requests answered 429 with `Retry-After: 1` (0 to 1).
    #[arg(long = "rate-429", default_value_t = 0.0)]
    pub rate_429: f64,
    /// Content chunks in a streamed response.
    #[arg(long, default_value_t = 8)]
    pub stream_chunks: u32,
    /// Milliseconds between streamed chunks.
    #[arg(long, default_value_t = 20)]
    pub chunk_interval_ms: u64,
    /// Seed of the vendor's random numbers.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl Default for VendorOptions {
    fn default() -> Self {
        Self {
            latency_ms: 20,
            jitter_ms: 10,
            error_rate: 0.0,
            rate_429: 0.0,
            stream_chunks: 8,
            chunk_interval_ms: 20,
            seed: 7,
        }
    }
}

/// SplitMix64: small, seeded, good enough for a simulator.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Counters the vendor keeps, shared with whoever started it.
#[derive(Debug, Default)]
pub struct VendorStats {
    attempts: Mutex<HashMap<String, u32>>,
    /// Requests received.
    pub requests: AtomicU64,
    /// Streams whose reader went away before the end.
    pub cancelled: AtomicU64,
    /// Streams that ran to the end.
    pub completed: AtomicU64,
}

impl VendorStats {
    /// Attempts seen for one `x-request-id`.
    pub fn attempts(&self, request_id: &str) -> u32 {
        self.attempts
            .lock()
            .map_or(0, |m| m.get(request_id).copied().unwrap_or(0))
    }

    fn record(&self, request_id: &str) -> u32 {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(mut m) = self.attempts.lock() else {
            return 1;
        };
        if m.len() > 100_000 {
            m.clear();
        }
        let n = m.entry(request_id.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

#[derive(Debug)]
struct Vendor {
    opts: VendorOptions,
    rng: Mutex<Rng>,
    stats: Arc<VendorStats>,
    seq: AtomicU64,
}

/// The vendor's router, and its counters.
pub fn vendor_app(opts: VendorOptions) -> (Router, Arc<VendorStats>) {
    let stats = Arc::new(VendorStats::default());
    let vendor = Arc::new(Vendor {
        rng: Mutex::new(Rng(opts.seed)),
        opts,
        stats: Arc::clone(&stats),
        seq: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/sim/stats", get(stats_handler))
        .with_state(vendor);
    (router, stats)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut res = (
        status,
        axum::Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

/// Latency, forced statuses and random failures. `Err` is the answer.
async fn prelude(v: &Vendor, headers: &HeaderMap) -> Result<u32, Response> {
    let id = headers
        .get("x-request-id")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let attempt = v.stats.record(&id);
    let (jitter, roll_err, roll_429) = {
        let mut rng = v
            .rng
            .lock()
            .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "poisoned"))?;
        let jitter = if v.opts.jitter_ms > 0 {
            rng.next_u64() % (v.opts.jitter_ms + 1)
        } else {
            0
        };
        (jitter, rng.unit(), rng.unit())
    };
    let mut latency = header_u64(headers, "x-sim-latency-ms").unwrap_or(v.opts.latency_ms + jitter);
    if header_u64(headers, "x-sim-slow-attempts").is_some_and(|n| u64::from(attempt) <= n) {
        latency = header_u64(headers, "x-sim-slow-ms").unwrap_or(5000);
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(n) = header_u64(headers, "x-sim-fail-attempts") {
        if u64::from(attempt) <= n {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "simulated failure",
            ));
        }
    }
    if let Some(status) = header_u64(headers, "x-sim-status") {
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if !status.is_success() {
            return Err(error(status, "simulated", "simulated status"));
        }
    }
    if roll_err < v.opts.error_rate {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "simulated failure",
        ));
    }
    if roll_429 < v.opts.rate_429 {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "simulated rate limit",
        ));
    }
    Ok(attempt)
}

fn parse(body: &Bytes) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "body must be a JSON object",
        )),
    }
}

fn with_ids(mut res: Response, v: &Vendor, attempt: u32) -> Response {
    let n = v.seq.fetch_add(1, Ordering::Relaxed);
    if let Ok(h) = HeaderValue::from_str(&format!("vendor-{n}")) {
        res.headers_mut().insert("x-request-id", h);
    }
    res.headers_mut()
        .insert("x-sim-attempt", HeaderValue::from(attempt));
    res
}

async fn chat(State(v): State<Arc<Vendor>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(&v, &headers, &body, "chat.completion").await
}

async fn completions(State(v): State<Arc<Vendor>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(&v, &headers, &body, "text_completion").await
}

#[allow(clippy::too_many_lines)]
async fn generate(v: &Vendor, headers: &HeaderMap, body: &Bytes, object: &'static str) -> Response {
    let req = match parse(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let attempt = match prelude(v, headers).await {
        Ok(a) => a,
        Err(e) => return e,
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("sim-1")
        .to_owned();
    let prompt_tokens = (body.len() as u64).div_ceil(4);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let chunks =
        header_u64(headers, "x-sim-stream-chunks").map_or(v.opts.stream_chunks, |n| n as u32);
    let interval =
        header_u64(headers, "x-sim-chunk-interval-ms").unwrap_or(v.opts.chunk_interval_ms);
    let stall = header_u64(headers, "x-sim-stall-ms").unwrap_or(0);
    let completion_tokens = u64::from(chunks.max(1));
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("sim-{}", v.seq.load(Ordering::Relaxed));
    let chat = object == "chat.completion";
    if !stream {
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": words(chunks)}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": words(chunks), "finish_reason": "stop"})
        };
        let doc = json!({"id": id, "object": object, "created": 0, "model": model, "choices": [choice], "usage": usage});
        let res = if stall > 0 {
            // Head now, body after the stall.
            let (tx, body) = channel_body(2);
            let stats = Arc::clone(&v.stats);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(stall)).await;
                if tx.send(Bytes::from(doc.to_string())).await.is_err() {
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .unwrap_or_default()
        } else {
            axum::Json(doc).into_response()
        };
        return with_ids(res, v, attempt);
    }
    let (tx, body) = channel_body(4);
    let stats = Arc::clone(&v.stats);
    let object_chunk = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    tokio::spawn(async move {
        if stall > 0 {
            tokio::time::sleep(Duration::from_millis(stall)).await;
        }
        for i in 0..chunks {
            if i > 0 && interval > 0 {
                tokio::time::sleep(Duration::from_millis(interval)).await;
            }
            let choice = if chat {
                json!({"index": 0, "delta": {"content": format!("word{i} ")}, "finish_reason": null})
            } else {
                json!({"index": 0, "text": format!("word{i} "), "finish_reason": null})
            };
            let chunk =
                json!({"id": id, "object": object_chunk, "model": model, "choices": [choice]});
            if tx
                .send(Bytes::from(format!("data: {chunk}\n\n")))
                .await
                .is_err()
            {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let last = json!({"id": id, "object": object_chunk, "model": model, "choices": [], "usage": usage});
        let ok = tx
            .send(Bytes::from(format!("data: {last}\n\n")))
            .await
            .is_ok()
            && tx
                .send(Bytes::from_static(b"data: [DONE]\n\n"))
                .await
                .is_ok();
        if ok {
            stats.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    });
    let res = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_default();
    with_ids(res, v, attempt)
}

fn words(n: u32) -> String {
    (0..n.max(1))
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn embeddings(State(v): State<Arc<Vendor>>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let attempt = match prelude(&v, &headers).await {
        Ok(a) => a,
        Err(e) => return e,
    };
    let inputs = match req.get("input") {
        Some(Value::Array(a)) => a.len().max(1),
        _ => 1,
    };
    let tokens = (body.len() as u64).div_ceil(4);
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, -0.2, 0.3, 0.0, 0.5, -0.6, 0.7, 0.8]}))
        .collect();
    let doc = json!({
        "object": "list",
        "data": data,
        "model": req.get("model").and_then(Value::as_str).unwrap_or("sim-embed"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    with_ids(axum::Json(doc).into_response(), &v, attempt)
}

async fn models(State(v): State<Arc<Vendor>>, headers: HeaderMap) -> Response {
    let attempt = match prelude(&v, &headers).await {
        Ok(a) => a,
        Err(e) => return e,
    };
    let doc = json!({"object": "list", "data": [
        {"id": "sim-1", "object": "model", "created": 0, "owned_by": "backstop"},
        {"id": "sim-embed", "object": "model", "created": 0, "owned_by": "backstop"},
    ]});
    with_ids(axum::Json(doc).into_response(), &v, attempt)
}

async fn stats_handler(State(v): State<Arc<Vendor>>) -> Response {
    axum::Json(json!({
        "requests": v.stats.requests.load(Ordering::Relaxed),
        "cancelled": v.stats.cancelled.load(Ordering::Relaxed),
        "completed": v.stats.completed.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// A body fed frame by frame from a channel.
fn channel_body(cap: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(cap);
    (tx, Body::new(ChannelBody { rx }))
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
