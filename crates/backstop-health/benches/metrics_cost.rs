//! The cost of one metric event through a handle resolved once, as the
//! layers do: with no recorder installed (the handles are no-ops), with
//! metrics-util's `DebuggingRecorder`, and with a minimal atomic recorder;
//! plus one `Readiness::record`.
//!
//! Run with `cargo bench -p backstop-health --bench metrics_cost`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::metrics as m;
use backstop_health::{Outcome, Readiness};
use criterion::{Criterion, criterion_group, criterion_main};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::debugging::DebuggingRecorder;

/// Counters and histograms on one atomic each: the floor of any real
/// recorder.
#[derive(Default)]
struct AtomicRecorder;

struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.0.fetch_add(value.to_bits() & 1, Ordering::Relaxed);
    }
}

impl Recorder for AtomicRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Cell(AtomicU64::new(0))))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Cell(AtomicU64::new(0))))
    }
}

fn handles() -> (Counter, Histogram) {
    (
        m::counter_with(m::CALLS_TOTAL, m::OUTCOME, m::outcome::SUCCESS),
        m::histogram(m::CALL_DURATION_SECONDS),
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("metric_event");

    let (counter, histogram) = handles();
    g.bench_function("counter/no_recorder", |b| {
        b.iter(|| black_box(&counter).increment(1));
    });
    g.bench_function("histogram/no_recorder", |b| {
        b.iter(|| black_box(&histogram).record(black_box(0.25)));
    });

    let debugging = DebuggingRecorder::new();
    let (counter, _) = metrics::with_local_recorder(&debugging, handles);
    g.bench_function("counter/debugging_recorder", |b| {
        b.iter(|| black_box(&counter).increment(1));
    });

    let atomic = AtomicRecorder;
    let (counter, histogram) = metrics::with_local_recorder(&atomic, handles);
    g.bench_function("counter/atomic_recorder", |b| {
        b.iter(|| black_box(&counter).increment(1));
    });
    g.bench_function("histogram/atomic_recorder", |b| {
        b.iter(|| black_box(&histogram).record(black_box(0.25)));
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let readiness = Readiness::new();
    c.bench_function("readiness/record", |b| {
        b.iter(|| black_box(&readiness).record(black_box(Outcome::Failure)));
    });
    c.bench_function("readiness/check", |b| {
        b.iter(|| black_box(black_box(&readiness).check()));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
