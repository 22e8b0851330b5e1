//! Overhead of `RateLimit` against a bare `service_fn` and tower's
//! `Buffer` + `RateLimit`, in the same run. The limits never bind: this
//! measures the cost of the bookkeeping, not of waiting.
//!
//! Run with `cargo bench -p backstop-rate-limit`.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::future::{Ready, ready};
use std::hint::black_box;

use backstop_rate_limit::RateLimitLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::{Builder, Runtime};
use tokio::time::Duration;
use tower::buffer::Buffer;
use tower::limit::{RateLimit as TowerRateLimit, rate::Rate};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const CALLERS: u64 = 64;
const CALLS_PER_CALLER: u64 = 16;

fn bare()
-> impl Service<u64, Response = u64, Error = BoxError, Future = Ready<Result<u64, BoxError>>>
+ Clone
+ Send
+ 'static {
    service_fn(|n: u64| ready(Ok::<_, BoxError>(n)))
}

/// A limit far above what the bench can reach.
fn ours_layer() -> RateLimitLayer {
    RateLimitLayer::per_second(1_000_000_000)
        .burst(1_000_000_000)
        .build()
        .expect("valid")
}

fn tower_rate() -> Rate {
    Rate::new(u64::MAX / 2, Duration::from_secs(1))
}

async fn one<S>(svc: &mut S, n: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let r = svc.ready().await.expect("ready").call(n).await.expect("ok");
    black_box(r);
}

/// `CALLERS` tasks, each making `CALLS_PER_CALLER` calls on its own clone.
async fn contended<S>(svc: &S)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let mut handles = Vec::with_capacity(CALLERS as usize);
    for c in 0..CALLERS {
        let mut svc = svc.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..CALLS_PER_CALLER {
                one(&mut svc, c * CALLS_PER_CALLER + i).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("joined");
    }
}

fn uncontended(c: &mut Criterion) {
    let rt = Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("uncontended");

    let svc = bare();
    g.bench_function("bare_service_fn", |b| {
        b.to_async(&rt).iter(|| {
            let mut s = svc.clone();
            async move { one(&mut s, 1).await }
        });
    });
    let ours = ours_layer().layer(bare());
    g.bench_function("backstop_rate_limit", |b| {
        b.to_async(&rt).iter(|| {
            let mut s = ours.clone();
            async move { one(&mut s, 1).await }
        });
    });
    let buffered = {
        let _guard = rt.enter();
        Buffer::new(TowerRateLimit::new(bare(), tower_rate()), 1024)
    };
    g.bench_function("tower_buffer_rate_limit", |b| {
        b.to_async(&rt).iter(|| {
            let mut s = buffered.clone();
            async move { one(&mut s, 1).await }
        });
    });
    // tower's RateLimit alone is not Clone: one instance, per-instance limit.
    let mut tower_alone = {
        let _guard = rt.enter();
        TowerRateLimit::new(bare(), tower_rate())
    };
    g.bench_function("tower_rate_limit_unbuffered_not_shared", |b| {
        // Not Clone, so one instance driven in a loop; timed by hand.
        #[allow(clippy::disallowed_types)]
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    one(&mut tower_alone, 1).await;
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

fn contended_2_threads(c: &mut Criterion) {
    let rt: Runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("contended_2_threads_64_callers_x16");

    let svc = bare();
    g.bench_function("bare_service_fn", |b| {
        b.to_async(&rt).iter(|| contended(&svc));
    });
    let ours = ours_layer().layer(bare());
    g.bench_function("backstop_rate_limit", |b| {
        b.to_async(&rt).iter(|| contended(&ours));
    });
    let buffered = {
        let _guard = rt.enter();
        Buffer::new(TowerRateLimit::new(bare(), tower_rate()), 1024)
    };
    g.bench_function("tower_buffer_rate_limit", |b| {
        b.to_async(&rt).iter(|| contended(&buffered));
    });
    g.finish();
}

criterion_group!(benches, uncontended, contended_2_threads);
criterion_main!(benches);
