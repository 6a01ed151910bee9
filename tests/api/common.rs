//! Shared harness for the integration tests: a fresh database, the real API on port 0,
//! workers in-process or as real `hookq` processes, and signing helpers.

use std::{collections::HashMap, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::io::{AsyncBufReadExt, BufReader};

use hookq_core::{config::Config, intake::signature};
use hookq_testkit::{TestDb, fresh_db, wait_for};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;

pub(crate) const META_SECRET: &str = "test-meta-secret";
pub(crate) const BRIDGE_SECRET: &str = "test-bridge-secret";
pub(crate) const VERIFY_TOKEN: &str = "test-verify-token";
pub(crate) const ADMIN_TOKEN: &str = "test-admin-token";

pub(crate) fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The environment every test instance starts from; tests add or override entries.
pub(crate) fn base_env(db_url: &str) -> HashMap<String, String> {
    [
        ("DATABASE_URL", db_url),
        ("META_APP_SECRET", META_SECRET),
        ("META_VERIFY_TOKEN", VERIFY_TOKEN),
        ("WHATSAPP_WEBHOOK_SECRET", BRIDGE_SECRET),
        ("HOOKQ_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TASKIQ_MAX_ASYNC_TASKS", "8"),
        // The fixtures are real payloads with their real (years old) timestamps: a
        // 24 h reply window would skip every message in them as `window_closed`. The
        // window's own test sets it back.
        ("HOOKQ_MESSAGE_REPLY_WINDOW", "876000h"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub(crate) fn config_from(env: &HashMap<String, String>) -> Config {
    Config::from_lookup(|k| env.get(k).cloned()).expect("test config")
}

pub(crate) struct TestApp {
    pub base: String,
    pub db: TestDb,
    pub config: Config,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) struct Options {
    pub env: HashMap<String, String>,
    /// Run a worker inside the test process (most tests); fault tests start real
    /// worker processes instead.
    pub worker: bool,
    pub demo: bool,
    /// Serve with a pool that points at no database at all (503 tests).
    pub dead_pool: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            env: HashMap::new(),
            worker: true,
            demo: true,
            dead_pool: false,
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

pub(crate) async fn spawn_app(opts: Options) -> TestApp {
    let db = fresh_db().await;
    let mut env = base_env(&db.url);
    env.extend(opts.env);
    let config = config_from(&env);
    if opts.demo {
        hookq_testkit::demo::load(&db.pool)
            .await
            .expect("demo data");
    }
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let pool = if opts.dead_pool {
        // As `hookq_core::db::connect` builds it: a 5 s acquire timeout.
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap()
    } else {
        db.pool.clone()
    };
    let state = hookq_api::AppState::new(config.clone(), pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        hookq_api::serve(listener, state, shutdown).await.unwrap();
    }));
    if opts.worker {
        let pool = db.pool.clone();
        let config = config.clone();
        let shutdown = stopped(rx.clone());
        tasks.push(tokio::spawn(async move {
            hookq_tasks::pipeline::run(pool, &config, shutdown)
                .await
                .unwrap();
        }));
    }
    TestApp {
        base,
        db,
        config,
        http: reqwest::Client::new(),
        stop,
        tasks,
    }
}

impl TestApp {
    pub(crate) fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub(crate) async fn post_signed(&self, path: &str, body: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", meta_signature(body.as_bytes()))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn post_instagram(&self, body: &str) -> reqwest::Response {
        self.post_signed("/webhooks/instagram", body).await
    }

    /// Waits until log `id` reaches `status`, returning the row as JSON-ish columns.
    pub(crate) async fn wait_status(&self, id: i64, status: &str) -> hookq_core::logs::LogRow {
        let pool = self.db.pool.clone();
        wait_for(20, &format!("log {id} to be {status}"), || {
            let pool = pool.clone();
            async move {
                let row = hookq_core::logs::get(&pool, id).await.unwrap()?;
                (row.status.as_str() == status).then_some(row)
            }
        })
        .await
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }
}

pub(crate) fn meta_signature(body: &[u8]) -> String {
    format!(
        "sha256={}",
        signature::hmac_hex(META_SECRET.as_bytes(), body)
    )
}

/// A compact-shape comment with its own ids.
pub(crate) fn compact(comment_id: &str, message: &str) -> String {
    serde_json::json!({
        "entry": [{"changes": [{"value": {
            "post_id": "post_123", "item": "comment", "comment_id": comment_id,
            "sender_id": "user_456", "sender_name": "Test User",
            "message": message, "created_time": 1625097600}}]}],
        "object": "instagram", "user_id": "user_123", "persona_id": "persona_123"
    })
    .to_string()
}

pub(crate) async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// The `hookq` binary under test, with a clean environment plus `env`.
pub(crate) fn hookq(env: &HashMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookq"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        // Many supervisors run at once in the suite: each takes a free port.
        .env("HOOKQ_WORKER_METRICS_BIND", "127.0.0.1:0")
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A real `hookq api` on a free loopback port, once it says it listens: (process, base
/// URL). Its JSON log is read for the bound address, then drained so it never blocks.
pub(crate) async fn api_process(env: &HashMap<String, String>) -> (tokio::process::Child, String) {
    let mut env = env.clone();
    env.insert("HOOKQ_BIND".into(), "127.0.0.1:0".into());
    env.insert("HOOKQ_LOG_FORMAT".into(), "json".into());
    env.entry("RUST_LOG".into())
        .or_insert_with(|| "warn,hookq=info".into());
    let mut child = hookq(&env)
        .arg("api")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == "API listening"
            {
                return v["fields"]["addr"].as_str().unwrap().to_string();
            }
        }
        panic!("hookq api exited before listening");
    })
    .await
    .expect("hookq api listening within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{addr}"))
}

/// Children of `pid`, from /proc (each thread lists the children it spawned).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut all: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    all.sort();
    all
}

