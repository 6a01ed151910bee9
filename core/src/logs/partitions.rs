//! The monthly partitions of `webhook_logs` and of the tables partitioned with it
//! (contract section 11; the design and its reasons are in
//! `migrations/0017_partitioned_logs.sql`): making them ahead of time, finding the months
//! past retention, and dropping one whole — never with an unfinished log in it.
//!
//! Each month has a partition in five tables: the logs, their search text
//! (`webhook_log_text`), their dedup keys (`webhook_dedup`), their replies
//! (`outbound_replies`) and the replies' tries (`delivery_attempts`), the last four its
//! *companions*. A month is dropped in three steps, each safe to stop after:
//!
//! 1. **Detach** the five partitions of the month, in one short transaction that first
//!    takes the logs' lock (`DETACH PARTITION` holds `ACCESS EXCLUSIVE` on the parent
//!    until commit) and then checks, under it, that every log of the month is
//!    `processed`; otherwise it rolls back and the month stays. From here on no query
//!    sees the month: nobody can retry, replay or resend one of its logs.
//! 2. **Forget** the one link from outside the month: a connection status naming one of
//!    its logs (the statement trigger does the same for a row deleted through
//!    `webhook_logs`), and count the month's logs.
//! 3. **Drop** the five detached tables, in one statement.
//!
//! Measured (`bench retention`, a million processed logs each with its text, key, reply
//! and attempt, durable cluster): 0.69–0.98 s in all, the parents locked 5–9 ms, and most
//! of the rest the kernel unlinking the month's files after the drop commits. With only
//! the logs and their text partitioned, deleting the companions' rows took 10.1 s of 10.5.
//!
//! A month left detached by a crash between the steps is found again by its name and
//! finished by the next run ([`expired`] lists it).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use sqlx::PgPool;

use crate::error::Result;

/// The tables partitioned on the logs' months besides `webhook_logs`, by the same
/// bounds (`hookq_log_partition_create` makes all five).
const COMPANIONS: [&str; 4] = [
    "webhook_log_text",
    "webhook_dedup",
    "outbound_replies",
    "delivery_attempts",
];

/// One month partition of `webhook_logs` (with its companions'), or the default
/// partition of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPartition {
    /// `Some((year, month))` for a month partition, `None` for the default one.
    month: Option<(i32, u32)>,
    /// Whether it is still attached to `webhook_logs` (a drop interrupted after the
    /// detach leaves it standing alone).
    pub attached: bool,
}

impl LogPartition {
    /// The default partitions: rows no month partition takes.
    pub const DEFAULT: LogPartition = LogPartition {
        month: None,
        attached: true,
    };

    /// The partition of `webhook_logs` for `name`, when it is one hookq made
    /// (`webhook_logs_default` or `webhook_logs_pYYYY_MM`).
    pub fn from_table(name: &str, attached: bool) -> Option<LogPartition> {
        if name == "webhook_logs_default" {
            return Some(LogPartition {
                attached,
                ..Self::DEFAULT
            });
        }
        let rest = name.strip_prefix("webhook_logs_p")?;
        let (y, m) = rest.split_once('_')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let (year, month) = (y.parse().ok()?, m.parse().ok()?);
        NaiveDate::from_ymd_opt(year, month, 1)?;
        Some(LogPartition {
            month: Some((year, month)),
            attached,
        })
    }

    /// Its `webhook_logs` table (a name made only from digits and these letters: safe to
    /// write into SQL).
    pub fn logs_table(&self) -> String {
        self.table_of("webhook_logs")
    }

    /// Its `webhook_log_text` table.
    pub fn text_table(&self) -> String {
        self.table_of("webhook_log_text")
    }

    /// Its companions: the same month's table of each table partitioned with the logs,
    /// as (parent, partition).
    pub fn companions(&self) -> [(&'static str, String); 4] {
        COMPANIONS.map(|parent| (parent, self.table_of(parent)))
    }

    /// Its partition of `parent`.
    fn table_of(&self, parent: &str) -> String {
        match self.month {
            Some((y, m)) => format!("{parent}_p{y:04}_{m:02}"),
            None => format!("{parent}_default"),
        }
    }

    /// The end of its month (exclusive), UTC; `None` for the default partition.
    pub fn upper(&self) -> Option<DateTime<Utc>> {
        let (y, m) = self.month?;
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()
    }

    /// The month partition that holds `at`.
    pub fn of(at: DateTime<Utc>) -> LogPartition {
        LogPartition {
            month: Some((at.year(), at.month())),
            attached: true,
        }
    }
}

/// Makes the partitions of the current UTC month and of the next `ahead` months where
/// they are missing (`hookq_log_partitions_ensure`).
pub async fn ensure_ahead(pool: &PgPool, ahead: i32) -> Result<()> {
    sqlx::query("SELECT hookq_log_partitions_ensure($1)")
        .bind(ahead)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every month partition whose month ended at or before `cutoff`, oldest first, attached
/// or left detached by an interrupted drop.
pub async fn expired(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Vec<LogPartition>> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
         FROM pg_class c
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
           AND c.relname ~ '^webhook_logs_p[0-9]{4}_[0-9]{2}$'
         ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, attached)| LogPartition::from_table(&name, attached))
        .filter(|p| p.upper().is_some_and(|u| u <= cutoff))
        .collect())
}

