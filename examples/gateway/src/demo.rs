//! `backstop-gateway demo`: plays each row of DESIGN's "what the client
//! sees" table against the simulated vendor, on compressed settings (SLA 2 s,
//! attempt 500 ms, backoff 50 ms to 200 ms, 3 attempts), and checks the
//! statuses and upstream attempt counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{AppOptions, Handles, build};
use crate::config::Config;
use crate::upstream::hyper_upstream;
use crate::vendor::{VendorOptions, VendorStats, vendor_app};

/// The demo's compressed settings.
const SETTINGS: &str = r#"
[sla]
timeout = "2s"
[attempt]
timeout = "500ms"
[retry]
backoff_base = "50ms"
backoff_max = "200ms"
max_attempts = 3
min_attempt_time = "100ms"
"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One row of the table, as played.
#[derive(Debug)]
struct Row {
    situation: &'static str,
    expected: &'static str,
    statuses: BTreeMap<u16, usize>,
    latencies: Vec<Duration>,
    attempts: BTreeMap<u32, usize>,
    ok: bool,
    note: String,
}

struct Env {
    client: HttpClient,
    vendor: SocketAddr,
    stats: Arc<VendorStats>,
}

struct Gateway {
    addr: SocketAddr,
    handles: Handles,
}

async fn start_gateway(env: &Env, extra: &str) -> Result<Gateway, String> {
    let text = format!(
        "{SETTINGS}\n[upstream]\nurl = \"http://{}\"\n{extra}",
        env.vendor
    );
    let config = Config::from_toml(&text, &|_| None).map_err(|e| e.to_string())?;
    let app = build(
        &config,
        hyper_upstream(
            config.upstream.connect_timeout,
            config.upstream.pool_idle_timeout,
        ),
        AppOptions {
            metrics: None,
            shutdown: CancellationToken::new(),
            direct_log: false,
        },
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let handles = app.handles.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.router).await;
    });
    Ok(Gateway { addr, handles })
}

/// Sends one chat request with `headers`; returns the status and latency.
async fn call(
    env: &Env,
    gw: &Gateway,
    id: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (u16, Duration) {
    let mut req = Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("content-type", "application/json")
        .header("x-request-id", id);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let Ok(req) = req.body(Full::new(Bytes::from_static(body.as_bytes()))) else {
        return (0, Duration::ZERO);
    };
    let start = Instant::now();
    match env.client.request(req).await {
        Ok(res) => {
            let status = res.status().as_u16();
            let _ = res.into_body().collect().await;
            (status, Instant::now().saturating_duration_since(start))
        }
        Err(_) => (0, Instant::now().saturating_duration_since(start)),
    }
}

/// Plays `n` concurrent requests of one row.
async fn play(
    env: &Arc<Env>,
    gw: &Arc<Gateway>,
    row: &'static str,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Row {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (env, gw) = (Arc::clone(env), Arc::clone(gw));
        tasks.push(tokio::spawn(async move {
            let id = format!("demo-{}-{i}", row.replace(' ', "-"));
            let (status, took) = call(
                &env,
                &gw,
                &id,
                headers,
                r#"{"model":"sim-1","max_tokens":16}"#,
            )
            .await;
            (status, took, env.stats.attempts(&id))
        }));
    }
    let mut r = Row {
        situation: row,
        expected: "",
        statuses: BTreeMap::new(),
        latencies: Vec::new(),
        attempts: BTreeMap::new(),
        ok: true,
        note: String::new(),
    };
    for t in tasks {
        if let Ok((status, took, attempts)) = t.await {
            *r.statuses.entry(status).or_default() += 1;
            r.latencies.push(took);
            *r.attempts.entry(attempts).or_default() += 1;
        }
    }
    r
}

fn only(map: &BTreeMap<u16, usize>, status: u16) -> bool {
    map.len() == 1 && map.contains_key(&status)
}

fn attempts_all(map: &BTreeMap<u32, usize>, n: u32) -> bool {
    map.len() == 1 && map.contains_key(&n)
}

