//! The batching writer behind [`Ingestor`](super::Ingestor): group commit for intake.
//!
//! Requests queue on a channel. The writer gathers what is waiting into a batch (up to
//! [`IngestOptions::max_batch_events`]), takes one of [`IngestOptions::max_in_flight`]
//! commit slots (gathering more while every slot is busy) and writes the batch with ONE
//! statement in its own implicit transaction: the logs, a `process_webhook` job for each
//! new one and the log's `job_id`, committed with the session's synchronous commit.
//! Only when that statement has returned (so the commit is durable) is each request
//! answered, and the workers kicked once for the whole batch. A failed statement stores
//! nothing and fails every request of the batch with its error.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use hookq_core::logs::NewLog;
use sqlx::PgPool;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};

use super::{IngestOptions, Ingested};
use crate::{
    error::Error,
    jobs::ProcessWebhook,
    queue::{DEFAULT_MAX_ATTEMPTS, Job, Notifier},
};

/// One `ingest` call waiting for its batch.
pub(super) struct Request {
    pub logs: Vec<NewLog>,
    pub correlation_id: Option<String>,
    pub reply: oneshot::Sender<Result<Ingested, Error>>,
}

/// Tries of a batch that lost a deadlock (two in-flight batches inserting the same
/// dedup keys in opposite orders): Postgres rolled it back whole, so trying again is
/// safe, and the callers should not pay for a race among themselves.
const DEADLOCK_TRIES: usize = 3;

/// Logs, their jobs and the `job_id` link in one statement: one round trip and one
/// commit per batch. The job ids are drawn from the queue's identity sequence while the
/// logs are inserted (a data-modifying CTE cannot update rows another one inserted in
/// the same statement), so the job insert only has to reuse them; a dedup-key conflict
/// burns its drawn id, which is harmless. A key already stored bumps `duplicate_count`
/// once, plus once per later request of the batch that repeated it (`extra`), as
/// separate transactions would have.
const INSERT_BATCH: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
        $12::text[], $13::bool[], $14::timestamptz[], $15::text[], $16::text[], $17::int4[])
        WITH ORDINALITY AS t(dedup_key, source, event_type, handling, account_id,
            user_external_id, persona_external_id, post_external_id, item_id, sender_id,
            sender_name, message_text, is_own, occurred_at, payload, correlation_id, extra, ord)
), logs AS (
    INSERT INTO webhook_logs (dedup_key, source, event_type, handling, account_id,
        user_external_id, persona_external_id, post_external_id, item_id, sender_id,
        sender_name, message_text, is_own, occurred_at, payload, correlation_id,
        duplicate_count, job_id)
    SELECT dedup_key, source, event_type, handling, account_id, user_external_id,
        persona_external_id, post_external_id, item_id, sender_id, sender_name,
        message_text, is_own, occurred_at, payload::jsonb, correlation_id, extra,
        nextval((SELECT pg_get_serial_sequence('queue_jobs', 'id'))::regclass)
    FROM input
    ORDER BY ord
    ON CONFLICT (dedup_key) DO UPDATE
        SET duplicate_count = webhook_logs.duplicate_count + 1 + EXCLUDED.duplicate_count,
            updated_at = now()
    RETURNING id, dedup_key, job_id, (xmax = 0) AS inserted
), jobs AS (
    INSERT INTO queue_jobs (id, task_name, payload, max_attempts) OVERRIDING SYSTEM VALUE
    SELECT job_id, $18, jsonb_build_object('log_id', id), $19
    FROM logs
    WHERE inserted
    ORDER BY id
)
SELECT id, dedup_key, inserted FROM logs
"#;

