//! The enqueue seam: parsed events become `webhook_logs` rows and their jobs in ONE
//! transaction, so an acknowledged event always has a job and a rolled-back one has
//! neither.
//!
//! Requests do not write themselves: they hand their events to a batching writer
//! (`writer`) that commits the logs and jobs of many concurrent requests in one
//! statement (group commit). A commit with `synchronous_commit = on` costs a WAL flush
//! whatever its size, so sharing it is what lets intake scale past one fsync per
//! request; each request is still answered only after the commit that holds its events.
//!
//! Sharing a statement means sharing its fate, so a value PostgreSQL refuses (a *data
//! exception*, SQLSTATE class 22: a NUL in a string, a timestamp out of range) must never
//! reach a batch: [`Ingestor::ingest`] checks every row first and refuses only the
//! request that carries it (`refusal` tells the HTTP layer to answer 422, not 503).
//! Should the database still refuse a value of a batch, the writer writes that batch's
//! requests one by one, so again only the offending request fails.

mod writer;

use std::{convert::Infallible, sync::Arc, time::Duration};

use hookq_core::{
    intake::{ParsedEvent, storable},
    logs::NewLog,
};
use sqlx::PgPool;

use crate::{
    batch::{ExpressLane, ExpressThread, GroupOptions, GroupWriter, LaneLoad},
    error::Error,
    queue::Notifier,
};

/// What the webhook sender is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Events stored new by this call, each with its `process_webhook` job.
    pub accepted: usize,
    /// Events whose dedup key was already stored (or repeated in the call): nothing
    /// stored or enqueued.
    pub duplicates: usize,
    /// Log ids, new and already known, in payload order.
    pub ids: Vec<i64>,
}

/// How the batching writer groups requests.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// A batch is flushed once it holds this many events (a single request larger than
    /// this is flushed alone).
    pub max_batch_events: usize,
    /// While another batch is being committed, a new one waits up to this long for more
    /// requests before it is flushed. An idle writer flushes at once, so a lone request
    /// never waits for company.
    pub linger: Duration,
    /// Batches committed concurrently (each on its own connection), so that one batch
    /// fills while another waits for its WAL flush.
    pub max_in_flight: usize,
    /// Requests waiting for the writer before callers are held back.
    pub queue_capacity: usize,
    /// Runs each enqueued job gets before it is dead (`HOOKQ_MAX_ATTEMPTS`), stored on
    /// the job's row.
    pub max_attempts: u32,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            max_batch_events: 512,
            linger: Duration::from_millis(1),
            max_in_flight: 2,
            queue_capacity: 8192,
            max_attempts: 3,
        }
    }
}

/// Cheap to clone: every clone feeds the same writer, which stops once the last clone
/// is dropped.
#[derive(Clone)]
pub struct Ingestor {
    pool: PgPool,
    /// Its flush answers each request itself (a failed batch answers each with the
    /// shared error), so the writer's batch-wide error cannot happen.
    writer: GroupWriter<writer::Item, Result<Ingested, Error>, Infallible>,
    /// Requests in the writer per account: an account's request with no other in
    /// progress takes the express lane ([`crate::batch`]'s lanes), so a flooded
    /// account's 512-event statements do not delay another account's webhook.
    lanes: LaneLoad,
    /// Keeps the express lane's thread for as long as the writer.
    _express: Option<ExpressThread>,
}

/// Events per express statement, and requests in the express lane at once.
const EXPRESS_EVENTS: usize = 32;

impl Ingestor {
    /// Starts the batching writer on the current Tokio runtime with default options and
    /// `max_attempts` runs per job (`HOOKQ_MAX_ATTEMPTS`: there is no default here, so
    /// no caller can forget it).
    pub fn new(pool: PgPool, notifier: Notifier, max_attempts: u32) -> Self {
        Self::with_options(
            pool,
            notifier,
            IngestOptions {
                max_attempts,
                ..IngestOptions::default()
            },
        )
    }

    /// Starts the batching writer on the current Tokio runtime with `opts`.
    pub fn with_options(pool: PgPool, notifier: Notifier, opts: IngestOptions) -> Self {
        let group = GroupOptions {
            max_batch: opts.max_batch_events,
            in_flight: opts.max_in_flight,
            linger: opts.linger,
            capacity: opts.queue_capacity,
        };
        let express = GroupOptions {
            max_batch: EXPRESS_EVENTS,
            in_flight: 1,
            linger: Duration::ZERO,
            capacity: opts.queue_capacity,
        };
        let max_attempts = i32::try_from(opts.max_attempts.max(1)).unwrap_or(i32::MAX);
        // The express lane's own connection and thread (see `crate::batch`).
        let lane = ExpressLane::start(&pool, 1);
        let writer = lane.writer_with(
            group,
            express,
            |item: &writer::Item| item.logs.len(),
            pool.clone(),
            move |pool: PgPool, items: Vec<writer::Item>| {
                let notifier = notifier.clone();
                async move {
                    Ok::<_, Infallible>(writer::flush(&pool, &notifier, &items, max_attempts).await)
                }
            },
        );
        Ingestor {
            pool,
            writer,
            lanes: LaneLoad::new(EXPRESS_EVENTS),
            _express: lane.thread,
        }
    }

