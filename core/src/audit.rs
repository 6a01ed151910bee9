//! `audit_log` (contract section 12): the record of every change an operator made
//! through the admin API, and the reads of it. The API writes one entry per changing
//! request (`hookq_api`'s audit middleware, which derives an [`Entry`] from the method
//! and path with [`Entry::from_request`]); nothing else writes here, and nothing updates
//! or deletes an entry.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::error::Result;

/// Path segments that name what a `POST` does to the resource before them.
const VERBS: [&str; 4] = ["retry", "delete", "pause", "resume"];

/// One change, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Entry {
    /// `admin` or `readonly`.
    pub role: String,
    /// `create`, `update`, `delete`, or the verb the path ends in (`retry`, `pause`, ...).
    pub action: String,
    /// The collection the path names (`webhook-logs`, `integrations`, `replays`, ...).
    pub resource_type: String,
    /// The resource's id, when the path names one.
    pub resource_id: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The path (without the query string).
    pub path: String,
    /// The status the API answered.
    pub status: i32,
}

impl Entry {
    /// The entry for `method` on `path` (under `/api/`) by `role`, answered `status`:
    /// `/api/<collection>[/<id>][/<verb>]`.
    pub fn from_request(role: &str, method: &str, path: &str, status: u16) -> Self {
        let segments: Vec<&str> = path
            .trim_start_matches("/api/")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let resource_type = segments.first().copied().unwrap_or("").to_owned();
        let rest = &segments[segments.len().min(1)..];
        let (id, verb) = match rest {
            [] => (None, None),
            [one] if VERBS.contains(one) => (None, Some(*one)),
            [id] => (Some(*id), None),
            [id, verb, ..] => (Some(*id), Some(*verb)),
        };
        let action = match (verb, method) {
            (Some(v), _) => v.to_owned(),
            (None, "POST") => "create".to_owned(),
            (None, "PATCH" | "PUT") => "update".to_owned(),
            (None, "DELETE") => "delete".to_owned(),
            (None, other) => other.to_ascii_lowercase(),
        };
        Entry {
            role: role.to_owned(),
            action,
            resource_type,
            resource_id: id.map(str::to_owned),
            method: method.to_owned(),
            path: path.to_owned(),
            status: i32::from(status),
        }
    }
}

/// Stores `entry`.
pub async fn record(pool: &PgPool, entry: &Entry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (role, action, resource_type, resource_id, method, path, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&entry.role)
    .bind(&entry.action)
    .bind(&entry.resource_type)
    .bind(&entry.resource_id)
    .bind(&entry.method)
    .bind(&entry.path)
    .bind(entry.status)
    .execute(pool)
    .await?;
    Ok(())
}

/// A recorded change.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Recorded {
    /// Primary key.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    #[sqlx(flatten)]
    pub entry: Entry,
}

/// Which entries a list shows; every field optional, given fields ANDed.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this role's.
    pub role: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only on this collection.
    pub resource_type: Option<String>,
    /// Only on this resource id.
    pub resource_id: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
}

impl AuditFilter {
    fn push_where(&self, q: &mut QueryBuilder<Postgres>) {
        q.push(" WHERE true");
        for (col, v) in [
            ("role", &self.role),
            ("action", &self.action),
            ("resource_type", &self.resource_type),
            ("resource_id", &self.resource_id),
        ] {
            if let Some(v) = v {
                q.push(format_args!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        if let Some(t) = self.since {
            q.push(" AND at >= ").push_bind(t);
        }
        if let Some(t) = self.until {
            q.push(" AND at < ").push_bind(t);
        }
    }
}

/// A page of entries, newest first, and how many match.
pub async fn page(
    pool: &PgPool,
    filter: &AuditFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Recorded>, i64)> {
    let mut q = QueryBuilder::new(
        "SELECT id, at, role, action, resource_type, resource_id, method, path, status
         FROM audit_log",
    );
    filter.push_where(&mut q);
    q.push(" ORDER BY at DESC, id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let items = q.build_query_as::<Recorded>().fetch_all(pool).await?;
    let mut q = QueryBuilder::new("SELECT count(*) FROM audit_log");
    filter.push_where(&mut q);
    let total = q.build_query_scalar::<i64>().fetch_one(pool).await?;
    Ok((items, total))
}

#[cfg(test)]
mod tests {
    use super::Entry;

    #[test]
    fn an_entry_names_the_action_and_the_resource_from_the_path() {
        let e = |m, p| {
            let e = Entry::from_request("admin", m, p, 200);
            (e.action, e.resource_type, e.resource_id)
        };
        let s = |v: &str| v.to_owned();
        assert_eq!(e("POST", "/api/users"), (s("create"), s("users"), None));
        assert_eq!(
            e("POST", "/api/webhook-logs/42/retry"),
            (s("retry"), s("webhook-logs"), Some(s("42")))
        );
        assert_eq!(
            e("POST", "/api/webhook-logs/retry"),
            (s("retry"), s("webhook-logs"), None)
        );
        assert_eq!(
            e("POST", "/api/webhook-logs/delete"),
            (s("delete"), s("webhook-logs"), None)
        );
        assert_eq!(
            e("PATCH", "/api/integrations/ab-12"),
            (s("update"), s("integrations"), Some(s("ab-12")))
        );
        assert_eq!(
            e("DELETE", "/api/personas/x"),
            (s("delete"), s("personas"), Some(s("x")))
        );
        assert_eq!(
            e("POST", "/api/integrations/ab-12/pause"),
            (s("pause"), s("integrations"), Some(s("ab-12")))
        );
        assert_eq!(e("POST", "/api/replays"), (s("create"), s("replays"), None));
    }
}
