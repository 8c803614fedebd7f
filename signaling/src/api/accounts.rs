//! Login, logout and the accounts of administrators and organizers.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::throttle::{Allowed, Source};
use super::{Admin, ApiError, ApiState, ClientAddr, ErrorBody, Json, Path, SignedIn};
use crate::SECURITY;
use crate::metrics::Refusal;
use crate::store::{Account, AccountPatch, AccountRole, NewAccount, unix_ms};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The bearer token for `Authorization: Bearer <token>`.
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
    pub account: Account,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub username: String,
    pub display_name: String,
    pub password: String,
    pub role: AccountRole,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    pub display_name: Option<String>,
    pub password: Option<String>,
    pub role: Option<AccountRole>,
    pub disabled: Option<bool>,
}

/// Signs in.
#[utoipa::path(post, path = "/api/login", operation_id = "login", tag = "accounts", request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "wrong username or password, or a disabled account", body = ErrorBody),
        (status = 429, description = "too many failed sign-ins from this address (for this username, or for any); wait `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "too many sign-ins are being checked at once; retry after `Retry-After` seconds", body = ErrorBody),
    ))]
pub(super) async fn login(
    State(state): State<ApiState>,
    ClientAddr(ip): ClientAddr,
    Json(request): Json<LoginRequest>,
) -> Result<axum::Json<LoginResponse>, ApiError> {
    let source = Source::new(ip);
    let throttle = &state.login_throttle;
    match throttle.check(&request.username, source, unix_ms()) {
        Ok(Allowed::Now) => {}
        Ok(Allowed::After(delay)) => tokio::time::sleep(delay).await,
        Err(refused) => {
            if Refusal::SignInThrottled.count() {
                tracing::warn!(target: SECURITY, event = "sign_in_locked_out", username = %request.username, %ip, retry_after_s = refused.retry_after_s, "sign-in refused: too many failures");
            }
            return Err(ApiError::TooManyAttempts(refused.retry_after_s));
        }
    }
    let now = unix_ms();
    let login = match state
        .store
        .login(&request.username, &request.password, now)
        .await
    {
        Ok(login) => login,
        Err(crate::store::StoreError::Busy) => {
            if Refusal::SignInBusy.count() {
                tracing::warn!(target: SECURITY, event = "sign_in_busy", username = %request.username, %ip, "sign-in refused: password hashing is at its bound");
            }
            return Err(ApiError::Busy);
        }
        Err(err) => return Err(err.into()),
    };
    let Some(login) = login else {
        let failures = throttle.failed(&request.username, source, now);
        tracing::warn!(target: SECURITY, event = "sign_in_failed", username = %request.username, %ip, failures, "sign-in failed");
        return Err(ApiError::Unauthorized("wrong username or password"));
    };
    throttle.succeeded(&request.username, source);
    tracing::info!(target: SECURITY, event = "signed_in", username = %request.username, account = %login.account.id, %ip, "signed in");
    Ok(axum::Json(LoginResponse {
        token: login.token,
        expires_at: login.expires_at,
        account: login.account,
    }))
}

/// Signs out: the token stops working.
#[utoipa::path(post, path = "/api/logout", operation_id = "logout", tag = "accounts", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub(super) async fn logout(
    State(state): State<ApiState>,
    signed: SignedIn,
) -> Result<StatusCode, ApiError> {
    state.store.logout(&signed.token).await?;
    state.tickets.forget_login(&signed.token);
    tracing::info!(target: SECURITY, event = "signed_out", account = %signed.account.id, ip = %signed.ip, "signed out");
    Ok(StatusCode::NO_CONTENT)
}

/// The account signed in.
#[utoipa::path(get, path = "/api/me", operation_id = "get_me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Account), (status = 401, body = ErrorBody)))]
pub(super) async fn me(signed: SignedIn) -> axum::Json<Account> {
    axum::Json(signed.account)
}

/// Every account (administrators only).
#[utoipa::path(get, path = "/api/accounts", operation_id = "list_accounts", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Account>),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub(super) async fn list(
    State(state): State<ApiState>,
    _admin: Admin,
) -> Result<axum::Json<Vec<Account>>, ApiError> {
    Ok(axum::Json(state.store.accounts().await?))
}

/// Creates an account (administrators only).
#[utoipa::path(post, path = "/api/accounts", operation_id = "create_account", tag = "accounts", security(("bearer" = [])),
    request_body = CreateAccount,
    responses(
        (status = 201, body = Account),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "the username is taken", body = ErrorBody),
    ))]
pub(super) async fn create(
    State(state): State<ApiState>,
    Admin(admin, ip): Admin,
    Json(request): Json<CreateAccount>,
) -> Result<(StatusCode, axum::Json<Account>), ApiError> {
    let account = state
        .store
        .create_account(&NewAccount {
            username: &request.username,
            display_name: &request.display_name,
            password: &request.password,
            role: request.role,
        })
        .await?;
    tracing::info!(target: SECURITY, event = "account_created", account = %account.id, username = %account.username, role = ?account.role, by = %admin.id, %ip, "account created");
    Ok((StatusCode::CREATED, axum::Json(account)))
}

/// Changes an account (administrators only). A new password or disabling ends its logins.
#[utoipa::path(patch, path = "/api/accounts/{id}", operation_id = "update_account", tag = "accounts", security(("bearer" = [])),
    params(("id" = String, Path, description = "account id")),
    request_body = UpdateAccount,
    responses(
        (status = 200, body = Account),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(super) async fn update(
    State(state): State<ApiState>,
    Admin(admin, ip): Admin,
    Path(id): Path<String>,
    Json(request): Json<UpdateAccount>,
) -> Result<axum::Json<Account>, ApiError> {
    // An administrator who locked themselves out could leave nobody to let them back in.
    if id == admin.id
        && (request.disabled == Some(true) || request.role == Some(AccountRole::Organizer))
    {
        return Err(ApiError::BadRequest(
            "administrators cannot disable or demote themselves".into(),
        ));
    }
    let account = state
        .store
        .update_account(
            &id,
            &AccountPatch {
                display_name: request.display_name.as_deref(),
                password: request.password.as_deref(),
                role: request.role,
                disabled: request.disabled,
            },
        )
        .await?;
    tracing::info!(
        target: SECURITY,
        event = "account_changed",
        account = %account.id,
        username = %account.username,
        role = ?request.role,
        disabled = ?request.disabled,
        password_changed = request.password.is_some(),
        by = %admin.id,
        %ip,
        "account changed"
    );
    Ok(axum::Json(account))
}
