//! The gateway's own metric: `llm_errors_total{kind}` counts each request
//! answered with a generated error, once; passed-through vendor responses
//! are not counted.

use axum::body::Body;
use backstop_gateway::upstream::Upstream;
use backstop_gateway::{AppOptions, Config, build};
use backstop_test_util::metrics::recorded;
use backstop_test_util::{MockUpstream, Step};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

#[test]
fn generated_errors_are_counted_once() {
    let ((), r) = recorded(|| async {
        let mock = MockUpstream::script([
            Step::ok("{}"),
            Step::status(400, "{}"),
            Step::status(500, "x"),
            Step::status(500, "x"),
            Step::status(500, "x"),
        ]);
        let upstream: Upstream =
            BoxCloneSyncService::new(ServiceExt::<Request<Body>>::map_response(
                mock.clone(),
                |r: Response<backstop_test_util::MockBody>| r.map(Body::new),
            ));
        let config = Config::from_toml(
            "[upstream]\nurl = \"http://v.test\"\n[retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"20ms\"",
            &|_| None,
        )
        .unwrap();
        let app = build(&config, upstream, AppOptions::default()).unwrap();
        let mut statuses = Vec::new();
        for (method, path, body) in [
            ("POST", "/v1/chat/completions", "{}"),
            ("POST", "/v1/chat/completions", "{}"),
            ("POST", "/v1/chat/completions", "{}"),
            ("GET", "/nowhere", ""),
            ("POST", "/v1/embeddings", "[]"),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from(body))
                .unwrap();
            let res = app.router.clone().oneshot(req).await.unwrap();
            statuses.push(res.status());
            let _ = res.into_body().collect().await;
        }
        assert_eq!(
            statuses,
            [
                StatusCode::OK,
                StatusCode::BAD_REQUEST,
                StatusCode::BAD_GATEWAY,
                StatusCode::NOT_FOUND,
                StatusCode::BAD_REQUEST
            ]
        );
        assert_eq!(mock.calls(), 5);
    });
    // Under the default prefix.
    assert_eq!(
        backstop_core::metrics::name("errors_total"),
        "llm_errors_total"
    );
    assert_eq!(
        r.counter("errors_total", &[("kind", "upstream_failure")]),
        1
    );
    // The 404 and the non-object body; the vendor's own 400 is not counted.
    assert_eq!(r.counter("errors_total", &[("kind", "invalid_request")]), 2);
    assert_eq!(r.counter("retries_total", &[]), 2);
}
