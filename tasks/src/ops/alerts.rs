//! Alerts (contract section 12): with `HOOKQ_ALERT_URL` set, hookq tells the operator
//! when `queue.stalled` (the oldest ready job older than `HOOKQ_ALERT_QUEUE_AGE`),
//! `dead_letters.rising` (more than `HOOKQ_ALERT_DEAD_LETTERS` logs dead-lettered in 5
//! minutes) or `integration.delivery_disabled` (hookq switched an integration's delivery
//! off: its endpoint answered 410, or failed every attempt for
//! `HOOKQ_DISABLE_DELIVERY_AFTER`; see `hookq_core::delivery::store`) starts, and again
//! when it clears.
//!
//! How: a periodic job ([`CheckAlerts`], every 15 s, once per tick across every process
//! and host) reads the three conditions and hands them to `hookq_core::alerts::apply`,
//! whose conditional writes make each start and each clear happen once; every transition
//! it returns is enqueued, in the same transaction, as a [`SendAlert`] job, which POSTs
//! the event signed per Standard Webhooks and is retried like any job. So an event is
//! neither lost (it commits with its transition) nor sent twice by two evaluators, and a
//! condition that stays true sends nothing more (no storm). Alert jobs run at a high
//! priority. What this cannot report: a queue so stuck that no worker claims even these
//! jobs; `deploy/prometheus/hookq-rules.yml`'s `HookqQueueStalled` reads the same age from
//! the API's `/metrics` for that.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use hookq_core::alerts::{self, Active, Transition};

use crate::{
    outbound::alert::AlertSender,
    queue::{self, EnqueueOptions, Job, JobError, Notifier, QueueError, Workers},
};

/// Every 15 seconds (six fields: seconds first).
pub const SCHEDULE: &str = "*/15 * * * * *";

/// The window `dead_letters.rising` counts over.
pub const DEAD_LETTER_WINDOW: Duration = Duration::from_secs(300);

/// The periodic evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckAlerts {}

impl Job for CheckAlerts {
    const NAME: &'static str = "check_alerts";
}

/// One event to `HOOKQ_ALERT_URL`: its `webhook-id` and its body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendAlert {
    /// `webhook-id`: the same on every retry of this event, so receivers can dedupe.
    pub id: String,
    /// The event, as sent.
    pub body: Value,
}

impl Job for SendAlert {
    const NAME: &'static str = "send_alert";
}

/// The thresholds of the conditions.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// `HOOKQ_ALERT_DEAD_LETTERS`.
    pub dead_letters: u32,
    /// `HOOKQ_ALERT_QUEUE_AGE`.
    pub queue_age: Duration,
}

/// Reads the conditions, applies their transitions and enqueues one [`SendAlert`] per
/// transition, in one transaction; returns the transitions.
pub async fn evaluate(
    pool: &PgPool,
    thresholds: Thresholds,
    notifier: Option<&Notifier>,
) -> Result<Vec<Transition>, crate::Error> {
    let stats = queue::queue_stats(pool).await?;
    let stalled: Vec<Active> = stats
        .oldest_pending_age_secs
        .filter(|age| *age > thresholds.queue_age.as_secs_f64())
        .map(|age| Active {
            key: "queue.stalled".into(),
            detail: json!({
                "oldest_ready_age_s": age.round(),
                "ready_jobs": stats.depth,
                "threshold_s": thresholds.queue_age.as_secs(),
            }),
        })
        .into_iter()
        .collect();
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_logs
         WHERE status = 'dead_letter' AND processed_at > now() - make_interval(secs => $1)",
    )
    .bind(DEAD_LETTER_WINDOW.as_secs_f64())
    .fetch_one(pool)
    .await?;
    let rising: Vec<Active> = (dead > i64::from(thresholds.dead_letters))
        .then(|| Active {
            key: "dead_letters.rising".into(),
            detail: json!({
                "dead_letters": dead,
                "window_s": DEAD_LETTER_WINDOW.as_secs(),
                "threshold": thresholds.dead_letters,
            }),
        })
        .into_iter()
        .collect();
    let disabled: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, platform, account_id, delivery_disabled_reason FROM integrations
         WHERE NOT delivery_enabled AND delivery_disabled_reason IS NOT NULL
         ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let disabled: Vec<Active> = disabled
        .into_iter()
        .map(|(id, platform, account_id, reason)| Active {
            key: format!("integration.delivery_disabled:{id}"),
            detail: json!({
                "integration_id": id,
                "platform": platform,
                "account_id": account_id,
                "reason": reason,
            }),
        })
        .collect();

    let mut tx = pool.begin().await?;
    let mut made = Vec::new();
    for (kind, active) in [
        ("queue.stalled", stalled),
        ("dead_letters.rising", rising),
        ("integration.delivery_disabled", disabled),
    ] {
        made.extend(alerts::apply(&mut tx, kind, &active).await?);
    }
    let opts = EnqueueOptions {
        priority: 100,
        max_attempts: Some(10),
        ..EnqueueOptions::default()
    };
    for t in &made {
        queue::enqueue(&mut tx, &event(t), &opts).await?;
    }
    tx.commit().await?;
    if !made.is_empty()
        && let Some(n) = notifier
    {
        n.kick();
    }
    for t in &made {
        tracing::warn!(alert = %t.key, started = t.started, "alert condition changed");
    }
    Ok(made)
}

/// The event of a transition: `{type, timestamp, data: {state, key, ...detail}}`.
pub fn event(t: &Transition) -> SendAlert {
    let state = if t.started { "started" } else { "cleared" };
    let mut data = json!({"state": state, "key": t.key});
    if let (Some(d), Some(extra)) = (data.as_object_mut(), t.detail.as_object()) {
        for (k, v) in extra {
            d.entry(k.clone()).or_insert(v.clone());
        }
    }
    SendAlert {
        id: format!("alert_{}_{}_{}", t.key, state, t.at),
        body: json!({"type": t.kind, "timestamp": t.at, "data": data}),
    }
}

/// Registers both jobs and the 15-second evaluation; nothing without `HOOKQ_ALERT_URL`.
pub fn register(
    workers: &mut Workers,
    pool: &PgPool,
    sender: Option<AlertSender>,
    thresholds: Thresholds,
    notifier: Notifier,
) -> Result<(), QueueError> {
    let Some(sender) = sender else {
        return Ok(());
    };
    workers.register(move |job: SendAlert, _ctx| {
        let sender = sender.clone();
        async move {
            let body = serde_json::to_vec(&job.body).map_err(JobError::permanent)?;
            sender
                .send(&job.id, &body)
                .await
                .map_err(|e| match e.kind() {
                    hookq_core::error::FailureKind::Permanent => JobError::permanent(e),
                    _ => JobError::retry(e),
                })
        }
    });
    let pool = pool.clone();
    workers.register(move |_job: CheckAlerts, _ctx| {
        let pool = pool.clone();
        let notifier = notifier.clone();
        async move {
            evaluate(&pool, thresholds, Some(&notifier))
                .await
                .map(|made| made.len())
                .map_err(JobError::retry)
        }
    });
    workers.periodic(CheckAlerts::NAME, SCHEDULE, || CheckAlerts {})
}
