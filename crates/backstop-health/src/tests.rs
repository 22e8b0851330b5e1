use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use backstop_core::{AttemptTimedOut, BoxError, OverloadReason, Overloaded, SlaExpired};
use tokio::time::{Duration, advance};

use crate::{Outcome, Readiness, Reason, Status};

static_assertions::assert_impl_all!(Readiness: Send, Sync, Clone);

struct Probes {
    full: Arc<AtomicBool>,
    free: Arc<AtomicUsize>,
}

fn saturable() -> (Readiness, Probes) {
    let full = Arc::new(AtomicBool::new(false));
    let free = Arc::new(AtomicUsize::new(2));
    let (f, p) = (Arc::clone(&full), Arc::clone(&free));
    let readiness = Readiness::builder()
        .saturation(
            move || f.load(Ordering::SeqCst),
            move || p.load(Ordering::SeqCst),
        )
        .build();
    (readiness, Probes { full, free })
}

fn record(readiness: &Readiness, successes: usize, failures: usize) {
    for _ in 0..successes {
        readiness.record(Outcome::Success);
    }
    for _ in 0..failures {
        readiness.record(Outcome::Failure);
    }
}

#[tokio::test(start_paused = true)]
async fn ready_by_default() {
    let readiness = Readiness::new();
    assert_eq!(readiness.check(), Status::Ready);
    assert!(readiness.check().is_ready());
    assert_eq!(readiness.check().reason(), None);
}

#[tokio::test(start_paused = true)]
async fn draining_is_shared_across_clones_and_wins() {
    let (readiness, probes) = saturable();
    let other = readiness.clone();
    probes.full.store(true, Ordering::SeqCst);
    probes.free.store(0, Ordering::SeqCst);
    record(&readiness, 0, 10);
    other.set_draining();
    assert!(readiness.is_draining());
    assert_eq!(readiness.check(), Status::NotReady(Reason::Draining));
    assert_eq!(Reason::Draining.as_str(), "draining");
}

#[tokio::test(start_paused = true)]
async fn saturated_only_when_queue_full_and_no_permit_free() {
    let (readiness, probes) = saturable();
    probes.full.store(true, Ordering::SeqCst);
    assert_eq!(readiness.check(), Status::Ready, "permits still free");
    probes.free.store(0, Ordering::SeqCst);
    assert_eq!(readiness.check(), Status::NotReady(Reason::Saturated));
    assert_eq!(Reason::Saturated.as_str(), "saturated");
    probes.full.store(false, Ordering::SeqCst);
    assert_eq!(readiness.check(), Status::Ready, "queue has room again");
    probes.full.store(true, Ordering::SeqCst);
    probes.free.store(1, Ordering::SeqCst);
    assert_eq!(readiness.check(), Status::Ready, "a permit came back");
}

#[tokio::test(start_paused = true)]
async fn a_single_probe_decides_alone() {
    let full = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&full);
    let readiness = Readiness::builder()
        .queue_full(move || f.load(Ordering::SeqCst))
        .build();
    assert_eq!(readiness.check(), Status::NotReady(Reason::Saturated));
    full.store(false, Ordering::SeqCst);
    assert_eq!(readiness.check(), Status::Ready);

    let readiness = Readiness::builder().free_permits(|| 0).build();
    assert_eq!(readiness.check(), Status::NotReady(Reason::Saturated));
}

#[tokio::test(start_paused = true)]
async fn upstream_errors_trip_at_half_of_ten_and_clear_after_the_window() {
    let readiness = Readiness::new();
    record(&readiness, 5, 4);
    assert_eq!(
        readiness.check(),
        Status::Ready,
        "9 attempts: below minimum"
    );
    readiness.record(Outcome::Failure);
    assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
    assert_eq!(Reason::UpstreamErrors.as_str(), "upstream_errors");

    // Still inside the window just before 10 s.
    advance(Duration::from_millis(9_999)).await;
    assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
    advance(Duration::from_millis(1)).await;
    assert_eq!(readiness.check(), Status::Ready, "window cleared");
}

#[tokio::test(start_paused = true)]
async fn under_half_failed_is_ready() {
    let readiness = Readiness::new();
    record(&readiness, 6, 4);
    assert_eq!(readiness.check(), Status::Ready);
    record(&readiness, 0, 2);
    assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
    // More successes dilute the ratio back under half.
    record(&readiness, 3, 0);
    assert_eq!(readiness.check(), Status::Ready);
}