    /// The pool the writer stores into.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores the events and enqueues a job per new one; returns after the commit.
    ///
    /// Semantics are those of one transaction per call, whatever batch the call shares:
    /// a dedup key already stored, repeated earlier in `events`, or stored by a call
    /// ahead of this one in the same batch is a duplicate (its existing id is answered,
    /// nothing is enqueued). A batch that fails for the database's sake (down, restarting)
    /// fails every call in it, and nothing of it is stored; a value the database refuses
    /// fails only the call that carries it (see `refusal`).
    ///
    /// # Errors
    ///
    /// [`IngestError::Refused`] when an event holds a value PostgreSQL cannot store
    /// (nothing of the call is stored); [`IngestError::Unavailable`] when the write failed
    /// for the database's sake.
    pub async fn ingest(
        &self,
        events: &[ParsedEvent],
        correlation_id: Option<&str>,
    ) -> Result<Ingested, IngestError> {
        if events.is_empty() {
            return Ok(Ingested {
                accepted: 0,
                duplicates: 0,
                ids: Vec::new(),
            });
        }
        let logs: Vec<NewLog> = events.iter().map(NewLog::from_event).collect();
        // Checked here, before the request joins a batch, so its fate stays its own.
        if let Some((i, why)) = logs
            .iter()
            .enumerate()
            .find_map(|(i, log)| unstorable(log).map(|why| (i, why)))
        {
            tracing::warn!(event = i, reason = %why, "ingest refused an unstorable event");
            return Err(IngestError::Refused(format!(
                "event {i} of the body cannot be stored: {why}"
            )));
        }
        // A request's lane is its first event's account's (a Meta delivery holds one
        // account's entries).
        let ticket = self.lanes.enter(logs[0].account_id.as_deref());
        let item = writer::Item {
            logs,
            correlation_id: correlation_id.map(str::to_owned),
        };
        // `None`: the writer is gone, or died mid-batch, so the batch's fate is unknown
        // to us; the sender is told to retry (a retry of a stored event is a duplicate).
        let answer = match self.writer.submit_in(ticket.lane(), item).await {
            Some(Ok(answer)) => answer,
            Some(Err(never)) => match *never {},
            None => Err(Error::IngestStopped),
        };
        answer.map_err(IngestError::from)
    }
}

/// Why an ingest call stored nothing: the one split the HTTP layer needs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The call's own content can never be stored (an unstorable value, one the database
    /// refused): trying the same body again cannot help, so the sender is told `422`.
    #[error("{0}")]
    Refused(String),
    /// The database could not take the write (down, restarting, out of connections, the
    /// writer stopping): nothing was stored and the sender is told `503`, to retry.
    #[error("the events could not be stored: {0}")]
    Unavailable(Arc<Error>),
}

impl From<Error> for IngestError {
    fn from(e: Error) -> Self {
        match refusal(&e) {
            Some(detail) => IngestError::Refused(detail),
            None => IngestError::Unavailable(Arc::new(e)),
        }
    }
}

