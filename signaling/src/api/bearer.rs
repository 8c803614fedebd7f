//! Who is asking: `Authorization: Bearer <token>` resolved to an enabled account.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use std::net::IpAddr;

use super::{ApiError, ApiState, ClientAddr};
use crate::store::{Account, unix_ms};

/// A signed-in account, the token it signed in with (for logout) and where the request came
/// from (for the security log).
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub account: Account,
    pub token: String,
    pub ip: IpAddr,
}

/// A signed-in administrator, and where the request came from.
#[derive(Debug, Clone)]
pub struct Admin(pub Account, pub IpAddr);

/// Longest token looked up; ours are 64 characters, and anything far longer is not worth a
/// hash and a query.
const MAX_TOKEN: usize = 256;

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN)
        .then_some(token)
}

impl FromRequestParts<ApiState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Ok(ClientAddr(ip)) = ClientAddr::from_request_parts(parts, state).await;
        let token = bearer_token(parts).ok_or(ApiError::Unauthorized(
            "sign in: Authorization: Bearer <token>",
        ))?;
        let account = state
            .store
            .account_for_token(token, unix_ms())
            .await?
            .ok_or(ApiError::Unauthorized("the token is unknown or expired"))?;
        Ok(SignedIn {
            account,
            token: token.to_string(),
            ip,
        })
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let signed = SignedIn::from_request_parts(parts, state).await?;
        if signed.account.is_admin() {
            Ok(Admin(signed.account, signed.ip))
        } else {
            Err(ApiError::Forbidden("this needs an administrator"))
        }
    }
}
