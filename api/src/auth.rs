//! The admin bearer token (`HOOKQ_ADMIN_TOKEN`) as a poem-openapi security scheme, so
//! every admin route declares it in the OpenAPI document and cannot run without it.
//!
//! The token is compared in constant time. With no token configured every admin route
//! answers 401: an unset variable must never mean "open".

use hookq_core::intake::signature::token_eq;
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use crate::{error::ApiError, state::AppState};

/// `Authorization: Bearer <HOOKQ_ADMIN_TOKEN>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "AdminToken", checker = "check_admin")]
pub struct AdminAuth(pub Admin);

/// Proof that the request carried the admin token; handlers take it as an argument.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

async fn check_admin(req: &Request, bearer: Bearer) -> poem::Result<Admin> {
    let state = req.data::<AppState>().ok_or_else(|| {
        ApiError::Internal("the API's state is not installed on this route".into())
    })?;
    let Some(expected) = &state.config.admin_token else {
        return Err(
            ApiError::Unauthorized("HOOKQ_ADMIN_TOKEN is not configured on this server").into(),
        );
    };
    if !token_eq(expected.expose(), &bearer.token) {
        return Err(ApiError::Unauthorized("invalid admin token").into());
    }
    // Every admin route reads or writes the database: while it is known to be down,
    // say so at once rather than after the pool's acquire timeout.
    if state.db.is_down() {
        return Err(ApiError::Unavailable(crate::error::UNAVAILABLE).into());
    }
    Ok(Admin)
}
