//! `hookq send --quiet-account`: contract section 10's fairness figure, measured from the
//! outside of a running instance.
//!
//! The main stream of `hookq send` is the flood: `--count` Meta-shape events for one
//! account (integration A). Alongside it a quiet stream sends one comment every
//! `--quiet-interval-ms` to another account (integration B), each on its own connection
//! and without waiting for the previous answer, from the flood's first request until the
//! flood is processed. Then both accounts' logs are read back through the admin API
//! (`GET /api/webhook-logs?integration_id=…`, every page) and the figures come from the
//! server's own timestamps, not from polling:
//!
//! - `flood`: A's logs that reached `processed`; `flood_per_s` = that ÷ (A's last
//!   `processed_at` − A's first `received_at`);
//! - `quiet_p50_ms`, `quiet_p99_ms`, `quiet_max_ms`: `processed_at − received_at` of B's
//!   processed logs received during A's drain, i.e. between A's first `received_at` and
//!   its last `processed_at` (B's events outside it are left out).
//!
//! A log's `integration_id` is written when it finishes, so a pending event is not yet
//! told apart by integration. The end of the drain is therefore found in two steps: every
//! 50 ms the unfinished logs of the run are counted (as `--wait-processed` does); once
//! there are no more of them than quiet events sent so far (A's backlog may be gone),
//! A's finished logs are counted too, and the drain is over when they are all of A's
//! accepted events.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use hookq_core::config::Config;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, de::DeserializeOwned};
use tokio::{sync::watch, task::JoinSet};
use uuid::Uuid;

use super::{Ack, Sample, Signer, sample_body};

/// The admin API's largest page.
const PAGE: u64 = 500;
/// Statuses of a log not yet finished (a `failed` log waits for its retry).
const UNFINISHED: [&str; 3] = ["pending", "processing", "failed"];

/// The admin API, with the bearer token.
struct Admin {
    client: reqwest::Client,
    base: String,
    token: String,
}

/// A page of any admin list.
#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
    total: u64,
}

/// The fields of an integration this needs.
#[derive(Debug, Clone, Deserialize)]
struct Integration {
    id: Uuid,
    user_id: Uuid,
    platform: String,
    account_id: String,
    default_persona_id: Option<Uuid>,
}

/// The fields of a log the figures are made of.
#[derive(Debug, Clone, Deserialize)]
struct LogTimes {
    status: String,
    received_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

/// Fails with the answer's status and body when it is not a success.
async fn checked(res: reqwest::Response, what: &str) -> Result<reqwest::Response> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let body = res.text().await.unwrap_or_default();
    bail!("{what}: {status} {body}")
}