/// Why PostgreSQL would refuse `log` with a data exception, if it would. The parsers
/// already make all of this impossible (see [`storable`]), so this only fires for a
/// caller that builds events some other way; it is what keeps that caller's mistake out
/// of a shared batch.
fn unstorable(log: &NewLog) -> Option<String> {
    // The payload is JSON text, where a NUL is an escape: `has_nul_escape` below.
    let texts: [(&str, Option<&str>); 12] = [
        ("dedup_key", Some(&log.dedup_key)),
        ("source", Some(log.source)),
        ("event_type", Some(&log.event_type)),
        ("handling", Some(log.handling)),
        ("account_id", log.account_id.as_deref()),
        ("user_external_id", log.user_external_id.as_deref()),
        ("persona_external_id", log.persona_external_id.as_deref()),
        ("post_external_id", log.post_external_id.as_deref()),
        ("item_id", log.item_id.as_deref()),
        ("sender_id", log.sender_id.as_deref()),
        ("sender_name", log.sender_name.as_deref()),
        ("message_text", log.message_text.as_deref()),
    ];
    if let Some((field, _)) = texts
        .iter()
        .find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
    {
        return Some(format!(
            "{field} contains a NUL character (U+0000), which PostgreSQL cannot store"
        ));
    }
    let bounded: [(&str, Option<&str>, usize); 8] = [
        ("dedup_key", Some(&log.dedup_key), storable::MAX_KEY_BYTES),
        ("event_type", Some(&log.event_type), storable::MAX_KEY_BYTES),
        (
            "account_id",
            log.account_id.as_deref(),
            storable::MAX_ID_BYTES,
        ),
        (
            "user_id",
            log.user_external_id.as_deref(),
            storable::MAX_ID_BYTES,
        ),
        (
            "persona_id",
            log.persona_external_id.as_deref(),
            storable::MAX_ID_BYTES,
        ),
        (
            "post_id",
            log.post_external_id.as_deref(),
            storable::MAX_ID_BYTES,
        ),
        ("item_id", log.item_id.as_deref(), storable::MAX_ID_BYTES),
        (
            "sender_id",
            log.sender_id.as_deref(),
            storable::MAX_ID_BYTES,
        ),
    ];
    if let Some((field, Some(v), max)) = bounded
        .iter()
        .find(|(_, v, max)| v.is_some_and(|v| v.len() > *max))
    {
        return Some(format!(
            "{field} is {} bytes long: at most {max} are stored",
            v.len()
        ));
    }
    if storable::has_nul_escape(&log.payload) {
        return Some(
            r"the payload contains a NUL character (\u0000), which PostgreSQL cannot store".into(),
        );
    }
    if let Some(t) = log.occurred_at
        && !storable::timestamp_storable(&t)
    {
        return Some(format!(
            "occurred_at {t} is outside PostgreSQL's range (4714 BC to 294276 AD)"
        ));
    }
    None
}

/// When `e` means the request's own content was refused (a value the database refused,
/// [`classify`](hookq_core::db::classify)'s `Refused`), what to tell the sender. `None` for
/// every other failure (the database down, the writer gone).
fn refusal(e: &Error) -> Option<String> {
    match e {
        Error::Core(hookq_core::Error::Invalid(detail)) => Some(detail.clone()),
        Error::Database(db) => writer::refused_value(db)
            .map(|why| format!("a value of the body was refused by the database: {why}")),
        Error::Shared(e) => refusal(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use hookq_core::intake::parse_instagram;
    use hookq_testkit::fresh_db;

    use super::*;

    fn events(comment_id: &str) -> Vec<ParsedEvent> {
        let body = serde_json::json!({
            "object": "instagram", "user_id": "user_123",
            "entry": [{"changes": [{"value": {"item": "comment", "comment_id": comment_id,
                "post_id": "post_123", "message": "hi", "created_time": 1625097600}}]}]
        });
        parse_instagram(body.to_string().as_bytes()).unwrap()
    }

    /// An unstorable event is refused before it joins a batch: a clear refusal for its
    /// caller, nothing of its request stored, and no effect on anyone else.
    #[tokio::test]
    async fn an_unstorable_event_is_refused_before_it_joins_a_batch() {
        let db = fresh_db().await;
        let ingestor = Ingestor::new(db.pool.clone(), Notifier::spawn(db.pool.clone()), 3);
        let mut cases: Vec<(&str, Vec<ParsedEvent>)> = Vec::new();
        let mut text = events("u1");
        text.extend(events("u1_ok"));
        text[0].text = Some("a\0b".into());
        cases.push(("message_text", text));
        let mut key = events("u2");
        key[0].payload = serde_json::json!({"k\0": 1});
        cases.push(("payload", key));
        let mut time = events("u3");
        time[0].occurred_at = chrono::DateTime::from_timestamp(-300_000_000_000, 0);
        cases.push(("occurred_at", time));
        let good = events("u4");
        let (refused, stored) = tokio::join!(
            futures::future::join_all(
                cases
                    .iter()
                    .map(|(_, events)| ingestor.ingest(events, None))
            ),
            ingestor.ingest(&good, None),
        );
        for ((field, _), result) in cases.iter().zip(refused) {
            let detail = match result.unwrap_err() {
                IngestError::Refused(detail) => detail,
                e => panic!("{field}: not a refusal: {e}"),
            };
            assert!(detail.contains(field), "{detail}");
        }
        assert_eq!(stored.unwrap().accepted, 1);
        let keys: Vec<String> = sqlx::query_scalar("SELECT dedup_key FROM webhook_logs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        assert_eq!(keys, ["ig:comment:u4"]);
    }
}
