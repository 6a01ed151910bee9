//! Repositories for the five admin resources (contract section 7): users,
//! integrations, persona templates, personas and posts — create, list, get, update,
//! delete.
//!
//! The database enforces what it can (unique external ids, references, enum CHECKs) and
//! `db_error` turns its refusals into the domain's errors, so a race between two
//! admins can never slip past a check done in Rust first: duplicates are `Conflict`
//! (409), missing references `UnknownReference` (422), bad values `Invalid` (422).
//! Updates are PATCHes: `None` leaves a field alone; for nullable fields
//! `Some(None)` clears it.

use serde::Serialize;

use crate::{
    db::{self, DbFailure},
    error::{Error, Result},
    intake::storable::MAX_ID_BYTES,
};

/// A page of any resource.
#[derive(Debug, Clone, Serialize)]
pub struct Listed<T> {
    /// The rows of the page, newest first.
    pub items: Vec<T>,
    /// Rows in the whole table (not only the page).
    pub total: i64,
}

/// Translates a refused write into the domain's error, by [`db::classify`]: duplicates are
/// `Conflict` (409), missing references `UnknownReference` (422), refused values
/// `Invalid` (422). `deleting` turns a foreign-key violation into `Conflict` (the row is
/// still referenced) instead of an unknown reference.
pub(super) fn db_error(e: sqlx::Error, deleting: bool) -> Error {
    match db::classify(&e) {
        DbFailure::Unique(detail) => Error::Conflict(detail),
        DbFailure::ForeignKey(detail) if deleting => {
            Error::Conflict(format!("still in use: {detail}"))
        }
        DbFailure::ForeignKey(detail) => Error::UnknownReference(detail),
        DbFailure::Constraint(msg) => Error::Invalid(msg),
        DbFailure::Refused(msg) => {
            Error::Invalid(format!("a value was refused by the database: {msg}"))
        }
        _ => Error::Database(e),
    }
}

/// `found` or `NotFound`.
pub(super) fn found<T>(row: Option<T>) -> Result<T> {
    row.ok_or(Error::NotFound)
}

/// List, get and delete are the same for every table; a macro keeps each statement a
/// static string.
macro_rules! table_reads {
    ($list:ident, $get:ident, $delete:ident, $ty:ty, $table:literal) => {
        /// One page and the table's row count, read in one snapshot so the total
        /// describes the same rows as the page.
        pub async fn $list(pool: &PgPool, limit: i64, offset: i64) -> Result<Listed<$ty>> {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            let items = sqlx::query_as(concat!(
                "SELECT * FROM ",
                $table,
                " ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"
            ))
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await?;
            let total = sqlx::query_scalar(concat!("SELECT count(*) FROM ", $table))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Listed { items, total })
        }

        /// One row by id; `NotFound` when there is none.
        pub async fn $get(pool: &PgPool, id: Uuid) -> Result<$ty> {
            found(
                sqlx::query_as(concat!("SELECT * FROM ", $table, " WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?,
            )
        }

        /// Deletes one row by id; `NotFound` when there is none, `Conflict` while another
        /// row still references it.
        pub async fn $delete(pool: &PgPool, id: Uuid) -> Result<()> {
            let r = sqlx::query(concat!("DELETE FROM ", $table, " WHERE id = $1"))
                .bind(id)
                .execute(pool)
                .await
                .map_err(|e| db_error(e, true))?;
            if r.rows_affected() == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        }
    };
}

pub(super) fn non_empty(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(Error::Invalid(format!("{field} must not be empty")));
    }
    Ok(())
}

/// An external id (user, persona, post, an integration's account): not empty, and at
/// most [`MAX_ID_BYTES`] bytes, as the ids inside webhook payloads are (they are matched
/// against each other, and unique indexes cannot hold a value over 2,704 bytes).
pub(super) fn identifier(field: &str, v: &str) -> Result<()> {
    non_empty(field, v)?;
    if v.len() > MAX_ID_BYTES {
        return Err(Error::Invalid(format!(
            "{field} is {} bytes long: at most {MAX_ID_BYTES} are allowed",
            v.len()
        )));
    }
    Ok(())
}

/// `Some(v)` → (true, v): "set this nullable column to v (maybe NULL)".
pub(super) fn set<T: Clone>(v: &Option<Option<T>>) -> (bool, Option<T>) {
    match v {
        Some(inner) => (true, inner.clone()),
        None => (false, None),
    }
}

mod integrations;
mod personas;
mod posts;
mod templates;
mod users;

pub use integrations::*;
pub use personas::*;
pub use posts::*;
pub use templates::*;
pub use users::*;
