//! Development and test support: a local PostgreSQL cluster launcher ([`devdb`], used by
//! `hookq dev` and the tests), the demo data ([`demo`]), and a fresh, migrated database
//! per test. Not the domain (`hookq-core`): nothing here is part of a running service's
//! behaviour, only of the ways a developer starts one.
//!
//! The cluster is `HOOKQ_TEST_DATABASE_URL` (an admin URL) when set, else a private
//! cluster under `$HOOKQ_TEST_PG_DIR` (default `/tmp/hookq-test-pg`) started on first use
//! and shared by every test process. Each test gets `CREATE DATABASE … TEMPLATE` of a
//! template database migrated once per migration set, which takes milliseconds.

pub mod demo;
pub mod devdb;

use std::path::PathBuf;

use devdb::{ClusterOptions, LocalCluster};
// Database names in DDL cannot be bind parameters; ours are generated hex and UUIDs.
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

/// A test's own database. Dropped with the value when the test passed (its connections,
/// child processes' included, are ended by `DROP DATABASE … WITH (FORCE)`); kept when
/// the test panicked, so its rows can be read afterwards (the name is printed), or when
/// `HOOKQ_TEST_KEEP_DB` is set.
pub struct TestDb {
    /// A pool on this test's own database, migrated.
    pub pool: PgPool,
    /// URL of this test's own database (hand it to child processes as `DATABASE_URL`).
    pub url: String,
    /// The database's generated name (`t_<uuid>`).
    pub name: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test database kept for inspection: {}", self.url);
            return;
        }
        if std::env::var_os("HOOKQ_TEST_KEEP_DB").is_some() {
            return;
        }
        let Some(admin_url) = SERVER.get().map(|s| s.admin_url.clone()) else {
            return;
        };
        let name = self.name.clone();
        // Drop runs on the test's runtime, which cannot be blocked on; a thread with a
        // runtime of its own does the one statement. A cluster a fault test left stopped
        // just keeps the database (the next run's cluster is new anyway).
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("test database not dropped: {}", self.name);
        }
    }
}

struct Server {
    admin_url: String,
    cluster: Option<LocalCluster>,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

async fn server() -> &'static Server {
    SERVER
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("HOOKQ_TEST_DATABASE_URL") {
                return Server {
                    admin_url: url,
                    cluster: None,
                };
            }
            let dir = std::env::var("HOOKQ_TEST_PG_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("/tmp/hookq-test-pg"));
            let cluster = tokio::task::spawn_blocking(move || {
                LocalCluster::ensure(&dir, &ClusterOptions { durable: false })
            })
            .await
            .expect("cluster start task")
            .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"));
            Server {
                admin_url: cluster.url("postgres"),
                cluster: Some(cluster),
            }
        })
        .await
}

/// The local cluster behind the tests, when the kit started it (fault tests stop and
/// start it).
pub async fn cluster() -> Option<LocalCluster> {
    server().await.cluster.clone()
}

/// `postgres://user@host:port/db?params` with `db` swapped for another name.
fn with_db(admin_url: &str, db: &str) -> String {
    let (base, params) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let root = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    if params.is_empty() {
        format!("{root}/{db}")
    } else {
        format!("{root}/{db}?{params}")
    }
}

async fn template(admin: &mut PgConnection, admin_url: &str) -> String {
    let sum: u64 = hookq_core::db::MIGRATOR
        .iter()
        .flat_map(|m| m.checksum.iter().copied().chain(m.version.to_le_bytes()))
        .fold(0xcbf29ce484222325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    let name = format!("hookq_tmpl_{sum:016x}");
    sqlx::query("SELECT pg_advisory_lock(727274)")
        .execute(&mut *admin)
        .await
        .expect("advisory lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut *admin)
            .await
            .expect("template lookup");
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {building}")))
            .execute(&mut *admin)
            .await
            .expect("drop stale template");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .execute(&mut *admin)
            .await
            .expect("create template");
        {
            let pool = PgPool::connect(&with_db(admin_url, &building))
                .await
                .expect("connect template");
            hookq_core::db::migrate(&pool)
                .await
                .expect("migrate template");
            pool.close().await;
        }
        sqlx::query(AssertSqlSafe(format!(
            "ALTER DATABASE {building} RENAME TO {name}"
        )))
        .execute(&mut *admin)
        .await
        .expect("rename template");
    }
    sqlx::query("SELECT pg_advisory_unlock(727274)")
        .execute(&mut *admin)
        .await
        .expect("advisory unlock");
    name
}

/// A new database with every migration applied, for this test alone.
pub async fn fresh_db() -> TestDb {
    let server = server().await;
    let mut admin = PgConnection::connect(&server.admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"));
    let tmpl = template(&mut admin, &server.admin_url).await;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    // Concurrent clones of one template are fine; a clone while someone is connected
    // to the template is not, so retry that briefly.
    let mut tries = 0;
    loop {
        match sqlx::query(AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {tmpl}"
        )))
        .execute(&mut admin)
        .await
        {
            Ok(_) => break,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    let url = with_db(&server.admin_url, &name);
    let pool = PgPool::connect(&url).await.expect("connect test database");
    TestDb { pool, url, name }
}

/// A new, empty database (no migration applied), for a test of the migrations
/// themselves.
pub async fn empty_db() -> TestDb {
    let server = server().await;
    let mut admin = PgConnection::connect(&server.admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"));
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let url = with_db(&server.admin_url, &name);
    let pool = PgPool::connect(&url).await.expect("connect test database");
    TestDb { pool, url, name }
}

/// Polls `check` until it returns `Some`, or panics after `secs` seconds with `what`.
/// Tests wait on conditions, never on guessed sleeps.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll_for(secs, check).await {
        Some(v) => v,
        None => panic!("timed out after {secs}s waiting for {what}"),
    }
}

/// [`wait_for`] that gives up with `None` instead of panicking, for a caller that goes
/// on (or says what it saw) when the condition never came.
pub async fn poll_for<T, F, Fut>(secs: u64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A compact Instagram comment for the demo user and persona, keyed (dedup key, item
/// id and payload) by `key`: what the ingest and worker tests store.
pub fn comment_event(key: &str) -> hookq_core::intake::ParsedEvent {
    use hookq_core::intake::{AccountRef, Handling, ParsedEvent, Source};
    ParsedEvent {
        dedup_key: key.to_owned(),
        source: Source::Instagram,
        platform: Source::Instagram,
        event_type: "comment".into(),
        handling: Handling::Reply,
        account: AccountRef::Compact {
            user_external_id: "user_123".into(),
        },
        persona_external_id: Some("persona_123".into()),
        post_external_id: Some("post_123".into()),
        item_id: Some(key.to_owned()),
        sender_id: Some("user_456".into()),
        sender_name: Some("Test User".into()),
        text: Some("hello".into()),
        is_own: false,
        occurred_at: None,
        payload: serde_json::json!({ "key": key }),
    }
}
