//! The batching writer behind [`Ingestor`](super::Ingestor): group commit for intake.
//!
//! A [`GroupWriter`](crate::batch::GroupWriter) gathers what is waiting into a batch
//! (up to [`IngestOptions::max_batch_events`]), takes one of
//! [`IngestOptions::max_in_flight`] commit slots (gathering more while every slot is busy)
//! and hands it to [`flush`], which writes the batch with ONE statement in its own
//! implicit transaction: the logs, a `process_webhook` job for each new one and the log's
//! `job_id`, committed with the session's synchronous commit.
//! Only when that statement has returned (so the commit is durable) is each request
//! answered, and the workers kicked once for the whole batch. A failed statement stores
//! nothing and fails every request of the batch with its error: the database was down
//! or restarting, and every sender should retry.
//!
//! Except when the failure is one value's: a *data exception* (SQLSTATE class 22, e.g. a
//! NUL in a string) or a value the driver could not encode belongs to one request, which
//! must not take the others down with it. Such rows are refused before they are queued
//! (see [`Ingestor::ingest`](super::Ingestor::ingest)), but should one slip through, the
//! batch is written again one request at a time, in batch order and with the same
//! statement: the offending request alone gets the error, and every other is stored and
//! answered as its own transaction would have been.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, LazyLock},
};

use super::Ingested;
use crate::{
    error::Error,
    jobs::ProcessWebhook,
    queue::{EnqueueOptions, JobsForRows, Notifier, RowKeys},
};
use chrono::{DateTime, Utc};
use hookq_core::{db::DbFailure, logs::NewLog};
use sqlx::PgPool;

/// One `ingest` call: its events, all stored or none.
pub(super) struct Item {
    pub logs: Vec<NewLog>,
    pub correlation_id: Option<String>,
}

/// Tries of a batch that lost a deadlock: Postgres rolled it back whole, so trying again
/// is safe, and the callers should not pay for a race among themselves. None is expected:
/// concurrent batches take the rows they share in one order (dedup rows by key, then the
/// duplicated logs by id, `bump`). Before that, batches of copies of the same webhooks
/// through four API hosts at once deadlocked until the tries ran out
/// (`copies_through_several_hosts_at_once_store_one_log_per_key`: 3 runs of 5 failed).
const DEADLOCK_TRIES: usize = 3;

