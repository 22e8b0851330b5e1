//! Exact hook counts (feature `metrics`).

use backstop_core::BoxError;
use backstop_core::metrics::{self as m, hook};
use tokio::time::{Duration, sleep};
use tower::{Layer, ServiceExt, service_fn};

use crate::{HookStats, ShieldedOnCancelLayer, hook_fn, sync_hook};
use backstop_test_util::metrics::{Recorded, recorded};

fn hooks(r: &Recorded) -> [u64; 4] {
    hook::ALL.map(|value| r.counter(m::HOOKS_TOTAL, &[(m::HOOK, value)]))
}

#[test]
fn inline_hooks_count_as_inline() {
    let (stats, r) = recorded(|| async {
        let layer = ShieldedOnCancelLayer::new(sync_hook(|_| {}));
        let tracker = layer.tracker();
        let svc = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        svc.clone().oneshot(()).await.unwrap();
        svc.oneshot(()).await.unwrap();
        tracker.stats()
    });
    assert_eq!(stats.inline, 2);
    assert_eq!(hooks(&r), [2, 0, 0, 0]);
}

#[test]
fn spawned_then_timed_out_match_the_stats() {
    let (stats, r): (HookStats, _) = recorded(|| async {
        let layer = ShieldedOnCancelLayer::builder(hook_fn(|_| async {
            sleep(Duration::from_secs(10)).await;
        }))
        .hook_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
        let tracker = layer.tracker();
        let svc = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        svc.oneshot(()).await.unwrap();
        sleep(Duration::from_secs(2)).await;
        tracker.stats()
    });
    assert_eq!((stats.spawned, stats.timed_out), (1, 1));
    assert_eq!(hooks(&r), [0, 1, 1, 0]);
}
