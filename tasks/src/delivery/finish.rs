//! Group commit for replies that need no delivery: concurrent runs' "store the reply and
//! finish the log" writes are batched into one guarded UPDATE per transaction.
//!
//! Each finish must be durable (synchronous commit: the reply is generated at most once),
//! so written one by one every comment waits for its own WAL flush, and the flushes,
//! not the CPU, bound the worker. A batch shares one statement and one flush. Each row is
//! still guarded on its own (`status = 'processing'`), and each caller learns whether its
//! log moved, exactly as with its own statement; a failed batch fails every caller (the
//! runs are retried), and nothing of it is stored.

use std::collections::HashSet;

use hookq_core::error::Result;
use sqlx::PgPool;
use uuid::Uuid;

use crate::group::GroupWriter;

/// Rows per statement at most.
const MAX_BATCH: usize = 256;
/// Batches committing at once: one fills while another waits for its flush.
const IN_FLIGHT: usize = 2;

struct Finish {
    log_id: i64,
    reply: String,
    integration_id: Option<Uuid>,
    persona_id: Option<Uuid>,
}

/// Cheap to clone; its writer task ends when the last clone is dropped.
#[derive(Clone)]
pub struct ReplyFinisher {
    writer: GroupWriter<Finish, bool>,
}

impl ReplyFinisher {
    /// Starts the writer on the current Tokio runtime.
    pub fn spawn(pool: PgPool) -> Self {
        ReplyFinisher {
            writer: GroupWriter::spawn(MAX_BATCH, IN_FLIGHT, move |batch| {
                let pool = pool.clone();
                async move { flush(&pool, batch).await }
            }),
        }
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
        let item = Finish {
            log_id,
            reply: reply.to_owned(),
            integration_id,
            persona_id,
        };
        self.writer.write(item).await
    }
}

/// One guarded UPDATE for the batch; an answer per item, in order.
async fn flush(pool: &PgPool, batch: Vec<Finish>) -> std::result::Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<i64> = batch.iter().map(|f| f.log_id).collect();
    let replies: Vec<&str> = batch.iter().map(|f| f.reply.as_str()).collect();
    let integrations: Vec<Option<Uuid>> = batch.iter().map(|f| f.integration_id).collect();
    let personas: Vec<Option<Uuid>> = batch.iter().map(|f| f.persona_id).collect();
    // The primary key is the only way in, whatever the statistics say (see
    // `hookq_core::logs::start_many`), and it visits the ids in order: concurrent
    // batches lock rows in the same order and never deadlock.
    let moved: Vec<i64> = sqlx::query_scalar(
        "UPDATE webhook_logs l SET status = 'processed', outcome = 'replied', skip_reason = NULL,
                reply_text = ($2::text[])[array_position($1::bigint[], l.id)],
                integration_id = COALESCE(($3::uuid[])[array_position($1::bigint[], l.id)], l.integration_id),
                persona_id = COALESCE(($4::uuid[])[array_position($1::bigint[], l.id)], l.persona_id),
                error_message = NULL, next_retry_at = NULL, processed_at = now(), updated_at = now()
         WHERE l.id = ANY($1::bigint[]) AND (l.status = 'processing') IS TRUE
         RETURNING l.id",
    )
    .bind(&ids)
    .bind(&replies)
    .bind(&integrations)
    .bind(&personas)
    .fetch_all(pool)
    .await?;
    let mut moved: HashSet<i64> = moved.into_iter().collect();
    // Two runs of one log in a batch: the first moved it, as with two statements; the
    // second finds it no longer processing.
    Ok(batch.iter().map(|f| moved.remove(&f.log_id)).collect())
}
