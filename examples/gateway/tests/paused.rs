//! In-process tests of the gateway's router on paused time, with a scripted
//! upstream in place of the socket client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use backstop::BoxError;
use backstop_gateway::upstream::Upstream;
use backstop_gateway::{App, AppOptions, Config, build};
use backstop_test_util::{MockUpstream, Step, body_channel};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

fn since(start: Instant) -> Duration {
    Instant::now().saturating_duration_since(start)
}

fn env(name: &str) -> Option<String> {
    match name {
        "ACME_KEY" => Some("acme-secret".into()),
        "BETA_KEY" => Some("beta-secret".into()),
        "VENDOR_KEY" => Some("vendor-secret".into()),
        _ => None,
    }
}

/// Short settings so paused-time tests read well.
const BASE: &str = r#"
[upstream]
url = "http://vendor.test/v1"
[sla]
timeout = "2s"
[attempt]
timeout = "500ms"
[retry]
backoff_base = "50ms"
backoff_max = "200ms"
min_attempt_time = "100ms"
"#;

/// BASE with `extra`'s keys on top.
fn config(extra: &str) -> Config {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut base: toml::Table = BASE.parse().unwrap();
    merge(&mut base, extra.parse().unwrap());
    Config::from_toml(&base.to_string(), &env).expect("valid config")
}

fn mock_upstream(mock: &MockUpstream) -> Upstream {
    BoxCloneSyncService::new(ServiceExt::<Request<Body>>::map_response(
        mock.clone(),
        |r: Response<backstop_test_util::MockBody>| r.map(Body::new),
    ))
}

fn gateway(config: &Config, upstream: Upstream) -> App {
    build(config, upstream, AppOptions::default()).expect("app builds")
}

fn chat(body: &'static str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let res = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn error_type(body: &Bytes) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["error"]["type"].as_str().unwrap_or("").to_owned()
}

fn assert_generated(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    want: StatusCode,
    kind: &str,
) {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    assert_eq!(error_type(body), kind);
    let v: Value = serde_json::from_slice(body).unwrap();
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(v["error"]["request_id"], id);
    assert!(v["error"]["message"].is_string());
}

const USAGE: &str = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}"#;

// ------------------------------------------------------------ the table

