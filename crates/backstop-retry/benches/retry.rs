//! Success-path overhead: a bare `service_fn`, our `Retry` around it, and
//! `tower::retry::Retry` with an equivalent policy (retry errors, paid from a
//! `TpsBudget`), in the same run.
#![allow(missing_docs)]

use std::future::{Ready, ready};
use std::sync::Arc;

use backstop_retry::RetryLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Layer, ServiceExt, service_fn};

#[derive(Clone)]
struct TowerPolicy {
    budget: Arc<TpsBudget>,
}

impl tower::retry::Policy<u32, u32, BoxError> for TowerPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u32, result: &mut Result<u32, BoxError>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) => self.budget.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, req: &u32) -> Option<u32> {
        self.budget.deposit();
        Some(*req)
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let bare = service_fn(|n: u32| ready(Ok::<_, BoxError>(n)));

    let mut group = c.benchmark_group("retry_success_path");
    group.bench_function("bare_service_fn", |b| {
        b.to_async(&rt).iter(|| bare.oneshot(1));
    });

    let ours = rt.block_on(async { RetryLayer::new().layer(bare) });
    group.bench_function("backstop_retry", |b| {
        b.to_async(&rt).iter(|| ours.clone().oneshot(1));
    });

    let tower_retry = rt.block_on(async {
        tower::retry::RetryLayer::new(TowerPolicy {
            budget: Arc::new(TpsBudget::default()),
        })
        .layer(bare)
    });
    group.bench_function("tower_retry_tps_budget", |b| {
        b.to_async(&rt).iter(|| tower_retry.clone().oneshot(1));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