impl Admin {
    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        Ok(checked(res, &format!("GET {path}")).await?.json().await?)
    }

    /// The Instagram integration of `account`, if there is one.
    async fn integration(&self, account: &str) -> Result<Option<Integration>> {
        let mut offset = 0;
        loop {
            let page: Page<Integration> = self
                .get(
                    "/api/integrations",
                    &[("limit", PAGE.to_string()), ("offset", offset.to_string())],
                )
                .await?;
            if let Some(i) = page
                .items
                .iter()
                .find(|i| i.platform == "instagram" && i.account_id == account)
            {
                return Ok(Some(i.clone()));
            }
            offset += page.items.len() as u64;
            if page.items.is_empty() || offset >= page.total {
                return Ok(None);
            }
        }
    }

    /// Creates `account`'s Instagram integration for `like`'s user, with its default
    /// persona and no reply delivery.
    async fn create_integration(&self, account: &str, like: &Integration) -> Result<Integration> {
        let body = serde_json::json!({
            "user_id": like.user_id,
            "platform": "instagram",
            "account_id": account,
            "reply_delivery": "none",
            "default_persona_id": like.default_persona_id,
        });
        let res = self
            .client
            .post(format!("{}/api/integrations", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .context("POST /api/integrations")?;
        Ok(checked(res, "POST /api/integrations").await?.json().await?)
    }

    /// How many logs match `filter` (the list's exact `total`).
    async fn count(&self, filter: &[(&str, String)]) -> Result<u64> {
        let mut q = filter.to_vec();
        q.push(("limit", "1".into()));
        Ok(self
            .get::<Page<LogTimes>>("/api/webhook-logs", &q)
            .await?
            .total)
    }

    /// Every log of `integration` received since `since`, page by page.
    async fn logs(&self, integration: Uuid, since: &str) -> Result<Vec<LogTimes>> {
        let mut all = Vec::new();
        loop {
            let page: Page<LogTimes> = self
                .get(
                    "/api/webhook-logs",
                    &[
                        ("integration_id", integration.to_string()),
                        ("since", since.to_string()),
                        ("limit", PAGE.to_string()),
                        ("offset", all.len().to_string()),
                    ],
                )
                .await?;
            let empty = page.items.is_empty();
            all.extend(page.items);
            if empty || all.len() as u64 >= page.total {
                return Ok(all);
            }
        }
    }
}

/// Both integrations, found (or the quiet one created) before anything is sent.
pub(super) struct Setup {
    admin: Admin,
    flood: Integration,
    quiet: Integration,
    /// Logs received from here on are this run's (a second early, as `--wait-processed`).
    since: String,
}

/// The quiet stream, running.
pub(super) struct Quiet {
    stop: watch::Sender<bool>,
    sent: Arc<AtomicU64>,
    interval: Duration,
    task: tokio::task::JoinHandle<QuietTally>,
}

/// What the quiet stream's requests got back.
#[derive(Default)]
struct QuietTally {
    sent: u64,
    acked: u64,
    accepted: u64,
    errors: u64,
    ack_ms: Vec<f64>,
}

impl Setup {
    pub(super) async fn prepare(
        client: &reqwest::Client,
        base: &str,
        config: &Config,
        flood_account: &str,
        quiet_account: &str,
        create: bool,
    ) -> Result<Setup> {
        if flood_account == quiet_account {
            bail!("--quiet-account must differ from the flood's account ({flood_account})");
        }
        let token = config
            .admin_token
            .as_ref()
            .context("--quiet-account reads the admin API: set HOOKQ_ADMIN_TOKEN")?
            .expose()
            .to_string();
        let admin = Admin {
            client: client.clone(),
            base: base.to_string(),
            token,
        };
        let flood = admin.integration(flood_account).await?.with_context(|| {
            format!("the flood's account {flood_account} has no Instagram integration")
        })?;
        let quiet = match admin.integration(quiet_account).await? {
            Some(i) => i,
            None if create => {
                let i = admin.create_integration(quiet_account, &flood).await?;
                eprintln!("created integration {} for account {quiet_account}", i.id);
                i
            }
            None => bail!(
                "the quiet account {quiet_account} has no Instagram integration (--create-quiet-integration creates one)"
            ),
        };
        let since = (Utc::now() - chrono::Duration::seconds(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Ok(Setup {
            admin,
            flood,
            quiet,
            since,
        })
    }

    /// Starts sending one comment every `interval` to the quiet account.
    pub(super) fn start_quiet(&self, signer: Signer, interval: Duration, run_id: &str) -> Quiet {
        let (stop, mut stopped) = watch::channel(false);
        let sent = Arc::new(AtomicU64::new(0));
        let (account, run, counter) = (
            self.quiet.account_id.clone(),
            format!("{run_id}q"),
            Arc::clone(&sent),
        );
        // Its own connections: a quiet request never queues behind the flood's pool.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut inflight = JoinSet::new();
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {
                        let b = signer.sign(sample_body(Sample::Comment, seq, &run, &account));
                        seq += 1;
                        counter.fetch_add(1, Ordering::Relaxed);
                        let client = client.clone();
                        inflight.spawn(async move {
                            let t0 = Instant::now();
                            let res = client
                                .post(&b.url)
                                .header("Content-Type", "application/json")
                                .header(b.header, &b.value)
                                .body(b.bytes)
                                .send()
                                .await;
                            match res {
                                Ok(r) => {
                                    let status = r.status().as_u16();
                                    let ack: Option<Ack> = r.json().await.ok();
                                    Some((status, ack.map_or(0, |a| a.accepted), t0.elapsed()))
                                }
                                Err(_) => None,
                            }
                        });
                    }
                }
            }
            let mut t = QuietTally {
                sent: seq,
                ..QuietTally::default()
            };
            while let Some(r) = inflight.join_next().await {
                match r.ok().flatten() {
                    Some((status, accepted, took)) => {
                        t.acked += u64::from(status == 200);
                        t.accepted += accepted;
                        t.ack_ms.push(took.as_secs_f64() * 1000.0);
                    }
                    None => t.errors += 1,
                }
            }
            t
        });
        Quiet {
            stop,
            sent,
            interval,
            task,
        }
    }

    /// Waits until the flood (`flood_accepted` events) is processed, stops the quiet
    /// stream, waits for its last events, reads both accounts' logs and prints the
    /// figures, the `hookq_fairness` line last.
    pub(super) async fn finish(
        self,
        quiet: Quiet,
        flood_accepted: u64,
        deadline: Instant,
    ) -> Result<()> {
        let since = || ("since", self.since.clone());
        let unfinished = || async {
            let mut n = 0;
            for status in UNFINISHED {
                n += self
                    .admin
                    .count(&[("status", status.into()), since()])
                    .await?;
            }
            Ok::<u64, anyhow::Error>(n)
        };
        let flood_finished = || async {
            let mut n = 0;
            for status in ["processed", "dead_letter"] {
                n += self
                    .admin
                    .count(&[
                        ("status", status.into()),
                        ("integration_id", self.flood.id.to_string()),
                        since(),
                    ])
                    .await?;
            }
            Ok::<u64, anyhow::Error>(n)
        };
        let bar = ProgressBar::new(flood_accepted);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} of the flood processed")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        loop {
            let left = unfinished().await?;
            bar.set_position(flood_accepted.saturating_sub(left));
            // No more unfinished logs than quiet events: the flood may be done.
            if left == 0
                || (left <= quiet.sent.load(Ordering::Relaxed)
                    && flood_finished().await? >= flood_accepted)
            {
                break;
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                bail!("timed out: {left} events still unfinished, the flood's among them");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bar.finish_and_clear();
        let _ = quiet.stop.send(true);
        let tally = quiet.task.await.context("the quiet stream failed")?;
        loop {
            let left = unfinished().await?;
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("timed out: {left} quiet events still unfinished");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let flood_logs = self.admin.logs(self.flood.id, &self.since).await?;
        let quiet_logs = self.admin.logs(self.quiet.id, &self.since).await?;
        let r = Report::new(&flood_logs, &quiet_logs)?;

        let mut ack_ms = tally.ack_ms;
        ack_ms.sort_by(f64::total_cmp);
        println!(
            "flood {}: {} processed, {} not, in {:.2}s from its first receipt to its last processed: {:.0}/s",
            self.flood.account_id,
            r.flood,
            flood_logs.len() as u64 - r.flood,
            r.flood_secs,
            r.flood_per_s
        );
        println!(
            "quiet {}: sent {} (one per {} ms)  acked(200) {}  accepted {}  transport errors {}  ack ms p50 {:.2} max {:.2}",
            self.quiet.account_id,
            tally.sent,
            quiet.interval.as_millis(),
            tally.acked,
            tally.accepted,
            tally.errors,
            percentile(&ack_ms, 0.5),
            percentile(&ack_ms, 1.0)
        );
        println!(
            "quiet {}: {} processed of those received during the flood's drain: received → processed ms p50 {:.2}  p99 {:.2}  max {:.2}",
            self.quiet.account_id, r.quiet, r.quiet_p50_ms, r.quiet_p99_ms, r.quiet_max_ms
        );
        println!("{}", r.line());
        Ok(())
    }
}