/// Gathers requests into batches and hands each to a flush task; ends when every
/// [`Ingestor`](super::Ingestor) is dropped, after flushing what it holds.
pub(super) async fn run(
    mut rx: mpsc::Receiver<Request>,
    pool: PgPool,
    notifier: Notifier,
    opts: IngestOptions,
) {
    let in_flight = opts.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(in_flight));
    let max = opts.max_batch_events.max(1);
    let mut carry: Option<Request> = None;
    let mut open = true;
    while open || carry.is_some() {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let mut batch = Batch::new(first);

        // Wait for a commit slot; requests arriving meanwhile join this batch.
        let permit = loop {
            if batch.events >= max || carry.is_some() || !open {
                break acquire(&slots).await;
            }
            tokio::select! {
                biased;
                permit = acquire(&slots) => break permit,
                next = rx.recv() => match next {
                    Some(r) => batch.add_or_carry(r, max, &mut carry),
                    None => open = false,
                },
            }
        };
        let Some(permit) = permit else { break };

        // Take what is already queued; while another batch is committing, linger a
        // little for more (its commit would make ours wait for the WAL anyway).
        let others_busy = slots.available_permits() + 1 < in_flight;
        let deadline = Instant::now()
            + if others_busy {
                opts.linger
            } else {
                Duration::ZERO
            };
        while open && carry.is_none() && batch.events < max {
            match rx.try_recv() {
                Ok(r) => batch.add_or_carry(r, max, &mut carry),
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(r) => batch.add_or_carry(r, max, &mut carry),
                            None => open = false,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
        }

        let pool = pool.clone();
        let notifier = notifier.clone();
        tokio::spawn(async move {
            flush(&pool, &notifier, batch.requests).await;
            drop(permit);
        });
    }
}

async fn acquire(slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    Arc::clone(slots).acquire_owned().await.ok()
}

struct Batch {
    requests: Vec<Request>,
    events: usize,
}

impl Batch {
    fn new(first: Request) -> Self {
        Batch {
            events: first.logs.len(),
            requests: vec![first],
        }
    }

    /// Adds `r` unless it would push the batch over `max`; then it starts the next one.
    fn add_or_carry(&mut self, r: Request, max: usize, carry: &mut Option<Request>) {
        if self.events + r.logs.len() > max {
            *carry = Some(r);
        } else {
            self.events += r.logs.len();
            self.requests.push(r);
        }
    }
}

/// Writes one batch and answers its requests.
async fn flush(pool: &PgPool, notifier: &Notifier, requests: Vec<Request>) {
    let plan = Plan::new(&requests);
    let answers = match plan.write(pool).await {
        Ok(rows) => plan.answers(&rows),
        Err(e) => Err(e),
    };
    match answers {
        Ok(answers) => {
            if answers.iter().any(|a| a.accepted > 0) {
                notifier.kick();
            }
            for (request, answer) in requests.into_iter().zip(answers) {
                // A caller that went away (client disconnected) needs no answer.
                let _ = request.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, requests = requests.len(), "ingest batch failed; nothing of it is stored");
            let shared = Arc::new(e);
            for request in requests {
                let _ = request.reply.send(Err(Error::Shared(Arc::clone(&shared))));
            }
        }
    }
}

/// A batch laid out for the statement: each dedup key once, in arrival order, and for
/// each request the unique row each of its events maps to.
struct Plan<'a> {
    unique: Vec<(&'a NewLog, Option<&'a str>)>,
    /// Per unique key: later requests of this batch that repeated it.
    extra: Vec<i32>,
    slots: Vec<Vec<usize>>,
}

impl<'a> Plan<'a> {
    fn new(requests: &'a [Request]) -> Self {
        let mut index: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut unique = Vec::new();
        let mut extra = Vec::new();
        let slots = requests
            .iter()
            .enumerate()
            .map(|(r, req)| {
                req.logs
                    .iter()
                    .map(|log| match index.entry(log.dedup_key.as_str()) {
                        Entry::Occupied(mut o) => {
                            let (u, last) = o.get_mut();
                            // A repeat inside one request is a duplicate of its first
                            // occurrence (no bump); another request is another delivery.
                            if *last != r {
                                extra[*u] += 1;
                                *last = r;
                            }
                            *u
                        }
                        Entry::Vacant(v) => {
                            v.insert((unique.len(), r));
                            unique.push((log, req.correlation_id.as_deref()));
                            extra.push(0);
                            unique.len() - 1
                        }
                    })
                    .collect()
            })
            .collect();
        Plan {
            unique,
            extra,
            slots,
        }
    }

