//! Socket and process tests on real time (DESIGN contract 5): the built
//! binary, spawned; generous timeouts, no assertion tighter than ~100 ms.

// Real processes on real time: the std clock and blocking waits on the
// child process are what these tests need.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_backstop-gateway");

struct Proc {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawns the binary and waits for its banner.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the gateway");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the banner");
        Self {
            child,
            addr,
            stderr: erx,
        }
    }

    /// The gateway on a free port, with `toml` as its configuration file
    /// `name`.
    fn with_config(name: &str, toml: &str, env: &[(&str, &str)]) -> Self {
        let path = write_config(name, toml);
        Self::spawn(
            &[
                "--listen",
                "127.0.0.1:0",
                "--config",
                path.to_str().unwrap(),
            ],
            env,
        )
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < within, "the process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            out.push(l);
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the whole response.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A chat completion streamed as `chunks` SSE chunks `interval_ms` apart,
/// read to its end in the background.
fn stream_in_background(
    addr: &str,
    chunks: &'static str,
    interval_ms: &'static str,
) -> tokio::task::JoinHandle<String> {
    let addr = addr.to_owned();
    tokio::spawn(async move {
        http(
            &addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("x-sim-stream-chunks", chunks),
                ("x-sim-chunk-interval-ms", interval_ms),
            ],
            r#"{"stream":true}"#,
        )
        .await
    })
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-gateway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), err)
}

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let cases = [
        (
            "unknown.toml",
            "[sla]\ntimeout = \"5s\"\nbogus_key = 1\n",
            "bogus_key",
        ),
        (
            "range.toml",
            "[admission]\nmax_waiting = 0\n",
            "admission.max_waiting",
        ),
        (
            "duration.toml",
            "[sla]\ntimeout = \"5 parsecs\"\n",
            "sla.timeout",
        ),
        (
            "zero.toml",
            "[attempt]\ntimeout = \"0s\"\n",
            "attempt.timeout",
        ),
        (
            "env.toml",
            "[upstream]\napi_key_env = \"BACKSTOP_TEST_UNSET_VAR\"\n",
            "upstream.api_key_env",
        ),
        (
            "client.toml",
            "[[clients]]\nname = \"a\"\n",
            "clients[0].key_env",
        ),
    ];
    for (name, text, key) in cases {
        let path = write_config(name, text);
        let (code, err) = run_to_exit(&["--config", path.to_str().unwrap()], &[]);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(key), "{name}: {err}");
    }
    let (code, err) = run_to_exit(&["--listen", "not-an-address"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--listen"), "{err}");
    let (code, _) = run_to_exit(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(2));
}

#[test]
fn bind_failure_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run_to_exit(&["--listen", &addr], &[]);
    assert_eq!(code, Some(1), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_then_sigterm_exits_0() {
    let mut p = Proc::spawn(&["--listen", "127.0.0.1:0"], &[]);
    let res = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        r#"{"model":"sim-1"}"#,
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.contains("\"total_tokens\""), "{res}");
    let res = http(&p.addr, "GET", "/health", &[], "").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
    let logs = p.logs();
    let finished: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("\"request finished\""))
        .collect();
    assert_eq!(finished.len(), 2, "{logs:?}");
    // Worker threads write their lines in batches: across threads, lines are
    // not in request order.
    let chat = finished
        .iter()
        .find(|l| l.contains("/v1/chat/completions"))
        .unwrap_or_else(|| panic!("{logs:?}"));
    let v: serde_json::Value = serde_json::from_str(chat).unwrap();
    for key in [
        "request_id",
        "method",
        "path",
        "status",
        "attempts",
        "duration_ms",
        "outcome",
    ] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    assert_eq!(v["attempts"], 1);
}

/// A burst of connections (the workers hand some to each other to keep their
/// counts even): every one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_served_in_full() {
    let p = Proc::spawn(&["--listen", "127.0.0.1:0"], &[]);
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let addr = p.addr.clone();
            tokio::spawn(async move {
                http(
                    &addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    r#"{"model":"sim-1"}"#,
                )
                .await
            })
        })
        .collect();
    for call in calls {
        let res = call.await.unwrap();
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    }
}