/// Deletes up to `limit` dedup keys of the default partition (`webhook_dedup_default`)
/// written before `cutoff` that name no log, and answers how many went. A month's
/// partitions take their own keys with them when dropped, and a log deleted row by row
/// takes its key through the statement trigger; what neither reaches is a key no log ever
/// had: two statements writing one key at the end of a month's first hour can each leave
/// a row in the previous month that names an id the losing statement burned, and when
/// that month has no partition the row lands here. It only refuses its own key, which is
/// right while the key is within retention; past it, retention removes it like any other.
pub async fn forget_orphan_keys(pool: &PgPool, cutoff: DateTime<Utc>, limit: i64) -> Result<u64> {
    let r = sqlx::query(
        "DELETE FROM webhook_dedup_default d WHERE (d.dedup_key, d.month) IN (
             SELECT o.dedup_key, o.month FROM webhook_dedup_default o
             WHERE o.received_at < $1
               AND NOT EXISTS (SELECT 1 FROM webhook_logs l WHERE l.id = o.log_id)
             LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// What [`drop_month`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The month is gone, with this many logs.
    Dropped {
        /// Logs the partition held.
        logs: u64,
        /// How long the detach held `webhook_logs` locked (statements on it waited
        /// meanwhile); the rest of the drop works on the detached tables.
        locked: std::time::Duration,
        /// How long forgetting the month's links from connection statuses (and counting
        /// its logs) took: the only work proportional to the month's size.
        forget: std::time::Duration,
    },
    /// The month holds logs that are not `processed` (in flight, failed, dead letters):
    /// it stays, for the row-by-row path.
    Kept,
}

/// Drops a month partition whole when every log in it is `processed` (see the module
/// doc for the steps). `lock_timeout` bounds how long the detach waits for the tables'
/// locks behind running statements (it fails with a lock timeout, and the next run
/// tries again).
pub async fn drop_month(pool: &PgPool, p: &LogPartition, lock_timeout_ms: u32) -> Result<Dropped> {
    let logs = p.logs_table();
    let unfinished = |table: &str| {
        format!(
            "SELECT EXISTS (SELECT 1 FROM {table}
             WHERE status IN ('pending', 'processing', 'failed', 'dead_letter'))"
        )
    };
    let mut locked = std::time::Duration::ZERO;
    let companions = p.companions();
    if p.attached {
        // A first look without locks: a month with a dead letter is the usual reason
        // to keep it, and it must not cost the tables a lock.
        let busy: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(unfinished(&logs)))
            .fetch_one(pool)
            .await?;
        if busy {
            return Ok(Dropped::Kept);
        }
        let mut tx = pool.begin().await?;
        let start = std::time::Instant::now();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = {lock_timeout_ms}"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE webhook_logs DETACH PARTITION {logs}"
        )))
        .execute(&mut *tx)
        .await?;
        // Under the detach's lock: nothing moved a log of the month meanwhile.
        let busy: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(unfinished(&logs)))
            .fetch_one(&mut *tx)
            .await?;
        if busy {
            tx.rollback().await?;
            return Ok(Dropped::Kept);
        }
        detach_companions(&mut tx, &companions).await?;
        tx.commit().await?;
        locked = start.elapsed();
    } else {
        let mut tx = pool.begin().await?;
        detach_companions(&mut tx, &companions).await?;
        tx.commit().await?;
    }

    // The one link into the month from outside it (the foreign key's ON DELETE SET NULL
    // once): a connection status names the latest report's log.
    let start = std::time::Instant::now();
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH c AS (UPDATE connection_statuses s SET log_id = NULL FROM {logs} l
                    WHERE s.log_id = l.id)
         SELECT count(*) FROM {logs}"
    )))
    .fetch_one(pool)
    .await?;
    let forget = start.elapsed();
    // All five in one statement: one commit, one pass over shared buffers for their
    // pages, and a crash leaves either the whole month or none of it.
    let tables: Vec<&str> = companions.iter().map(|(_, t)| t.as_str()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}, {logs}",
        tables.join(", ")
    )))
    .execute(pool)
    .await?;
    Ok(Dropped::Dropped {
        logs: n as u64,
        locked,
        forget,
    })
}

/// Detaches each of the month's companion partitions that is still attached.
async fn detach_companions(
    tx: &mut sqlx::PgConnection,
    companions: &[(&'static str, String)],
) -> Result<()> {
    for (parent, table) in companions {
        let attached: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass($1))",
        )
        .bind(table)
        .fetch_one(&mut *tx)
        .await?;
        if attached {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {parent} DETACH PARTITION {table}"
            )))
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_months_end_where_the_next_begins() {
        let p = LogPartition::from_table("webhook_logs_p2026_12", true).unwrap();
        assert_eq!(p.logs_table(), "webhook_logs_p2026_12");
        assert_eq!(p.text_table(), "webhook_log_text_p2026_12");
        assert_eq!(
            p.upper(),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).single()
        );
        assert_eq!(
            LogPartition::from_table("webhook_logs_default", true),
            Some(LogPartition::DEFAULT)
        );
        assert_eq!(LogPartition::DEFAULT.upper(), None);
        for bad in [
            "webhook_logs",
            "webhook_logs_p2026_13",
            "webhook_logs_p26_01",
            "webhook_logs_p2026_1x",
            "other_p2026_01",
        ] {
            assert_eq!(LogPartition::from_table(bad, true), None, "{bad}");
        }
        assert_eq!(
            LogPartition::of(Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap()).logs_table(),
            "webhook_logs_p2026_02"
        );
    }
}
