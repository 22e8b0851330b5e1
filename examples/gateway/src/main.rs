//! backstop-gateway: see the crate docs of the library and the README.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use backstop_gateway::config::{Config, ConfigError, check_url, parse_addr};
use backstop_gateway::upstream::upstream_for;
use backstop_gateway::vendor::{VendorOptions, vendor_app};
use backstop_gateway::{AppOptions, build, server};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// mimalloc: thread-local free lists, so a worker thread's request-sized
/// allocations stay off the shared arenas glibc's malloc locks and
/// consolidates (about a sixth of the CPU per request under glibc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An OpenAI-compatible gateway built from the backstop stack.
#[derive(Debug, Parser)]
#[command(name = "backstop-gateway", version)]
struct Cli {
    /// Configuration file (TOML; see CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Upstream URL (overrides `upstream.url`).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the simulated vendor alone.
    SimulateVendor {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        #[command(flatten)]
        options: VendorOptions,
    },
    /// Play DESIGN's "what the client sees" table against the simulated
    /// vendor, and check it.
    Demo,
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // JSON lines as tracing-subscriber's `json()` prints them, at about a
    // quarter of the instructions (see `logfmt`).
    tracing_subscriber::fmt()
        .event_format(backstop_gateway::logfmt::JsonLines::default())
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .with_writer(backstop_gateway::logwriter::StderrLines)
        .with_env_filter(filter)
        .init();
}

fn usage_error(e: &ConfigError) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "backstop-gateway: {e}");
    ExitCode::from(2)
}

fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    let mut config = match &cli.config {
        None => Config::from_toml("", &env)?,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            Config::from_toml(&text, &env)?
        }
    };
    if let Some(l) = &cli.listen {
        config.listen = parse_addr("--listen", l)?;
    }
    if let Some(u) = &cli.upstream {
        config.upstream.url = Some(check_url("--upstream", u)?);
    }
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints a table; its logs stay quiet unless asked for.
    init_logs(if matches!(cli.command, Some(Command::Demo)) {
        "error"
    } else {
        "info"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "backstop-gateway: cannot start the runtime: {e}"
            );
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Some(Command::SimulateVendor {
                ref listen,
                ref options,
            }) => simulate_vendor(listen, options.clone()).await,
            Some(Command::Demo) => backstop_gateway::demo::run().await,
            None => match load_config(&cli) {
                Err(e) => usage_error(&e),
                Ok(config) => run_gateway(config).await,
            },
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn simulate_vendor(listen: &str, options: VendorOptions) -> ExitCode {
    let addr = match parse_addr("--listen", listen) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, %addr, "cannot bind");
            return ExitCode::from(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let mut signals = match signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let _ = writeln!(
        std::io::stdout(),
        "simulated vendor listening on http://{bound}"
    );
    let (router, _stats) = vendor_app(options);
    let signal = async move { signals.recv().await };
    match axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vendor failed");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT, registered when made (so a signal that arrives right
/// after the banner is not lost to the default action).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn signals() -> Result<Signals, ExitCode> {
    Signals::new().map_err(|e| {
        tracing::error!(error = %e, "cannot listen for signals");
        ExitCode::from(1)
    })
}

/// Starts the simulated vendor on a loopback port of this runtime; returns
/// its URL.
async fn spawn_simulated_vendor() -> Result<String, ExitCode> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot bind the simulated vendor");
            ExitCode::from(1)
        })?;
    let addr = listener.local_addr().map_err(|e| {
        tracing::error!(error = %e, "no local address");
        ExitCode::from(1)
    })?;
    let (router, _stats) = vendor_app(VendorOptions::default());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    tracing::info!(vendor = %addr, "serving in front of the simulated vendor");
    Ok(format!("http://{addr}"))
}

async fn run_gateway(mut config: Config) -> ExitCode {
    // No upstream configured: the simulated vendor, in-process, on its own
    // loopback port.
    if config.upstream.url.is_none() {
        match spawn_simulated_vendor().await {
            Ok(url) => config.upstream.url = Some(url),
            Err(code) => return code,
        }
    }
    // Before the layers are built: they resolve their metric handles then.
    if let Err(e) = backstop_core::metrics::set_prefix(&config.metrics_prefix) {
        tracing::warn!(error = %e, "metrics prefix already set");
    }
    let metrics = match backstop_health::install_prometheus() {
        Ok(h) => Some(Arc::new(move || {
            h.run_upkeep();
            h.render()
        }) as Arc<dyn Fn() -> String + Send + Sync>),
        Err(e) => {
            tracing::warn!(error = %e, "no metrics recorder");
            None
        }
    };
    let shutdown = CancellationToken::new();
    let upstream = upstream_for(
        config.upstream.url.as_deref().unwrap_or_default(),
        config.upstream.connect_timeout,
        config.upstream.pool_idle_timeout,
    );
    let app = match build(
        &config,
        upstream,
        AppOptions {
            metrics,
            shutdown: shutdown.clone(),
            // `init_logs` installed `JsonLines` over `StderrLines`.
            direct_log: true,
        },
    ) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, listen = %config.listen, "cannot bind");
            return ExitCode::from(1);
        }
    };
    let mut signals = match signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    let auth = if config.clients.is_empty() {
        ""
    } else {
        " -H 'Authorization: Bearer $KEY'"
    };
    let _ = writeln!(
        std::io::stdout(),
        "listening on http://{addr}\ncurl http://{addr}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{{\"model\":\"sim-1\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'"
    );
    let _ = std::io::stdout().flush();
    let signal = async move {
        signals.recv().await;
        // A second signal exits at once.
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("second signal: exiting now");
            // The workers will not end: write out their buffered log lines.
            backstop_gateway::logwriter::flush_all();
            std::process::exit(1);
        });
    };
    // The listener moves to the serving threads (one runtime per core).
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot hand the listener to the workers");
            return ExitCode::from(1);
        }
    };
    match server::serve(
        listener,
        server::default_workers(),
        app,
        &config,
        shutdown,
        signal,
    )
    .await
    {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the serving threads");
            ExitCode::from(1)
        }
    }
}
