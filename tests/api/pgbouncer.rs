//! hookq through Debian's PgBouncer (1.18) in transaction pooling mode (contract section
//! 11): a real `pgbouncer` in front of the test cluster, with fewer server connections
//! than clients so that consecutive transactions of one client land on different
//! server connections. With `HOOKQ_WAKEUP=poll` hookq keeps no session state: no LISTEN,
//! no session `SET`, no advisory lock across statements, and no prepared statement
//! outliving one exchange (`vendor/README.md`).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use hookq_testkit::{fresh_db, wait_for};
use nix::sys::signal::Signal;
use sqlx::Row;

use crate::common::*;

/// A `pgbouncer` process in transaction mode in front of the database at `db_url`,
/// listening on a free loopback port; stopped when dropped.
struct Bouncer {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Bouncer {
    const BIN: &str = "/usr/sbin/pgbouncer";

    /// Starts it with `pool_size` server connections per database and user; returns once
    /// it accepts connections.
    async fn start(db_url: &str, pool_size: u32) -> Bouncer {
        assert!(
            std::path::Path::new(Self::BIN).exists(),
            "{} missing: scripts/install-deps --test installs Debian's pgbouncer",
            Self::BIN
        );
        let url = url::Url::parse(db_url).unwrap();
        let (host, db_port) = (url.host_str().unwrap(), url.port().unwrap());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("hookq-pgb-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={db_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {log}\nlog_connections = 0\nlog_disconnections = 0\n",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root: as root, run it as the cluster's owner.
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            for f in ["", "users.txt", "pgbouncer.ini"] {
                std::os::unix::fs::chown(dir.join(f), Some(postgres.uid.as_raw()), None).unwrap();
            }
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", Self::BIN]);
            c
        } else {
            std::process::Command::new(Self::BIN)
        };
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bouncer = Bouncer { child, dir, port };
        let url = bouncer.url(db_url);
        wait_for(20, "pgbouncer accepting connections", || async {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect_with(
                &hookq_core::db::session_free(url.parse().unwrap()),
            )
            .await
            .ok()?;
            sqlx::query("SELECT 1")
                .execute(&mut c)
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        bouncer
    }

    /// `db_url` with the bouncer's address instead of the server's.
    fn url(&self, db_url: &str) -> String {
        let mut u = url::Url::parse(db_url).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // runuser forwards SIGTERM to pgbouncer and waits for it.
        signal(self.child.id(), Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Statements with parameters from many clients through 2 server connections: each
/// client's transactions move between server connections all the time. Every answer is
/// the client's own (a statement parsed in one exchange and bound in another could run
/// another client's SQL), and nothing fails.
#[tokio::test]
async fn statements_through_pgbouncer_transaction_mode_answer_their_own_query() {
    let db = fresh_db().await;
    let bouncer = Bouncer::start(&db.url, 2).await;
    let opts = hookq_core::db::session_free(bouncer.url(&db.url).parse().unwrap());
    let pool = hookq_core::db::connect(opts, 16).await.unwrap();
    let mut clients = Vec::new();
    for client in 0..16i64 {
        let pool = pool.clone();
        clients.push(tokio::spawn(async move {
            for round in 0..40i64 {
                // Texts differ per client and round: a mixed-up statement shows.
                let sql = format!(
                    "SELECT $1::int8 * {client} + {round} AS n, $2::text AS who, {client}::int4 AS c"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(1000i64)
                    .bind(format!("client {client}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("client {client} round {round}: {e}"));
                assert_eq!(row.get::<i64, _>("n"), 1000 * client + round);
                assert_eq!(row.get::<String, _>("who"), format!("client {client}"));
                assert_eq!(row.get::<i32, _>("c"), client as i32);
                // And inside a transaction, as the queue's statements run.
                let mut tx = pool.begin().await.unwrap();
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT $1::int8 + {client}")))
                    .bind(round)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                assert_eq!(n, round + client);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // The clients really shared the two server connections.
    let servers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        servers <= 2,
        "{servers} server connections behind pgbouncer"
    );
    pool.close().await;
    drop(bouncer);
}

/// The whole pipeline through PgBouncer in transaction mode: `hookq api` and a worker
/// supervisor with two worker processes, both with `HOOKQ_WAKEUP=poll` and
/// `DATABASE_URL` at the bouncer (4 server connections for all of them). Every
/// acknowledged webhook is processed once, and PgBouncer logged no protocol error.
#[tokio::test]
async fn the_pipeline_runs_through_pgbouncer_in_transaction_mode() {
    let (db, mut env) = demo_env(&[("TASKIQ_WORKERS", "2"), ("HOOKQ_WAKEUP", "poll")]).await;
    let bouncer = Bouncer::start(&db.url, 4).await;
    env.insert("DATABASE_URL".into(), bouncer.url(&db.url));
    let (mut api, base) = api_process(&env).await;
    let mut workers = hookq(&env)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let http = reqwest::Client::new();
    let count = 200;
    let mut sent = Vec::new();
    for i in 0..count {
        let body = compact(&format!("bouncer_{i}"), &format!("hello {i}"));
        let http = http.clone();
        let base = base.clone();
        sent.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{base}/webhooks/instagram"))
                .header("Content-Type", "application/json")
                .header("X-Hub-Signature-256", meta_signature(body.as_bytes()))
                .body(body)
                .send()
                .await
                .unwrap();
            json(resp).await
        }));
    }
    let mut acked: HashSet<i64> = HashSet::new();
    for s in sent {
        let (status, ack) = s.await.unwrap();
        assert_eq!(status, 200, "{ack}");
        for id in ack["ids"].as_array().unwrap() {
            acked.insert(id.as_i64().unwrap());
        }
    }
    assert_eq!(acked.len(), count);

    let statuses = wait_for(60, "every acknowledged log processed", || async {
        let rows: Vec<(i64, String, i32)> =
            sqlx::query_as("SELECT id, status::text, attempts FROM webhook_logs")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        (rows.len() == count && rows.iter().all(|r| r.1 == "processed")).then_some(rows)
    })
    .await;
    let ids: HashSet<i64> = statuses.iter().map(|r| r.0).collect();
    assert_eq!(ids, acked);
    // Once each: one run, and one reply recorded per comment.
    let runs: HashMap<i32, usize> = statuses.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.2).or_default() += 1;
        m
    });
    assert_eq!(runs, HashMap::from([(1, count)]), "attempts per log");
    let log = bouncer.log();
    assert!(
        !log.contains("ERROR") && !log.contains("prepared statement"),
        "pgbouncer log:\n{log}"
    );

    signal(workers.id().unwrap(), Signal::SIGTERM);
    signal(api.id().unwrap(), Signal::SIGTERM);
    for (name, child) in [("worker", &mut workers), ("api", &mut api)] {
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} exits within 30 s"))
            .unwrap();
        assert!(status.success(), "{name}: {status:?}");
    }
    drop(bouncer);
}
