//! A plain loop for profilers (callgrind, perf): `CALLS` calls of one
//! configuration on a current-thread runtime, as in the `stack` bench.
//!
//! `target/release/deps/profile-* <config> [calls]`, config one of `bare`,
//! `sla`, `attempt-timeout`, `shield`, `admission`, `rate-limit`,
//! `concurrency`, `retry`, `full`, `tower-full`, `tower-timeout`,
//! `tower-concurrency`, `tower-retry`, `tower-buffer-rate-limit`,
//! `tower-load-shed`, and `http-bare` / `http-full` (a small JSON request and
//! response through [`backstop_benches::http_stack`], body read to the end);
//! `sizes` prints the size of every
//! configuration's response future and `oneshot` future. The loop runs in
//! `run_loop` so a profiler can scope its counts to it (callgrind:
//! `--toggle-collect=*run_loop*`). See `RESULTS.md`.
#![allow(missing_docs, clippy::print_stderr)]

use std::hint::black_box;

use backstop_benches as b;
use tower::{BoxError, Layer, Service, ServiceExt};

#[inline(never)]
async fn run_loop<S>(svc: S, calls: u64) -> u64
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone,
{
    let mut errors = 0;
    for i in 0..calls {
        if svc.clone().oneshot(black_box(i)).await.is_err() {
            errors += 1;
        }
    }
    errors
}

fn size<S>(name: &str, svc: &S)
where
    S: Service<b::Req> + Clone,
{
    let mut s = svc.clone();
    let fut = s.call(0);
    eprintln!(
        "{name}: response future {} B, oneshot {} B",
        std::mem::size_of_val(&fut),
        std::mem::size_of_val(&svc.clone().oneshot(0))
    );
}

/// The HTTP loop: build a request, call, read the whole response body.
#[inline(never)]
async fn run_http_loop<S, B>(svc: S, calls: u64) -> u64
where
    S: Service<b::HttpReq, Response = http::Response<B>> + Clone,
    B: http_body::Body,
{
    use http_body_util::BodyExt;
    let mut errors = 0;
    for _ in 0..calls {
        match svc.clone().oneshot(b::http_request()).await {
            Ok(res) => {
                if res.into_body().collect().await.is_err() {
                    errors += 1;
                }
            }
            Err(_) => errors += 1,
        }
    }
    errors
}

/// Sizes of the response futures and of `oneshot`, each configuration.
fn sizes() {
    size("bare", &b::noop());
    size("sla", &b::sla().layer(b::noop()));
    size("attempt-timeout", &b::attempt_timeout().layer(b::noop()));
    size("shield", &b::shield().layer(b::noop()));
    size("admission", &b::admission().layer(b::noop()));
    size("rate-limit", &b::rate_limit().layer(b::noop()));
    size("concurrency", &b::concurrency().layer(b::noop()));
    size("retry", &b::retry().layer(b::noop()));
    size("full", &b::backstop_stack(b::noop()));
    size("tower-full", &b::tower_stack(b::noop()));
    let t = tower::timeout::TimeoutLayer::new(b::SLA).layer(b::noop());
    size("tower-timeout", &t);
    eprintln!(
        "http-bare: oneshot {} B; http-full: oneshot {} B",
        std::mem::size_of_val(&b::http_upstream().oneshot(b::http_request())),
        std::mem::size_of_val(&b::http_stack().oneshot(b::http_request()))
    );
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let config = args.next().unwrap_or_else(|| "full".to_owned());
    let calls: u64 = args.next().map_or(10_000, |n| n.parse().expect("calls"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let errors = rt.block_on(async {
        match config.as_str() {
            "sizes" => {
                sizes();
                0
            }
            "bare" => run_loop(b::noop(), calls).await,
            "sla" => run_loop(b::sla().layer(b::noop()), calls).await,
            "attempt-timeout" => run_loop(b::attempt_timeout().layer(b::noop()), calls).await,
            "shield" => run_loop(b::shield().layer(b::noop()), calls).await,
            "admission" => run_loop(b::admission().layer(b::noop()), calls).await,
            "rate-limit" => run_loop(b::rate_limit().layer(b::noop()), calls).await,
            "concurrency" => run_loop(b::concurrency().layer(b::noop()), calls).await,
            "retry" => run_loop(b::retry().layer(b::noop()), calls).await,
            "full" => run_loop(b::backstop_stack(b::noop()), calls).await,
            "http-bare" => run_http_loop(b::http_upstream(), calls).await,
            "http-full" => run_http_loop(b::http_stack(), calls).await,
            "tower-full" => run_loop(b::tower_stack(b::noop()), calls).await,
            "tower-timeout" => {
                run_loop(
                    tower::timeout::TimeoutLayer::new(b::SLA).layer(b::noop()),
                    calls,
                )
                .await
            }
            "tower-concurrency" => {
                let l = tower::limit::ConcurrencyLimitLayer::new(b::WIDE_CONCURRENCY);
                run_loop(l.layer(b::noop()), calls).await
            }
            "tower-buffer-rate-limit" => {
                run_loop(b::tower_buffered_rate_limit(b::noop()), calls).await
            }
            "tower-load-shed" => {
                let l = tower::load_shed::LoadShedLayer::new();
                run_loop(l.layer(b::noop()), calls).await
            }
            "tower-retry" => {
                let l = tower::retry::RetryLayer::new(b::TowerPolicy::new());
                run_loop(l.layer(b::noop()), calls).await
            }
            other => panic!("unknown config {other}"),
        }
    });
    eprintln!("{config}: {calls} calls, {errors} errors");
}
