//! ConcurrencyLimit vs a bare `service_fn` vs tower's `ConcurrencyLimit`
//! (and `Buffer` + `ConcurrencyLimit`), uncontended and contended.
//!
//! Run with `cargo bench -p backstop-concurrency`. Contended: 64 callers on a
//! 2-thread runtime share a limit of 8 and the service yields once, so most
//! callers wait; every call must succeed (a spurious rejection panics).
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use backstop_concurrency::ConcurrencyLimitLayer;
use backstop_core::Context;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt, service_fn};

const CALLERS: usize = 64;
const LIMIT: usize = 8;

fn noop()
-> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + Sync {
    service_fn(|n: u64| async move { Ok::<_, Infallible>(n) })
}

fn yielding()
-> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + Sync + 'static
{
    service_fn(|n: u64| async move {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(n)
    })
}

async fn one<S>(svc: &S) -> u64
where
    S: Service<u64> + Clone,
    S::Error: std::fmt::Debug,
    S::Response: Into<u64>,
{
    let out = svc.clone().oneshot(black_box(1)).await;
    out.expect("no spurious rejection").into()
}

async fn round<S>(svc: &S)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    round_with(svc, None).await;
}

/// 64 concurrent callers, each in its own task (with `sla`: inside a context
/// carrying an SLA deadline, so every waiter arms a timer).
async fn round_with<S>(svc: &S, sla: Option<Duration>)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                match sla {
                    Some(sla) => {
                        Context::new()
                            .with_sla_deadline(Instant::now() + sla)
                            .scope(svc.oneshot(i as u64))
                            .await
                    }
                    None => svc.oneshot(i as u64).await,
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("no spurious rejection");
    }
}

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("concurrency/uncontended");
    let bare = noop();
    g.bench_function("bare service_fn", |b| b.to_async(&rt).iter(|| one(&bare)));
    let ours = ConcurrencyLimitLayer::new(LIMIT).unwrap().layer(noop());
    g.bench_function("backstop ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| one(&ours));
    });
    let tower = tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(noop());
    g.bench_function("tower ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| one(&tower));
    });
    g.finish();
}

fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("concurrency/contended 64 callers, limit 8");
    let bare = yielding();
    g.bench_function("bare service_fn", |b| b.to_async(&rt).iter(|| round(&bare)));
    let ours = ConcurrencyLimitLayer::new(LIMIT).unwrap().layer(yielding());
    g.bench_function("backstop ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| round(&ours));
    });
    let deadlined = ours.clone();
    g.bench_function(
        "backstop ConcurrencyLimit, SLA deadline (timer per waiter)",
        |b| {
            b.to_async(&rt)
                .iter(|| round_with(&deadlined, Some(Duration::from_secs(60))));
        },
    );
    let tower = tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(yielding());
    g.bench_function("tower ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| round(&tower));
    });
    let buffered = {
        let _guard = rt.enter();
        tower::buffer::Buffer::new(
            tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(yielding()),
            1024,
        )
    };
    g.bench_function("tower Buffer + ConcurrencyLimit", |b| {
        b.to_async(&rt).iter(|| round(&buffered));
    });
    g.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
