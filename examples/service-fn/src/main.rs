//! The whole backstop stack around `tower::service_fn` with a non-HTTP
//! request: a flaky, slow "vendor" that answers `u32` prompts.
//!
//! Run with `cargo run -p backstop-example-service-fn`.

#![allow(clippy::print_stdout)] // an example prints what it shows

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::admission::QueueAdmissionLayer;
use backstop::attempt_timeout::AttemptTimeoutLayer;
use backstop::concurrency::ConcurrencyLimitLayer;
use backstop::rate_limit::RateLimitLayer;
use backstop::retry::RetryLayer;
use backstop::shield::{Completion, ShieldedOnCancelLayer, sync_hook};
use backstop::sla::SlaTimeoutLayer;
use backstop::{BoxError, Context, ServiceBuilderExt, classify};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // Every third call fails, every fifth is too slow for its attempt.
    let calls = Arc::new(AtomicU32::new(0));
    let vendor = service_fn(move |prompt: u32| {
        let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let ctx = Context::current();
            if n % 5 == 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if n % 3 == 0 {
                return Err::<u32, BoxError>(format!("vendor hiccup on call {n}").into());
            }
            let attempt = ctx.attempt().map_or(1, backstop::Attempt::get);
            Ok(prompt * 10 + attempt)
        }
    });

    let svc = ServiceBuilder::new()
        .shielded_on_cancel(ShieldedOnCancelLayer::new(sync_hook(|done: Completion| {
            println!(
                "  hook: {:<9} after {:>4} ms",
                done.outcome().as_str(),
                done.elapsed().as_millis(),
            );
        })))
        .sla_timeout(SlaTimeoutLayer::new(Duration::from_secs(2))?)
        .retrying(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff_base(Duration::from_millis(50))
                .backoff_max(Duration::from_millis(200))
                .build()?,
        )
        .queue_admission(
            QueueAdmissionLayer::builder()
                .max_waiting(16)
                .max_wait(Duration::from_millis(500))
                .build()?,
        )
        .rate_limited(RateLimitLayer::per_second(20).burst(5).build()?)
        .concurrency_limited(ConcurrencyLimitLayer::new(4)?)
        .attempt_timeout(AttemptTimeoutLayer::new(Duration::from_millis(300))?)
        .service(vendor);

    for prompt in 1..=8 {
        match svc.clone().oneshot(prompt).await {
            Ok(answer) => println!("prompt {prompt}: answer {answer}"),
            Err(err) => println!("prompt {prompt}: {} ({err})", classify(&*err)),
        }
    }
    Ok(())
}