/// Logs, their jobs and the `job_id` link in one statement: one round trip and one
/// commit per batch. The job rows are the queue client's ([`JobsForRows`]): each log
/// draws its job's id from the queue's identity sequence while the logs are inserted
/// (a data-modifying CTE cannot update rows another one inserted in the same statement),
/// so the `jobs` CTE only has to reuse them. Which keys are new is decided by
/// `webhook_dedup`, partitioned by month (`migrations/0017_partitioned_logs.sql`
/// says why and how): a key is a duplicate when an earlier month holds it (`prior`), or
/// when writing it into the months of `hookq_dedup_months` (its own, and the previous one
/// around a month's start) meets a row already there (`claims`: a row that keeps its log
/// id is a conflict, the new rows carry this statement's id; the clock is passed in from a
/// subquery so the planner inlines the SQL function instead of planning its body on every
/// call, which it does when an argument is volatile). Each key draws its log id
/// up front; a duplicate burns it, which is harmless. Rows that concurrent batches share
/// are taken in one order, dedup rows by key and then the duplicated logs by id (`bump`,
/// and the same in `count_late_duplicates`), so two batches never deadlock
/// ([`DEADLOCK_TRIES`]). A key already stored bumps its
/// log's `duplicate_count` once, plus once per later request of the batch that repeated
/// it (`extra`), as separate transactions would have. Each job's fair-share group is its log's account
/// ([`group_sql`](hookq_core::logs::group_sql)), worked out once per distinct account of
/// the batch (`groups`): per row, the compact shape's user lookups cost ~150 µs a row,
/// 28 ms of a 192-row batch (auto_explain, `hookq send --sample compact`), and a batch
/// names few accounts. Its order key is the log's conversation. A new log's search text
/// ([`SEARCH_DOC`](hookq_core::logs::SEARCH_DOC)) and its conversation go into
/// `webhook_log_text` here, once: neither changes afterwards.
/// The jobs CTE takes parameters `$19` on ([`JobsForRows::bind`]).
static INSERT_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
WITH given AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
        $12::text[], $13::bool[], $14::timestamptz[], $15::text[], $16::text[], $17::int4[],
        $18::text[])
        WITH ORDINALITY AS t(dedup_key, source, event_type, handling, account_id,
            user_external_id, persona_external_id, post_external_id, item_id, sender_id,
            sender_name, message_text, is_own, occurred_at, payload, correlation_id, extra,
            conversation_key, ord)
), input AS (
    SELECT *, nextval('webhook_logs_id_seq') AS new_id FROM given
), months AS (
    SELECT m FROM (SELECT clock_timestamp() AS at) clock, hookq_dedup_months(now(), clock.at) m
), prior AS (
    SELECT DISTINCT ON (d.dedup_key) d.dedup_key, d.log_id, d.received_at
    FROM webhook_dedup d
    WHERE d.dedup_key IN (SELECT dedup_key FROM input)
      AND d.month < (SELECT min(m) FROM months)
    ORDER BY d.dedup_key, d.month
), claims AS (
    INSERT INTO webhook_dedup AS d (dedup_key, month, log_id, received_at)
    SELECT i.dedup_key, mo.m, i.new_id, now()
    FROM input i CROSS JOIN months mo
    WHERE i.dedup_key NOT IN (SELECT dedup_key FROM prior)
    ORDER BY i.dedup_key, mo.m
    ON CONFLICT (dedup_key, month) DO UPDATE SET log_id = d.log_id
    RETURNING d.dedup_key, d.log_id, d.received_at
), keys AS (
    SELECT c.dedup_key,
        (array_agg(c.log_id ORDER BY c.log_id = i.new_id, c.log_id))[1] AS log_id,
        (array_agg(c.received_at ORDER BY c.log_id = i.new_id, c.log_id))[1] AS received_at,
        bool_and(c.log_id = i.new_id) AS inserted
    FROM claims c JOIN input i ON i.dedup_key = c.dedup_key
    GROUP BY c.dedup_key
    UNION ALL
    SELECT dedup_key, log_id, received_at, false FROM prior
), logs AS (
    INSERT INTO webhook_logs (id, received_at, dedup_key, source, event_type, handling,
        account_id, user_external_id, persona_external_id, post_external_id, item_id,
        sender_id, sender_name, message_text, is_own, occurred_at, payload, correlation_id,
        duplicate_count, conversation_key, job_id)
    OVERRIDING SYSTEM VALUE
    SELECT k.log_id, k.received_at, i.dedup_key, i.source, i.event_type, i.handling,
        i.account_id, i.user_external_id, i.persona_external_id, i.post_external_id,
        i.item_id, i.sender_id, i.sender_name, i.message_text, i.is_own, i.occurred_at,
        i.payload::jsonb, i.correlation_id, i.extra, i.conversation_key, {next_job_id}
    FROM input i JOIN keys k ON k.dedup_key = i.dedup_key
    WHERE k.inserted
    ORDER BY i.ord
    RETURNING id, received_at, dedup_key, job_id, true AS inserted, source, account_id,
        user_external_id, post_external_id, conversation_key, {search_doc} AS search_doc
), bump AS (
    SELECT l.id, l.received_at, 1 + i.extra AS n
    FROM keys k JOIN input i ON i.dedup_key = k.dedup_key
    JOIN webhook_logs l ON l.id = k.log_id AND l.received_at = k.received_at
    WHERE NOT k.inserted
    ORDER BY l.id
    FOR UPDATE OF l
), duplicates AS (
    UPDATE webhook_logs l
    SET duplicate_count = l.duplicate_count + b.n, updated_at = now()
    FROM bump b
    WHERE l.id = b.id AND l.received_at = b.received_at
    RETURNING l.id
), search AS (
    INSERT INTO webhook_log_text (log_id, received_at, doc, conversation_key)
    SELECT id, received_at, search_doc, conversation_key FROM logs
), groups AS (
    SELECT a.*, {group} AS group_key
    FROM (SELECT DISTINCT source, account_id, user_external_id, post_external_id
          FROM logs WHERE inserted) a
), jobs AS (
    {jobs}
)
SELECT log_id AS id, dedup_key, inserted,
    inserted OR EXISTS (SELECT 1 FROM duplicates u WHERE u.id = log_id) AS counted