/// Sends `sig` to `pid`; a process already gone is not an error here (the tests check
/// what they expect of the processes afterwards).
pub(crate) fn signal(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
}

/// A loopback HTTP peer answering every POST with `answer`.
/// An OpenAI-style chat completion answering `content`.
pub(crate) fn chat_completion(content: &str) -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}))
}

pub(crate) async fn answering(answer: wiremock::ResponseTemplate) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

/// A loopback HTTP peer answering the first `n` POSTs with `first`, every later one with
/// `then`.
pub(crate) async fn answering_after(
    first: wiremock::ResponseTemplate,
    n: u64,
    then: wiremock::ResponseTemplate,
) -> wiremock::MockServer {
    let server = answering(then).await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(first)
        .up_to_n_times(n)
        .with_priority(1)
        .mount(&server)
        .await;
    server
}

/// Whether a process with this pid exists (signal 0).
pub(crate) fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
}

// ---- Delivery and event-routing helpers (issue 4) ----

/// A Standard Webhooks secret for test callbacks (`whsec_` + base64).
pub(crate) const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(crate) const GRAPH_TOKEN: &str = "test-graph-token";

/// `HashMap` from pairs, for `Options.env`.
pub(crate) fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A fresh database with the demo data, and the environment a `hookq` process started
/// on it needs ([`base_env`] plus `extra`).
pub(crate) async fn demo_env(extra: &[(&str, &str)]) -> (TestDb, HashMap<String, String>) {
    let db = fresh_db().await;
    hookq_testkit::demo::load(&db.pool).await.unwrap();
    let mut env = base_env(&db.url);
    env.extend(env_of(extra));
    (db, env)
}

/// Callbacks to loopback allowed, and a short delivery schedule (one try + 3 retries).
pub(crate) fn delivery_env() -> HashMap<String, String> {
    env_of(&[
        ("HOOKQ_ALLOW_PRIVATE_CALLBACKS", "1"),
        ("HOOKQ_DELIVERY_BACKOFF", "50ms,100ms,150ms"),
    ])
}