/// The binary writes the access line outside tracing (`direct_log`), but
/// `RUST_LOG` still decides whether it is written: off for
/// `backstop_gateway::trace` here, while other INFO lines stay on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_turns_the_access_line_off() {
    let mut p = Proc::spawn(
        &["--listen", "127.0.0.1:0"],
        &[("RUST_LOG", "info,backstop_gateway::trace=warn")],
    );
    let res = http(&p.addr, "GET", "/health", &[], "").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
    let logs = p.logs();
    assert!(
        logs.iter().any(|l| l.contains("\"shutdown complete\"")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("\"request finished\"")),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_an_open_stream_then_exits_0() {
    let mut p = Proc::spawn(&["--listen", "127.0.0.1:0"], &[]);
    let stream = stream_in_background(&p.addr, "6", "150");
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("INT");
    // /ready answers 503 at once? The listener may already be closed
    // (drain_delay 0s); the stream finishes either way.
    let body = stream.await.unwrap();
    assert!(body.contains("data: [DONE]"), "{body}");
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_serving_and_ready_is_503() {
    let mut p = Proc::with_config("drain.toml", "[shutdown]\ndrain_delay = \"1s\"\n", &[]);
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = http(&p.addr, "GET", "/ready", &[], "").await;
    assert!(res.starts_with("HTTP/1.1 503"), "{res}");
    assert!(res.contains("draining"), "{res}");
    let res = http(&p.addr, "GET", "/v1/models", &[], "").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_1() {
    let mut p = Proc::with_config("second.toml", "[shutdown]\ntimeout = \"30s\"\n", &[]);
    let _stream = stream_in_background(&p.addr, "100", "200");
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.child.try_wait().unwrap().is_none(), "still draining");
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(10)).code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_ends_streams_with_the_error_event() {
    let mut p = Proc::with_config("timeout.toml", "[shutdown]\ntimeout = \"500ms\"\n", &[]);
    let stream = stream_in_background(&p.addr, "100", "100");
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("TERM");
    let body = stream.await.unwrap();
    assert!(
        body.contains("event: error\ndata: {\"error\":{\"type\":\"timeout\""),
        "{body}"
    );
    assert!(!body.contains("[DONE]"));
    // The stream counts as drained.
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_frames_arrive_before_the_stream_ends() {
    let p = Proc::spawn(&["--listen", "127.0.0.1:0"], &[]);
    let mut s = TcpStream::connect(&p.addr).await.unwrap();
    let body = r#"{"stream":true}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-sim-stream-chunks: 5\r\nx-sim-chunk-interval-ms: 400\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut seen = String::new();
    let mut first_chunk_at = None;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if first_chunk_at.is_none() && seen.contains("word0") {
            first_chunk_at = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    let first = first_chunk_at.expect("a first chunk");
    // Four gaps of 400 ms: the whole stream takes >= 1.6 s; the first frame
    // came long before.
    assert!(total >= Duration::from_millis(1500), "{total:?}");
    assert!(
        first + Duration::from_secs(1) < total,
        "{first:?} of {total:?}"
    );
    assert!(seen.contains("text/event-stream"));
    assert!(seen.contains("data: [DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream() {
    // The vendor alone, then the gateway in front of it.
    let mut vendor = Command::new(BIN)
        .args([
            "simulate-vendor",
            "--listen",
            "127.0.0.1:0",
            "--latency-ms",
            "0",
            "--jitter-ms",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = {
        let mut r = BufReader::new(vendor.stdout.take().unwrap());
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    };
    let vaddr = line.split("http://").nth(1).unwrap().trim().to_owned();
    let url = format!("http://{vaddr}");
    let p = Proc::spawn(&["--listen", "127.0.0.1:0", "--upstream", &url], &[]);
    let mut s = TcpStream::connect(&p.addr).await.unwrap();
    let body = r#"{"stream":true}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-sim-stream-chunks: 100\r\nx-sim-chunk-interval-ms: 100\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0);
    drop(s);
    let start = Instant::now();
    loop {
        let stats = http(&vaddr, "GET", "/sim/stats", &[], "").await;
        if stats.contains("\"cancelled\":1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "upstream not cancelled: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = vendor.kill();
    let _ = vendor.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_authorization_value_in_any_log_line() {
    let mut p = Proc::with_config(
        "keys.toml",
        "[upstream]\napi_key_env = \"BACKSTOP_TEST_VENDOR_KEY\"\n[[clients]]\nname = \"acme\"\nkey_env = \"BACKSTOP_TEST_CLIENT_KEY\"\n",
        &[
            ("BACKSTOP_TEST_VENDOR_KEY", "vendor-key-zzq"),
            ("BACKSTOP_TEST_CLIENT_KEY", "client-key-zzq"),
            ("RUST_LOG", "trace"),
        ],
    );
    // Without --upstream the built-in vendor serves; it is in-process, so
    // its logs are the gateway's too.
    let ok = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer client-key-zzq")],
        "{}",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let bad = http(
        &p.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer wrong-key-zzq")],
        "{}",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
    let logs = p.logs();
    assert!(logs.len() > 2);
    for l in &logs {
        assert!(!l.contains("zzq"), "a secret in the logs: {l}");
    }
}

#[test]
fn demo_plays_every_row_and_passes() {
    let out = Command::new(BIN)
        .arg("demo")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "healthy",
        "vendor slow",
        "vendor down",
        "rate limit hit",
        "queue overload",
        "SLA timeout",
        "client disconnect",
    ] {
        assert!(stdout.contains(&format!("| {row}")), "{row} in {stdout}");
    }
    assert!(!stdout.contains("| NO |"), "{stdout}");
    // Not a TTY: no progress bar.
    assert!(!String::from_utf8_lossy(&out.stderr).contains('['));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_at_the_shutdown_timeout_exit_1() {
    let mut p = Proc::with_config("cut.toml", "[shutdown]\ntimeout = \"500ms\"\n", &[]);
    let addr = p.addr.clone();
    let slow = tokio::spawn(async move {
        http(
            &addr,
            "POST",
            "/v1/chat/completions",
            &[("x-sim-latency-ms", "10000")],
            "{}",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(1));
    // The slow request got no answer.
    let got = slow.await.unwrap();
    assert!(!got.contains("200 OK"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_hardening_header_size_and_read_timeout() {
    let p = Proc::with_config(
        "server.toml",
        "[server]\nheader_read_timeout = \"1s\"\nmax_header_bytes = 16384\n",
        &[],
    );
    // Headers over the limit: refused, never proxied.
    let big = "a".repeat(40_000);
    let res = http(&p.addr, "GET", "/v1/models", &[("x-big", big.as_str())], "").await;
    assert!(
        !res.starts_with("HTTP/1.1 200"),
        "{}",
        &res[..res.len().min(200)]
    );
    // A client that never finishes its head is cut after the timeout.
    let mut s = TcpStream::connect(&p.addr).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "connection still open after 10 s");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    // A keep-alive connection: each head may take up to the timeout after
    // the previous response, and one that stays idle longer is closed.
    let mut s = TcpStream::connect(&p.addr).await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The whole response: its head, then content-length bytes.
        let mut res = Vec::new();
        let mut byte = [0u8; 1];
        while !res.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            res.push(byte[0]);
        }
        let head = String::from_utf8(res).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let len: usize = head
            .split("content-length: ")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{head}"));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
    }
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "idle connection still open after 10 s");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_the_next_connection_back() {
    let p = Proc::with_config("conns.toml", "[server]\nmax_connections = 1\n", &[]);
    let first = TcpStream::connect(&p.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = p.addr.clone();
    let mut second = tokio::spawn(async move { http(&addr, "GET", "/health", &[], "").await });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut second).await;
    assert!(early.is_err(), "served while the only slot was taken");
    drop(first);
    let res = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap();
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
}