#[tokio::test(start_paused = true)]
async fn healthy_passes_body_and_headers_through() {
    let mock = MockUpstream::script([Step::ok(USAGE)
        .header("x-request-id", "vendor-1")
        .header("x-custom", "yes")]);
    let app = gateway(&config(""), mock_upstream(&mock));
    let req = Request::post("/v1/chat/completions")
        .header("x-request-id", "client-id-1")
        .header("authorization", "Bearer passthrough")
        .header("x-extra", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .body(Body::from(r#"{"model":"m"}"#))
        .unwrap();
    let (status, headers, body) = send(&app.router, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, USAGE.as_bytes());
    assert_eq!(headers["x-request-id"], "client-id-1");
    assert_eq!(headers["x-upstream-request-id"], "vendor-1");
    assert_eq!(headers["x-custom"], "yes");
    assert!(!headers.contains_key("x-should-retry"));
    assert_eq!(mock.calls(), 1);
    let seen = &mock.seen()[0];
    assert_eq!(
        seen.uri.to_string(),
        "http://vendor.test/v1/chat/completions"
    );
    assert_eq!(seen.headers["x-request-id"], "client-id-1");
    assert_eq!(seen.headers["accept-encoding"], "identity");
    assert_eq!(seen.headers["x-extra"], "kept");
    // No upstream key and no [[clients]]: the client's Authorization goes on.
    assert_eq!(seen.headers["authorization"], "Bearer passthrough");
    assert!(!seen.headers.contains_key("x-hop"));
    assert!(!seen.headers.contains_key("connection"));
    // Paused time: the attempt's deadline is exactly 500 ms away.
    assert_eq!(seen.headers["x-request-timeout-ms"], "500");
}

#[tokio::test(start_paused = true)]
async fn vendor_slow_then_a_retry_succeeds() {
    let mock = MockUpstream::script([Step::Stall, Step::ok(USAGE)]);
    let app = gateway(&config(""), mock_upstream(&mock));
    let (status, _, body) = send(&app.router, chat("{}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, USAGE.as_bytes());
    assert_eq!(mock.calls(), 2);
    assert_eq!(mock.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn local_rate_limit_waits_within_admission() {
    let mock = MockUpstream::new();
    let app = gateway(
        &config("[rate_limit]\nrequests_per_minute = 60\nrequests_burst = 1"),
        mock_upstream(&mock),
    );
    let start = Instant::now();
    assert_eq!(send(&app.router, chat("{}")).await.0, StatusCode::OK);
    assert_eq!(since(start), Duration::ZERO);
    assert_eq!(send(&app.router, chat("{}")).await.0, StatusCode::OK);
    // One per second: the second request waited for its token.
    assert_eq!(since(start), Duration::from_secs(1));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn rate_wait_that_cannot_fit_is_overloaded_at_once() {
    let mock = MockUpstream::new();
    let app = gateway(
        &config(
            "[rate_limit]\nrequests_per_minute = 6\nrequests_burst = 1\n[admission]\nqueue_timeout = \"1s\"",
        ),
        mock_upstream(&mock),
    );
    assert_eq!(send(&app.router, chat("{}")).await.0, StatusCode::OK);
    let start = Instant::now();
    let (status, headers, body) = send(&app.router, chat("{}")).await;
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "overloaded",
    );
    assert_eq!(since(start), Duration::ZERO);
    assert!(headers.contains_key("retry-after"));
    assert!(headers.contains_key("retry-after-ms"));
    assert!(!headers.contains_key("x-should-retry"));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn queue_overload_full_and_wait_exceeded() {
    let mock = MockUpstream::script([Step::Stall]);
    let app = gateway(
        &config(
            "[concurrency]\nmax_in_flight = 1\n[admission]\nmax_waiting = 1\nqueue_timeout = \"300ms\"\noverload_status = 503\nretry_after = \"2s\"\n[sla]\ntimeout = \"10s\"\n[attempt]\ntimeout = \"5s\"",
        ),
        mock_upstream(&mock),
    );
    let r = app.router.clone();
    let first = tokio::spawn(async move { send(&r, chat("{}")).await });
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(app.handles.concurrency.in_flight(), 1);
    let r = app.router.clone();
    let second = tokio::spawn(async move { send(&r, chat("{}")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(app.handles.queue.depth(), 1);
    // Third: the queue is full, refused at once.
    let (status, headers, body) = send(&app.router, chat("{}")).await;
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    );
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["retry-after-ms"], "2000");
    // Second: waited its 300 ms for the permit, then overloaded.
    let (status, headers, body) = second.await.unwrap();
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    );
    assert_eq!(mock.calls(), 1);
    first.abort();
}

#[tokio::test(start_paused = true)]
async fn vendor_4xx_passes_through_never_retried() {
    let body = r#"{"error":{"type":"invalid_request_error","message":"bad"}}"#;
    let mock = MockUpstream::script([Step::status(400, body).header("x-should-retry", "true")]);
    let app = gateway(&config(""), mock_upstream(&mock));
    let (status, headers, got) = send(&app.router, chat("{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(got, body.as_bytes());
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn vendor_429_after_retries_keeps_retry_after() {
    let body = r#"{"error":{"type":"rate_limit_exceeded"}}"#;
    let mock = MockUpstream::new();
    mock.fallback(
        Step::status(429, body)
            .header("retry-after-ms", "20")
            .header("retry-after", "1"),
    );
    let app = gateway(&config(""), mock_upstream(&mock));
    let (status, headers, got) = send(&app.router, chat("{}")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got, body.as_bytes());
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn vendor_down_is_502_after_all_attempts() {
    let mock = MockUpstream::new();
    mock.fallback(
        Step::status(500, "oops")
            .header("x-request-id", "v-9")
            .header("x-secret-vendor", "no"),
    );
    let app = gateway(&config(""), mock_upstream(&mock));
    let (status, headers, body) = send(&app.router, chat("{}")).await;
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::BAD_GATEWAY,
        "upstream_failure",
    );
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(headers["x-upstream-request-id"], "v-9");
    assert!(!headers.contains_key("x-secret-vendor"));
    assert_eq!(mock.calls(), 3);

    let mock = MockUpstream::new();
    mock.fallback(Step::Fail {
        delay: Duration::ZERO,
    });
    let app = gateway(&config(""), mock_upstream(&mock));
    let (status, headers, body) = send(&app.router, chat("{}")).await;
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::BAD_GATEWAY,
        "upstream_failure",
    );
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn sla_deadline_is_504_on_time() {
    let mock = MockUpstream::new();
    mock.fallback(Step::Stall);
    let app = gateway(&config("[attempt]\ntimeout = \"5s\""), mock_upstream(&mock));
    let start = Instant::now();
    let (status, headers, body) = send(&app.router, chat("{}")).await;
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
    );
    assert_eq!(since(start), Duration::from_secs(2));
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(mock.calls(), 1);
    assert_eq!(mock.cancelled(), 1);
}

// ------------------------------------------------- the client's deadline

#[tokio::test(start_paused = true)]
async fn client_deadline_shortens_the_sla_and_goes_upstream() {
    let mock = MockUpstream::new();
    mock.fallback(Step::Stall);
    let app = gateway(&config("[attempt]\ntimeout = \"5s\""), mock_upstream(&mock));
    let start = Instant::now();
    let mut req = chat("{}");
    req.headers_mut()
        .insert("x-request-timeout-ms", "300".parse().unwrap());
    let (status, headers, body) = send(&app.router, req).await;
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
    );
    assert_eq!(since(start), Duration::from_millis(300));
    assert_eq!(mock.seen()[0].headers["x-request-timeout-ms"], "300");

    // It never lengthens the SLA.
    let start = Instant::now();
    let mut req = chat("{}");
    req.headers_mut()
        .insert("x-request-timeout-ms", "9000".parse().unwrap());
    let (status, ..) = send(&app.router, req).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(since(start), Duration::from_secs(2));
    assert_eq!(mock.seen()[1].headers["x-request-timeout-ms"], "2000");
}

#[tokio::test(start_paused = true)]
async fn bad_client_deadline_is_400_nothing_sent() {
    let mock = MockUpstream::new();
    let app = gateway(&config(""), mock_upstream(&mock));
    for bad in ["0", "-5", "1.5", "soon"] {
        let mut req = chat("{}");
        req.headers_mut()
            .insert("x-request-timeout-ms", bad.parse().unwrap());
        let (status, headers, body) = send(&app.router, req).await;
        assert_generated(
            status,
            &headers,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    assert_eq!(mock.calls(), 0);
}

// ---------------------------------------------------- 400/401/404/405/413

#[tokio::test(start_paused = true)]
async fn local_errors_send_nothing_upstream() {
    let mock = MockUpstream::new();
    let app = gateway(
        &config("[limits]\nmax_body_bytes = 64"),
        mock_upstream(&mock),
    );
    let (s, h, b) = send(&app.router, chat("[1,2,3]")).await;
    assert_generated(s, &h, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, h, b) = send(&app.router, chat("not json")).await;
    assert_generated(s, &h, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let big = Box::leak(format!("{{\"x\":\"{}\"}}", "a".repeat(100)).into_boxed_str());
    let (s, h, b) = send(&app.router, chat(big)).await;
    assert_generated(s, &h, &b, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    let (s, h, b) = send(
        &app.router,
        Request::get("/v2/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_generated(s, &h, &b, StatusCode::NOT_FOUND, "invalid_request");
    let (s, h, b) = send(
        &app.router,
        Request::get("/v1/chat/completions")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_generated(s, &h, &b, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
    assert_eq!(mock.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn client_keys() {
    let mock = MockUpstream::new();
    let text = r#"
[upstream]
url = "http://vendor.test"
api_key_env = "VENDOR_KEY"
[[clients]]
name = "acme"
key_env = "ACME_KEY"
[[clients]]
name = "beta"
key_env = "BETA_KEY"
"#;
    let cfg = Config::from_toml(text, &env).unwrap();
    let app = gateway(&cfg, mock_upstream(&mock));
    let (s, h, b) = send(&app.router, chat("{}")).await;
    assert_generated(s, &h, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let mut req = chat("{}");
    req.headers_mut()
        .insert("authorization", "Bearer acme-secretX".parse().unwrap());
    let (s, h, b) = send(&app.router, req).await;
    assert_generated(s, &h, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(mock.calls(), 0);
    // Health, readiness and metrics need no key.
    for path in ["/health", "/ready", "/metrics"] {
        let (s, ..) = send(&app.router, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    let mut req = chat("{}");
    req.headers_mut()
        .insert("authorization", "Bearer beta-secret".parse().unwrap());
    let (s, ..) = send(&app.router, req).await;
    assert_eq!(s, StatusCode::OK);
    // The client key never goes upstream; the upstream key does.
    let seen = &mock.seen()[0];
    assert_eq!(seen.headers["authorization"], "Bearer vendor-secret");
    assert_eq!(
        seen.uri.to_string(),
        "http://vendor.test/v1/chat/completions"
    );
}

#[tokio::test(start_paused = true)]
async fn client_key_dropped_without_upstream_key() {
    let mock = MockUpstream::new();
    let text = "[upstream]\nurl = \"http://vendor.test\"\n[[clients]]\nname = \"acme\"\nkey_env = \"ACME_KEY\"\n";
    let app = gateway(
        &Config::from_toml(text, &env).unwrap(),
        mock_upstream(&mock),
    );
    let mut req = chat("{}");
    req.headers_mut()
        .insert("authorization", "bearer acme-secret".parse().unwrap());
    assert_eq!(send(&app.router, req).await.0, StatusCode::OK);
    assert!(!mock.seen()[0].headers.contains_key("authorization"));
}

#[tokio::test(start_paused = true)]
async fn client_rate_limit_takes_no_global_token() {
    let mock = MockUpstream::new();
    let text = r#"
[upstream]
url = "http://vendor.test"
[rate_limit]
requests_per_minute = 60
requests_burst = 2
[admission]
queue_timeout = "0s"
[[clients]]
name = "acme"
key_env = "ACME_KEY"
requests_per_minute = 1
[[clients]]
name = "beta"
key_env = "BETA_KEY"
"#;
    let app = gateway(
        &Config::from_toml(text, &env).unwrap(),
        mock_upstream(&mock),
    );
    let with = |key: &'static str| {
        let mut r = chat("{}");
        r.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    assert_eq!(
        send(&app.router, with("acme-secret")).await.0,
        StatusCode::OK
    );
    // acme's own limit refuses it (no wait allowed) ...
    assert_eq!(
        send(&app.router, with("acme-secret")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ... and took no global token: beta still has the second one.
    assert_eq!(
        send(&app.router, with("beta-secret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app.router, with("beta-secret")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(mock.calls(), 2);
}

// ------------------------------------------------------------- tokens

#[tokio::test(start_paused = true)]
async fn tokens_reserved_then_settled_from_usage() {
    let mock = MockUpstream::new();
    mock.fallback(Step::ok(USAGE));
    let app = gateway(
        &config("[rate_limit]\ntokens_per_minute = 1000\n[admission]\nqueue_timeout = \"0s\""),
        mock_upstream(&mock),
    );
    // Estimate: ceil(27 / 4) = 7 + 900 = 907 of a 1000 burst.
    let body = r#"{"model":"m","max_tokens":900}"#;
    let start = Instant::now();
    for _ in 0..5 {
        // Each settles to 10 tokens, so the next 907 fits at once.
        let (s, ..) = send(&app.router, chat(body)).await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(since(start), Duration::ZERO);

    // Without usage the estimate stands: the second one cannot fit.
    mock.fallback(Step::ok("{}"));
    assert_eq!(send(&app.router, chat(body)).await.0, StatusCode::OK);
    assert_eq!(
        send(&app.router, chat(body)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A client's TPM limiter and the global one each hold a reservation for
/// the same request: both settle from the one usage, and both are refunded
/// when no response arrives.
#[tokio::test(start_paused = true)]
async fn client_and_global_token_limits_settle_and_refund_together() {
    let mock = MockUpstream::new();
    mock.fallback(Step::ok(USAGE));
    let text = format!(
        "{BASE}{}",
        r#"
[rate_limit]
tokens_per_minute = 1000
[admission]
queue_timeout = "0s"
[[clients]]
name = "acme"
key_env = "ACME_KEY"
tokens_per_minute = 950
"#
    );
    let app = gateway(
        &Config::from_toml(&text, &env).unwrap(),
        mock_upstream(&mock),
    );
    let with = |body: &'static str| {
        let mut r = chat(body);
        r.headers_mut()
            .insert("authorization", "Bearer acme-secret".parse().unwrap());
        r
    };
    // 907 tokens estimated, 10 used: both limits get 897 back each time,
    // so every next request fits at once in either.
    let body = r#"{"model":"m","max_tokens":900}"#;
    for _ in 0..4 {
        assert_eq!(send(&app.router, with(body)).await.0, StatusCode::OK);
    }
    // No response at all: both reservations come back in full.
    mock.fallback(Step::Fail {
        delay: Duration::from_millis(1),
    });
    for _ in 0..3 {
        let (s, h, b) = send(&app.router, with(body)).await;
        assert_generated(s, &h, &b, StatusCode::BAD_GATEWAY, "upstream_failure");
    }
    // Without usage the estimate stands in both: the next one cannot fit
    // in the client's 950.
    mock.fallback(Step::ok("{}"));
    assert_eq!(send(&app.router, with(body)).await.0, StatusCode::OK);
    assert_eq!(
        send(&app.router, with(body)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_refunded_without_2xx_and_over_burst_is_400() {
    let mock = MockUpstream::new();
    mock.fallback(Step::status(404, r#"{"error":{}}"#));
    let app = gateway(
        &config("[rate_limit]\ntokens_per_minute = 1000\n[admission]\nqueue_timeout = \"0s\""),
        mock_upstream(&mock),
    );
    let body = r#"{"model":"m","max_tokens":900}"#;
    for _ in 0..3 {
        assert_eq!(send(&app.router, chat(body)).await.0, StatusCode::NOT_FOUND);
    }
    let (s, h, b) = send(&app.router, chat(r#"{"max_completion_tokens":5000}"#)).await;
    assert_generated(s, &h, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let msg = serde_json::from_slice::<Value>(&b).unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("5008") && msg.contains("1000"), "{msg}");
    assert_eq!(mock.calls(), 3);
}

/// No response at all (a connect error) is "no 2xx" too: refunded in full,
/// so the next request is not refused for tokens it never used.
#[tokio::test(start_paused = true)]
async fn tokens_refunded_when_the_upstream_never_answers() {
    let mock = MockUpstream::new();
    mock.fallback(Step::Fail {
        delay: Duration::from_millis(1),
    });
    let app = gateway(
        &config(
            "[rate_limit]\ntokens_per_minute = 1000\n[admission]\nqueue_timeout = \"0s\"\n[retry]\nmax_attempts = 1",
        ),
        mock_upstream(&mock),
    );
    let body = r#"{"model":"m","max_tokens":900}"#;
    for _ in 0..3 {
        let (s, h, b) = send(&app.router, chat(body)).await;
        assert_generated(s, &h, &b, StatusCode::BAD_GATEWAY, "upstream_failure");
    }
    assert_eq!(mock.calls(), 3, "no request was refused for tokens");
}

#[tokio::test(start_paused = true)]
async fn tokens_settled_from_the_final_sse_chunk() {
    let (tx, body) = body_channel();
    let slot = Arc::new(Mutex::new(Some(body)));
    let upstream: Upstream =
        BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
            let body = slot.lock().unwrap().take();
            async move {
                let res = match body {
                    Some(b) => Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::new(b))
                        .unwrap(),
                    None => Response::new(Body::from(USAGE)),
                };
                Ok::<_, BoxError>(res)
            }
        }));
    let app = gateway(
        &config("[rate_limit]\ntokens_per_minute = 1000\n[admission]\nqueue_timeout = \"0s\""),
        upstream,
    );
    let body = r#"{"stream":true,"max_tokens":900}"#;
    tx.send("data: {\"choices\":[]}\n\n");
    let res = app.router.clone().oneshot(chat(body)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The permit is held while the stream runs.
    assert_eq!(app.handles.concurrency.in_flight(), 1);
    tx.send("data: {\"choices\":[],\"usage\":{\"total_tokens\":12}}\n\n");
    tx.send("data: [DONE]\n\n");
    drop(tx);
    let got = res.into_body().collect().await.unwrap().to_bytes();
    assert!(got.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(app.handles.concurrency.in_flight(), 0);
    // Settled to 12: a second 908 fits at once.
    assert_eq!(send(&app.router, chat(body)).await.0, StatusCode::OK);
}

// ------------------------------------------------- bodies and cancellation

#[tokio::test(start_paused = true)]
async fn request_body_forwarded_byte_for_byte() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let upstream: Upstream =
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
            let s = Arc::clone(&s);
            async move {
                let b = req.into_body().collect().await?.to_bytes();
                s.lock().unwrap().push(b);
                Ok::<_, BoxError>(Response::new(Body::from("{}")))
            }
        }));
    let app = gateway(&config(""), upstream);
    let body = "{ \"model\" :\"m\",\n  \"messages\": [ {\"content\": \"h\u{e9}llo \\u00e9\"} ] }  ";
    assert_eq!(send(&app.router, chat(body)).await.0, StatusCode::OK);
    assert_eq!(seen.lock().unwrap()[0], body.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_cancels_upstream_and_runs_the_hook() {
    let mock = MockUpstream::new();
    mock.fallback(Step::Stall);
    let app = gateway(&config(""), mock_upstream(&mock));
    let fut = app.router.clone().oneshot(chat("{}"));
    let r = tokio::time::timeout(Duration::from_millis(100), fut).await;
    assert!(r.is_err(), "still waiting");
    assert_eq!(mock.calls(), 1);
    assert_eq!(mock.cancelled(), 1);
    assert_eq!(mock.in_flight(), 0);
    assert_eq!(
        app.handles
            .cancelled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(app.handles.concurrency.in_flight(), 0);
    assert_eq!(app.handles.queue.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn ready_goes_503_when_draining() {
    let app = gateway(&config(""), mock_upstream(&MockUpstream::new()));
    let (s, _, b) = send(
        &app.router,
        Request::get("/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, r#"{"status":"ready"}"#.as_bytes());
    app.handles.readiness.set_draining();
    let (s, _, b) = send(
        &app.router,
        Request::get("/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["reason"], "draining");
}

#[tokio::test(start_paused = true)]
async fn get_models_costs_nothing_and_proxies() {
    let mock = MockUpstream::new();
    let app = gateway(
        &config("[rate_limit]\ntokens_per_minute = 1"),
        mock_upstream(&mock),
    );
    let (s, ..) = send(
        &app.router,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        mock.seen()[0].uri.to_string(),
        "http://vendor.test/v1/models"
    );
}

#[tokio::test(start_paused = true)]
async fn ready_follows_upstream_errors_unless_disabled() {
    for (enabled, want) in [
        (true, StatusCode::SERVICE_UNAVAILABLE),
        (false, StatusCode::OK),
    ] {
        let mock = MockUpstream::new();
        mock.fallback(Step::status(500, "down"));
        let extra = format!("[ready]\nupstream_errors = {enabled}\n[retry]\nmax_attempts = 1");
        let app = gateway(&config(&extra), mock_upstream(&mock));
        for _ in 0..10 {
            assert_eq!(
                send(&app.router, chat("{}")).await.0,
                StatusCode::BAD_GATEWAY
            );
        }
        let (s, _, b) = send(
            &app.router,
            Request::get("/ready").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(s, want, "{}", String::from_utf8_lossy(&b));
        if enabled {
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["reason"], "upstream_errors");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_a_500_with_the_request_id() {
    let upstream: Upstream =
        BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
            assert!(!req.uri().path().ends_with("models"), "a bug");
            Ok::<_, BoxError>(Response::new(Body::from("{}")))
        }));
    let app = gateway(&config("[retry]\nmax_attempts = 1"), upstream);
    let req = Request::get("/v1/models")
        .header("x-request-id", "panic-1")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app.router, req).await;
    assert_generated(
        status,
        &headers,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
    );
    assert_eq!(headers["x-request-id"], "panic-1");
    // The gateway still serves.
    assert_eq!(send(&app.router, chat("{}")).await.0, StatusCode::OK);
}