FROM keys
"#,
        next_job_id = JobsForRows::<ProcessWebhook>::NEXT_JOB_ID,
        search_doc = hookq_core::logs::SEARCH_DOC,
        group = hookq_core::logs::group_sql("a"),
        jobs = JobsForRows::<ProcessWebhook>::insert_sql(
            "logs l JOIN groups g ON g.source = l.source
                AND g.account_id IS NOT DISTINCT FROM l.account_id
                AND g.user_external_id IS NOT DISTINCT FROM l.user_external_id
                AND g.post_external_id IS NOT DISTINCT FROM l.post_external_id
             WHERE l.inserted",
            "l.job_id",
            "l.id",
            19,
            RowKeys {
                group: "g.group_key",
                order: "l.conversation_key",
            }
        ),
    )
});

/// A `process_webhook` job per new log, its payload written by serde from
/// [`ProcessWebhook`] with the log's id in it.
static JOBS: LazyLock<JobsForRows<ProcessWebhook>> = LazyLock::new(|| {
    // Cannot fail: a `ProcessWebhook` is its log id written out (and
    // `a_job_row_written_by_intake_decodes_as_process_webhook` below runs this).
    JobsForRows::new(|log_id| ProcessWebhook { log_id })
        .expect("a ProcessWebhook payload is its log id written out")
});

/// Writes one batch (the [`GroupWriter`](crate::batch::GroupWriter) behind
/// [`Ingestor`](super::Ingestor) gathered it) and kicks the workers once if it stored
/// anything. One answer per request, in order.
pub(super) async fn flush(
    pool: &PgPool,
    notifier: &Notifier,
    requests: &[Item],
    max_attempts: i32,
) -> Vec<Result<Ingested, Error>> {
    let answers = write_batch(pool, requests, max_attempts).await;
    if answers
        .iter()
        .any(|a| a.as_ref().is_ok_and(|a| a.accepted > 0))
    {
        notifier.kick();
    }
    answers
}

/// Each request's answer, in order: the batch as one statement, or, when one value of it
/// was refused, one statement per request.
async fn write_batch(
    pool: &PgPool,
    requests: &[Item],
    max_attempts: i32,
) -> Vec<Result<Ingested, Error>> {
    let plan = Plan::new(requests, max_attempts);
    let e = match plan.run(pool).await {
        Ok(answers) => return answers.into_iter().map(Ok).collect(),
        Err(e) => e,
    };
    match &e {
        Error::Database(db) if requests.len() > 1 && refused_value(db).is_some() => {
            tracing::warn!(
                error = %e,
                requests = requests.len(),
                "ingest batch refused a value; writing its requests one by one"
            );
            one_by_one(pool, requests, max_attempts).await
        }
        _ => {
            if refused_value_of(&e).is_some() {
                // A batch of one: its request alone is refused, as in the fallback.
                tracing::warn!(error = %e, "ingest request refused by the database");
            } else {
                tracing::warn!(error = %e, requests = requests.len(), "ingest batch failed; nothing of it is stored");
            }
            let shared = Arc::new(e);
            requests
                .iter()
                .map(|_| Err(Error::Shared(Arc::clone(&shared))))
                .collect()
        }
    }
}

/// The fallback for a batch the database refused a value of: each request on its own,
/// in batch order, so duplicates across them resolve as they would have in the batch (the
/// first request to name a key stores it, later ones bump its `duplicate_count`). A
/// request whose value is refused again gets that error alone. Any other failure (the
/// database went away meanwhile) ends the fallback: it and every request not yet written
/// get that error, rather than each waiting out its own connection timeout.
async fn one_by_one(
    pool: &PgPool,
    requests: &[Item],
    max_attempts: i32,
) -> Vec<Result<Ingested, Error>> {
    let mut answers = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let plan = Plan::new(std::slice::from_ref(request), max_attempts);
        match plan.run(pool).await {
            Ok(mut one) => answers.push(Ok(one.remove(0))),
            Err(e) if refused_value_of(&e).is_some() => {
                tracing::warn!(error = %e, "ingest request refused by the database; the rest of its batch is unaffected");
                answers.push(Err(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = requests.len() - i, "ingest failed while writing a batch one by one; the rest of it is not stored");
                let shared = Arc::new(e);
                answers.extend(
                    requests[i..]
                        .iter()
                        .map(|_| Err(Error::Shared(Arc::clone(&shared)))),
                );
                break;
            }
        }
    }
    answers
}

