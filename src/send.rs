//! `hookq send`: a signed-webhook load generator for a running instance.
//!
//! It never touches the database: it signs bodies with the same secrets the server
//! reads (`META_APP_SECRET`, `WHATSAPP_WEBHOOK_SECRET`, from the environment or `.env`),
//! sends them with bounded concurrency and an optional rate, and reports what the
//! server acknowledged. `--wait-processed` then polls the admin API until every
//! accepted event is finished, for an end-to-end figure.
//!
//! It can also drive two accounts at once, for contract section 10's fairness figure
//! ([`fair`]): the main stream is the flood (`--sample comment` or `message`, for the
//! account `--account` names, the demo account by default) and `--quiet-account ID`
//! adds a quiet companion stream, one Meta comment every `--quiet-interval-ms` (100) to
//! that account, from the flood's first request until the flood is processed. It then
//! reads both accounts' logs back through the admin API (`HOOKQ_ADMIN_TOKEN`) and prints
//!
//! `hookq_fairness flood=N flood_per_s=N quiet_p50_ms=N quiet_p99_ms=N quiet_max_ms=N`
//!
//! before its last line: the flood's processed events ÷ (its last `processed_at` − its
//! first `received_at`), and the quiet account's `processed_at − received_at` over its
//! events received during the flood's drain. `--create-quiet-integration` first creates
//! the quiet account's integration when it is missing (Instagram, the flood
//! integration's user and default persona, `reply_delivery` `none`).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hookq_core::{
    config::{Config, Secret},
    intake::signature,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

mod fair;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Sample {
    /// The contract's compact comment shape (demo data replies to it).
    Compact,
    /// Meta's `entry[].changes[]` comment shape for the demo account (or --account).
    Comment,
    /// An Instagram direct message to the demo account (or --account).
    Message,
    /// A WhatsApp Bridge `message.received` (sent to /webhooks/whatsapp).
    Bridge,
    /// Round-robin over all of the above.
    Mixed,
}

#[derive(Args, Debug)]
pub(crate) struct SendArgs {
    /// Base URL of the running instance.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Webhooks to send.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Requests per second at most (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Fraction of requests that resend an earlier body byte for byte (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_ratio: f64,
    /// Built-in sample to send (ignored with --file).
    #[arg(long, value_enum, default_value = "compact")]
    pub sample: Sample,
    /// A payload file to send instead; `{{seq}}` and `{{uuid}}` are replaced per request
    /// (without them every request is the same event, i.e. a duplicate).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// With --file: the route to post it to.
    #[arg(long, default_value = "/webhooks/instagram")]
    pub path: String,
    /// With --file: sign as the WhatsApp Bridge (X-Webhook-Signature) instead of Meta.
    #[arg(long)]
    pub bridge: bool,
    /// After sending, poll until every accepted event is processed (needs HOOKQ_ADMIN_TOKEN).
    #[arg(long)]
    pub wait_processed: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_timeout: u64,
    /// The Instagram account (`entry[].id`) the Meta-shape samples (comment, message,
    /// and those of mixed) are sent for, instead of the demo account.
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,
    /// Fairness run (contract section 10): the main stream is the flood; alongside it send
    /// one Meta comment every --quiet-interval-ms to this Instagram account, until the
    /// flood is processed, then print the `hookq_fairness …` line (needs
    /// HOOKQ_ADMIN_TOKEN; the flood must be --sample comment or message).
    #[arg(long, value_name = "ID", conflicts_with_all = ["wait_processed", "file"])]
    pub quiet_account: Option<String>,
    /// With --quiet-account: milliseconds between two quiet comments (keep the quiet
    /// stream light: it is a probe, and its own backlog would lengthen the drain).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 100,
        requires = "quiet_account"
    )]
    pub quiet_interval_ms: u64,
    /// With --quiet-account: first create its integration when there is none (Instagram,
    /// the flood integration's user and default persona, reply_delivery none).
    #[arg(long, requires = "quiet_account")]
    pub create_quiet_integration: bool,
}

