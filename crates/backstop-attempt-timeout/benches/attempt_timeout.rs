//! Overhead of `AttemptTimeout` over a no-op `service_fn`, next to the bare
//! service and `tower::timeout::Timeout`, in the same run on a current-thread
//! runtime. A fourth case runs under an SLA deadline in the context (the
//! stack's usual situation: the timer is armed at min(own, SLA)); its time
//! includes building and scoping that outer context, which an outer layer
//! would pay in the real stack.
//!
//! Run with `cargo bench -p backstop-attempt-timeout`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use backstop_attempt_timeout::AttemptTimeoutLayer;
use backstop_core::Context;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt, service_fn, timeout::TimeoutLayer};

async fn noop(n: u32) -> Result<u32, Infallible> {
    Ok(n)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let timeout = Duration::from_secs(30);
    let mut group = c.benchmark_group("attempt_timeout");

    let bare = service_fn(noop);
    group.bench_function("bare_service_fn", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = bare;
            async move { svc.ready().await.unwrap().call(1).await }
        });
    });

    let ours = AttemptTimeoutLayer::new(timeout)
        .unwrap()
        .layer(service_fn(noop));
    group.bench_function("attempt_timeout", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = ours.clone();
            async move { svc.ready().await.unwrap().call(1).await }
        });
    });

    group.bench_function("attempt_timeout_under_sla", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = ours.clone();
            let ctx = Context::new()
                .with_sla_deadline(tokio::time::Instant::now() + Duration::from_secs(10));
            ctx.scope(async move { svc.ready().await.unwrap().call(1).await })
        });
    });

    let tower = TimeoutLayer::new(timeout).layer(service_fn(noop));
    group.bench_function("tower_timeout", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = tower.clone();
            async move { svc.ready().await.unwrap().call(1).await }
        });
    });

    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