/// What the database (or the driver, encoding it) refused of one row's values, if that
/// is why `e` happened ([`classify`](hookq_core::db::classify)'s `Refused`): SQLSTATE class
/// 22, "data exception" (`22021` a NUL in `text`, `22P05` one in `jsonb`, `22008` a
/// timestamp out of range...), class 54 (a key over an index's limit), or an encode error.
/// Either belongs to the row, not to the batch, and retrying the same row cannot help.
pub(super) fn refused_value(e: &sqlx::Error) -> Option<String> {
    match hookq_core::db::classify(e) {
        DbFailure::Refused(why) => Some(why),
        _ => None,
    }
}

fn refused_value_of(e: &Error) -> Option<String> {
    match e {
        Error::Database(db) => refused_value(db),
        _ => None,
    }
}

/// A batch laid out for the statement: each dedup key once, in arrival order, and for
/// each request the unique row each of its events maps to.
struct Plan<'a> {
    unique: Vec<(&'a NewLog, Option<&'a str>)>,
    /// Per unique key: later requests of this batch that repeated it.
    extra: Vec<i32>,
    slots: Vec<Vec<usize>>,
    /// How each new job is enqueued: with `HOOKQ_MAX_ATTEMPTS` runs, stored on its row.
    jobs: EnqueueOptions,
}