    async fn write(&self, pool: &PgPool) -> Result<Vec<(i64, String, bool)>, Error> {
        let n = self.unique.len();
        let text = |f: fn(&NewLog) -> &str| -> Vec<&str> {
            self.unique.iter().map(|(l, _)| f(l)).collect()
        };
        let opt = |f: fn(&NewLog) -> Option<&str>| -> Vec<Option<&str>> {
            self.unique.iter().map(|(l, _)| f(l)).collect()
        };
        let dedup_key = text(|l| &l.dedup_key);
        let source = text(|l| l.source);
        let event_type = text(|l| &l.event_type);
        let handling = text(|l| l.handling);
        let account = opt(|l| l.account_id.as_deref());
        let user = opt(|l| l.user_external_id.as_deref());
        let persona = opt(|l| l.persona_external_id.as_deref());
        let post = opt(|l| l.post_external_id.as_deref());
        let item = opt(|l| l.item_id.as_deref());
        let sender = opt(|l| l.sender_id.as_deref());
        let sender_name = opt(|l| l.sender_name.as_deref());
        let text_col = opt(|l| l.message_text.as_deref());
        let is_own: Vec<bool> = self.unique.iter().map(|(l, _)| l.is_own).collect();
        let occurred: Vec<Option<DateTime<Utc>>> =
            self.unique.iter().map(|(l, _)| l.occurred_at).collect();
        let payload = text(|l| &l.payload);
        let correlation: Vec<Option<&str>> = self.unique.iter().map(|(_, c)| *c).collect();
        debug_assert_eq!(payload.len(), n);

        let mut tries = 0;
        loop {
            tries += 1;
            let result = sqlx::query_as(INSERT_BATCH)
                .bind(&dedup_key)
                .bind(&source)
                .bind(&event_type)
                .bind(&handling)
                .bind(&account)
                .bind(&user)
                .bind(&persona)
                .bind(&post)
                .bind(&item)
                .bind(&sender)
                .bind(&sender_name)
                .bind(&text_col)
                .bind(&is_own)
                .bind(&occurred)
                .bind(&payload)
                .bind(&correlation)
                .bind(&self.extra)
                .bind(ProcessWebhook::NAME)
                .bind(DEFAULT_MAX_ATTEMPTS)
                // Drains the exchange up to ReadyForQuery, i.e. past the implicit commit.
                .fetch_all(pool)
                .await;
            match result {
                Err(sqlx::Error::Database(d))
                    if d.code().as_deref() == Some("40P01") && tries < DEADLOCK_TRIES =>
                {
                    tracing::debug!("ingest batch lost a deadlock; writing it again");
                }
                other => return other.map_err(Error::from),
            }
        }
    }