/// The `p` quantile (0–1) of sorted values, the nearest rank as in the send summary.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The figures of the `hookq_fairness` line.
#[derive(Debug, PartialEq)]
struct Report {
    flood: u64,
    flood_secs: f64,
    flood_per_s: f64,
    /// Quiet events received during the drain and processed.
    quiet: usize,
    quiet_p50_ms: f64,
    quiet_p99_ms: f64,
    quiet_max_ms: f64,
}

impl Report {
    fn new(flood: &[LogTimes], quiet: &[LogTimes]) -> Result<Report> {
        let done = |l: &LogTimes| {
            l.processed_at
                .filter(|_| l.status == "processed")
                .map(|p| (l.received_at, p))
        };
        let flood_done: Vec<_> = flood.iter().filter_map(done).collect();
        let (Some(first), Some(last)) = (
            flood_done.iter().map(|(r, _)| *r).min(),
            flood_done.iter().map(|(_, p)| *p).max(),
        ) else {
            bail!("no event of the flood was processed");
        };
        let flood_secs = (last - first).as_seconds_f64();
        let mut lat: Vec<f64> = quiet
            .iter()
            .filter_map(done)
            .filter(|(r, _)| (first..=last).contains(r))
            .map(|(r, p)| (p - r).as_seconds_f64() * 1000.0)
            .collect();
        if lat.is_empty() {
            bail!(
                "no quiet event was received during the flood's drain ({flood_secs:.3}s): send a bigger flood or a shorter --quiet-interval-ms"
            );
        }
        lat.sort_by(f64::total_cmp);
        Ok(Report {
            flood: flood_done.len() as u64,
            flood_secs,
            flood_per_s: if flood_secs > 0.0 {
                flood_done.len() as f64 / flood_secs
            } else {
                0.0
            },
            quiet: lat.len(),
            quiet_p50_ms: percentile(&lat, 0.5),
            quiet_p99_ms: percentile(&lat, 0.99),
            quiet_max_ms: percentile(&lat, 1.0),
        })
    }

