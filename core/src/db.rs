//! Connecting to Postgres and applying `migrations/`.

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Every migration in the repository's `migrations/` folder, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that fails fast when the database is down (so the API can answer 503 instead
/// of holding requests) and recovers by itself when it comes back: sqlx reconnects
/// lazily, and `test_before_acquire` drops connections that died with the server.
pub async fn connect(opts: PgConnectOptions, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    pool_options(max_connections).connect_with(opts).await
}

/// A pool like [`connect`]'s that connects on first use (a replica that is down at
/// start-up must not stop the API: its reads fail, with 503, until it is back).
pub fn connect_lazy(opts: PgConnectOptions, max_connections: u32) -> PgPool {
    pool_options(max_connections).connect_lazy_with(opts)
}

/// A small pool of `max_connections` beside `main`, on the same database and following
/// it through failovers, for work that must not wait behind `main`'s: a lane of
/// statements whose backends, idle between them, the OS schedules at once.
pub fn side_pool(main: &PgPool, max_connections: u32) -> PgPool {
    let side = pool_options(max_connections).connect_lazy_with((*main.connect_options()).clone());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(follow_pool(side.clone(), main.clone(), |opts| opts));
    }
    side
}

/// The settings every pool of the API and the workers shares: none kept open while idle,
/// a 5 s wait for a connection (then `Unavailable`, 503), idle ones closed after 5
/// minutes, each pinged before it is handed out ([`connect_primary`] replaces the ping
/// with its read-write check).
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .test_before_acquire(true)
}

/// Applies every pending migration; safe to run any number of times, from any number
/// of processes at once (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// True when every embedded migration is applied: what `/ready` reports.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .or_else(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => Ok(None),
                _ => Err(e),
            })?;
    Ok(applied.unwrap_or(0) >= latest)
}

/// What a database failure means for whoever asked, decided once here for every
/// repository, the intake and the HTTP layer (which picks the status from it).
///
/// | failure | SQLSTATE / driver error | meaning | HTTP |
/// |---|---|---|---|
/// | `Unavailable` | I/O, TLS, pool timed out or closed, class 08 (connection), 53 (resources), 57P01–57P03 (shutdown, starting up), 25006 (read-only: a standby) | the database cannot take work now; retry later | 503 |
/// | `Retry` | 40001 serialization failure, 40P01 deadlock, 55P03 lock not available | lost a race; the same statement may pass | 503 |
/// | `Refused` | class 22 (data exception), class 54 (over a limit: an index row over 8,191 bytes), an encode error | a value can never be stored as it is; retrying cannot help | 422 |
/// | `Constraint` | 23502/23514 (not-null, check) | a row broke a rule of the schema: the client's fault where the client chose the values (an admin write, 422), ours where hookq built the row (intake: 503, the sender retries and nothing is acknowledged) | 422 / 503 |
/// | `Unique` | 23505 | a duplicate of a unique key | 409 |
/// | `ForeignKey` | 23503 | a reference to a row that does not exist (or, deleting, a row still referenced) | 422 / 409 |
/// | `Other` | anything else | a fault of ours | 500 |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFailure {
    /// The database cannot take work now; retry later.
    Unavailable,
    /// Lost a race (serialization failure, deadlock, lock not available).
    Retry,
    /// The database's own words about the refused value.
    Refused(String),
    /// The database's words about the broken rule.
    Constraint(String),
    /// The database's detail (which key), when it gave one.
    Unique(String),
    /// The database's detail (which reference), when it gave one.
    ForeignKey(String),
    /// Anything else: a fault of ours.
    Other,
}

impl DbFailure {
    /// True when trying the same thing again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DbFailure::Unavailable | DbFailure::Retry)
    }
}

/// Classifies `e` (see [`DbFailure`]).
pub fn classify(e: &sqlx::Error) -> DbFailure {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            DbFailure::Unavailable
        }
        E::Encode(e) => DbFailure::Refused(e.to_string()),
        E::Database(d) => {
            let code = d.code().unwrap_or_default();
            let detail = || {
                d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail())
                    .unwrap_or_else(|| d.message())
                    .to_owned()
            };
            match code.as_ref() {
                "23505" => DbFailure::Unique(detail()),
                "23503" => DbFailure::ForeignKey(detail()),
                "23502" | "23514" => DbFailure::Constraint(d.message().to_owned()),
                "40001" | "40P01" | "55P03" => DbFailure::Retry,
                "57P01" | "57P02" | "57P03" | "25006" => DbFailure::Unavailable,
                c if c.starts_with("08") || c.starts_with("53") => DbFailure::Unavailable,
                c if c.starts_with("22") || c.starts_with("54") => {
                    DbFailure::Refused(d.message().to_owned())
                }
                _ => DbFailure::Other,
            }
        }
        _ => DbFailure::Other,
    }
}

