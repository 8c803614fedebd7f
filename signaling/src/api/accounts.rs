//! Login, logout, activation links, and accounts: one by one, imported by the thousand from
//! CSV, listed by page.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::attendance::cell;
use super::throttle::{Allowed, Source};
use super::{Admin, ApiError, ApiState, ClientAddr, ErrorBody, Json, Path, Query, SignedIn};
use crate::SECURITY;
use crate::metrics::Refusal;
use crate::store::{
    Account, AccountDraft, AccountPatch, AccountQuery, AccountRole, Activation, Login,
    MAX_PER_PAGE, StoreError, unix_ms,
};

/// Where an activation link leads: the organizer page, which reads the token from the
/// fragment (never sent to the server in a request line, so never in an access log).
pub const ACTIVATION_PATH: &str = "/organizer.html#activate=";
/// Accounts per page when the request does not say.
const DEFAULT_PER_PAGE: u32 = 50;
/// Longest activation token looked up; ours are 64 characters.
const MAX_TOKEN: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// Remember this device: the login lasts 30 days instead of 12 hours (default false).
    #[serde(default)]
    pub remember: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The bearer token for `Authorization: Bearer <token>`.
    pub token: String,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: i64,
    pub account: Account,
}

impl From<Login> for LoginResponse {
    fn from(login: Login) -> Self {
        Self {
            token: login.token,
            expires_at: login.expires_at,
            account: login.account,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub username: String,
    pub display_name: String,
    /// Needed for `admin` and `organizer`. Without it an `official` or `site_operator` waits
    /// for activation, and the answer carries its activation link.
    #[serde(default)]
    pub password: Option<String>,
    pub role: AccountRole,
    /// The site the account belongs to: needed for `official` and `site_operator`.
    #[serde(default)]
    pub site_id: Option<String>,
}

/// A new account, and its activation link when it has no password yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAccount {
    #[serde(flatten)]
    pub account: Account,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub activation: Option<ActivationLink>,
}

/// An activation link: opened once, it lets its account choose a password.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivationLink {
    /// `/organizer.html#activate=<token>`.
    pub activation_link: String,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: i64,
}

impl From<Activation> for ActivationLink {
    fn from(activation: Activation) -> Self {
        Self {
            activation_link: format!("{ACTIVATION_PATH}{}", activation.token),
            expires_at: activation.expires_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    pub display_name: Option<String>,
    pub password: Option<String>,
    pub role: Option<AccountRole>,
    pub disabled: Option<bool>,
    /// Moves the account to this site.
    pub site_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The token from the activation link.
    pub token: String,
    /// The account's new password (8 to 1024 characters).
    pub password: String,
    /// Remember this device, as for `POST /api/login`.
    #[serde(default)]
    pub remember: bool,
}

/// Which accounts `GET /api/accounts` lists. An empty parameter counts as absent.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountListParams {
    /// Part of the username, the display name or the site's name.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub q: Option<String>,
    /// Only the accounts of this site.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub site_id: Option<String>,
    /// Only the accounts of this role.
    #[serde(default, deserialize_with = "empty_as_none")]
    #[param(inline)]
    pub role: Option<AccountRole>,
    /// The page, from 1 (default 1).
    #[serde(default, deserialize_with = "empty_as_none")]
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Accounts per page, 1 to 500 (default 50).
    #[serde(default, deserialize_with = "empty_as_none")]
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
}

/// A query parameter given empty (`?role=`, as a form's "any" choice sends it) is absent.
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = Option::<String>::deserialize(deserializer)?;
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// One page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountList {
    pub accounts: Vec<Account>,
    /// How many accounts match, on every page.
    pub total: i64,
    pub page: u32,
    pub per_page: u32,
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
    let login = state
        .store
        .sign_in(&request.username, &request.password, now, request.remember)
        .await
        .map_err(|err| {
            hashing_refused(err, || {
                tracing::warn!(target: SECURITY, event = "sign_in_busy", username = %request.username, %ip, "sign-in refused: password hashing is at its bound");
            })
        })?;
    let Some(login) = login else {
        let failures = throttle.failed(&request.username, source, now);
        tracing::warn!(target: SECURITY, event = "sign_in_failed", username = %request.username, %ip, failures, "sign-in failed");
        return Err(ApiError::Unauthorized("wrong username or password"));
    };
    throttle.succeeded(&request.username, source);
    tracing::info!(target: SECURITY, event = "signed_in", username = %request.username, account = %login.account.id, remember = request.remember, %ip, "signed in");
    Ok(axum::Json(login.into()))
}

