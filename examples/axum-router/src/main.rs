//! backstop in front of an axum `Router`: the handler reads its deadlines
//! from the request context in its extensions, errors come back as
//! OpenAI-shaped JSON.
//!
//! Run with `cargo run -p backstop-example-axum-router`, then
//! `curl -i localhost:3000/slow` (504 after 1 s) or `curl -i localhost:3000/`.

#![allow(clippy::print_stdout)] // an example prints what it shows

use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::routing::get;
use backstop::attempt_timeout::AttemptTimeoutLayer;
use backstop::concurrency::ConcurrencyLimitLayer;
use backstop::http::{ErrorResponseLayer, PropagateContextLayer};
use backstop::sla::SlaTimeoutLayer;
use backstop::{BoxError, Context, ServiceBuilderExt, SetRequestIdLayer};
use tower::ServiceBuilder;

async fn hello(Extension(ctx): Extension<Context>) -> String {
    let left = ctx.remaining(tokio::time::Instant::now());
    let id = ctx.request_id();
    format!("hello; request {id:?} may take {left:?} more\n")
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "too late\n"
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow));
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new().http())
        .layer(ErrorResponseLayer::new())
        .sla_timeout(SlaTimeoutLayer::new(Duration::from_secs(1))?)
        .concurrency_limited(ConcurrencyLimitLayer::new(64)?.release_at_body_end())
        .attempt_timeout(AttemptTimeoutLayer::new(Duration::from_secs(30))?.for_http())
        .layer(PropagateContextLayer::new())
        .service(app);
    let app = Router::new().fallback_service(stack);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
