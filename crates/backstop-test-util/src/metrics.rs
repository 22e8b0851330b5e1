//! Metrics test support: run a scenario on a paused current-thread runtime
//! under a local `DebuggingRecorder`, then read exact counts.

use std::future::Future;

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// What the recorder saw.
#[derive(Debug)]
pub struct Recorded(Vec<(CompositeKey, DebugValue)>);

/// Builds a paused runtime inside `metrics::with_local_recorder`, so every
/// layer built in `scenario` resolves its handles on the debugging recorder.
pub fn recorded<F: Future>(scenario: impl FnOnce() -> F) -> (F::Output, Recorded) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, || {
        let rt = crate::paused_runtime();
        rt.block_on(scenario())
    });
    let snapshot = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect();
    (out, Recorded(snapshot))
}

impl Recorded {
    fn find(&self, suffix: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let name = backstop_core::metrics::name(suffix);
        self.0.iter().find_map(|(key, value)| {
            let key = key.key();
            let matches = key.name() == name
                && key.labels().count() == labels.len()
                && key.labels().all(|l| labels.contains(&(l.key(), l.value())));
            matches.then_some(value)
        })
    }

    /// A counter's value (0 when never registered).
    pub fn counter(&self, suffix: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(suffix, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{suffix} is not a counter: {other:?}"),
        }
    }

    /// A histogram's samples (none when never registered).
    pub fn samples(&self, suffix: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(suffix, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|f| f.0).collect(),
            None => Vec::new(),
            Some(other) => panic!("{suffix} is not a histogram: {other:?}"),
        }
    }

    /// A gauge's value, if registered.
    pub fn gauge(&self, suffix: &str) -> Option<f64> {
        match self.find(suffix, &[]) {
            Some(DebugValue::Gauge(v)) => Some(v.0),
            None => None,
            Some(other) => panic!("{suffix} is not a gauge: {other:?}"),
        }
    }
}