#[tokio::test(start_paused = true)]
async fn window_slides_over_buckets() {
    let readiness = Readiness::new();
    record(&readiness, 0, 5);
    advance(Duration::from_secs(5)).await;
    record(&readiness, 0, 5);
    assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
    // The first five leave the window; five remain, under the minimum.
    advance(Duration::from_secs(5)).await;
    assert_eq!(readiness.check(), Status::Ready);
    record(&readiness, 0, 5);
    assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
}

#[tokio::test(start_paused = true)]
async fn upstream_rule_can_be_switched_off() {
    let readiness = Readiness::builder().upstream_errors(false).build();
    record(&readiness, 0, 100);
    assert_eq!(readiness.check(), Status::Ready);
}

#[tokio::test(start_paused = true)]
async fn errors_are_classified() {
    let readiness = Readiness::new();
    let counted: [BoxError; 2] = [
        AttemptTimedOut::new(Duration::from_secs(30)).into(),
        "connection refused".into(),
    ];
    let ignored: [BoxError; 2] = [
        SlaExpired::new().into(),
        Overloaded::new(OverloadReason::WaitExceeded, Duration::from_secs(1)).into(),
    ];
    for err in &counted {
        assert_eq!(Outcome::of_error(&**err), Some(Outcome::Failure), "{err}");
    }
    for err in &ignored {
        assert_eq!(Outcome::of_error(&**err), None, "{err}");
    }
    for _ in 0..10 {
        for err in ignored.iter().chain(&counted) {
            readiness.record_error(&**err);
        }
    }
    // 20 failures counted, the 20 ignored errors not: 20 of 20 failed.
    assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn statuses_are_classified() {
    use http::{Response, StatusCode};

    for code in [500, 502, 503, 529, 408] {
        let status = StatusCode::from_u16(code).unwrap();
        assert_eq!(Outcome::of_status(status), Outcome::Failure, "{code}");
    }
    for code in [200, 204, 400, 404, 409, 429] {
        let status = StatusCode::from_u16(code).unwrap();
        assert_eq!(Outcome::of_status(status), Outcome::Success, "{code}");
    }

    let readiness = Readiness::new();
    for _ in 0..10 {
        let res: Result<Response<()>, BoxError> = Ok(Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .body(())
            .unwrap());
        readiness.record_http(&res);
    }
    assert_eq!(readiness.check(), Status::Ready, "429 is not a failure");
    for _ in 0..10 {
        let res: Result<Response<()>, BoxError> = Ok(Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(())
            .unwrap());
        readiness.record_http(&res);
    }
    assert_eq!(readiness.check(), Status::NotReady(Reason::UpstreamErrors));
}

#[cfg(feature = "axum")]
mod routes {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::{prometheus_builder, routes};

    async fn get(app: &axum::Router, path: &str) -> (StatusCode, String, String) {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let ctype = res.headers()[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    fn app(readiness: &Readiness) -> axum::Router {
        let prometheus = prometheus_builder().build_recorder().handle();
        routes(readiness.clone(), prometheus)
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_always_ok() {
        let readiness = Readiness::new();
        readiness.set_draining();
        let (status, ctype, body) = get(&app(&readiness), "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        assert_eq!(body, r#"{"status":"ok"}"#);
    }

    const READY: &str = r#"{"status":"ready"}"#;

    fn not_ready(reason: &str) -> String {
        format!(r#"{{"reason":"{reason}","status":"not ready"}}"#)
    }

    #[tokio::test(start_paused = true)]
    async fn ready_turns_503_when_saturated_and_back() {
        let (readiness, probes) = saturable();
        let app = app(&readiness);
        assert_eq!(get(&app, "/ready").await.2, READY);
        probes.full.store(true, Ordering::SeqCst);
        probes.free.store(0, Ordering::SeqCst);
        let (status, _, body) = get(&app, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, not_ready("saturated"));
        probes.free.store(1, Ordering::SeqCst);
        let (status, _, body) = get(&app, "/ready").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, READY);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_turns_503_on_upstream_errors_and_back() {
        let readiness = Readiness::new();
        let app = app(&readiness);
        record(&readiness, 5, 5);
        let (status, _, body) = get(&app, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, not_ready("upstream_errors"));
        advance(Duration::from_secs(10)).await;
        let (status, _, body) = get(&app, "/ready").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, READY);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_turns_503_when_draining() {
        let readiness = Readiness::new();
        let app = app(&readiness);
        assert_eq!(get(&app, "/ready").await.0, StatusCode::OK);
        readiness.set_draining();
        let (status, ctype, body) = get(&app, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ctype, "application/json");
        assert_eq!(body, not_ready("draining"));
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_rule_off_stays_200() {
        let readiness = Readiness::builder().upstream_errors(false).build();
        let app = app(&readiness);
        record(&readiness, 0, 50);
        assert_eq!(get(&app, "/ready").await.0, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_renders_histograms_with_buckets_and_every_family() {
        use backstop_core::metrics as m;

        let recorder = prometheus_builder().build_recorder();
        let prometheus = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            m::describe_all();
            m::histogram(m::CALL_DURATION_SECONDS).record(0.2);
            m::counter_with(m::CALLS_TOTAL, m::OUTCOME, m::outcome::SUCCESS).increment(1);
        });
        let app = routes(Readiness::new(), prometheus);
        let (status, ctype, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        assert!(
            body.contains("# TYPE llm_call_duration_seconds histogram"),
            "{body}"
        );
        assert!(
            body.contains(r#"llm_call_duration_seconds_bucket{le="0.005"} 0"#),
            "{body}"
        );
        assert!(
            body.contains(r#"llm_call_duration_seconds_bucket{le="0.25"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"llm_call_duration_seconds_bucket{le="60"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"llm_calls_total{outcome="success"} 1"#),
            "{body}"
        );
        for outcome in m::outcome::ALL {
            assert!(
                body.contains(&format!(r#"llm_calls_total{{outcome="{outcome}"}}"#)),
                "{outcome}: {body}"
            );
        }
        for family in [
            m::RETRIES_TOTAL,
            m::QUEUE_TIMEOUT_TOTAL,
            m::CALL_TIMEOUT_TOTAL,
            m::ERRORS_TOTAL,
            m::CONCURRENT_CALLS,
        ] {
            assert!(body.contains(&m::name(family)), "{family}: {body}");
        }
    }
}

#[test]
fn error_counters_and_prefix_come_from_the_core() {
    use backstop_core::ErrorKind;
    use backstop_core::metrics::{self as m, ErrorCounters};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    assert_eq!(m::prefix(), m::DEFAULT_PREFIX);
    assert_eq!(m::name(m::CALLS_TOTAL), "llm_calls_total");
    let err = m::set_prefix("other_").unwrap_err();
    assert_eq!(err.current(), "llm_");

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let errors = ErrorCounters::new();
        errors.record(ErrorKind::Overloaded);
        errors.record(ErrorKind::Overloaded);
        errors.record(ErrorKind::Timeout);
    });
    let mut counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let kind = key
                .labels()
                .find(|l| l.key() == m::KIND)?
                .value()
                .to_owned();
            assert_eq!(key.name(), "llm_errors_total");
            match value {
                DebugValue::Counter(n) if n > 0 => Some((kind, n)),
                _ => None,
            }
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [("overloaded".to_owned(), 2), ("timeout".to_owned(), 1)]
    );
}

#[cfg(feature = "axum")]
#[test]
fn install_prometheus_installs_once_and_registers_every_family() {
    use backstop_core::metrics as m;

    let handle = crate::install_prometheus().expect("first install");
    let text = handle.render();
    assert!(text.contains(&m::name(m::QUEUE_TIMEOUT_TOTAL)), "{text}");
    assert!(
        text.contains(r#"llm_errors_total{kind="upstream_failure"} 0"#),
        "{text}"
    );
    assert!(
        crate::install_prometheus().is_err(),
        "a second install fails"
    );
}

#[cfg(feature = "axum")]
#[test]
// A plain thread polls a plain thread's counter: no runtime to block.
#[allow(clippy::disallowed_methods)]
fn periodically_runs_until_the_process_ends() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    crate::ops::periodically("test-periodic", Duration::from_millis(2), move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    // Real time (a thread): a generous bound (10 s), never a tight one.
    for _ in 0..2000 {
        if runs.load(Ordering::SeqCst) >= 3 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("ran {} times in 10 s", runs.load(Ordering::SeqCst));
}
