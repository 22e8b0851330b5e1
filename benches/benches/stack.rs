//! Fast path: ns per call over a no-op `service_fn`, for every backstop layer
//! alone, the full seven-layer stack, tower's nearest equivalents and the same
//! stack from tower's built-ins, all with limits that do not bind.
//!
//! Three groups: `ct` is a current-thread runtime, one caller calling in a
//! loop; `mt1` is a 2-thread runtime with one caller task calling in a loop
//! (latency per call when the caller is a runtime task); `mt` is the 2-thread
//! runtime with [`CALLERS`] caller tasks, each calling in a loop (the figure
//! is wall time / calls, so both workers count, and shared state is
//! contended across the two cores). Every call clones the service and runs `oneshot` (ready + call),
//! as a server does per request.
//!
//! Every error is counted as a spurious rejection (nothing binds) and printed
//! at the end, with the retries either retry policy made.
//!
//! `cargo bench -p backstop-benches --bench stack`; see `RESULTS.md`.
#![allow(missing_docs, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_benches as b;
use criterion::{BenchmarkGroup, Criterion, criterion_group, measurement::WallTime};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

/// Concurrent caller tasks on the 2-thread runtime.
const CALLERS: u64 = 64;

/// Errors per configuration: count, and the text of the last one.
static ERRORS: Mutex<BTreeMap<String, (u64, String)>> = Mutex::new(BTreeMap::new());

fn record(name: &str, n: u64, last: Option<String>) {
    if n > 0 {
        let mut errors = ERRORS.lock().unwrap();
        let e = errors.entry(name.to_owned()).or_default();
        e.0 += n;
        if let Some(last) = last {
            e.1 = last;
        }
    }
}

async fn calls<S>(svc: S, n: u64) -> (u64, Option<String>)
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone,
{
    let mut errors = 0;
    let mut last = None;
    for i in 0..n {
        match svc.clone().oneshot(black_box(i)).await {
            Ok(r) => {
                black_box(r);
            }
            Err(e) => {
                errors += 1;
                last = Some(e.to_string());
            }
        }
    }
    (errors, last)
}

/// `iters` calls from one caller on the current-thread runtime.
fn run_ct<S>(rt: &Runtime, svc: &S, name: &str, iters: u64) -> Duration
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone,
{
    rt.block_on(async {
        let start = Instant::now();
        let (errors, last) = calls(svc.clone(), iters).await;
        let took = Instant::now().saturating_duration_since(start);
        record(name, errors, last);
        took
    })
}

/// `iters` calls from one caller task on the 2-thread runtime.
fn run_mt1<S>(rt: &Runtime, svc: &S, name: &str, iters: u64) -> Duration
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let svc = svc.clone();
    let (took, errors, last) = rt
        .block_on(tokio::spawn(async move {
            let start = Instant::now();
            let (errors, last) = calls(svc, iters).await;
            (
                Instant::now().saturating_duration_since(start),
                errors,
                last,
            )
        }))
        .unwrap();
    record(name, errors, last);
    took
}

/// About `iters` calls spread over `CALLERS` caller tasks on the 2-thread
/// runtime.
fn run_mt<S>(rt: &Runtime, svc: &S, name: &str, iters: u64) -> Duration
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let per = iters.div_ceil(CALLERS);
    let errors = Arc::new(AtomicU64::new(0));
    let took = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let svc = svc.clone();
                let errors = Arc::clone(&errors);
                tokio::spawn(async move {
                    let (e, last) = calls(svc, per).await;
                    errors.fetch_add(e, Ordering::Relaxed);
                    last
                })
            })
            .collect();
        let mut last = None;
        for t in tasks {
            last = t.await.unwrap().or(last);
        }
        (Instant::now().saturating_duration_since(start), last)
    });
    let (took, last) = took;
    record(name, errors.load(Ordering::Relaxed), last);
    // Scale to exactly `iters` calls.
    took.mul_f64(iters as f64 / (per * CALLERS) as f64)
}

