//! Typed configuration, read once from the environment (and `.env`) at start-up.
//!
//! Every knob of contract section 2 lives here. Secrets are wrapped in [`Secret`], whose
//! `Debug`/`Display` never show the value, so a `tracing::info!(?config)` cannot leak one.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use sqlx::postgres::PgConnectOptions;

/// A value that must never reach a log line. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from a secret variable.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value itself, for the one place that must send it (a header, a connect
    /// string).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the database is. `None` in [`Config::database`] means nothing was configured:
/// only `hookq dev` may then start its own cluster.
#[derive(Clone, Debug)]
pub enum DatabaseConfig {
    /// `DATABASE_URL`: wins over the parts.
    Url(Secret),
    /// `SSQ_DB_*`.
    Parts {
        /// `SSQ_DB_USER`: required once any part is set.
        user: String,
        /// `SSQ_DB_PASSWORD`; `None` connects without one.
        password: Option<Secret>,
        /// `SSQ_DB_HOST`, default `localhost`.
        host: String,
        /// `SSQ_DB_PORT`, default `5432`.
        port: u16,
        /// `SSQ_DB_NAME`: required once any part is set.
        name: String,
    },
}

impl DatabaseConfig {
    /// The hosts of a `DATABASE_URL` that names several, or asks for
    /// `target_session_attrs=read-write` (see [`crate::db::Hosts`]); `None` otherwise.
    pub fn hosts(&self) -> Result<Option<crate::db::Hosts>, ConfigError> {
        match self {
            DatabaseConfig::Url(url) => crate::db::Hosts::parse(url.expose())
                .map_err(|e| ConfigError::invalid("DATABASE_URL", e)),
            DatabaseConfig::Parts { .. } => Ok(None),
        }
    }

    /// Connect options for either form; a `DATABASE_URL` that does not parse is a
    /// [`ConfigError::Invalid`].
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        match self {
            DatabaseConfig::Url(url) => match self.hosts()? {
                Some(hosts) => Ok(hosts.options(0)),
                None => PgConnectOptions::from_str(url.expose())
                    .map_err(|e| ConfigError::invalid("DATABASE_URL", e.to_string())),
            },
            DatabaseConfig::Parts {
                user,
                password,
                host,
                port,
                name,
            } => {
                let mut o = PgConnectOptions::new()
                    .host(host)
                    .port(*port)
                    .username(user)
                    .database(name);
                if let Some(p) = password {
                    o = o.password(p.expose());
                }
                Ok(o)
            }
        }
    }
}

/// `HOOKQ_LOG_FORMAT`: how the tracing subscriber writes log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`text`, the default).
    Text,
    /// One JSON object per line (`json`).
    Json,
}

/// An OpenAI-compatible chat-completions endpoint (`REPLY_LLM_*`).
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// Base URL ending in `/v1`; the client appends `/chat/completions`.
    pub url: String,
    /// `REPLY_LLM_MODEL`, default `gpt-4o-mini`.
    pub model: String,
    /// `REPLY_LLM_API_KEY`, sent as a bearer token; `None` sends no `Authorization`.
    pub api_key: Option<Secret>,
}