impl<'a> Plan<'a> {
    fn new(requests: &'a [Item], max_attempts: i32) -> Self {
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
            jobs: EnqueueOptions {
                max_attempts: Some(max_attempts),
                ..EnqueueOptions::default()
            },
        }
    }

    /// Writes the plan and returns each request's answer.
    async fn run(&self, pool: &PgPool) -> Result<Vec<Ingested>, Error> {
        let rows = self.write(pool).await?;
        self.count_late_duplicates(pool, &rows).await?;
        let rows: Vec<(i64, String, bool)> = rows
            .into_iter()
            .map(|(id, key, inserted, _)| (id, key, inserted))
            .collect();
        self.answers(&rows)
    }

    /// Bumps `duplicate_count` for the duplicates the batch statement could not: a key
    /// whose first log another batch committed while this statement waited on its dedup
    /// row (the log is not in this statement's snapshot, so its UPDATE found nothing).
    /// Rare (two copies of one webhook in flight at once); a second statement, which
    /// sees the committed log.
    async fn count_late_duplicates(
        &self,
        pool: &PgPool,
        rows: &[(i64, String, bool, bool)],
    ) -> Result<(), Error> {
        let extra: HashMap<&str, i32> = self
            .unique
            .iter()
            .zip(&self.extra)
            .map(|((l, _), e)| (l.dedup_key.as_str(), *e))
            .collect();
        let (ids, counts): (Vec<i64>, Vec<i32>) = rows
            .iter()
            .filter(|r| !r.3)
            .map(|r| (r.0, 1 + extra.get(r.1.as_str()).copied().unwrap_or(0)))
            .unzip();
        if ids.is_empty() {
            return Ok(());
        }
        // The logs locked in id order first, as the batch statement's `bump` does, so
        // this never deadlocks with another batch's bump.
        sqlx::query(
            "WITH bump AS (
                 SELECT l.id, l.received_at, t.n
                 FROM unnest($1::bigint[], $2::int4[]) AS t(id, n)
                 JOIN webhook_logs l ON l.id = t.id
                 ORDER BY l.id
                 FOR UPDATE OF l)
             UPDATE webhook_logs l
             SET duplicate_count = l.duplicate_count + b.n, updated_at = now()
             FROM bump b WHERE l.id = b.id AND l.received_at = b.received_at",
        )
        .bind(&ids)
        .bind(&counts)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn write(&self, pool: &PgPool) -> Result<Vec<(i64, String, bool, bool)>, Error> {
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
        let conversation = opt(|l| l.conversation_key.as_deref());
        debug_assert_eq!(payload.len(), n);

        let mut tries = 0;
        loop {
            tries += 1;
            let query = sqlx::query_as(INSERT_BATCH.as_str())
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
                .bind(&conversation);
            let result = JOBS
                .bind(query, &self.jobs)?
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
                // Cannot happen (ON CONFLICT DO UPDATE returns every row); should it, the
                // exchange with the database is what went wrong, so the sender is told to
                // retry (`Invalid` would mean the request's content was refused).
                by_key.get(l.dedup_key.as_str()).copied().ok_or_else(|| {
                    Error::Database(sqlx::Error::Protocol(format!(
                        "the ingest statement returned no row for {}",
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
    use crate::queue::{self, Job, JobContext, JobStatus, WorkerOptions, Workers};

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
            conversation_key: None,
        }
    }

    fn request(keys: &[&str]) -> Item {
        Item {
            logs: keys.iter().map(|k| log(k)).collect(),
            correlation_id: Some(format!("req-{}", keys.join("-"))),
        }
    }

    /// [`flush`]'s answers, one per request.
    async fn answers<const N: usize>(
        pool: &PgPool,
        notifier: &Notifier,
        requests: [Item; N],
    ) -> [Result<Ingested, Error>; N] {
        let answers = flush(pool, notifier, &requests, 3).await;
        answers
            .try_into()
            .unwrap_or_else(|a: Vec<_>| panic!("{} answers for {N} requests", a.len()))
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
        let [before] = answers(&db.pool, &notifier, [request(&["k0"])]).await;
        let before = before.unwrap();
        assert_eq!((before.accepted, before.duplicates), (1, 0));

        let [a, b, c, d] = answers(
            &db.pool,
            &notifier,
            [
                request(&["k1", "k2", "k1"]),
                request(&["k2", "k3"]),
                request(&["k1"]),
                request(&["k0"]),
            ],
        )
        .await;
        let (a, b, c, d) = (a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap());
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

    /// Intake writes its job rows through the queue client ([`JobsForRows`]), never by
    /// hand: each new log's job row decodes, through serde, as the `ProcessWebhook` of that
    /// log, carries the options intake gave it, and runs as one.
    #[tokio::test]
    async fn a_job_row_written_by_intake_decodes_as_process_webhook() {
        let db = fresh_db().await;
        let notifier = Notifier::spawn(db.pool.clone());
        let answers = flush(
            &db.pool,
            &notifier,
            &[request(&["j1", "j2"]), request(&["j3", "j1"])],
            5,
        )
        .await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");

        let rows: Vec<(i64, i64, String, String, i32)> = sqlx::query_as(
            "SELECT l.id, j.id, j.task_name, j.payload::text, j.max_attempts
             FROM webhook_logs l JOIN queue_jobs j ON j.id = l.job_id ORDER BY l.id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 3, "one job per new log: {rows:?}");
        let mut log_ids = Vec::new();
        for (log_id, job_id, task, payload, max_attempts) in rows {
            let job: ProcessWebhook = serde_json::from_str(&payload).unwrap();
            assert_eq!(job, ProcessWebhook { log_id }, "{payload}");
            assert_eq!(task, ProcessWebhook::NAME);
            assert_eq!(max_attempts, 5, "HOOKQ_MAX_ATTEMPTS, as intake was given");
            let record = queue::get_job(&db.pool, job_id).await.unwrap().unwrap();
            assert_eq!((record.status, record.attempts), (JobStatus::Pending, 0));
            log_ids.push(log_id);
        }

        // And the queue runs them as `ProcessWebhook` jobs of those logs.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut workers = Workers::new(db.pool.clone(), WorkerOptions::default());
        let s = seen.clone();
        workers.register(move |job: ProcessWebhook, _: JobContext| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(job.log_id);
                Ok(())
            }
        });
        let report = workers.run_once().await.unwrap();
        assert_eq!(report.completed, 3, "{report:?}");
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, log_ids);
    }

    fn code_of(e: &Error) -> String {
        let Error::Database(sqlx::Error::Database(d)) = e else {
            panic!("expected a database error, got {e:?}");
        };
        d.code().unwrap_or_default().into_owned()
    }

    async fn counts(pool: &PgPool) -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_logs), (SELECT count(*) FROM queue_jobs)",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Rows the database refuses, built by hand: `Ingestor::ingest` would refuse them
    /// before they joined a batch, so only the writer's fallback stands between them and
    /// the rest of the batch here.
    #[tokio::test]
    async fn a_refused_value_fails_only_its_request_and_the_rest_of_the_batch_is_stored() {
        let db = fresh_db().await;
        let notifier = Notifier::spawn(db.pool.clone());
        let a = request(&["v1", "v2"]);
        let mut nul_text = request(&["v3"]);
        nul_text.logs[0].sender_name = Some("Ana\0".into());
        let b = request(&["v2", "v4"]);
        let mut nul_json = request(&["v5"]);
        nul_json.logs[0].payload = r#"{"text": "a\u0000b"}"#.into();
        let mut ancient = request(&["v1", "v6"]);
        // About 7500 BC: chrono holds it, `timestamptz` does not.
        ancient.logs[1].occurred_at = DateTime::from_timestamp(-300_000_000_000, 0);
        let c = request(&["v1"]);
        let [a, nul_text, b, nul_json, ancient, c] =
            answers(&db.pool, &notifier, [a, nul_text, b, nul_json, ancient, c]).await;

        // Each refused request gets its own data exception (answered 422 by the API).
        for (answer, code) in [(nul_text, "22021"), (nul_json, "22P05"), (ancient, "22008")] {
            let e = answer.unwrap_err();
            assert_eq!(code_of(&e), code, "{e}");
            assert!(super::super::refusal(&e).is_some(), "{e}");
        }
        // Everyone else is stored and answered as one transaction per request in batch
        // order would have been: `a` stores v1 and v2, `b` repeats v2, `c` repeats v1.
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        let (v1, v2, v4) = (
            id_of(&db.pool, "v1").await,
            id_of(&db.pool, "v2").await,
            id_of(&db.pool, "v4").await,
        );
        assert_eq!((a.ids, a.accepted, a.duplicates), (vec![v1.0, v2.0], 2, 0));
        assert_eq!((b.ids, b.accepted, b.duplicates), (vec![v2.0, v4.0], 1, 1));
        assert_eq!((c.ids, c.accepted, c.duplicates), (vec![v1.0], 0, 1));
        // The refused `ancient` request stored nothing, its valid v1 included: a request
        // is still all or nothing.
        assert_eq!((v1.1, v2.1, v4.1), (1, 1, 0));
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT dedup_key FROM webhook_logs ORDER BY dedup_key")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        assert_eq!(stored, ["v1", "v2", "v4"]);
        assert_eq!(counts(&db.pool).await, (3, 3), "one job per stored log");
    }

    /// A data exception no check can foresee (here a constraint that casts `message_text`
    /// to a number) is caught the same way.
    #[tokio::test]
    async fn any_data_exception_is_confined_to_its_request() {
        let db = fresh_db().await;
        let notifier = Notifier::spawn(db.pool.clone());
        sqlx::query(
            "ALTER TABLE webhook_logs ADD CONSTRAINT numbers_only
             CHECK (message_text IS NULL OR message_text::int >= 0) NOT VALID",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let numbered = |keys: &[&str]| {
            let mut r = request(keys);
            for log in &mut r.logs {
                log.message_text = Some("42".into());
            }
            r
        };
        let a = numbered(&["d1"]);
        let bad = request(&["d2"]); // "hi" is not a number: 22P02
        let c = numbered(&["d3", "d1"]);
        let [a, bad, c] = answers(&db.pool, &notifier, [a, bad, c]).await;
        let e = bad.unwrap_err();
        assert_eq!(code_of(&e), "22P02", "{e}");
        assert_eq!(a.unwrap().accepted, 1);
        let c = c.unwrap();
        assert_eq!((c.accepted, c.duplicates), (1, 1));
        assert_eq!(counts(&db.pool).await, (2, 2));

        // Alone in its batch, the refused request gets the same answer.
        let [bad] = answers(&db.pool, &notifier, [request(&["d4"])]).await;
        let e = bad.unwrap_err();
        assert!(super::super::refusal(&e).is_some(), "{e}");
        assert_eq!(counts(&db.pool).await, (2, 2));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_request_and_stores_nothing() {
        let db = fresh_db().await;
        let notifier = Notifier::spawn(db.pool.clone());
        sqlx::query("ALTER TABLE queue_jobs ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
            .execute(&db.pool)
            .await
            .unwrap();
        let [a, b, c] = answers(
            &db.pool,
            &notifier,
            [request(&["f1"]), request(&["f2", "f3"]), request(&["f1"])],
        )
        .await;
        let errors: Vec<Error> = vec![a.unwrap_err(), b.unwrap_err(), c.unwrap_err()];
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
