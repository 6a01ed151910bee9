//! The admin bearer tokens as a poem-openapi security scheme, so every admin route
//! declares it in the OpenAPI document and cannot run without it.
//!
//! Two roles (contract section 12): `HOOKQ_ADMIN_TOKEN` may do everything;
//! `HOOKQ_READONLY_TOKEN` may read (`GET`) and is answered `403` for anything else. Tokens
//! are compared in constant time. With no token configured every admin route answers
//! 401: an unset variable must never mean "open".

use hookq_core::{config::Config, intake::signature::token_eq};
use poem::{Request, http::Method};
use poem_openapi::{SecurityScheme, auth::Bearer};

use crate::{error::ApiError, state::AppState};

/// `Authorization: Bearer <HOOKQ_ADMIN_TOKEN or HOOKQ_READONLY_TOKEN>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "AdminToken", checker = "check_admin")]
pub struct AdminAuth(pub Admin);

/// Proof that the request carried a token allowed to do what it asks; handlers take it
/// as an argument.
#[derive(Debug, Clone, Copy)]
pub struct Admin {
    /// Which token it was.
    pub role: Role,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `HOOKQ_ADMIN_TOKEN`: everything.
    Admin,
    /// `HOOKQ_READONLY_TOKEN`: reads only.
    ReadOnly,
}

impl Role {
    /// As the audit log and `GET /api/session` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "readonly",
        }
    }
}

/// The role `token` carries, if it is one of the configured tokens (both compared in
/// constant time, whichever matches).
pub fn role_of(config: &Config, token: &str) -> Option<Role> {
    let admin = config
        .admin_token
        .as_ref()
        .is_some_and(|t| token_eq(t.expose(), token));
    let readonly = config
        .readonly_token
        .as_ref()
        .is_some_and(|t| token_eq(t.expose(), token));
    match (admin, readonly) {
        (true, _) => Some(Role::Admin),
        (false, true) => Some(Role::ReadOnly),
        (false, false) => None,
    }
}

/// The role of a request's `Authorization: Bearer` token, if any.
pub fn role_of_request(config: &Config, req: &Request) -> Option<Role> {
    let header = req.headers().get(poem::http::header::AUTHORIZATION)?;
    let token = header.to_str().ok()?.strip_prefix("Bearer ")?;
    role_of(config, token.trim())
}

/// Whether `method` only reads.
pub fn reads_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

async fn check_admin(req: &Request, bearer: Bearer) -> poem::Result<Admin> {
    let state = req.data::<AppState>().ok_or_else(|| {
        ApiError::Internal("the API's state is not installed on this route".into())
    })?;
    if state.config.admin_token.is_none() && state.config.readonly_token.is_none() {
        return Err(
            ApiError::Unauthorized("HOOKQ_ADMIN_TOKEN is not configured on this server").into(),
        );
    }
    let Some(role) = role_of(&state.config, &bearer.token) else {
        return Err(ApiError::Unauthorized("invalid admin token").into());
    };
    if role == Role::ReadOnly && !reads_only(req.method()) {
        return Err(ApiError::Forbidden(
            "the read-only token may not change anything: use the admin token".into(),
        )
        .into());
    }
    // Every admin route reads or writes the database: while it is known to be down,
    // say so at once rather than after the pool's acquire timeout.
    if state.db.is_down() {
        return Err(ApiError::Unavailable(crate::error::UNAVAILABLE).into());
    }
    Ok(Admin { role })
}
