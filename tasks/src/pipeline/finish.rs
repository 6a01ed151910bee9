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

use hookq_core::{error::Result, logs::transitions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::batch::{ExpressLane, GroupWriter};

/// Rows per statement at most.
const MAX_BATCH: usize = 256;
/// Rows per statement at most in the express lane (runs whose group has nothing else
/// running here: [`crate::batch`]'s lanes).
const EXPRESS_BATCH: usize = 32;
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
    /// Starts the writer on the current Tokio runtime; its express lane writes through
    /// `express`.
    pub fn spawn(pool: PgPool, express: &ExpressLane) -> Self {
        ReplyFinisher {
            writer: express.writer(
                pool,
                MAX_BATCH,
                IN_FLIGHT,
                EXPRESS_BATCH,
                |pool, batch| async move { flush(&pool, batch).await },
            ),
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

/// One guarded UPDATE for the batch ([`transitions::finish_with_replies`]); an answer per
/// item, in order.
async fn flush(pool: &PgPool, batch: Vec<Finish>) -> std::result::Result<Vec<bool>, sqlx::Error> {
    let replies: Vec<transitions::Reply> = batch
        .into_iter()
        .map(|f| transitions::Reply {
            log_id: f.log_id,
            text: f.reply,
            integration_id: f.integration_id,
            persona_id: f.persona_id,
        })
        .collect();
    let moved = transitions::finish_with_replies(pool, &replies)
        .await
        .map_err(|e| match e {
            hookq_core::Error::Database(db) => db,
            other => sqlx::Error::Protocol(other.to_string()),
        })?;
    let mut moved: HashSet<i64> = moved.into_iter().collect();
    // Two runs of one log in a batch: the first moved it, as with two statements; the
    // second finds it no longer processing.
    Ok(replies.iter().map(|r| moved.remove(&r.log_id)).collect())
}