struct Body {
    path: String,
    bridge: bool,
    bytes: String,
}

/// One built-in sample; `account` is the Instagram account of the Meta shapes.
fn sample_body(kind: Sample, seq: u64, run: &str, account: &str) -> Body {
    let now = chrono::Utc::now().timestamp();
    let id = format!("{run}_{seq}");
    let (path, bridge, v) = match kind {
        Sample::Compact | Sample::Mixed => (
            "/webhooks/instagram",
            false,
            serde_json::json!({
                "entry": [{"changes": [{"value": {
                    "post_id": "post_123", "item": "comment", "comment_id": format!("c_{id}"),
                    "sender_id": "user_456", "sender_name": "Load Test",
                    "message": format!("Load test comment {seq}"), "created_time": now}}]}],
                "object": "instagram", "user_id": "user_123", "persona_id": "persona_123"}),
        ),
        Sample::Comment => (
            "/webhooks/instagram",
            false,
            serde_json::json!({"object": "instagram", "entry": [{"id": account, "time": now,
                "changes": [{"field": "comments", "value": {"from": {"id": format!("u{seq}"), "username": "loadtest"},
                "media": {"id": "post_123"}, "id": format!("ig_{id}"), "text": format!("Comment {seq}")}}]}]}),
        ),
        Sample::Message => (
            "/webhooks/instagram",
            false,
            serde_json::json!({"object": "instagram", "entry": [{"id": account, "time": now * 1000,
                "messaging": [{"sender": {"id": format!("u{seq}")}, "recipient": {"id": account},
                "timestamp": now * 1000, "message": {"mid": format!("m_{id}"), "text": format!("Message {seq}")}}]}]}),
        ),
        Sample::Bridge => (
            "/webhooks/whatsapp",
            true,
            serde_json::json!({"event_type": "message.received", "timestamp": chrono::Utc::now().to_rfc3339(),
                "data": {"from_number": "+15550001111", "to_number": "+15550002222", "message_id": format!("wa_{id}"),
                "text": format!("Hello {seq}")}}),
        ),
    };
    Body {
        path: path.into(),
        bridge,
        bytes: v.to_string(),
    }
}

fn kind_for(sample: Sample, seq: u64) -> Sample {
    match sample {
        Sample::Mixed => [
            Sample::Compact,
            Sample::Comment,
            Sample::Message,
            Sample::Bridge,
        ][(seq % 4) as usize],
        other => other,
    }
}

/// A body ready to send: its URL and signature header computed ahead.
struct Signed {
    url: String,
    header: &'static str,
    value: String,
    bytes: String,
}

/// Signs bodies with the secrets the server reads and addresses them to the instance.
#[derive(Clone)]
struct Signer {
    base: String,
    meta_secret: String,
    bridge_secret: String,
}

impl Signer {
    fn sign(&self, body: Body) -> Signed {
        let (header, value) = if body.bridge {
            (
                "X-Webhook-Signature",
                signature::hmac_hex(self.bridge_secret.as_bytes(), body.bytes.as_bytes()),
            )
        } else {
            (
                "X-Hub-Signature-256",
                format!(
                    "sha256={}",
                    signature::hmac_hex(self.meta_secret.as_bytes(), body.bytes.as_bytes())
                ),
            )
        };
        Signed {
            url: format!("{}{}", self.base, body.path),
            header,
            value,
            bytes: body.bytes,
        }
    }
}

/// The part of the server's answer the summary counts.
#[derive(serde::Deserialize)]
struct Ack {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    errors: u64,
    accepted: u64,
    duplicates: u64,
    latencies_us: Vec<u64>,
}

impl Tally {
    /// Folds one sender task's tally into this one.
    fn add(&mut self, other: Tally) {
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.latencies_us.extend(other.latencies_us);
    }
}

