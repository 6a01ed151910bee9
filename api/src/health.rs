//! Liveness and readiness probes.

use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use crate::{ApiTags, error::ErrorBody, state::AppState};

/// `/health` and `/ready`.
pub struct HealthApi;

/// A probe's answer.
#[derive(Object)]
pub struct HealthStatus {
    /// `ok` for liveness, `ready` for readiness.
    pub status: String,
}

/// `GET /ready`'s answers.
#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers and every migration is applied.
    #[oai(status = 200)]
    Ready(Json<HealthStatus>),
    /// The database is unreachable or not migrated.
    #[oai(status = 503)]
    NotReady(Json<ErrorBody>),
}

#[OpenApi]
impl HealthApi {
    /// Liveness: the process serves HTTP.
    #[oai(path = "/health", method = "get", tag = "ApiTags::Health")]
    async fn health(&self) -> Json<HealthStatus> {
        Json(HealthStatus {
            status: "ok".into(),
        })
    }

    /// Readiness: the database is reachable and migrations are applied.
    #[oai(path = "/ready", method = "get", tag = "ApiTags::Health")]
    async fn ready(&self, state: Data<&AppState>) -> ReadyResponse {
        let not_ready = |detail: String| {
            ReadyResponse::NotReady(Json(ErrorBody {
                error: "not_ready".into(),
                detail,
            }))
        };
        if state.db.is_down() {
            return not_ready("the database is unreachable".into());
        }
        match hookq_core::db::migrations_applied(&state.pool).await {
            Ok(true) => ReadyResponse::Ready(Json(HealthStatus {
                status: "ready".into(),
            })),
            Ok(false) => not_ready("migrations are not applied: run `hookq migrate`".into()),
            Err(e) => {
                // The cause stays in the log: this route is unauthenticated.
                tracing::warn!(error = %e, "readiness check failed");
                not_ready("the database is unreachable".into())
            }
        }
    }
}