async fn client_disconnect(env: &Arc<Env>, gw: &Gateway) -> Row {
    let before_vendor = env.stats.cancelled.load(Ordering::Relaxed);
    let before_hook = gw.handles.cancelled.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut status = 0;
    if let Ok(req) = Request::post(format!("http://{}/v1/chat/completions", gw.addr))
        .header("x-request-id", "demo-disconnect")
        .header("x-sim-stream-chunks", "100")
        .header("x-sim-chunk-interval-ms", "50")
        .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
    {
        if let Ok(res) = env.client.request(req).await {
            status = res.status().as_u16();
            let mut body = res.into_body();
            let _ = body.frame().await;
            // The client goes away mid-stream.
            drop(body);
        }
    }
    let took = Instant::now().saturating_duration_since(start);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut vendor_cancelled, mut hook_ran) = (false, false);
    while Instant::now() < deadline {
        vendor_cancelled = env.stats.cancelled.load(Ordering::Relaxed) > before_vendor;
        hook_ran = gw.handles.cancelled.load(Ordering::Relaxed) > before_hook;
        if vendor_cancelled && hook_ran {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = env.stats.attempts("demo-disconnect");
    Row {
        situation: "client disconnect",
        expected: "200, then cut",
        statuses: BTreeMap::from([(status, 1)]),
        latencies: vec![took],
        attempts: BTreeMap::from([(attempts, 1)]),
        ok: status == 200 && attempts == 1 && vendor_cancelled && hook_ran,
        note: format!("upstream cancelled: {vendor_cancelled}, cancel hook ran: {hook_ran}"),
    }
}

fn percentile(lat: &mut [Duration], p: f64) -> Duration {
    if lat.is_empty() {
        return Duration::ZERO;
    }
    lat.sort();
    let idx = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[idx.min(lat.len() - 1)]
}

fn progress(done: usize, total: usize) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let bar: String = (0..total)
            .map(|i| if i < done { '#' } else { '.' })
            .collect();
        let _ = write!(err, "\r[{bar}] {done}/{total}");
        if done == total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// Runs the demo; exit code 0 when every row matched.
pub async fn run() -> ExitCode {
    match run_inner().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "demo failed to start: {e}");
            ExitCode::from(1)
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn run_inner() -> Result<bool, String> {
    let vendor_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| e.to_string())?;
    let vendor = vendor_listener.local_addr().map_err(|e| e.to_string())?;
    let (router, stats) = vendor_app(VendorOptions {
        latency_ms: 20,
        jitter_ms: 10,
        ..VendorOptions::default()
    });
    tokio::spawn(async move {
        let _ = axum::serve(vendor_listener, router).await;
    });
    let env = Arc::new(Env {
        client: Client::builder(TokioExecutor::new()).build_http(),
        vendor,
        stats,
    });
    let total = 7;
    let mut rows = Vec::new();
    progress(0, total);

    let gw = Arc::new(start_gateway(&env, "").await?);
    let mut r = play(&env, &gw, "healthy", 20, &[]).await;
    r.expected = "200";
    r.ok = only(&r.statuses, 200) && attempts_all(&r.attempts, 1);
    rows.push(r);
    progress(rows.len(), total);

    let mut r = play(
        &env,
        &gw,
        "vendor slow",
        10,
        &[("x-sim-slow-attempts", "1"), ("x-sim-slow-ms", "5000")],
    )
    .await;
    r.expected = "200 (retried)";
    r.ok = only(&r.statuses, 200) && attempts_all(&r.attempts, 2);
    rows.push(r);
    progress(rows.len(), total);

    let mut r = play(&env, &gw, "vendor down", 10, &[("x-sim-status", "500")]).await;
    r.expected = "502";
    r.ok = only(&r.statuses, 502) && attempts_all(&r.attempts, 3);
    rows.push(r);
    progress(rows.len(), total);

    let limited = Arc::new(
        start_gateway(&env, "[rate_limit]\nrequests_per_minute = 600\nrequests_burst = 1\n[admission]\nqueue_timeout = \"1s\"\n").await?,
    );
    let mut r = play(&env, &limited, "rate limit hit", 8, &[]).await;
    r.expected = "200 (waited)";
    // Statuses and attempts only; the p99 shows the wait.
    r.ok = only(&r.statuses, 200) && attempts_all(&r.attempts, 1);
    r.note = String::from("600/min, burst 1: one every 100 ms");
    rows.push(r);
    progress(rows.len(), total);

    let small = Arc::new(
        start_gateway(
            &env,
            "[concurrency]\nmax_in_flight = 1\n[admission]\nmax_waiting = 2\nqueue_timeout = \"200ms\"\n",
        )
        .await?,
    );
    let mut r = play(
        &env,
        &small,
        "queue overload",
        8,
        &[("x-sim-latency-ms", "300")],
    )
    .await;
    r.expected = "429";
    let served = r.statuses.get(&200).copied().unwrap_or(0);
    let refused = r.statuses.get(&429).copied().unwrap_or(0);
    r.ok = served >= 1 && refused >= 1 && served + refused == 8;
    // Refused requests never reach the vendor; served ones once.
    r.ok &= r.attempts.get(&0).copied().unwrap_or(0) == refused;
    r.ok &= r.attempts.get(&1).copied().unwrap_or(0) == served;
    r.note = String::from("1 in flight, 2 waiting, 200 ms wait");
    rows.push(r);
    progress(rows.len(), total);

    let mut r = play(
        &env,
        &gw,
        "SLA timeout",
        5,
        &[
            ("x-sim-latency-ms", "5000"),
            ("x-request-timeout-ms", "400"),
        ],
    )
    .await;
    r.expected = "504";
    r.ok = only(&r.statuses, 504) && attempts_all(&r.attempts, 1);
    r.note = String::from("client x-request-timeout-ms: 400");
    rows.push(r);
    progress(rows.len(), total);

    rows.push(client_disconnect(&env, &gw).await);
    progress(rows.len(), total);

    let mut out = String::new();
    out.push_str("| situation | expected | statuses seen | p50 | p99 | upstream attempts per request | ok |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    let mut all = true;
    for r in &mut rows {
        all &= r.ok;
        let statuses: Vec<String> = r.statuses.iter().map(|(s, n)| format!("{n}×{s}")).collect();
        let attempts: Vec<String> = r.attempts.iter().map(|(a, n)| format!("{n}×{a}")).collect();
        let p50 = percentile(&mut r.latencies, 0.5);
        let p99 = percentile(&mut r.latencies, 0.99);
        let note = if r.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.note)
        };
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {} ms | {} ms | {} | {} |",
            r.situation,
            note,
            r.expected,
            statuses.join(" "),
            p50.as_millis(),
            p99.as_millis(),
            attempts.join(" "),
            if r.ok { "yes" } else { "NO" },
        );
    }
    let _ = writeln!(std::io::stdout(), "{out}");
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        if all {
            "every row as expected"
        } else {
            "some rows differ"
        }
    );
    Ok(all)
}