/// Whether the database is known to be down, kept by a watcher so that a request can be
/// answered `503` at once instead of waiting out the pool's acquire timeout (5 s) for a
/// connection that cannot come.
///
/// The watcher holds one connection of its own (never one of the pool's, so a pool busy
/// under load is never mistaken for a database that is down) and pings it every
/// [`Availability::EVERY`]:
///
/// - **up → down** when the ping fails and a fresh connection fails too (a stopped or
///   restarting server ends every connection and refuses new ones, so this is noticed
///   within a second), or neither answers within [`Availability::PING_TIMEOUT`] (a host
///   that went silent);
/// - **down → up** once a fresh connection answers; while down it tries every
///   [`Availability::RETRY_EVERY`], so service resumes within a fraction of a second of
///   the database's return. The pool reconnects by itself (its connections are tested
///   before use).
///
/// Until the first check the database counts as up: a request then learns the truth the
/// slow way, as before.
pub struct Availability {
    down: std::sync::atomic::AtomicBool,
}

impl Availability {
    /// The ping interval while the database is up.
    pub const EVERY: Duration = Duration::from_secs(1);
    /// How long a ping may take before the database counts as down.
    pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
    /// The reconnect interval while the database is down.
    pub const RETRY_EVERY: Duration = Duration::from_millis(250);

    /// Starts the watcher on the current Tokio runtime; it stops when the last handle is
    /// dropped.
    pub fn watch(pool: &PgPool) -> std::sync::Arc<Self> {
        let this = std::sync::Arc::new(Availability {
            down: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(watch(std::sync::Arc::downgrade(&this), pool.clone()));
        this
    }

    /// True while the database is known to be unreachable.
    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_down(&self, down: bool) {
        let was = self.down.swap(down, std::sync::atomic::Ordering::Relaxed);
        match (was, down) {
            (false, true) => tracing::warn!("database unreachable: answering 503 until it is back"),
            (true, false) => tracing::info!("database reachable again"),
            _ => {}
        }
    }
}

async fn watch(this: std::sync::Weak<Availability>, pool: PgPool) {
    use sqlx::Connection;
    let mut conn: Option<sqlx::PgConnection> = None;
    loop {
        let Some(state) = this.upgrade() else {
            return;
        };
        let mut ok = match conn.as_mut() {
            Some(c) => matches!(
                tokio::time::timeout(Availability::PING_TIMEOUT, c.ping()).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        if !ok {
            // A lost connection is not yet a lost database: one fresh try decides.
            conn = match tokio::time::timeout(
                Availability::PING_TIMEOUT,
                // The pool's options as they are now: after a failover they name the
                // new primary (see [`Hosts`]).
                sqlx::PgConnection::connect_with(&pool.connect_options()),
            )
            .await
            {
                Ok(Ok(c)) => Some(c),
                _ => None,
            };
            ok = conn.is_some();
        }
        state.set_down(!ok);
        drop(state);
        tokio::time::sleep(if ok {
            Availability::EVERY
        } else {
            Availability::RETRY_EVERY
        })
        .await;
    }
}

/// `opts` for a server reached through a pooler in transaction mode (PgBouncer 1.18;
/// `HOOKQ_WAKEUP=poll`, contract section 11): no session state at all. sqlx's statement
/// cache is off, which (with the patch in `vendor/README.md`) sends every statement as
/// Parse + Bind + Describe + Execute under one Sync: nothing is prepared ahead, so it does
/// not matter which server connection the pooler picks for the next transaction. Pools
/// derived from these options leave out their session settings (see
/// [`is_session_free`]).
pub fn session_free(opts: PgConnectOptions) -> PgConnectOptions {
    opts.statement_cache_capacity(0)
}

/// Whether `opts` came from [`session_free`]: a derived pool must then set nothing for
/// the session (no startup `options`, which PgBouncer refuses).
pub fn is_session_free(opts: &PgConnectOptions) -> bool {
    opts.get_statement_cache_capacity() == 0
}

/// Several hosts in `DATABASE_URL`, libpq style (contract section 11):
/// `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`. sqlx takes one
/// host, so this is the smallest layer that gives libpq's behaviour:
///
/// - **At start** the hosts are tried in order and the first that takes writes is used
///   (libpq's test for `read-write`: `SHOW transaction_read_only` answers `off`).
/// - **Every connection** is checked the same way before it is handed out (instead of
///   the plain ping `test_before_acquire` would send: no extra round trip), so a pooled
///   connection to a server that became a standby is dropped, not used.
/// - **A follower** ([`follow_primary`]) runs one cheap statement through the pool every
///   [`Hosts::CHECK_EVERY`]; when it fails, it looks for the host that takes writes now
///   and points the pool there (`set_connect_options`). In between, requests that need
///   the database fail as `Unavailable` (503) and nothing is acknowledged.
///
/// Pools derived from this one (the queue's asynchronous-commit pool, the availability
/// watcher, the LISTEN connection) read the pool's options when they connect, or follow
/// it with [`follow_pool`].
#[derive(Clone, Debug)]
pub struct Hosts {
    hosts: Vec<(String, u16)>,
    base: PgConnectOptions,
}

impl Hosts {
    /// How often the follower checks that the pool still reaches a primary.
    pub const CHECK_EVERY: Duration = Duration::from_secs(1);
    /// How long one probe of a host may take.
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

    /// The hosts of a `DATABASE_URL`; `None` for a URL with one host and no
    /// `target_session_attrs=read-write` (plain sqlx then).
    pub fn parse(url: &str) -> Result<Option<Hosts>, String> {
        use std::str::FromStr;
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(None);
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let read_write = tail.contains("target_session_attrs=read-write");
        if !hostlist.contains(',') && !read_write {
            return Ok(None);
        }
        let mut hosts = Vec::new();
        for h in hostlist.split(',') {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && !port.contains(']') => (
                    host,
                    port.parse::<u16>()
                        .map_err(|_| format!("`{h}`: the port is not a number"))?,
                ),
                _ => (h, 5432),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err("a host of the list is empty".into());
            }
            hosts.push((host.to_owned(), port));
        }
        // sqlx ignores (with a warning) what it does not know: drop the attribute it
        // would warn about, it is this layer's.
        let tail = tail
            .replace("target_session_attrs=read-write&", "")
            .replace("&target_session_attrs=read-write", "")
            .replace("?target_session_attrs=read-write", "");
        let (h, p) = &hosts[0];
        let single = format!("{scheme}://{userinfo}{h}:{p}{tail}");
        let base = PgConnectOptions::from_str(&single).map_err(|e| e.to_string())?;
        Ok(Some(Hosts { hosts, base }))
    }

    /// The same hosts, each connected with `f` applied to its options.
    pub fn map_options(mut self, f: impl FnOnce(PgConnectOptions) -> PgConnectOptions) -> Self {
        self.base = f(self.base);
        self
    }

    /// The connect options for host `i`.
    pub fn options(&self, i: usize) -> PgConnectOptions {
        let (host, port) = &self.hosts[i];
        self.base.clone().host(host).port(*port)
    }

    /// The first host, in order, that takes writes now.
    pub async fn find_primary(&self) -> Option<usize> {
        for i in 0..self.hosts.len() {
            if probe(&self.options(i)).await {
                return Some(i);
            }
        }
        None
    }
}

/// Whether the server at `opts` answers and takes writes.
async fn probe(opts: &PgConnectOptions) -> bool {
    use sqlx::Connection;
    let check = async {
        let mut conn = sqlx::PgConnection::connect_with(opts).await.ok()?;
        let writable = takes_writes(&mut conn).await.ok();
        let _ = conn.close().await;
        writable
    };
    matches!(
        tokio::time::timeout(Hosts::PROBE_TIMEOUT, check).await,
        Ok(Some(true))
    )
}

async fn takes_writes(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    let ro: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(&mut *conn)
        .await?;
    Ok(ro == "off")
}

/// A pool on the host of `hosts` that takes writes (the first host when none does yet:
/// its connections then fail until one does), following it through failovers.
pub async fn connect_primary(hosts: Hosts, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let first = hosts.find_primary().await.unwrap_or(0);
    let pool = pool_options(max_connections)
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                if takes_writes(conn).await? {
                    Ok(())
                } else {
                    Err(sqlx::Error::Io(std::io::Error::other(
                        "this host does not take writes (a standby); waiting for the primary",
                    )))
                }
            })
        })
        .before_acquire(|conn, _| {
            Box::pin(async move { Ok(takes_writes(conn).await.unwrap_or(false)) })
        })
        .connect_with(hosts.options(first))
        .await?;
    tokio::spawn(follow_primary(pool.clone(), hosts));
    Ok(pool)
}