/// The answer to a store error of a sign-in or an activation. `Busy` (password hashing at its
/// bound) is counted, and `log_busy` logs the first of them and one in a hundred after, so
/// that a flood of sign-ins cannot flood the log as well.
fn hashing_refused(err: StoreError, log_busy: impl FnOnce()) -> ApiError {
    if matches!(err, StoreError::Busy) && Refusal::SignInBusy.count() {
        log_busy();
    }
    err.into()
}

/// Signs out: the token stops working.
#[utoipa::path(post, path = "/api/logout", operation_id = "logout", tag = "accounts", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub(super) async fn logout(
    State(state): State<ApiState>,
    signed: SignedIn,
) -> Result<StatusCode, ApiError> {
    state.store.logout(&signed.token).await?;
    tracing::info!(target: SECURITY, event = "signed_out", account = %signed.account.id, ip = %signed.ip, "signed out");
    Ok(StatusCode::NO_CONTENT)
}

/// The account signed in.
#[utoipa::path(get, path = "/api/me", operation_id = "get_me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Account), (status = 401, body = ErrorBody)))]
pub(super) async fn me(signed: SignedIn) -> axum::Json<Account> {
    axum::Json(signed.account)
}

/// One page of accounts, by username, with search and filters (administrators only).
#[utoipa::path(get, path = "/api/accounts", operation_id = "list_accounts", tag = "accounts", security(("bearer" = [])),
    params(AccountListParams),
    responses(
        (status = 200, body = AccountList),
        (status = 400, description = "a parameter is unknown or out of range", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub(super) async fn list(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(params): Query<AccountListParams>,
) -> Result<axum::Json<AccountList>, ApiError> {
    let page = params.page.unwrap_or(1);
    let per_page = params.per_page.unwrap_or(DEFAULT_PER_PAGE);
    if page == 0 || page > 1_000_000 || !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(ApiError::BadRequest(format!(
            "page is 1 to 1000000 and per_page 1 to {MAX_PER_PAGE}"
        )));
    }
    let found = state
        .store
        .account_page(&AccountQuery {
            search: params.q.as_deref(),
            site_id: params.site_id.as_deref(),
            role: params.role,
            page,
            per_page,
        })
        .await?;
    Ok(axum::Json(AccountList {
        accounts: found.accounts,
        total: found.total,
        page,
        per_page,
    }))
}

/// Creates an account (administrators only). An `official` or `site_operator` created without
/// a password waits for activation: the answer carries its activation link, shown once.
#[utoipa::path(post, path = "/api/accounts", operation_id = "create_account", tag = "accounts", security(("bearer" = [])),
    request_body = CreateAccount,
    responses(
        (status = 201, body = CreatedAccount),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "the username is taken", body = ErrorBody),
    ))]
pub(super) async fn create(
    State(state): State<ApiState>,
    Admin(admin, ip): Admin,
    Json(request): Json<CreateAccount>,
) -> Result<(StatusCode, axum::Json<CreatedAccount>), ApiError> {
    let (account, activation) = state
        .store
        .add_account(&AccountDraft {
            username: &request.username,
            display_name: &request.display_name,
            role: request.role,
            site_id: request.site_id.as_deref(),
            password: request.password.as_deref(),
        })
        .await?;
    tracing::info!(target: SECURITY, event = "account_created", account = %account.id, username = %account.username, role = account.role.as_str(), site = ?account.site_id, pending_activation = account.pending_activation, by = %admin.id, %ip, "account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedAccount {
            account,
            activation: activation.map(ActivationLink::from),
        }),
    ))
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
        && (request.disabled == Some(true)
            || request.role.is_some_and(|role| role != AccountRole::Admin))
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
                site_id: request.site_id.as_deref(),
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
        site = ?request.site_id,
        password_changed = request.password.is_some(),
        by = %admin.id,
        %ip,
        "account changed"
    );
    Ok(axum::Json(account))
}

/// A new activation link for an account that has no password yet; the earlier link stops
/// working (administrators only).
#[utoipa::path(post, path = "/api/accounts/{id}/activation", operation_id = "reissue_activation", tag = "accounts", security(("bearer" = [])),
    params(("id" = String, Path, description = "account id")),
    responses(
        (status = 200, body = ActivationLink),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the account has a password already", body = ErrorBody),
    ))]
