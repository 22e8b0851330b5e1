//! The gateway's configuration: shared/CONFIG.md, key by key.
//!
//! A TOML file is read into [`FileConfig`] (every field optional, unknown keys
//! rejected), then [`Config::resolve`] applies the defaults and the ranges and
//! reads the environment variables it names. Every error names the key.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The longest duration any key accepts.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A configuration error: the key and what is wrong with it. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: `{key}`: {reason}")]
pub struct ConfigError {
    /// The key, dotted (`sla.timeout`, `clients[0].key_env`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// An error naming `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A secret read from the environment: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// ---------------------------------------------------------------- the file

/// The TOML file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub server: FileServer,
    pub upstream: FileUpstream,
    pub sla: FileSla,
    pub admission: FileAdmission,
    pub rate_limit: FileRateLimit,
    pub concurrency: FileConcurrency,
    pub attempt: FileAttempt,
    pub retry: FileRetry,
    pub limits: FileLimits,
    pub shield: FileShield,
    pub ready: FileReady,
    pub shutdown: FileShutdown,
    pub metrics: FileMetrics,
    pub clients: Vec<FileClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileServer {
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<i64>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileUpstream {
    pub url: Option<String>,
    pub api_key_env: Option<String>,
    pub connect_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileSla {
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileAdmission {
    pub queue_timeout: Option<String>,
    pub max_waiting: Option<i64>,
    pub overload_status: Option<i64>,
    pub retry_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileRateLimit {
    pub requests_per_minute: Option<i64>,
    pub requests_burst: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub tokens_burst: Option<i64>,
    pub default_completion_tokens: Option<i64>,
    pub max_keys: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileConcurrency {
    pub max_in_flight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileAttempt {
    pub timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_stream_duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileRetry {
    pub max_attempts: Option<i64>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub jitter: Option<String>,
    pub retry_after_max: Option<String>,
    pub budget_ratio: Option<f64>,
    pub budget_min_per_second: Option<i64>,
    pub budget_window: Option<String>,
    pub min_attempt_time: Option<String>,
    pub max_replay_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileLimits {
    pub max_body_bytes: Option<i64>,
    pub max_buffered_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileShield {
    pub hook_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileReady {
    pub upstream_errors: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileShutdown {
    pub drain_delay: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileMetrics {
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileClient {
    pub name: Option<String>,
    pub key_env: Option<String>,
    pub requests_per_minute: Option<i64>,
    pub requests_burst: Option<i64>,
    pub tokens_per_minute: Option<i64>,
}

// ---------------------------------------------------------------- resolved

/// Retry jitter, as `retry.jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// `min(base·2^(n−1), max) + U[0, base)`.
    Additive,
    /// `U[0, min(base·2^(n−1), max))`.
    Full,
}

/// The resolved configuration: every key with its value.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Config {
    pub listen: SocketAddr,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub sla_timeout: Duration,
    pub admission: AdmissionConfig,
    pub rate_limit: RateLimitConfig,
    pub max_in_flight: usize,
    pub attempt: AttemptConfig,
    pub retry: RetryConfig,
    pub limits: LimitsConfig,
    pub hook_timeout: Duration,
    pub ready_upstream_errors: bool,
    pub shutdown: ShutdownConfig,
    pub metrics_prefix: String,
    pub clients: Vec<ClientConfig>,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct ServerConfig {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct UpstreamConfig {
    /// `None`: the built-in simulated vendor.
    pub url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct AdmissionConfig {
    pub queue_timeout: Duration,
    pub max_waiting: usize,
    pub overload_status: u16,
    pub retry_after: Duration,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct RateLimitConfig {
    pub requests_per_minute: u64,
    pub requests_burst: u64,
    pub tokens_per_minute: Option<u64>,
    pub tokens_burst: Option<u64>,
    pub default_completion_tokens: u64,
    pub max_keys: usize,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct AttemptConfig {
    pub timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_stream_duration: Duration,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub jitter: Jitter,
    pub retry_after_max: Duration,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub budget_window: Duration,
    pub min_attempt_time: Duration,
    pub max_replay_bytes: usize,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_buffered_bytes: usize,
}

#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct ShutdownConfig {
    pub drain_delay: Duration,
    pub timeout: Duration,
}

/// One `[[clients]]` entry.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct ClientConfig {
    pub name: String,
    pub key_env: String,
    pub key: Secret,
    pub requests_per_minute: Option<u64>,
    pub requests_burst: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

impl Default for Config {
    /// Every default of CONFIG.md (no environment read: nothing names one).
    fn default() -> Self {
        Self::resolve(FileConfig::default(), &|_| None)
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }
}

impl Config {
    /// Parses TOML text and resolves it, reading named variables through
    /// `env`.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| toml_error(&e))?;
        Self::resolve(file, env)
    }

    /// Applies defaults and ranges to a parsed file.
    #[allow(clippy::too_many_lines)]
    pub fn resolve(
        f: FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let listen = match f.listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(s) => parse_addr("listen", s)?,
        };
        let server = ServerConfig {
            header_read_timeout: dur(
                "server.header_read_timeout",
                f.server.header_read_timeout,
                "10s",
                false,
            )?,
            max_header_bytes: int(
                "server.max_header_bytes",
                f.server.max_header_bytes,
                65536,
                1024,
            )?,
            max_connections: int(
                "server.max_connections",
                f.server.max_connections,
                10_000,
                1,
            )?,
        };
        let url = match f.upstream.url {
            None => None,
            Some(u) => Some(check_url("upstream.url", &u)?),
        };
        let api_key = match &f.upstream.api_key_env {
            None => None,
            Some(name) => Some(read_env("upstream.api_key_env", name, env)?),
        };
        let upstream = UpstreamConfig {
            url,
            api_key_env: f.upstream.api_key_env,
            api_key,
            connect_timeout: dur(
                "upstream.connect_timeout",
                f.upstream.connect_timeout,
                "5s",
                false,
            )?,
            pool_idle_timeout: dur(
                "upstream.pool_idle_timeout",
                f.upstream.pool_idle_timeout,
                "90s",
                false,
            )?,
        };
        let sla_timeout = dur("sla.timeout", f.sla.timeout, "60s", false)?;
        let overload_status = int::<u16>(
            "admission.overload_status",
            f.admission.overload_status,
            429,
            0,
        )?;
        if overload_status != 429 && overload_status != 503 {
            return Err(ConfigError::new(
                "admission.overload_status",
                format!("must be 429 or 503, not {overload_status}"),
            ));
        }
        let admission = AdmissionConfig {
            queue_timeout: dur(
                "admission.queue_timeout",
                f.admission.queue_timeout,
                "5s",
                true,
            )?,
            max_waiting: int("admission.max_waiting", f.admission.max_waiting, 80, 1)?,
            overload_status,
            retry_after: dur(
                "admission.retry_after",
                f.admission.retry_after,
                "1s",
                false,
            )?,
        };
        let rpm: u64 = int(
            "rate_limit.requests_per_minute",
            f.rate_limit.requests_per_minute,
            3000,
            1,
        )?;
        let tpm: Option<u64> = opt_int(
            "rate_limit.tokens_per_minute",
            f.rate_limit.tokens_per_minute,
            1,
        )?;
        let tokens_burst = match opt_int("rate_limit.tokens_burst", f.rate_limit.tokens_burst, 1)? {
            Some(b) => Some(b),
            None => tpm,
        };
        let rate_limit = RateLimitConfig {
            requests_per_minute: rpm,
            requests_burst: int(
                "rate_limit.requests_burst",
                f.rate_limit.requests_burst,
                (rpm / 60).max(1),
                1,
            )?,
            tokens_per_minute: tpm,
            tokens_burst,
            default_completion_tokens: int(
                "rate_limit.default_completion_tokens",
                f.rate_limit.default_completion_tokens,
                1024,
                0,
            )?,
            max_keys: int("rate_limit.max_keys", f.rate_limit.max_keys, 100_000, 1)?,
        };
        let max_in_flight = int(
            "concurrency.max_in_flight",
            f.concurrency.max_in_flight,
            50,
            1,
        )?;
        let attempt_timeout = dur("attempt.timeout", f.attempt.timeout, "30s", false)?;
        let attempt = AttemptConfig {
            timeout: attempt_timeout,
            first_byte_timeout: dur_or(
                "attempt.first_byte_timeout",
                f.attempt.first_byte_timeout,
                attempt_timeout,
                false,
            )?,
            idle_timeout: dur("attempt.idle_timeout", f.attempt.idle_timeout, "30s", false)?,
            max_stream_duration: dur(
                "attempt.max_stream_duration",
                f.attempt.max_stream_duration,
                "10m",
                false,
            )?,
        };
        let limits = LimitsConfig {
            max_body_bytes: int(
                "limits.max_body_bytes",
                f.limits.max_body_bytes,
                10_485_760,
                1,
            )?,
            max_buffered_bytes: int(
                "limits.max_buffered_bytes",
                f.limits.max_buffered_bytes,
                268_435_456,
                1,
            )?,
        };
        let backoff_base = dur("retry.backoff_base", f.retry.backoff_base, "1s", false)?;
        let backoff_max = dur("retry.backoff_max", f.retry.backoff_max, "32s", false)?;
        if backoff_max < backoff_base {
            return Err(ConfigError::new(
                "retry.backoff_max",
                "must be at least retry.backoff_base",
            ));
        }
        let jitter = match f.retry.jitter.as_deref() {
            None | Some("additive") => Jitter::Additive,
            Some("full") => Jitter::Full,
            Some(other) => {
                return Err(ConfigError::new(
                    "retry.jitter",
                    format!("must be \"additive\" or \"full\", not {other:?}"),
                ));
            }
        };
        let budget_ratio = f.retry.budget_ratio.unwrap_or(0.2);
        if !(0.0..=1000.0).contains(&budget_ratio) {
            return Err(ConfigError::new(
                "retry.budget_ratio",
                format!("must be between 0 and 1000, not {budget_ratio}"),
            ));
        }
        let budget_window = dur("retry.budget_window", f.retry.budget_window, "10s", false)?;
        if budget_window < Duration::from_secs(1) || budget_window > Duration::from_secs(60) {
            // The retry layer's own bound (as Finagle's).
            return Err(ConfigError::new(
                "retry.budget_window",
                "must be between 1s and 60s",
            ));
        }
        let retry = RetryConfig {
            max_attempts: int("retry.max_attempts", f.retry.max_attempts, 3, 1)?,
            backoff_base,
            backoff_max,
            jitter,
            retry_after_max: dur_or(
                "retry.retry_after_max",
                f.retry.retry_after_max,
                backoff_max,
                true,
            )?,
            budget_ratio,
            budget_min_per_second: int(
                "retry.budget_min_per_second",
                f.retry.budget_min_per_second,
                10,
                0,
            )?,
            budget_window,
            min_attempt_time: dur(
                "retry.min_attempt_time",
                f.retry.min_attempt_time,
                "250ms",
                true,
            )?,
            max_replay_bytes: int(
                "retry.max_replay_bytes",
                f.retry.max_replay_bytes,
                limits.max_body_bytes,
                0,
            )?,
        };
        let shutdown = ShutdownConfig {
            drain_delay: dur("shutdown.drain_delay", f.shutdown.drain_delay, "0s", true)?,
            timeout: dur_or("shutdown.timeout", f.shutdown.timeout, sla_timeout, false)?,
        };
        let mut clients: Vec<ClientConfig> = Vec::with_capacity(f.clients.len());
        for (i, c) in f.clients.into_iter().enumerate() {
            let key = |k: &str| format!("clients[{i}].{k}");
            let name = c
                .name
                .ok_or_else(|| ConfigError::new(key("name"), "required"))?;
            if name.is_empty() {
                return Err(ConfigError::new(key("name"), "must not be empty"));
            }
            if clients.iter().any(|o| o.name == name) {
                return Err(ConfigError::new(
                    key("name"),
                    format!("{name:?} is not unique"),
                ));
            }
            let key_env = c
                .key_env
                .ok_or_else(|| ConfigError::new(key("key_env"), "required"))?;
            let secret = read_env(&key("key_env"), &key_env, env)?;
            let rpm = opt_int(&key("requests_per_minute"), c.requests_per_minute, 1)?;
            let burst = match opt_int(&key("requests_burst"), c.requests_burst, 1)? {
                Some(b) => Some(b),
                None => rpm.map(|r: u64| (r / 60).max(1)),
            };
            clients.push(ClientConfig {
                name,
                key_env,
                key: secret,
                requests_per_minute: rpm,
                requests_burst: burst,
                tokens_per_minute: opt_int(&key("tokens_per_minute"), c.tokens_per_minute, 1)?,
            });
        }
        Ok(Self {
            listen,
            server,
            upstream,
            sla_timeout,
            admission,
            rate_limit,
            max_in_flight,
            attempt,
            retry,
            limits,
            hook_timeout: dur("shield.hook_timeout", f.shield.hook_timeout, "5s", false)?,
            ready_upstream_errors: f.ready.upstream_errors.unwrap_or(true),
            shutdown,
            metrics_prefix: f.metrics.prefix.unwrap_or_else(|| "llm_".to_owned()),
            clients,
        })
    }
}

/// Turns a TOML error into one naming the key where possible.
fn toml_error(e: &toml::de::Error) -> ConfigError {
    let msg = e.message().to_owned();
    // serde's "unknown field `x`, expected ..." names the key itself.
    let key = msg
        .split('`')
        .nth(1)
        .filter(|_| msg.starts_with("unknown field"))
        .map_or_else(|| "<file>".to_owned(), str::to_owned);
    ConfigError::new(key, e.to_string().trim().replace('\n', " "))
}

/// Parses `"250ms"`, `"5s"`, `"10m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

fn check_dur(key: &str, d: Duration, allow_zero: bool) -> Result<Duration, ConfigError> {
    if d.is_zero() && !allow_zero {
        return Err(ConfigError::new(key, "must be above zero"));
    }
    if d > MAX_DURATION {
        return Err(ConfigError::new(key, "must be at most 24h"));
    }
    Ok(d)
}

#[allow(clippy::needless_pass_by_value)]
fn dur(
    key: &str,
    v: Option<String>,
    default: &str,
    allow_zero: bool,
) -> Result<Duration, ConfigError> {
    let s = v.as_deref().unwrap_or(default);
    let d = parse_duration(s).ok_or_else(|| {
        ConfigError::new(
            key,
            format!("{s:?} is not a duration (like \"250ms\", \"5s\", \"10m\")"),
        )
    })?;
    check_dur(key, d, allow_zero)
}

fn dur_or(
    key: &str,
    v: Option<String>,
    default: Duration,
    allow_zero: bool,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => dur(key, Some(s), "", allow_zero),
    }
}

fn int<T: TryFrom<i64>>(key: &str, v: Option<i64>, default: T, min: i64) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if n < min => Err(ConfigError::new(
            key,
            format!("must be at least {min}, not {n}"),
        )),
        Some(n) => T::try_from(n).map_err(|_| ConfigError::new(key, format!("{n} is too large"))),
    }
}

fn opt_int<T: TryFrom<i64>>(key: &str, v: Option<i64>, min: i64) -> Result<Option<T>, ConfigError> {
    match v {
        None => Ok(None),
        Some(n) if n < min => Err(ConfigError::new(
            key,
            format!("must be at least {min}, not {n}"),
        )),
        Some(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| ConfigError::new(key, format!("{n} is too large"))),
    }
}

fn read_env(
    key: &str,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    match env(name) {
        Some(v) if !v.is_empty() => Ok(Secret(v)),
        _ => Err(ConfigError::new(
            key,
            format!("environment variable {name} is not set"),
        )),
    }
}

/// Parses a listen address (`127.0.0.1:8080`, `[::1]:0`, `localhost:8080`).
pub fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(p) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
        }
    }
    Err(ConfigError::new(
        key,
        format!("{s:?} is not an address like 127.0.0.1:8080"),
    ))
}

/// Checks an upstream URL: `http://` or `https://` origin, optional path
/// prefix, no query. Returns it without a trailing `/`.
pub fn check_url(key: &str, s: &str) -> Result<String, ConfigError> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| ConfigError::new(key, format!("{s:?} is not a URL")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(ConfigError::new(key, "must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(ConfigError::new(key, "has no host"));
    }
    if uri.query().is_some() {
        return Err(ConfigError::new(key, "must not have a query"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "GOOD" => Some("secret-value".into()),
            _ => None,
        }
    }

    fn err(text: &str) -> ConfigError {
        Config::from_toml(text, &env).expect_err(text)
    }

    #[test]
    fn defaults() {
        let c = Config::from_toml("", &env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_header_bytes, 65536);
        assert_eq!(c.server.max_connections, 10_000);
        assert!(c.upstream.url.is_none());
        assert!(c.upstream.api_key.is_none());
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.sla_timeout, Duration::from_secs(60));
        assert_eq!(c.admission.queue_timeout, Duration::from_secs(5));
        assert_eq!(c.admission.max_waiting, 80);
        assert_eq!(c.admission.overload_status, 429);
        assert_eq!(c.admission.retry_after, Duration::from_secs(1));
        assert_eq!(c.rate_limit.requests_per_minute, 3000);
        assert_eq!(c.rate_limit.requests_burst, 50);
        assert_eq!(c.rate_limit.tokens_per_minute, None);
        assert_eq!(c.rate_limit.tokens_burst, None);
        assert_eq!(c.rate_limit.default_completion_tokens, 1024);
        assert_eq!(c.rate_limit.max_keys, 100_000);
        assert_eq!(c.max_in_flight, 50);
        assert_eq!(c.attempt.timeout, Duration::from_secs(30));
        assert_eq!(c.attempt.first_byte_timeout, Duration::from_secs(30));
        assert_eq!(c.attempt.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.attempt.max_stream_duration, Duration::from_secs(600));
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.backoff_base, Duration::from_secs(1));
        assert_eq!(c.retry.backoff_max, Duration::from_secs(32));
        assert_eq!(c.retry.jitter, Jitter::Additive);
        assert_eq!(c.retry.retry_after_max, Duration::from_secs(32));
        assert!((c.retry.budget_ratio - 0.2).abs() < f64::EPSILON);
        assert_eq!(c.retry.budget_min_per_second, 10);
        assert_eq!(c.retry.budget_window, Duration::from_secs(10));
        assert_eq!(c.retry.min_attempt_time, Duration::from_millis(250));
        assert_eq!(c.retry.max_replay_bytes, 10_485_760);
        assert_eq!(c.limits.max_body_bytes, 10_485_760);
        assert_eq!(c.limits.max_buffered_bytes, 268_435_456);
        assert_eq!(c.hook_timeout, Duration::from_secs(5));
        assert!(c.ready_upstream_errors);
        assert_eq!(c.shutdown.drain_delay, Duration::ZERO);
        assert_eq!(c.shutdown.timeout, Duration::from_secs(60));
        assert_eq!(c.metrics_prefix, "llm_");
        assert!(c.clients.is_empty());
    }

    /// Every key of CONFIG.md, written out with its default, is accepted
    /// and gives the same configuration as an empty file.
    #[test]
    fn every_key_with_its_default() {
        let text = r#"
listen = "127.0.0.1:8080"
[server]
header_read_timeout = "10s"
max_header_bytes = 65536
max_connections = 10000
[upstream]
url = "https://api.example.com/v1"
api_key_env = "GOOD"
connect_timeout = "5s"
pool_idle_timeout = "90s"
[sla]
timeout = "60s"
[admission]
queue_timeout = "5s"
max_waiting = 80
overload_status = 429
retry_after = "1s"
[rate_limit]
requests_per_minute = 3000
requests_burst = 50
tokens_per_minute = 90000
tokens_burst = 90000
default_completion_tokens = 1024
max_keys = 100000
[concurrency]
max_in_flight = 50
[attempt]
timeout = "30s"
first_byte_timeout = "30s"
idle_timeout = "30s"
max_stream_duration = "10m"
[retry]
max_attempts = 3
backoff_base = "1s"
backoff_max = "32s"
jitter = "additive"
retry_after_max = "32s"
budget_ratio = 0.2
budget_min_per_second = 10
budget_window = "10s"
min_attempt_time = "250ms"
max_replay_bytes = 10485760
[limits]
max_body_bytes = 10485760
max_buffered_bytes = 268435456
[shield]
hook_timeout = "5s"
[ready]
upstream_errors = true
[shutdown]
drain_delay = "0s"
timeout = "60s"
[metrics]
prefix = "llm_"
[[clients]]
name = "acme"
key_env = "GOOD"
requests_per_minute = 60
requests_burst = 1
tokens_per_minute = 1000
"#;
        let c = Config::from_toml(text, &env).unwrap();
        assert_eq!(
            c.upstream.url.as_deref(),
            Some("https://api.example.com/v1")
        );
        assert_eq!(c.upstream.api_key, Some(Secret("secret-value".into())));
        assert_eq!(c.rate_limit.tokens_per_minute, Some(90_000));
        assert_eq!(c.clients.len(), 1);
        assert_eq!(c.clients[0].key.0, "secret-value");
        assert_eq!(c.clients[0].requests_burst, Some(1));
        assert_eq!(c.retry.max_replay_bytes, 10_485_760);
        assert_eq!(c.shutdown.timeout, Duration::from_secs(60));
        // The secret never shows in Debug.
        assert!(!format!("{c:?}").contains("secret-value"));
    }

    #[test]
    fn derived_defaults_follow_their_source() {
        let c = Config::from_toml(
            "[sla]\ntimeout = \"7s\"\n[attempt]\ntimeout = \"3s\"\n[retry]\nbackoff_max = \"4s\"\n[limits]\nmax_body_bytes = 100\n[rate_limit]\nrequests_per_minute = 30\ntokens_per_minute = 500\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.shutdown.timeout, Duration::from_secs(7));
        assert_eq!(c.attempt.first_byte_timeout, Duration::from_secs(3));
        assert_eq!(c.retry.retry_after_max, Duration::from_secs(4));
        assert_eq!(c.retry.max_replay_bytes, 100);
        assert_eq!(c.rate_limit.requests_burst, 1);
        assert_eq!(c.rate_limit.tokens_burst, Some(500));
    }

    #[test]
    #[allow(clippy::too_many_lines)]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("bogus = 1", "bogus"),
            ("[server]\nbogus = 1", "bogus"),
            (
                "[[clients]]\nname = \"a\"\nkey_env = \"GOOD\"\nextra = 1",
                "extra",
            ),
            ("listen = \"nowhere\"", "listen"),
            (
                "[server]\nheader_read_timeout = \"5x\"",
                "server.header_read_timeout",
            ),
            (
                "[server]\nmax_header_bytes = 1000",
                "server.max_header_bytes",
            ),
            ("[server]\nmax_connections = 0", "server.max_connections"),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            (
                "[upstream]\napi_key_env = \"UNSET_VAR\"",
                "upstream.api_key_env",
            ),
            (
                "[upstream]\nconnect_timeout = \"0s\"",
                "upstream.connect_timeout",
            ),
            (
                "[upstream]\npool_idle_timeout = \"25h\"",
                "upstream.pool_idle_timeout",
            ),
            ("[sla]\ntimeout = \"0ms\"", "sla.timeout"),
            (
                "[admission]\nqueue_timeout = \"-1s\"",
                "admission.queue_timeout",
            ),
            ("[admission]\nmax_waiting = 0", "admission.max_waiting"),
            (
                "[admission]\noverload_status = 500",
                "admission.overload_status",
            ),
            ("[admission]\nretry_after = \"0s\"", "admission.retry_after"),
            (
                "[rate_limit]\nrequests_per_minute = 0",
                "rate_limit.requests_per_minute",
            ),
            (
                "[rate_limit]\nrequests_burst = 0",
                "rate_limit.requests_burst",
            ),
            (
                "[rate_limit]\ntokens_per_minute = 0",
                "rate_limit.tokens_per_minute",
            ),
            ("[rate_limit]\ntokens_burst = 0", "rate_limit.tokens_burst"),
            (
                "[rate_limit]\ndefault_completion_tokens = -1",
                "rate_limit.default_completion_tokens",
            ),
            ("[rate_limit]\nmax_keys = 0", "rate_limit.max_keys"),
            (
                "[concurrency]\nmax_in_flight = 0",
                "concurrency.max_in_flight",
            ),
            ("[attempt]\ntimeout = \"0s\"", "attempt.timeout"),
            (
                "[attempt]\nfirst_byte_timeout = \"x\"",
                "attempt.first_byte_timeout",
            ),
            ("[attempt]\nidle_timeout = \"0s\"", "attempt.idle_timeout"),
            (
                "[attempt]\nmax_stream_duration = \"48h\"",
                "attempt.max_stream_duration",
            ),
            ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
            ("[retry]\nbackoff_base = \"0s\"", "retry.backoff_base"),
            ("[retry]\nbackoff_max = \"10ms\"", "retry.backoff_max"),
            ("[retry]\njitter = \"none\"", "retry.jitter"),
            ("[retry]\nretry_after_max = \"2d\"", "retry.retry_after_max"),
            ("[retry]\nbudget_ratio = 1001.0", "retry.budget_ratio"),
            (
                "[retry]\nbudget_min_per_second = -1",
                "retry.budget_min_per_second",
            ),
            ("[retry]\nbudget_window = \"0s\"", "retry.budget_window"),
            (
                "[retry]\nmin_attempt_time = \"soon\"",
                "retry.min_attempt_time",
            ),
            ("[retry]\nmax_replay_bytes = -5", "retry.max_replay_bytes"),
            ("[limits]\nmax_body_bytes = 0", "limits.max_body_bytes"),
            (
                "[limits]\nmax_buffered_bytes = 0",
                "limits.max_buffered_bytes",
            ),
            ("[shield]\nhook_timeout = \"0s\"", "shield.hook_timeout"),
            ("[shutdown]\ndrain_delay = \"1d\"", "shutdown.drain_delay"),
            ("[shutdown]\ntimeout = \"0s\"", "shutdown.timeout"),
            ("[[clients]]\nkey_env = \"GOOD\"", "clients[0].name"),
            ("[[clients]]\nname = \"a\"", "clients[0].key_env"),
            (
                "[[clients]]\nname = \"a\"\nkey_env = \"UNSET_VAR\"",
                "clients[0].key_env",
            ),
            (
                "[[clients]]\nname = \"a\"\nkey_env = \"GOOD\"\n[[clients]]\nname = \"a\"\nkey_env = \"GOOD\"",
                "clients[1].name",
            ),
            (
                "[[clients]]\nname = \"a\"\nkey_env = \"GOOD\"\nrequests_per_minute = 0",
                "clients[0].requests_per_minute",
            ),
            (
                "[[clients]]\nname = \"a\"\nkey_env = \"GOOD\"\nrequests_burst = 0",
                "clients[0].requests_burst",
            ),
            (
                "[[clients]]\nname = \"a\"\nkey_env = \"GOOD\"\ntokens_per_minute = 0",
                "clients[0].tokens_per_minute",
            ),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert_eq!(&e.key, key, "{text}: {e}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn wrong_types_are_errors() {
        let e = err("[sla]\ntimeout = 5");
        assert!(e.to_string().contains("timeout"), "{e}");
        let e = err("[ready]\nupstream_errors = \"yes\"");
        assert!(e.to_string().contains("upstream_errors"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }
}