pub(crate) fn bridge_signature(body: &[u8]) -> String {
    signature::hmac_hex(BRIDGE_SECRET.as_bytes(), body)
}

impl TestApp {
    /// A Bridge event to `/webhooks/whatsapp`, signed with `X-Webhook-Signature`.
    pub(crate) async fn post_bridge(&self, body: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/webhooks/whatsapp", self.base))
            .header("Content-Type", "application/json")
            .header("X-Webhook-Signature", bridge_signature(body.as_bytes()))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Posts and returns the acknowledged log ids (asserting a 200).
    pub(crate) async fn ingest(&self, path: &str, body: &str) -> Vec<i64> {
        let resp = if path == "bridge" {
            self.post_bridge(body).await
        } else {
            self.post_signed(path, body).await
        };
        let (status, ack) = json(resp).await;
        assert_eq!(status, 200, "{ack}");
        ack["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }

    /// Waits until log `id` is finished (`processed` or `dead_letter`).
    pub(crate) async fn wait_finished(&self, id: i64) -> hookq_core::logs::LogRow {
        let pool = self.db.pool.clone();
        wait_for(20, &format!("log {id} to finish"), || {
            let pool = pool.clone();
            async move {
                let row = hookq_core::logs::get(&pool, id).await.unwrap()?;
                matches!(row.status.as_str(), "processed" | "dead_letter").then_some(row)
            }
        })
        .await
    }
}

/// An integration for the demo user with the demo persona as default (`none` delivery).
pub(crate) async fn add_integration(pool: &PgPool, platform: &str, account_id: &str) -> uuid::Uuid {
    sqlx::query_scalar(
        "INSERT INTO integrations (user_id, platform, account_id, reply_delivery, default_persona_id, access_token)
         SELECT u.id, $1, $2, 'none', p.id, $3 FROM users u, personas p
         WHERE u.external_id = 'user_123' AND p.external_id = 'persona_123'
         RETURNING id",
    )
    .bind(platform)
    .bind(account_id)
    .bind(GRAPH_TOKEN)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Points the integration of `account_id` at a delivery kind (callback with the test
/// secret, or graph_api with the test token).
pub(crate) async fn set_delivery(
    pool: &PgPool,
    account_id: &str,
    kind: &str,
    callback_url: Option<&str>,
) {
    sqlx::query(
        "UPDATE integrations SET reply_delivery = $2, callback_url = $3, callback_secret = $4,
                access_token = $5, delivery_enabled = true
         WHERE account_id = $1",
    )
    .bind(account_id)
    .bind(kind)
    .bind(callback_url)
    .bind(CALLBACK_SECRET)
    .bind(GRAPH_TOKEN)
    .execute(pool)
    .await
    .unwrap();
}

/// Checks a received callback's Standard Webhooks headers against the test secret and
/// returns `(webhook-id, body)`.
pub(crate) fn verify_callback(req: &wiremock::Request) -> (String, Value) {
    let header = |name: &str| {
        req.headers
            .get(name)
            .unwrap_or_else(|| panic!("callback without {name}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let id = header("webhook-id");
    let ts: i64 = header("webhook-timestamp").parse().unwrap();
    let sig = header("webhook-signature");
    assert!(
        signature::standard_verify(CALLBACK_SECRET, &id, ts, &req.body, &sig),
        "the callback's signature does not verify"
    );
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 300,
        "stale webhook-timestamp"
    );
    (id, serde_json::from_slice(&req.body).unwrap())
}

/// Waits until `server` has received at least `n` requests; returns them all.
pub(crate) async fn wait_requests(
    server: &wiremock::MockServer,
    n: usize,
) -> Vec<wiremock::Request> {
    wait_for(
        20,
        &format!("{n} requests at the fake endpoint"),
        || async {
            let got = server.received_requests().await.unwrap_or_default();
            (got.len() >= n).then_some(got)
        },
    )
    .await
}