/// Keeps `pool` on the host that takes writes, until the pool is closed.
pub async fn follow_primary(pool: PgPool, hosts: Hosts) {
    loop {
        tokio::time::sleep(Hosts::CHECK_EVERY).await;
        if pool.is_closed() {
            return;
        }
        let ok = tokio::time::timeout(Hosts::PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&pool))
            .await;
        if matches!(ok, Ok(Ok(_))) {
            continue;
        }
        let current = (
            pool.connect_options().get_host().to_owned(),
            pool.connect_options().get_port(),
        );
        if let Some(i) = hosts.find_primary().await {
            let next = hosts.options(i);
            if (next.get_host().to_owned(), next.get_port()) != current {
                tracing::warn!(
                    host = next.get_host(),
                    port = next.get_port(),
                    "the primary moved: connecting to the host that takes writes now"
                );
                pool.set_connect_options(next);
            }
        }
    }
}

/// Keeps `derived` (a pool made from `main`'s options by `make`) on the same host as
/// `main` after a failover moved it.
pub async fn follow_pool(
    derived: PgPool,
    main: PgPool,
    make: fn(PgConnectOptions) -> PgConnectOptions,
) {
    loop {
        tokio::time::sleep(Hosts::CHECK_EVERY).await;
        if derived.is_closed() || main.is_closed() {
            return;
        }
        let (m, d) = (main.connect_options(), derived.connect_options());
        if m.get_host() != d.get_host() || m.get_port() != d.get_port() {
            derived.set_connect_options(make((*m).clone()));
        }
    }
}