fn ct<S>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: &S)
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone,
{
    let key = format!("ct/{name}");
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| run_ct(rt, svc, &key, iters));
    });
}

fn mt1<S>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: &S)
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let key = format!("mt1/{name}");
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| run_mt1(rt, svc, &key, iters));
    });
}

fn mt<S>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: &S)
where
    S: Service<b::Req, Response = b::Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let key = format!("mt/{name}");
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| run_mt(rt, svc, &key, iters));
    });
}

/// Every configuration, built inside `rt` (tower's `Buffer` spawns its
/// worker there), measured with `each` (`ct` or `mt`).
macro_rules! all_configs {
    ($g:expr, $rt:expr, $each:ident) => {{
        let g = $g;
        let rt = $rt;
        let _enter = rt.enter();
        $each(g, rt, "bare", &b::noop());
        // backstop, each layer alone
        $each(g, rt, "backstop sla", &b::sla().layer(b::noop()));
        $each(
            g,
            rt,
            "backstop attempt-timeout",
            &b::attempt_timeout().layer(b::noop()),
        );
        $each(
            g,
            rt,
            "backstop shield sync_hook",
            &b::shield().layer(b::noop()),
        );
        $each(
            g,
            rt,
            "backstop admission",
            &b::admission().layer(b::noop()),
        );
        $each(
            g,
            rt,
            "backstop rate-limit",
            &b::rate_limit().layer(b::noop()),
        );
        $each(
            g,
            rt,
            "backstop concurrency",
            &b::concurrency().layer(b::noop()),
        );
        $each(g, rt, "backstop retry", &b::retry().layer(b::noop()));
        $each(g, rt, "backstop full stack", &b::backstop_stack(b::noop()));
        // tower's nearest equivalents
        let t = tower::timeout::TimeoutLayer::new(b::SLA).layer(b::noop());
        $each(g, rt, "tower timeout", &t);
        let t = tower::limit::ConcurrencyLimitLayer::new(b::WIDE_CONCURRENCY).layer(b::noop());
        $each(g, rt, "tower concurrency", &t);
        $each(
            g,
            rt,
            "tower buffer+rate-limit",
            &b::tower_buffered_rate_limit(b::noop()),
        );
        let t = tower::retry::RetryLayer::new(b::TowerPolicy::new()).layer(b::noop());
        $each(g, rt, "tower retry tps-budget", &t);
        let t = tower::load_shed::LoadShedLayer::new().layer(b::noop());
        $each(g, rt, "tower load-shed", &t);
        $each(g, rt, "tower full stack", &b::tower_stack(b::noop()));
    }};
}

fn current_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("ct");
    all_configs!(&mut g, &rt, ct);
    g.finish();
}

fn two_threads() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn two_threads_one_caller(c: &mut Criterion) {
    let rt = two_threads();
    let mut g = c.benchmark_group("mt1");
    all_configs!(&mut g, &rt, mt1);
    g.finish();
}

fn two_threads_many_callers(c: &mut Criterion) {
    let rt = two_threads();
    let mut g = c.benchmark_group("mt");
    all_configs!(&mut g, &rt, mt);
    g.finish();
}

criterion_group!(
    benches,
    current_thread,
    two_threads_one_caller,
    two_threads_many_callers
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let errors = ERRORS.lock().unwrap();
    eprintln!("\nspurious rejections (errors with no limit binding), all iterations:");
    if errors.is_empty() {
        eprintln!("  none");
    }
    for (name, (n, last)) in errors.iter() {
        eprintln!("  {name}: {n} (last: {last})");
    }
    eprintln!(
        "retries made by tower's policy: {}",
        b::TOWER_RETRIES.load(Ordering::Relaxed)
    );
    eprintln!("retries made by backstop's retry: {}", b::our_retries());
}