pub(crate) async fn run(args: SendArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.duplicate_ratio) {
        bail!("--duplicate-ratio must be between 0 and 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let meta_shaped = matches!(
        args.sample,
        Sample::Comment | Sample::Message | Sample::Mixed
    );
    if args.account.is_some() && (args.file.is_some() || !meta_shaped) {
        bail!("--account applies to --sample comment, message or mixed (not to --file)");
    }
    if args.quiet_account.is_some() && !matches!(args.sample, Sample::Comment | Sample::Message) {
        bail!(
            "--quiet-account needs the flood to be --sample comment or message: its logs are told apart by its account's integration"
        );
    }
    let account = args
        .account
        .clone()
        .unwrap_or_else(|| hookq_testkit::demo::DEMO_IG_ACCOUNT.to_string());
    let config = Config::from_env()?;
    let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
    let template = match &args.file {
        Some(f) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?)
        }
        None => None,
    };
    let base = args.url.trim_end_matches('/').to_string();
    let signer = Signer {
        base: base.clone(),
        meta_secret: secret(&config.meta_app_secret).unwrap_or_default(),
        bridge_secret: secret(&config.whatsapp_webhook_secret).unwrap_or_default(),
    };
    let run_id = format!("{:x}", rand::rng().random::<u32>());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;
    // A fairness run finds (or creates) both integrations before anything is sent.
    let fairness = match &args.quiet_account {
        Some(quiet) => Some(
            fair::Setup::prepare(
                &client,
                &base,
                &config,
                &account,
                quiet,
                args.create_quiet_integration,
            )
            .await?,
        ),
        None => None,
    };

    let bar = ProgressBar::new(args.count);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} sent  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let wall_start = chrono::Utc::now() - chrono::Duration::seconds(1);
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));

    // Every body is made and signed before the clock starts: the figure is the server's.
    // A duplicate is the very same signed request sent again.
    let bodies: Arc<Vec<Arc<Signed>>> = {
        let mut rng = rand::rng();
        let mut made: Vec<Arc<Signed>> = Vec::with_capacity(args.count as usize);
        for seq in 0..args.count {
            let dup = !made.is_empty() && rng.random::<f64>() < args.duplicate_ratio;
            let signed = if dup {
                made[rng.random_range(0..made.len())].clone()
            } else if let Some(t) = &template {
                Arc::new(
                    signer.sign(Body {
                        path: args.path.clone(),
                        bridge: args.bridge,
                        bytes: t
                            .replace("{{seq}}", &seq.to_string())
                            .replace("{{uuid}}", &uuid::Uuid::new_v4().to_string()),
                    }),
                )
            } else {
                Arc::new(signer.sign(sample_body(
                    kind_for(args.sample, seq),
                    seq,
                    &run_id,
                    &account,
                )))
            };
            made.push(signed);
        }
        Arc::new(made)
    };

    // One task per connection, each taking the next body: the requests are spread over
    // the runtime's threads (a single stream of futures would build and read every
    // request on one thread and make the load generator the bottleneck).
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let quiet = fairness.as_ref().map(|f| {
        f.start_quiet(
            signer.clone(),
            Duration::from_millis(args.quiet_interval_ms.max(1)),
            &run_id,
        )
    });
    let senders: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, bodies, next, bar) = (
                client.clone(),
                Arc::clone(&bodies),
                Arc::clone(&next),
                bar.clone(),
            );
            tokio::spawn(async move {
                let mut t = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = bodies.get(i as usize) else {
                        break;
                    };
                    if let Some(iv) = interval {
                        tokio::time::sleep_until((started + iv * i as u32).into()).await;
                    }
                    let t0 = Instant::now();
                    let res = client
                        .post(&b.url)
                        .header("Content-Type", "application/json")
                        .header(b.header, &b.value)
                        .body(b.bytes.clone())
                        .send()
                        .await;
                    match res {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let ack: Option<Ack> = r.json().await.ok();
                            *t.by_status.entry(status).or_default() += 1;
                            t.latencies_us.push(t0.elapsed().as_micros() as u64);
                            if let Some(a) = ack {
                                t.accepted += a.accepted;
                                t.duplicates += a.duplicates;
                            }
                        }
                        Err(_) => t.errors += 1,
                    }
                    bar.inc(1);
                }
                t
            })
        })
        .collect();
    let mut results = Tally::default();
    for sender in senders {
        results.add(sender.await.context("a sender task failed")?);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let mut t = results;
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if t.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((t.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        t.latencies_us[i] as f64 / 1000.0
    };
    let acked = t.by_status.get(&200).copied().unwrap_or(0);
    let statuses: Vec<String> = t
        .by_status
        .iter()
        .map(|(s, n)| format!("{s}:{n}"))
        .collect();
    println!(
        "sent {} in {:.2}s  acked(200) {}  accepted {}  duplicates {}  statuses [{}]  transport errors {}",
        args.count,
        elapsed.as_secs_f64(),
        acked,
        t.accepted,
        t.duplicates,
        statuses.join(" "),
        t.errors
    );
    println!(
        "acked/s {:.0}  latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        acked as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    let mut summary = format!(
        "send sent={} acked={} accepted={} duplicates={} errors={} acked_per_s={:.0} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        args.count,
        acked,
        t.accepted,
        t.duplicates,
        t.errors,
        acked as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );

    if let (Some(setup), Some(quiet)) = (fairness, quiet) {
        let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
        setup.finish(quiet, t.accepted, deadline).await?;
    }

    if args.wait_processed {
        let token = config
            .admin_token
            .as_ref()
            .context("--wait-processed reads the admin API: set HOOKQ_ADMIN_TOKEN")?
            .expose()
            .to_string();
        let since = wall_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
        let count = |status: &'static str| {
            let client = client.clone();
            let url = format!("{base}/api/webhook-logs");
            let token = token.clone();
            let since = since.clone();
            async move {
                let v: serde_json::Value = client
                    .get(url)
                    .bearer_auth(token)
                    .query(&[
                        ("status", status),
                        ("since", since.as_str()),
                        ("limit", "1"),
                    ])
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok::<u64, anyhow::Error>(v["total"].as_u64().unwrap_or(0))
            }
        };
        let wait_bar = ProgressBar::new(t.accepted);
        wait_bar.set_style(
            ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} processed")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        // Poll what is still unfinished, not what is finished: each poll counts rows, and
        // the backlog shrinks to nothing as the end nears, where polls must be frequent
        // for an exact end time. Counting the finished rows instead made the measuring
        // cost grow with the run (tens of thousands of index entries checked 40 times a
        // second) and took Postgres CPU from the workers being measured.
        const UNFINISHED: [&str; 3] = ["pending", "processing", "failed"];
        loop {
            let mut unfinished = 0;
            for status in UNFINISHED {
                unfinished += count(status).await?;
            }
            wait_bar.set_position(t.accepted.saturating_sub(unfinished));
            if unfinished == 0 {
                break;
            }
            if Instant::now() > deadline {
                wait_bar.finish_and_clear();
                bail!(
                    "timed out: {unfinished} of {} accepted still unfinished",
                    t.accepted
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e2e = started.elapsed();
        let (processed, dead) = (count("processed").await?, count("dead_letter").await?);
        wait_bar.finish_and_clear();
        println!(
            "processed {processed}  dead_letter {dead}  in {:.2}s from the first send: e2e/s {:.0}",
            e2e.as_secs_f64(),
            processed as f64 / e2e.as_secs_f64()
        );
        summary.push_str(&format!(
            " processed={processed} dead_letter={dead} e2e_per_s={:.0}",
            processed as f64 / e2e.as_secs_f64()
        ));
    }
    println!("{summary}");
    Ok(())
}