/// Every knob of contract section 2, parsed and checked once (see [`Config::from_env`]).
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL` or `SSQ_DB_*`; `None` when neither is set (see
    /// [`Config::require_database`]).
    pub database: Option<DatabaseConfig>,
    /// `DATABASE_READ_URL`: a replica for the API's reads (admin lists, stats, the
    /// dashboard, the `/metrics` gauges); `None`: everything on `DATABASE_URL`.
    pub database_read: Option<DatabaseConfig>,
    /// `TASKIQ_WORKERS`: worker processes `hookq worker` supervises (at least 1, default
    /// 2).
    pub workers: usize,
    /// `TASKIQ_MAX_ASYNC_TASKS`: jobs in flight per worker process (at least 1, default
    /// 32).
    pub max_async_tasks: usize,
    /// `HOOKQ_BIND`: the API's listen address (default `127.0.0.1:8080`).
    pub bind: SocketAddr,
    /// `HOOKQ_WORKER_METRICS_BIND`: where `hookq worker` serves its processes' Prometheus
    /// metrics (default `127.0.0.1:9091`; `off`: nowhere).
    pub worker_metrics_bind: Option<SocketAddr>,
    /// `HOOKQ_WORKER_METRICS_SOCKET`, set by `hookq worker` for each of its children (not
    /// an operator's variable): where the child serves its metrics to the supervisor.
    pub worker_metrics_socket: Option<std::path::PathBuf>,
    /// `HOOKQ_ADMIN_TOKEN`: bearer token for `/api/*` and `/dashboard`; `None` answers
    /// 401 to everyone.
    pub admin_token: Option<Secret>,
    /// `HOOKQ_READONLY_TOKEN`: reads the admin API and the dashboard, changes nothing
    /// (contract section 12).
    pub readonly_token: Option<Secret>,
    /// `META_APP_SECRET`: HMAC-SHA256 key for `X-Hub-Signature-256`; `None` answers 401
    /// on Meta routes.
    pub meta_app_secret: Option<Secret>,
    /// `META_VERIFY_TOKEN`: the `GET` handshake's token; `None` answers the
    /// handshake 403.
    pub meta_verify_token: Option<Secret>,
    /// `WHATSAPP_WEBHOOK_SECRET`: HMAC-SHA256 key for the Bridge's `X-Webhook-Signature`;
    /// `None` answers 401.
    pub whatsapp_webhook_secret: Option<Secret>,
    /// `HOOKQ_MAX_ATTEMPTS`: runs of a log's processing job before `dead_letter` (at
    /// least 1, default 3).
    pub max_attempts: u32,
    /// `META_GRAPH_URL` without a trailing `/`: base URL for `graph_api` delivery
    /// (default [`DEFAULT_GRAPH_URL`]).
    pub meta_graph_url: String,
    /// `REPLY_LLM_*`; `None` renders the persona template instead of asking a model.
    pub llm: Option<LlmConfig>,
    /// `HOOKQ_RETENTION_DAYS`: processed logs older than this many days are deleted
    /// (default 30).
    pub retention_days: u32,
    /// `HOOKQ_ALLOW_PRIVATE_CALLBACKS`: allow callback URLs on loopback and private
    /// addresses (default off).
    pub allow_private_callbacks: bool,
    /// `HOOKQ_LOG_FORMAT` (default `text`).
    pub log_format: LogFormat,
    /// `HOOKQ_MAX_BODY_BYTES`: largest webhook body accepted, in bytes; larger answers
    /// 413 (default 4 MiB).
    pub max_body_bytes: usize,
    /// `HOOKQ_DELIVERY_BACKOFF`: the delay before each delivery retry, one per retry
    /// (default `4s,8s,10s`).
    pub delivery_backoff: Vec<Duration>,
    /// Per-source request limits by route group (`HOOKQ_RATE_LIMIT_*`); all off by default.
    pub rate_limits: RateLimits,
    /// `HOOKQ_HEADER_READ_TIMEOUT`: a request's headers must arrive within this long of
    /// its first byte (or of the connection's opening), else the connection is dropped.
    pub header_read_timeout: Duration,
    /// `HOOKQ_BODY_READ_TIMEOUT`: a webhook body must arrive within this long (408).
    pub body_read_timeout: Duration,
    /// `HOOKQ_REPLY_RATE_LIMIT`: the replies per rolling window of an integration whose
    /// own `reply_rate_limit` is unset; `None` (unset): no limit.
    pub reply_rate_limit: Option<RateLimit>,
    /// `HOOKQ_MESSAGE_REPLY_WINDOW` (default 24 h): a direct message older than this when
    /// its reply would be generated is skipped (`window_closed`).
    pub message_reply_window: Duration,
    /// `HOOKQ_ALERT_URL`: where operational events are POSTed (contract section 12);
    /// `None`: no alerts.
    pub alert_url: Option<String>,
    /// `HOOKQ_ALERT_SECRET`: the `whsec_` secret alerts are signed with (required with
    /// `HOOKQ_ALERT_URL`).
    pub alert_secret: Option<Secret>,
    /// `HOOKQ_ALERT_DEAD_LETTERS` (default 10): more dead letters than this in 5 minutes
    /// start `dead_letters.rising`.
    pub alert_dead_letters: u32,
    /// `HOOKQ_ALERT_QUEUE_AGE` (default 5 min): the oldest ready job older than this
    /// starts `queue.stalled`.
    pub alert_queue_age: Duration,
    /// `HOOKQ_DISABLE_DELIVERY_AFTER` (default 24 h): an endpoint that failed every
    /// attempt for this long has its integration's delivery switched off.
    pub disable_delivery_after: Duration,
    /// `HOOKQ_WAKEUP` (default `notify`): how workers learn of new jobs (contract
    /// section 11).
    pub wakeup: Wakeup,
}

/// `HOOKQ_WAKEUP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Wakeup {
    /// LISTEN/NOTIFY plus a poll every second.
    #[default]
    Notify,
    /// No LISTEN and no session state, for PgBouncer in transaction mode: a poll every
    /// 100 ms.
    Poll,
}

impl Wakeup {
    /// The connect options every pool of this process uses: with `poll` (a pooler in
    /// transaction mode) no session state at all ([`crate::db::session_free`]).
    pub fn connect_options(self, opts: PgConnectOptions) -> PgConnectOptions {
        match self {
            Wakeup::Poll => crate::db::session_free(opts),
            Wakeup::Notify => opts,
        }
    }
}

/// `N/s`, `N/min` or `N/h` requests per source (client address) for one route group;
/// bursts up to `N` are allowed, then requests are refilled evenly over the period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// `N`: requests allowed per period, and the burst size (at least 1).
    pub requests: u32,
    /// The period `N` is counted over: 1 s, 1 min or 1 h.
    pub per: Duration,
}

impl RateLimit {
    /// The unit it is written with: `s`, `min` or `h` (its period is one of those).
    pub fn unit(&self) -> &'static str {
        match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        }
    }
}

/// Written as stored and shown: `N/s`, `N/min` or `N/h`.
impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.requests, self.unit())
    }
}

/// Rate limits by route group. `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimits {
    /// `HOOKQ_RATE_LIMIT_WEBHOOKS`: `/webhooks/*`.
    pub webhooks: Option<RateLimit>,
    /// `HOOKQ_RATE_LIMIT_API`: `/api/*` and `/dashboard`.
    pub api: Option<RateLimit>,
    /// `HOOKQ_RATE_LIMIT_OTHER`: everything else (`/health`, `/metrics`, `/docs`, …).
    pub other: Option<RateLimit>,
}

/// `100/s`, `6000/min`, `10000/h` (also `/second`, `/m`, `/minute`, `/hour`); `off`, `0`
/// or empty for no limit.
pub fn parse_rate_limit(s: &str) -> Result<Option<RateLimit>, String> {
    let s = s.trim();
    if matches!(s.to_ascii_lowercase().as_str(), "" | "0" | "off" | "none") {
        return Ok(None);
    }
    let err = || format!("`{s}` is not a rate like 100/s, 6000/min or 10000/h (or `off`)");
    let (n, unit) = s.split_once('/').ok_or_else(err)?;
    let requests: u32 = n.trim().parse().map_err(|_| err())?;
    let per = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(err()),
    };
    Ok((requests > 0).then_some(RateLimit { requests, per }))
}

/// A variable that is set but unusable. Start-up stops with this one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable is set to a value hookq cannot use.
    #[error("{var}: {reason}")]
    Invalid {
        /// The variable's name, as the line starts with it.
        var: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Neither `DATABASE_URL` nor `SSQ_DB_*` is set, and the command needs a database.
    #[error(
        "no database configured: set DATABASE_URL, or SSQ_DB_USER, SSQ_DB_PASSWORD, SSQ_DB_HOST, SSQ_DB_PORT and SSQ_DB_NAME (or run `hookq dev`, which starts its own)"
    )]
    NoDatabase,
}

impl ConfigError {
    fn invalid(var: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            var,
            reason: reason.into(),
        }
    }
}

/// Meta's Graph API, the `META_GRAPH_URL` default.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.facebook.com/v21.0";

impl Config {
    /// Reads `.env` from the working directory (if any) and then the process environment.
    /// Variables already set in the environment win over `.env`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds the config from any lookup function, so tests need not touch the process
    /// environment. Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let secret = |k: &str| get(k).map(Secret::new);

        let database = if let Some(url) = get("DATABASE_URL") {
            Some(DatabaseConfig::Url(Secret::new(url)))
        } else if get("SSQ_DB_USER").is_some() || get("SSQ_DB_NAME").is_some() {
            let user = get("SSQ_DB_USER").ok_or(ConfigError::invalid(
                "SSQ_DB_USER",
                "required when SSQ_DB_NAME is set",
            ))?;
            let name = get("SSQ_DB_NAME").ok_or(ConfigError::invalid(
                "SSQ_DB_NAME",
                "required when SSQ_DB_USER is set",
            ))?;
            Some(DatabaseConfig::Parts {
                user,
                password: secret("SSQ_DB_PASSWORD"),
                host: get("SSQ_DB_HOST").unwrap_or_else(|| "localhost".into()),
                port: parse_or(&get, "SSQ_DB_PORT", 5432u16)?,
                name,
            })
        } else {
            None
        };

        let llm = get("REPLY_LLM_URL").map(|url| LlmConfig {
            url: url.trim_end_matches('/').to_string(),
            model: get("REPLY_LLM_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
            api_key: secret("REPLY_LLM_API_KEY"),
        });

        let log_format = match get("HOOKQ_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "HOOKQ_LOG_FORMAT",
                    format!("expected `text` or `json`, got `{other}`"),
                ));
            }
        };

        let delivery_backoff = match get("HOOKQ_DELIVERY_BACKOFF") {
            None => vec![
                Duration::from_secs(4),
                Duration::from_secs(8),
                Duration::from_secs(10),
            ],
            Some(s) => {
                parse_backoff(&s).map_err(|r| ConfigError::invalid("HOOKQ_DELIVERY_BACKOFF", r))?
            }
        };

        let workers: usize = parse_or(&get, "TASKIQ_WORKERS", 2)?;
        let max_async_tasks: usize = parse_or(&get, "TASKIQ_MAX_ASYNC_TASKS", 32)?;
        let max_attempts: u32 = parse_or(&get, "HOOKQ_MAX_ATTEMPTS", 3)?;
        if workers == 0 {
            return Err(ConfigError::invalid("TASKIQ_WORKERS", "must be at least 1"));
        }
        if max_async_tasks == 0 {
            return Err(ConfigError::invalid(
                "TASKIQ_MAX_ASYNC_TASKS",
                "must be at least 1",
            ));
        }
        if max_attempts == 0 {
            return Err(ConfigError::invalid(
                "HOOKQ_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }

        let alert_url = get("HOOKQ_ALERT_URL").filter(|u| !u.trim().is_empty());
        let alert_secret = secret("HOOKQ_ALERT_SECRET");
        if let Some(url) = &alert_url {
            let ok = url.starts_with("http://") || url.starts_with("https://");
            if !ok {
                return Err(ConfigError::invalid(
                    "HOOKQ_ALERT_URL",
                    format!("`{url}`: expected an http(s) URL"),
                ));
            }
            match &alert_secret {
                None => {
                    return Err(ConfigError::invalid(
                        "HOOKQ_ALERT_SECRET",
                        "required with HOOKQ_ALERT_URL (a whsec_<base64> secret)",
                    ));
                }
                Some(s)
                    if crate::intake::signature::standard_sign(s.expose(), "check", 0, b"")
                        .is_err() =>
                {
                    return Err(ConfigError::invalid(
                        "HOOKQ_ALERT_SECRET",
                        "expected a whsec_<base64> secret",
                    ));
                }
                Some(_) => {}
            }
        }

        Ok(Config {
            alert_url,
            alert_secret,
            alert_dead_letters: parse_or(&get, "HOOKQ_ALERT_DEAD_LETTERS", 10)?,
            alert_queue_age: duration(&get, "HOOKQ_ALERT_QUEUE_AGE", Duration::from_secs(300))?,
            disable_delivery_after: duration(
                &get,
                "HOOKQ_DISABLE_DELIVERY_AFTER",
                Duration::from_secs(24 * 3600),
            )?,
            database_read: match get("DATABASE_READ_URL") {
                Some(url) => {
                    PgConnectOptions::from_str(&url)
                        .map_err(|e| ConfigError::invalid("DATABASE_READ_URL", e.to_string()))?;
                    Some(DatabaseConfig::Url(Secret::new(url)))
                }
                None => None,
            },
            wakeup: match get("HOOKQ_WAKEUP")
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref()
            {
                None | Some("notify") => Wakeup::Notify,
                Some("poll") => Wakeup::Poll,
                Some(other) => {
                    return Err(ConfigError::invalid(
                        "HOOKQ_WAKEUP",
                        format!("`{other}`: expected notify or poll"),
                    ));
                }
            },
            database,
            workers,
            max_async_tasks,
            bind: parse_or(&get, "HOOKQ_BIND", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            worker_metrics_bind: match get("HOOKQ_WORKER_METRICS_BIND").as_deref().map(str::trim) {
                Some("off" | "") => None,
                _ => Some(parse_or(
                    &get,
                    "HOOKQ_WORKER_METRICS_BIND",
                    SocketAddr::from(([127, 0, 0, 1], 9091)),
                )?),
            },
            worker_metrics_socket: get("HOOKQ_WORKER_METRICS_SOCKET").map(Into::into),
            admin_token: secret("HOOKQ_ADMIN_TOKEN"),
            readonly_token: secret("HOOKQ_READONLY_TOKEN"),
            meta_app_secret: secret("META_APP_SECRET"),
            meta_verify_token: secret("META_VERIFY_TOKEN"),
            whatsapp_webhook_secret: secret("WHATSAPP_WEBHOOK_SECRET"),
            max_attempts,
            meta_graph_url: get("META_GRAPH_URL")
                .map(|u| u.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_GRAPH_URL.into()),
            llm,
            retention_days: parse_or(&get, "HOOKQ_RETENTION_DAYS", 30)?,
            allow_private_callbacks: parse_bool(&get, "HOOKQ_ALLOW_PRIVATE_CALLBACKS")?,
            log_format,
            max_body_bytes: parse_or(&get, "HOOKQ_MAX_BODY_BYTES", 4 * 1024 * 1024)?,
            delivery_backoff,
            rate_limits: RateLimits {
                webhooks: rate(&get, "HOOKQ_RATE_LIMIT_WEBHOOKS")?,
                api: rate(&get, "HOOKQ_RATE_LIMIT_API")?,
                other: rate(&get, "HOOKQ_RATE_LIMIT_OTHER")?,
            },
            header_read_timeout: duration(
                &get,
                "HOOKQ_HEADER_READ_TIMEOUT",
                Duration::from_secs(15),
            )?,
            body_read_timeout: duration(&get, "HOOKQ_BODY_READ_TIMEOUT", Duration::from_secs(30))?,
            reply_rate_limit: rate(&get, "HOOKQ_REPLY_RATE_LIMIT")?,
            message_reply_window: duration(
                &get,
                "HOOKQ_MESSAGE_REPLY_WINDOW",
                Duration::from_secs(24 * 3600),
            )?,
        })
    }

    /// The configured database, or the one-line error every database command fails with.
    pub fn require_database(&self) -> Result<&DatabaseConfig, ConfigError> {
        self.database.as_ref().ok_or(ConfigError::NoDatabase)
    }
}

fn parse_or<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match get(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::invalid(var, format!("`{v}`: {e}"))),
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => Err(ConfigError::invalid(
            var,
            format!("expected true/false, got `{other}`"),
        )),
    }
}

fn rate(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<RateLimit>, ConfigError> {
    match get(var) {
        None => Ok(None),
        Some(v) => parse_rate_limit(&v).map_err(|r| ConfigError::invalid(var, r)),
    }
}

/// One positive duration (`15s`, `500ms`, bare seconds).
fn duration(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => match parse_backoff(&v).map_err(|r| ConfigError::invalid(var, r))?[..] {
            [d] if !d.is_zero() => Ok(d),
            _ => Err(ConfigError::invalid(
                var,
                format!("`{v}`: expected one positive duration like 15s"),
            )),
        },
    }
}

/// `4s,8s,10s` (also `500ms`, `5min`, `24h`, bare seconds): one delay per retry.
pub fn parse_backoff(s: &str) -> Result<Vec<Duration>, String> {
    s.split(',')
        .map(|p| {
            let p = p.trim();
            let (num, mult) = if let Some(n) = p.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = p.strip_suffix("min") {
                (n, 60.0)
            } else if let Some(n) = p.strip_suffix('h') {
                (n, 3600.0)
            } else if let Some(n) = p.strip_suffix('s') {
                (n, 1.0)
            } else {
                (p, 1.0)
            };
            num.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| Duration::from_secs_f64(v * mult))
                .ok_or_else(|| format!("`{p}` is not a duration like 4s or 500ms"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = cfg(&[]).unwrap();
        assert!(c.database.is_none());
        assert_eq!(c.workers, 2);
        assert_eq!(c.max_async_tasks, 32);
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.worker_metrics_bind.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9091")
        );
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.retention_days, 30);
        assert_eq!(c.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(c.delivery_backoff.len(), 3);
        assert!(matches!(c.require_database(), Err(ConfigError::NoDatabase)));
    }

    #[test]
    fn url_wins_over_parts_and_secrets_are_redacted() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
            ("SSQ_DB_USER", "x"),
            ("SSQ_DB_NAME", "y"),
            ("META_APP_SECRET", "topsecret"),
        ])
        .unwrap();
        assert!(matches!(c.database, Some(DatabaseConfig::Url(_))));
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("topsecret"),
            "{dbg}"
        );
    }

    #[test]
    fn parts_build_connect_options() {
        let c = cfg(&[
            ("SSQ_DB_USER", "app"),
            ("SSQ_DB_PASSWORD", "p@ss:word"),
            ("SSQ_DB_NAME", "hq"),
            ("SSQ_DB_PORT", "5433"),
        ])
        .unwrap();
        let o = c.require_database().unwrap().connect_options().unwrap();
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_host(), "localhost");
        assert_eq!(o.get_database(), Some("hq"));
    }

    #[test]
    fn rate_limits_and_read_timeouts() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.rate_limits, RateLimits::default());
        assert_eq!(c.header_read_timeout, Duration::from_secs(15));
        let c = cfg(&[
            ("HOOKQ_RATE_LIMIT_WEBHOOKS", "100/s"),
            ("HOOKQ_RATE_LIMIT_API", "600/min"),
            ("HOOKQ_RATE_LIMIT_OTHER", "off"),
            ("HOOKQ_HEADER_READ_TIMEOUT", "500ms"),
        ])
        .unwrap();
        assert_eq!(
            c.rate_limits.webhooks,
            Some(RateLimit {
                requests: 100,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(c.rate_limits.api.unwrap().per, Duration::from_secs(60));
        assert_eq!(c.rate_limits.other, None);
        assert_eq!(c.header_read_timeout, Duration::from_millis(500));
        let e = cfg(&[("HOOKQ_RATE_LIMIT_API", "fast")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HOOKQ_RATE_LIMIT_API:"), "{e}");
        assert!(cfg(&[("HOOKQ_BODY_READ_TIMEOUT", "0")]).is_err());
    }

    #[test]
    fn several_hosts_are_read_libpq_style() {
        let c = cfg(&[(
            "DATABASE_URL",
            "postgres://u:pw@10.0.0.1:5433,db2,[::1]:6000/hookq?target_session_attrs=read-write&sslmode=disable",
        )])
        .unwrap();
        let hosts = c.require_database().unwrap().hosts().unwrap().unwrap();
        let at = |i: usize| {
            let o = hosts.options(i);
            (
                o.get_host().to_owned(),
                o.get_port(),
                o.get_database().map(str::to_owned),
            )
        };
        assert_eq!(at(0), ("10.0.0.1".into(), 5433, Some("hookq".into())));
        assert_eq!(at(1), ("db2".into(), 5432, Some("hookq".into())));
        assert_eq!(at(2), ("::1".into(), 6000, Some("hookq".into())));
        assert_eq!(hosts.options(1).get_username(), "u");
        // The first host is what a plain connect uses.
        let first = c.require_database().unwrap().connect_options().unwrap();
        assert_eq!((first.get_host(), first.get_port()), ("10.0.0.1", 5433));
        // One host without the attribute: plain sqlx.
        let one = cfg(&[("DATABASE_URL", "postgres://u@h:5432/db")]).unwrap();
        assert!(one.require_database().unwrap().hosts().unwrap().is_none());
        let bad = cfg(&[("DATABASE_URL", "postgres://u@h:x,h2/db")]).unwrap();
        assert!(bad.require_database().unwrap().hosts().is_err());
    }

    #[test]
    fn wakeup_is_notify_or_poll() {
        assert_eq!(cfg(&[]).unwrap().wakeup, Wakeup::Notify);
        assert_eq!(
            cfg(&[("HOOKQ_WAKEUP", "poll")]).unwrap().wakeup,
            Wakeup::Poll
        );
        let bad = cfg(&[("HOOKQ_WAKEUP", "sometimes")]).unwrap_err();
        assert!(bad.to_string().contains("HOOKQ_WAKEUP"), "{bad}");
    }

    #[test]
    fn worker_metrics_bind_can_be_switched_off() {
        let off = cfg(&[("HOOKQ_WORKER_METRICS_BIND", "off")]).unwrap();
        assert_eq!(off.worker_metrics_bind, None);
        let any = cfg(&[("HOOKQ_WORKER_METRICS_BIND", "0.0.0.0:0")]).unwrap();
        assert_eq!(any.worker_metrics_bind.unwrap().to_string(), "0.0.0.0:0");
        let bad = cfg(&[("HOOKQ_WORKER_METRICS_BIND", "nine")]).unwrap_err();
        assert!(
            bad.to_string().contains("HOOKQ_WORKER_METRICS_BIND"),
            "{bad}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = cfg(&[("TASKIQ_WORKERS", "many")]).unwrap_err().to_string();
        assert!(e.starts_with("TASKIQ_WORKERS:"), "{e}");
        let e = cfg(&[("HOOKQ_DELIVERY_BACKOFF", "4s,x")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HOOKQ_DELIVERY_BACKOFF:"), "{e}");
        assert_eq!(
            parse_backoff("4s, 500ms,2").unwrap(),
            vec![
                Duration::from_secs(4),
                Duration::from_millis(500),
                Duration::from_secs(2)
            ]
        );
    }
}
