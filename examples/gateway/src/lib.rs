//! backstop-gateway: an OpenAI-compatible proxy built from the whole backstop
//! stack, with a simulated vendor.
//!
//! The binary (`src/main.rs`) reads the configuration (shared/CONFIG.md),
//! builds the app and serves it; this library holds the pieces so the tests
//! can drive them in-process: [`app::build`] / [`app::app`] take the upstream
//! service as a parameter (the hyper client, or a scripted double).

pub mod app;
pub mod config;
pub mod demo;
pub mod json;
pub mod logfmt;
pub mod logwriter;
pub mod pool;
pub mod server;
pub mod service;
mod swar;
pub mod tokens;
pub mod trace;
pub mod upstream;
pub mod vendor;
pub mod watchdog;

pub use app::{App, AppOptions, Handles, app, build};
pub use config::{Config, ConfigError};