    /// Contract section 10's line.
    fn line(&self) -> String {
        format!(
            "hookq_fairness flood={} flood_per_s={:.0} quiet_p50_ms={:.2} quiet_p99_ms={:.2} quiet_max_ms={:.2}",
            self.flood, self.flood_per_s, self.quiet_p50_ms, self.quiet_p99_ms, self.quiet_max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn log(status: &str, received: i64, processed: Option<i64>) -> LogTimes {
        LogTimes {
            status: status.into(),
            received_at: at(received),
            processed_at: processed.map(at),
        }
    }

    #[test]
    fn report_counts_the_quiet_events_received_during_the_drain_only() {
        // The flood: received from 0 ms, processed until 2000 ms; one dead-lettered.
        let flood = [
            log("processed", 0, Some(500)),
            log("processed", 10, Some(2000)),
            log("processed", 20, Some(1200)),
            log("dead_letter", 30, None),
        ];
        let quiet = [
            log("processed", -50, Some(5000)), // before the drain: left out
            log("processed", 100, Some(110)),
            log("processed", 200, Some(230)),
            log("processed", 300, Some(1300)),
            log("pending", 400, None), // not processed: left out
            log("processed", 2000, Some(2004)),
            log("processed", 2100, Some(9000)), // after the drain: left out
        ];
        let r = Report::new(&flood, &quiet).unwrap();
        assert_eq!(
            r,
            Report {
                flood: 3,
                flood_secs: 2.0,
                flood_per_s: 1.5,
                quiet: 4,
                quiet_p50_ms: 30.0,
                quiet_p99_ms: 1000.0,
                quiet_max_ms: 1000.0,
            }
        );
        assert_eq!(
            r.line(),
            "hookq_fairness flood=3 flood_per_s=2 quiet_p50_ms=30.00 quiet_p99_ms=1000.00 quiet_max_ms=1000.00"
        );
    }

    #[test]
    fn report_refuses_a_run_without_samples() {
        let flood = [log("processed", 0, Some(50))];
        let e = Report::new(&flood, &[log("processed", 60, Some(70))]).unwrap_err();
        assert!(e.to_string().contains("no quiet event"), "{e}");
        let e = Report::new(&[log("pending", 0, None)], &[]).unwrap_err();
        assert!(e.to_string().contains("no event of the flood"), "{e}");
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
