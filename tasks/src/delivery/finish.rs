//! Group commit for replies that need no delivery: concurrent runs' "store the reply and
//! finish the log" writes are batched into one guarded UPDATE per transaction.
//!
//! Each finish must be durable (synchronous commit: the reply is generated at most once),
//! so written one by one every comment waits for its own WAL flush, and the flushes,
//! not the CPU, bound the worker. A batch shares one statement and one flush. Each row is
//! still guarded on its own (`status = 'processing'`), and each caller learns whether its
//! log moved, exactly as with its own statement; a failed batch fails every caller (the
//! runs are retried), and nothing of it is stored.

use std::{collections::HashSet, sync::Arc};

use hookq_core::error::{Error, Result};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

/// Rows per statement at most.
const MAX_BATCH: usize = 256;
/// Batches committing at once: one fills while another waits for its flush.
const IN_FLIGHT: usize = 2;

struct Finish {
    log_id: i64,
    reply: String,
    integration_id: Option<Uuid>,
    persona_id: Option<Uuid>,
    done: oneshot::Sender<std::result::Result<bool, Arc<sqlx::Error>>>,
}

/// Cheap to clone; its writer task ends when the last clone is dropped.
#[derive(Clone)]
pub struct ReplyFinisher {
    tx: mpsc::Sender<Finish>,
}

impl ReplyFinisher {
    /// Starts the writer on the current Tokio runtime.
    pub fn spawn(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(rx, pool));
        ReplyFinisher { tx }
    }

    /// processing → processed (`replied`) with the reply stored, committed before this
    /// returns. False when the log is no longer `processing`.
    pub async fn finish(
        &self,
        log_id: i64,
        reply: &str,
        integration_id: Option<Uuid>,
        persona_id: Option<Uuid>,
    ) -> Result<bool> {
        let (done, answer) = oneshot::channel();
        let gone = || Error::Upstream {
            message: "the reply writer has stopped".into(),
            retry_after: None,
        };
        self.tx
            .send(Finish {
                log_id,
                reply: reply.to_owned(),
                integration_id,
                persona_id,
                done,
            })
            .await
            .map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| Error::Upstream {
                // Transient like any database failure: the run is retried.
                message: format!("database: {e}"),
                retry_after: None,
            })
    }
}

async fn run(mut rx: mpsc::Receiver<Finish>, pool: PgPool) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Flush at once when a slot is free; while every slot is busy, gather.
        let permit: Option<OwnedSemaphorePermit> = loop {
            if batch.len() >= MAX_BATCH {
                break Arc::clone(&slots).acquire_owned().await.ok();
            }
            tokio::select! {
                biased;
                p = Arc::clone(&slots).acquire_owned() => break p.ok(),
                next = rx.recv() => match next {
                    Some(f) => batch.push(f),
                    None => break Arc::clone(&slots).acquire_owned().await.ok(),
                },
            }
        };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            flush(&pool, batch).await;
            drop(permit);
        });
    }
}

async fn flush(pool: &PgPool, mut batch: Vec<Finish>) {
    // Lock rows in id order, so concurrent batches never deadlock.
    batch.sort_by_key(|f| f.log_id);
    let ids: Vec<i64> = batch.iter().map(|f| f.log_id).collect();
    let replies: Vec<&str> = batch.iter().map(|f| f.reply.as_str()).collect();
    let integrations: Vec<Option<Uuid>> = batch.iter().map(|f| f.integration_id).collect();
    let personas: Vec<Option<Uuid>> = batch.iter().map(|f| f.persona_id).collect();
    let result: std::result::Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
        "UPDATE webhook_logs l SET status = 'processed', outcome = 'replied', skip_reason = NULL,
                reply_text = t.reply, integration_id = COALESCE(t.integration_id, l.integration_id),
                persona_id = COALESCE(t.persona_id, l.persona_id), error_message = NULL,
                next_retry_at = NULL, processed_at = now(), updated_at = now()
         FROM unnest($1::bigint[], $2::text[], $3::uuid[], $4::uuid[])
              AS t(id, reply, integration_id, persona_id)
         WHERE l.id = t.id AND l.status = 'processing'
         RETURNING l.id",
    )
    .bind(&ids)
    .bind(&replies)
    .bind(&integrations)
    .bind(&personas)
    .fetch_all(pool)
    .await;
    match result {
        Ok(moved) => {
            let mut moved: HashSet<i64> = moved.into_iter().collect();
            for f in batch {
                // Two runs of one log in a batch: the first moved it, as with two
                // statements; the second finds it no longer processing.
                let _ = f.done.send(Ok(moved.remove(&f.log_id)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = batch.len(), "finishing a batch of replies failed; the runs will be retried");
            let e = Arc::new(e);
            for f in batch {
                let _ = f.done.send(Err(Arc::clone(&e)));
            }
        }
    }
}