    /// Each request's answer, as if it had been its own transaction in batch order: the
    /// first occurrence of a key this statement inserted is new, every other one a
    /// duplicate of it.
    fn answers(&self, rows: &[(i64, String, bool)]) -> Result<Vec<Ingested>, Error> {
        let by_key: HashMap<&str, (i64, bool)> = rows
            .iter()
            .map(|(id, key, inserted)| (key.as_str(), (*id, *inserted)))
            .collect();
        let resolved = self
            .unique
            .iter()
            .map(|(l, _)| {
                by_key.get(l.dedup_key.as_str()).copied().ok_or_else(|| {
                    Error::Core(hookq_core::Error::Invalid(format!(
                        "no row returned for {}",
                        l.dedup_key
                    )))
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut claimed = vec![false; resolved.len()];
        Ok(self
            .slots
            .iter()
            .map(|slots| {
                let mut accepted = 0;
                let ids = slots
                    .iter()
                    .map(|&u| {
                        let (id, inserted) = resolved[u];
                        if inserted && !claimed[u] {
                            accepted += 1;
                        }
                        claimed[u] = true;
                        id
                    })
                    .collect::<Vec<_>>();
                Ingested {
                    accepted,
                    duplicates: ids.len() - accepted,
                    ids,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    //! The batch's own semantics, driven through [`flush`] with hand-made batches so the
    //! grouping under test is exact rather than whatever timing produced.

    use hookq_testkit::fresh_db;

    use super::*;

    fn log(key: &str) -> NewLog {
        NewLog {
            dedup_key: key.to_owned(),
            source: "instagram",
            event_type: "comment".into(),
            handling: "reply",
            account_id: None,
            user_external_id: Some("user_123".into()),
            persona_external_id: None,
            post_external_id: None,
            item_id: Some(key.to_owned()),
            sender_id: None,
            sender_name: None,
            message_text: Some("hi".into()),
            is_own: false,
            occurred_at: None,
            payload: format!(r#"{{"key": "{key}"}}"#),
        }
    }

    fn request(keys: &[&str]) -> (Request, oneshot::Receiver<Result<Ingested, Error>>) {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            logs: keys.iter().map(|k| log(k)).collect(),
            correlation_id: Some(format!("req-{}", keys.join("-"))),
            reply,
        };
        (request, rx)
    }

    async fn id_of(pool: &PgPool, key: &str) -> (i64, i32) {
        sqlx::query_as("SELECT id, duplicate_count FROM webhook_logs WHERE dedup_key = $1")
            .bind(key)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn duplicates_across_requests_of_one_batch_behave_like_separate_transactions() {
        let db = fresh_db().await;
        let notifier = Notifier::spawn(db.pool.clone());
        // k0 is stored before the batch.
        let (first, first_rx) = request(&["k0"]);
        flush(&db.pool, &notifier, vec![first]).await;
        let before = first_rx.await.unwrap().unwrap();
        assert_eq!((before.accepted, before.duplicates), (1, 0));

        let (a, a_rx) = request(&["k1", "k2", "k1"]);
        let (b, b_rx) = request(&["k2", "k3"]);
        let (c, c_rx) = request(&["k1"]);
        let (d, d_rx) = request(&["k0"]);
        flush(&db.pool, &notifier, vec![a, b, c, d]).await;
        let (a, b, c, d) = (
            a_rx.await.unwrap().unwrap(),
            b_rx.await.unwrap().unwrap(),
            c_rx.await.unwrap().unwrap(),
            d_rx.await.unwrap().unwrap(),
        );
        let (k0, k1, k2, k3) = (
            id_of(&db.pool, "k0").await,
            id_of(&db.pool, "k1").await,
            id_of(&db.pool, "k2").await,
            id_of(&db.pool, "k3").await,
        );
        // The first request to name a key stores it; later ones see a duplicate.
        assert_eq!(a.ids, vec![k1.0, k2.0, k1.0]);
        assert_eq!((a.accepted, a.duplicates), (2, 1));
        assert_eq!(b.ids, vec![k2.0, k3.0]);
        assert_eq!((b.accepted, b.duplicates), (1, 1));
        assert_eq!(c.ids, vec![k1.0]);
        assert_eq!((c.accepted, c.duplicates), (0, 1));
        assert_eq!(d.ids, vec![k0.0]);
        assert_eq!((d.accepted, d.duplicates), (0, 1));
        assert_eq!(before.ids, vec![k0.0]);
        // One bump per other request that repeated the key, none for a repeat inside a
        // body: what one transaction per request records.
        assert_eq!((k0.1, k1.1, k2.1, k3.1), (1, 1, 1, 0));

        // Exactly one job per stored log, linked both ways.
        let linked: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT l.id, (j.payload->>'log_id')::bigint, j.task_name
             FROM webhook_logs l JOIN queue_jobs j ON j.id = l.job_id ORDER BY l.id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(linked.len(), 4);
        for (log_id, payload_log_id, task) in linked {
            assert_eq!(log_id, payload_log_id);
            assert_eq!(task, ProcessWebhook::NAME);
        }
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(jobs, 4);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_request_and_stores_nothing() {
        let db = fresh_db().await;
        let notifier = Notifier::spawn(db.pool.clone());
        sqlx::query("ALTER TABLE queue_jobs ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
            .execute(&db.pool)
            .await
            .unwrap();
        let (a, a_rx) = request(&["f1"]);
        let (b, b_rx) = request(&["f2", "f3"]);
        let (c, c_rx) = request(&["f1"]);
        flush(&db.pool, &notifier, vec![a, b, c]).await;
        let errors: Vec<Error> = vec![
            a_rx.await.unwrap().unwrap_err(),
            b_rx.await.unwrap().unwrap_err(),
            c_rx.await.unwrap().unwrap_err(),
        ];
        let Error::Shared(first) = &errors[0] else {
            panic!("expected the batch's shared error, got {:?}", errors[0]);
        };
        for e in &errors {
            // 503: the sender retries.
            assert!(e.is_unavailable(), "{e}");
            let Error::Shared(shared) = e else {
                panic!("expected the batch's shared error, got {e:?}");
            };
            assert!(Arc::ptr_eq(first, shared), "one batch, one error");
        }
        let (logs, jobs): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_logs), (SELECT count(*) FROM queue_jobs)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!((logs, jobs), (0, 0));
    }
}
