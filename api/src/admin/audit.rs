//! Roles and audit (contract section 12): `GET /api/audit` lists every change an
//! operator made, `GET /api/session` tells the dashboard which role its token has (so it
//! hides what the role cannot do), and [`record_changes`] is the middleware that writes
//! the audit log: one entry per `POST`, `PATCH`, `PUT` or `DELETE` under `/api/` that
//! carried a valid token, with the status it got (a read-only token's refused attempt
//! included). One middleware rather than a line in each handler, so a new route cannot
//! forget it.

use chrono::{DateTime, Utc};
use hookq_core::audit::{self, AuditFilter, Entry};
use poem::{Endpoint, IntoResponse, Request, Response, web::Data};
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};

use super::{AdminResult, Page, paging};
use crate::{
    ApiTags,
    auth::{self, AdminAuth},
    state::AppState,
};

/// `/api/audit` and `/api/session`.
pub struct AuditApi;

/// A recorded change.
#[derive(Debug, Clone, Object)]
pub struct AuditEntry {
    /// Its id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Which role: `admin` or `readonly`.
    pub role: String,
    /// What: `create`, `update`, `delete`, `retry`, `pause` or `resume`.
    pub action: String,
    /// On which collection: `webhook-logs`, `integrations`, `replays`, `users`, ...
    pub resource_type: String,
    /// On which resource, when the path names one.
    #[oai(nullable)]
    pub resource_id: Option<String>,
    /// The request's method.
    pub method: String,
    /// The request's path.
    pub path: String,
    /// The status it was answered.
    pub status: i32,
}

/// The caller's role.
#[derive(Debug, Clone, Object)]
pub struct Session {
    /// `admin` (may change things) or `readonly` (may only read).
    pub role: String,
}

#[OpenApi(prefix_path = "/api", tag = "ApiTags::Admin")]
impl AuditApi {
    /// Every change made through the admin API, newest first, filtered by any of
    /// `role`, `action`, `resource_type`, `resource_id` and a time window (`since`
    /// inclusive, `until` exclusive, RFC 3339).
    #[oai(path = "/audit", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        _auth: AdminAuth,
        state: Data<&AppState>,
        role: Query<Option<String>>,
        action: Query<Option<String>>,
        resource_type: Query<Option<String>>,
        resource_id: Query<Option<String>>,
        since: Query<Option<DateTime<Utc>>>,
        until: Query<Option<DateTime<Utc>>>,
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> AdminResult<Page<AuditEntry>> {
        let given = |v: Option<String>| v.filter(|s| !s.is_empty());
        let filter = AuditFilter {
            role: given(role.0),
            action: given(action.0),
            resource_type: given(resource_type.0),
            resource_id: given(resource_id.0),
            since: since.0,
            until: until.0,
        };
        let (limit, offset) = paging(limit.0, offset.0);
        let (items, total) =
            audit::page(state.reads(), &filter, limit.into(), offset.into()).await?;
        Ok(Json(Page {
            items: items
                .into_iter()
                .map(|r| AuditEntry {
                    id: r.id,
                    at: r.at,
                    role: r.entry.role,
                    action: r.entry.action,
                    resource_type: r.entry.resource_type,
                    resource_id: r.entry.resource_id,
                    method: r.entry.method,
                    path: r.entry.path,
                    status: r.entry.status,
                })
                .collect(),
            total,
            limit,
            offset,
        }))
    }

    /// The role of the token this request carries (the dashboard hides what a
    /// read-only token cannot do).
    #[oai(path = "/session", method = "get")]
    async fn session(&self, auth: AdminAuth) -> AdminResult<Session> {
        Ok(Json(Session {
            role: auth.0.role.as_str().into(),
        }))
    }
}

/// Middleware: records every changing request under `/api/` that carried a valid token
/// (see the module doc). The entry is written after the answer is made and before it is
/// sent; should that write fail, the change stands and the failure is logged (the
/// request is not undone for want of its record).
pub async fn record_changes<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    if !path.starts_with("/api/") || auth::reads_only(req.method()) {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let Some(state) = req.data::<AppState>().cloned() else {
        return next.call(req).await.map(IntoResponse::into_response);
    };
    let Some(role) = auth::role_of_request(&state.config, &req) else {
        return next.call(req).await.map(IntoResponse::into_response);
    };
    let method = req.method().as_str().to_owned();
    let out = next.call(req).await.map(IntoResponse::into_response);
    let status = match &out {
        Ok(r) => r.status(),
        Err(e) => e.status(),
    };
    let entry = Entry::from_request(role.as_str(), &method, &path, status.as_u16());
    if let Err(e) = audit::record(&state.pool, &entry).await {
        tracing::error!(error = %e, method, path, "could not record an admin change in the audit log");
    }
    out
}
