//! `bare-proxy`: the baseline of the end-to-end benchmark
//! (`scripts/bench-gateway.sh`).
//!
//! The smallest reverse proxy a user would write with hyper and hyper-util
//! and nothing else: an HTTP/1.1 hyper server on a multi-thread tokio runtime,
//! every request forwarded as it is (path and query onto the upstream base,
//! headers and body untouched, bodies streamed both ways) through hyper-util's
//! pooled legacy `Client`. No limits, no timeouts, no retries, no logs: what
//! the gateway adds is measured against this.
//!
//! ```text
//! bare-proxy --listen 127.0.0.1:8090 --upstream http://127.0.0.1:8081
//! ```
//!
//! Prints `bare proxy listening on http://ADDR` once bound; stops on SIGINT or
//! SIGTERM (the default action).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type ProxyBody = Either<Incoming, Full<Bytes>>;

/// `--listen` and `--upstream` (`http://host:port`, no path).
struct Args {
    listen: SocketAddr,
    upstream: String,
}

fn parse_args() -> Result<Args, String> {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8090));
    let mut upstream = String::from("http://127.0.0.1:8081");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value:?}: {e}"))?;
            }
            "--upstream" => value.trim_end_matches('/').clone_into(&mut upstream),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    if !upstream.starts_with("http://") {
        return Err(format!(
            "--upstream {upstream:?}: only http:// is supported"
        ));
    }
    Ok(Args { listen, upstream })
}

fn bad_gateway() -> Response<ProxyBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from_static(
        b"bad gateway\n",
    ))));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

async fn proxy(
    client: Client<HttpConnector, Incoming>,
    upstream: &str,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{upstream}{path}").parse::<Uri>() else {
        return Ok(bad_gateway());
    };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(res) => Ok(res.map(Either::Left)),
        Err(_) => Ok(bad_gateway()),
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let bound = listener.local_addr()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let upstream: &'static str = Box::leak(args.upstream.into_boxed_str());
    writeln!(std::io::stdout(), "bare proxy listening on http://{bound}")?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| proxy(client.clone(), upstream, req));
            // A client that goes away mid-request is not the proxy's failure.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "bare-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "bare-proxy: cannot start the runtime: {e}"
            );
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "bare-proxy: {e}");
            ExitCode::from(1)
        }
    }
}