pub(super) async fn reissue_activation(
    State(state): State<ApiState>,
    Admin(admin, ip): Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<ActivationLink>, ApiError> {
    let activation = state.store.reissue_activation(&id, unix_ms()).await?;
    tracing::info!(target: SECURITY, event = "activation_reissued", account = %id, by = %admin.id, %ip, "activation link reissued");
    Ok(axum::Json(activation.into()))
}

/// Imports accounts from CSV (`username,display_name,role,site_code`): all lines or none
/// (administrators only). Every account waits for activation; the answer is the same lines
/// with each account's activation link, as CSV, shown once.
#[utoipa::path(post, path = "/api/accounts/import", operation_id = "import_accounts", tag = "accounts", security(("bearer" = [])),
    request_body(content = String, content_type = "text/csv"),
    responses(
        (status = 200, description = "`username,display_name,role,site_code,activation_link`, one line per account", content_type = "text/csv", body = String),
        (status = 403, body = ErrorBody),
        (status = 409, description = "a username was taken during the import; nothing was imported", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "bad lines; nothing was imported", body = ErrorBody),
    ))]
pub(super) async fn import(
    State(state): State<ApiState>,
    Admin(admin, ip): Admin,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let imported = state.store.import_accounts(&body, unix_ms()).await?;
    drop(body);
    let fail = |err: csv::Error| {
        tracing::error!(%err, "writing CSV failed");
        ApiError::Internal
    };
    // The answer's size, reserved once rather than grown through copies (150,000 accounts
    // make about 20 MiB); quoting may add a few bytes.
    let size: usize = imported
        .iter()
        .map(|a| {
            a.username.len()
                + a.display_name.len()
                + a.role.as_str().len()
                + a.site_code.as_ref().map_or(0, String::len)
                + ACTIVATION_PATH.len()
                + a.activation_token.len()
                + 8
        })
        .sum();
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(64 + size + size / 64));
    writer
        .write_record([
            "username",
            "display_name",
            "role",
            "site_code",
            "activation_link",
        ])
        .map_err(fail)?;
    for account in &imported {
        writer
            .write_record([
                cell(&account.username).as_ref(),
                cell(&account.display_name).as_ref(),
                account.role.as_str(),
                cell(account.site_code.as_deref().unwrap_or_default()).as_ref(),
                format!("{ACTIVATION_PATH}{}", account.activation_token).as_str(),
            ])
            .map_err(fail)?;
    }
    let csv = writer.into_inner().map_err(|err| {
        tracing::error!(%err, "writing CSV failed");
        ApiError::Internal
    })?;
    tracing::info!(target: SECURITY, event = "accounts_imported", count = imported.len(), by = %admin.id, %ip, "accounts imported");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"activation-links.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

/// Sets an account's first password with its activation link, which then stops working, and
/// signs it in (the same answer as `POST /api/login`).
#[utoipa::path(post, path = "/api/activate", operation_id = "activate_account", tag = "accounts", request_body = ActivateRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 400, description = "the password is not 8 to 1024 characters", body = ErrorBody),
        (status = 401, description = "the link is unknown, used or expired, or the account disabled", body = ErrorBody),
        (status = 503, description = "too many passwords are being hashed at once; retry after `Retry-After` seconds", body = ErrorBody),
    ))]
pub(super) async fn activate(
    State(state): State<ApiState>,
    ClientAddr(ip): ClientAddr,
    Json(request): Json<ActivateRequest>,
) -> Result<axum::Json<LoginResponse>, ApiError> {
    const REFUSED: &str = "the activation link is unknown, used or expired";
    if request.token.is_empty() || request.token.len() > MAX_TOKEN {
        return Err(ApiError::Unauthorized(REFUSED));
    }
    let login = state
        .store
        .activate(
            &request.token,
            &request.password,
            unix_ms(),
            request.remember,
        )
        .await
        .map_err(|err| {
            hashing_refused(err, || {
                tracing::warn!(target: SECURITY, event = "activation_busy", %ip, "activation refused: password hashing is at its bound");
            })
        })?;
    let Some(login) = login else {
        tracing::warn!(target: SECURITY, event = "activation_refused", %ip, "activation refused: unknown, used or expired link");
        return Err(ApiError::Unauthorized(REFUSED));
    };
    tracing::info!(target: SECURITY, event = "account_activated", username = %login.account.username, account = %login.account.id, remember = request.remember, %ip, "account activated and signed in");
    Ok(axum::Json(login.into()))
}
