//! Overhead of `SlaTimeout` over a no-op `service_fn`, next to the bare service
//! and `tower::timeout::Timeout`, in the same run on a current-thread runtime.
//!
//! Run with `cargo bench -p backstop-sla`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use backstop_core::Context;
use backstop_sla::SlaTimeoutLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn, timeout::TimeoutLayer};

async fn noop(n: u32) -> Result<u32, Infallible> {
    Ok(n)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let timeout = Duration::from_secs(60);
    let mut group = c.benchmark_group("sla");

    let bare = service_fn(noop);
    group.bench_function("bare_service_fn", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = bare;
            async move { svc.ready().await.unwrap().call(1).await }
        });
    });

    let ours = SlaTimeoutLayer::new(timeout)
        .unwrap()
        .layer(service_fn(noop));
    group.bench_function("sla_timeout", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = ours.clone();
            async move { svc.ready().await.unwrap().call(1).await }
        });
    });

    // What publishing the deadline alone costs (no timer): the share of the
    // overhead that comes from the core context, not from this crate.
    group.bench_function("context_publish_only", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = bare;
            async move {
                let svc = svc.ready().await.unwrap();
                let ctx = Context::current().with_sla_deadline(Instant::now() + timeout);
                let fut = ctx.clone().sync_scope(|| svc.call(1));
                ctx.scope(fut).await
            }
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
