//! `alert_states`: the operational conditions hookq reports to `HOOKQ_ALERT_URL`
//! (contract section 12) and their one state machine.
//!
//! A condition is a row keyed by what it is about (`queue.stalled`,
//! `dead_letters.rising`, `integration.delivery_disabled:<id>`) with two states:
//!
//! | transition | from | to | when |
//! |---|---|---|---|
//! | start | cleared (or no row) | active | an evaluation finds the condition true |
//! | clear | active | cleared | an evaluation finds it false |
//!
//! Each transition is one conditional write, so when several worker processes or hosts
//! evaluate at once exactly one of them makes it and gets it back from [`apply`]; the
//! caller enqueues the event in the same transaction. An evaluation that finds nothing
//! changed writes nothing and sends nothing: no storm, however often it runs. A condition
//! that was never active has no row, so nothing is ever "cleared" that never started.

use serde_json::Value;
use sqlx::PgConnection;

use crate::error::Result;

/// One condition true now: its key and what the event says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    /// `queue.stalled`, `dead_letters.rising`, `integration.delivery_disabled:<id>`.
    pub key: String,
    /// What the event reports (counts, ages, the integration).
    pub detail: Value,
}

/// A transition this call made, to be reported once.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The event type (`queue.stalled`, ...): the condition's kind.
    pub kind: String,
    /// The condition's key.
    pub key: String,
    /// `true`: started; `false`: cleared.
    pub started: bool,
    /// The detail found when it started (kept for the clear event too).
    pub detail: Value,
    /// When the transition happened (database time), in RFC 3339.
    pub at: String,
}

/// Brings the conditions of `kind` to `active` (every other condition of that kind is
/// cleared) and returns the transitions made by this call.
pub async fn apply(
    conn: &mut PgConnection,
    kind: &str,
    active: &[Active],
) -> Result<Vec<Transition>> {
    let keys: Vec<&str> = active.iter().map(|a| a.key.as_str()).collect();
    let details: Vec<Value> = active.iter().map(|a| a.detail.clone()).collect();
    let rows: Vec<(String, bool, Value, String)> = sqlx::query_as(
        "WITH cleared AS (
             -- clear: active -> cleared
             UPDATE alert_states SET active = false, changed_at = now()
             WHERE kind = $1 AND active AND NOT (key = ANY($2))
             RETURNING key, active, detail, changed_at),
         started AS (
             -- start: cleared (or no row) -> active
             INSERT INTO alert_states AS s (key, kind, active, detail)
             SELECT k, $1, true, d FROM unnest($2::text[], $3::jsonb[]) AS n(k, d)
             ON CONFLICT (key) DO UPDATE SET active = true, detail = EXCLUDED.detail,
                                             changed_at = now()
             WHERE NOT s.active
             RETURNING key, active, detail, changed_at)
         SELECT key, active, detail,
                to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
         FROM (SELECT * FROM cleared UNION ALL SELECT * FROM started) t
         ORDER BY key",
    )
    .bind(kind)
    .bind(&keys)
    .bind(&details)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, started, detail, at)| Transition {
            kind: kind.to_owned(),
            key,
            started,
            detail,
            at,
        })
        .collect())
}

/// The conditions active now (for operators and tests).
pub async fn active(conn: &mut PgConnection) -> Result<Vec<(String, Value)>> {
    Ok(
        sqlx::query_as("SELECT key, detail FROM alert_states WHERE active ORDER BY key")
            .fetch_all(&mut *conn)
            .await?,
    )
}
