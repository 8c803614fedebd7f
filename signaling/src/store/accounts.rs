//! Accounts (administrators, organizers, and the officials and operators of sites), their
//! logins (bearer tokens) and their activation links.
//!
//! Passwords are hashed with argon2id (default parameters) on a blocking thread, because one
//! hash takes tens of milliseconds of CPU and 19 MiB of memory. Hashes are bounded
//! process-wide ([`max_concurrent_hashes`] threads, a few jobs each waiting; beyond, the
//! request is refused as [`StoreError::Busy`]), so a flood of sign-ins costs a known amount
//! of memory and leaves cores to the meetings. A login token is 256 random bits; only its
//! SHA-256 is stored, so a copy of the database does not let anyone sign in. A login is
//! checked by that hash alone, never by a password hash, so a remembered login (30 days) costs
//! a site opening its meetings page one indexed query.
//!
//! An account created without a password (a site's, one by one or by the thousand from a CSV
//! file) waits for activation: its password hash is empty, which no password matches, and it
//! has an activation token, 256 random bits stored as their SHA-256 like login tokens, that
//! sets the password once.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

pub use formats::accounts::AccountRole;
pub(crate) use formats::accounts::{is_display_name, username_problem};

use super::{Store, StoreError, flag, hex, is_id, is_unique_violation, new_id};

/// How long a login lasts.
pub const LOGIN_LIFETIME_MS: i64 = 12 * 3600 * 1000;
/// How long a login lasts when the device is remembered.
pub const REMEMBERED_LOGIN_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long an activation link stays valid.
pub const ACTIVATION_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most accounts one page of the account list holds.
pub const MAX_PER_PAGE: u32 = 500;

/// An account as shown to people (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: AccountRole,
    /// The site the account belongs to (always set for `official` and `site_operator`).
    pub site_id: Option<String>,
    pub site_code: Option<String>,
    pub site_name: Option<String>,
    pub disabled: bool,
    /// The account has no password yet: it signs in once its activation link set one.
    pub pending_activation: bool,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl Account {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            display_name: row.try_get("display_name")?,
            role: AccountRole::from_stored(&row.try_get::<String, _>("role")?),
            site_id: row.try_get("site_id")?,
            site_code: row.try_get("site_code")?,
            site_name: row.try_get("site_name")?,
            disabled: flag(row.try_get("disabled")?),
            pending_activation: flag(row.try_get("pending")?),
            created_at: row.try_get("created_at")?,
        })
    }

    pub fn is_admin(&self) -> bool {
        self.role == AccountRole::Admin
    }
}

/// A new account with a password, of no site.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub password: &'a str,
    pub role: AccountRole,
}

/// A new account of any role: it may belong to a site, and one of a site's roles may come
/// without a password, to be activated by a link.
#[derive(Debug, Clone)]
pub struct AccountDraft<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub role: AccountRole,
    pub site_id: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// An activation link's secret, shown once (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch<'a> {
    pub display_name: Option<&'a str>,
    pub password: Option<&'a str>,
    pub role: Option<AccountRole>,
    pub disabled: Option<bool>,
    pub site_id: Option<&'a str>,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The bearer token; shown once, stored only as a hash.
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
    pub account: Account,
}

/// Which accounts to list, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct AccountQuery<'a> {
    /// Part of the username, the display name or the site's name (letters compared without
    /// case where the database folds them: ASCII in SQLite, all of Unicode in PostgreSQL).
    pub search: Option<&'a str>,
    pub site_id: Option<&'a str>,
    pub role: Option<AccountRole>,
    /// From 1.
    pub page: u32,
    /// 1 to [`MAX_PER_PAGE`].
    pub per_page: u32,
}

/// One page of accounts, by username, and how many match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPage {
    pub accounts: Vec<Account>,
    pub total: i64,
}

/// Every column [`Account::from_row`] reads (`pending` is 1 while no password is set), and
/// the tables they come from.
const ACCOUNT_SELECT: &str = "SELECT a.id, a.username, a.display_name, a.role, a.disabled, \
     a.created_at, a.site_id, s.code AS site_code, s.name AS site_name, \
     CAST(CASE WHEN a.password_hash = '' THEN 1 ELSE 0 END AS BIGINT) AS pending";
const ACCOUNT_FROM: &str = " FROM accounts a LEFT JOIN sites s ON s.id = a.site_id";

fn check_username(username: &str) -> Result<(), StoreError> {
    username_problem(username).map_or(Ok(()), |problem| Err(StoreError::Invalid(problem)))
}

/// A display name: 1 to 64 printable characters, not only spaces.
pub(crate) fn check_name(name: &str, what: &str) -> Result<(), StoreError> {
    if is_display_name(name) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} must be 1 to 64 printable characters"
        )))
    }
}

fn check_password(password: &str) -> Result<(), StoreError> {
    if (8..=1024).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "a password is 8 to 1024 characters".into(),
        ))
    }
}

/// Password hashes that run at once: half the cores (at least one, at most eight), so that a
/// flood of sign-ins leaves the other half to media and signaling, and holds at most
/// 8 × 19 MiB.
pub fn max_concurrent_hashes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, 8)
}

/// Hashes that may wait for a thread, per thread; past that a request is refused at once.
pub const WAITING_HASHES_PER_SLOT: usize = 4;

type HashJob = Box<dyn FnOnce() + Send>;

/// The threads that hash passwords, and their queue. Dedicated threads rather than tokio's
/// blocking pool: each keeps its own allocator arena, so the memory a hash touched is reused
/// by the next one on that thread, and what the process keeps after a flood is bounded by the
/// thread count, not by how many pool threads a flood once woke.
static HASH_QUEUE: LazyLock<Option<std::sync::mpsc::SyncSender<HashJob>>> = LazyLock::new(|| {
    let threads = max_concurrent_hashes();
    let (jobs, queue) = std::sync::mpsc::sync_channel::<HashJob>(WAITING_HASHES_PER_SLOT * threads);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    for n in 0..threads {
        let queue = queue.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("password-hash-{n}"))
            .spawn(move || {
                loop {
                    // The lock is held only to take the next job, never while hashing.
                    let job = queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "a password hashing thread did not start");
        }
    }
    Some(jobs)
});

/// Runs `work` (one argon2 hash) on a hashing thread; [`StoreError::Busy`] when the queue is
/// full.
async fn bounded_hash<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: HashJob = Box::new(move || {
        let _ = done.send(work());
    });
    let queue = HASH_QUEUE
        .as_ref()
        .ok_or_else(|| StoreError::Task("no password hashing threads".into()))?;
    queue.try_send(job).map_err(|err| match err {
        std::sync::mpsc::TrySendError::Full(_) => StoreError::Busy,
        std::sync::mpsc::TrySendError::Disconnected(_) => {
            StoreError::Task("the password hashing threads stopped".into())
        }
    })?;
    result
        .await
        .map_err(|_| StoreError::Task("a password hash was abandoned".into()))?
}

/// The argon2id hash of `password` (PHC string), computed on a hashing thread.
async fn hash_password(password: &str) -> Result<String, StoreError> {
    let password = password.to_string();
    bounded_hash(move || argon::hash(&password)).await
}

/// Whether `password` matches the PHC string `hash`, computed on a hashing thread.
async fn verify_password(password: &str, hash: &str) -> Result<bool, StoreError> {
    let password = password.to_string();
    let hash = hash.to_string();
    bounded_hash(move || argon::verify(&password, &hash)).await
}

/// argon2id over memory each hashing thread keeps. `argon2`'s own `hash_password` allocates
/// its 19 MiB afresh for every hash, and the allocator kept each one resident: a run of
/// sign-ins on one thread grew the process by 19 MiB a hash, up to 200 MiB.
mod argon {
    use std::cell::RefCell;

    use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
    use argon2::{Algorithm, Argon2, Block, Params, Version};

    use super::StoreError;

    thread_local! {
        static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
    }

    fn failed(err: impl std::fmt::Display) -> StoreError {
        StoreError::Password(err.to_string())
    }

    /// Fills `out` with the raw hash, in this thread's memory. Parameters above the default
    /// (a hash stored by another configuration) get memory of their own, which is freed.
    fn raw(
        argon: &Argon2<'_>,
        params: &Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), StoreError> {
        let needed = params.block_count();
        if needed > Params::DEFAULT.block_count() {
            let mut own = vec![Block::default(); needed];
            return argon
                .hash_password_into_with_memory(password, salt, out, &mut own[..])
                .map_err(failed);
        }
        MEMORY.with_borrow_mut(|memory| {
            if memory.len() < needed {
                memory.resize(needed, Block::default());
            }
            argon
                .hash_password_into_with_memory(password, salt, out, &mut memory[..needed])
                .map_err(failed)
        })
    }

    /// A new PHC string for `password`: argon2id, default parameters, a random salt.
    pub(super) fn hash(password: &str) -> Result<String, StoreError> {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(failed)?;
        let params = Params::DEFAULT;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(failed)?;
        let length = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = Output::init_with(length, |out| {
            raw(&argon, &params, password.as_bytes(), salt_bytes, out)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
        .map_err(failed)?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(failed)?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the PHC string `phc` (any argon2 variant and parameters).
    pub(super) fn verify(password: &str, phc: &str) -> Result<bool, StoreError> {
        let parsed = PasswordHash::new(phc).map_err(failed)?;
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(failed)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(failed)?
            .unwrap_or_default();
        let params = Params::try_from(&parsed).map_err(failed)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Err(failed("the stored hash has no salt or no output"));
        };
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(failed)?;
        let argon = Argon2::new(algorithm, version, params.clone());
        let computed = Output::init_with(expected.len(), |out| {
            raw(&argon, &params, password.as_bytes(), salt_bytes, out)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
        .map_err(failed)?;
        // `Output`'s comparison takes the same time whatever the bytes.
        Ok(computed == expected)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn hashes_verify_here_and_with_the_argon2_crate_and_back() {
            use argon2::PasswordVerifier;
            let phc = hash("a long password").expect("hash");
            assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
            assert!(verify("a long password", &phc).expect("verify"));
            assert!(!verify("another password", &phc).expect("verify"));
            let parsed = PasswordHash::new(&phc).expect("parse");
            assert!(
                Argon2::default()
                    .verify_password(b"a long password", &parsed)
                    .is_ok()
            );
            // A hash made by the crate itself, with other parameters, verifies here.
            use argon2::PasswordHasher;
            let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
            let theirs = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(8 * 1024, 1, 1, None).expect("params"),
            )
            .hash_password(b"pw-of-theirs", &salt)
            .expect("hash")
            .to_string();
            assert!(verify("pw-of-theirs", &theirs).expect("verify"));
            assert!(!verify("not it", &theirs).expect("verify"));
        }

        /// Hashing on one thread reuses its memory: the process does not grow a hash at a
        /// time.
        #[test]
        fn repeated_hashes_on_one_thread_reuse_their_memory() {
            fn rss_mib() -> u64 {
                std::fs::read_to_string("/proc/self/status")
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    / 1024
            }
            std::thread::spawn(|| {
                hash("warm up").expect("hash");
                let before = rss_mib();
                for _ in 0..10 {
                    hash("a long password").expect("hash");
                }
                let grew = rss_mib().saturating_sub(before);
                assert!(grew < 64, "10 hashes grew the process by {grew} MiB");
            })
            .join()
            .expect("thread");
        }
    }
}

/// The stored form of a login or activation token.
pub(crate) fn token_hash(token: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

/// A fresh login or activation token: 256 random bits as 64 hex characters.
pub(crate) fn new_token() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// `%text%` for `LIKE … ESCAPE '\'`, with the text's own wildcards taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Stores a new login for `account_id` and returns its token.
async fn insert_login(
    connection: &mut sqlx::AnyConnection,
    account_id: &str,
    now_ms: i64,
    expires_at: i64,
) -> Result<String, StoreError> {
    let token = new_token();
    // Expired logins are swept here, where they are cheap to find (an index on the expiry)
    // and nobody waits long.
    sqlx::query("DELETE FROM logins WHERE expires_at <= $1")
        .bind(now_ms)
        .execute(&mut *connection)
        .await?;
    sqlx::query(
        "INSERT INTO logins (token_hash, account_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash(&token))
    .bind(account_id)
    .bind(now_ms)
    .bind(expires_at)
    .execute(&mut *connection)
    .await?;
    Ok(token)
}

/// Stores a new activation token for `account_id`, replacing any earlier one.
async fn insert_activation(
    connection: &mut sqlx::AnyConnection,
    account_id: &str,
    now_ms: i64,
) -> Result<Activation, StoreError> {
    let activation = Activation {
        token: new_token(),
        expires_at: now_ms + ACTIVATION_LIFETIME_MS,
    };
    sqlx::query("DELETE FROM activations WHERE account_id = $1")
        .bind(account_id)
        .execute(&mut *connection)
        .await?;
    sqlx::query(
        "INSERT INTO activations (token_hash, account_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash(&activation.token))
    .bind(account_id)
    .bind(now_ms)
    .bind(activation.expires_at)
    .execute(&mut *connection)
    .await?;
    Ok(activation)
}

fn lifetime(remember: bool) -> i64 {
    if remember {
        REMEMBERED_LOGIN_LIFETIME_MS
    } else {
        LOGIN_LIFETIME_MS
    }
}

impl Store {
    /// Creates an account with a password and no site; a taken username is a
    /// [`StoreError::Conflict`].
    pub async fn create_account(&self, new: &NewAccount<'_>) -> Result<Account, StoreError> {
        let (account, _) = self
            .add_account(&AccountDraft {
                username: new.username,
                display_name: new.display_name,
                role: new.role,
                site_id: None,
                password: Some(new.password),
            })
            .await?;
        Ok(account)
    }

    /// Creates an account of any role. A site's role needs a site; an account without a
    /// password (a site's role only) waits for activation, and its activation token is
    /// returned. A taken username is a [`StoreError::Conflict`].
    pub async fn add_account(
        &self,
        draft: &AccountDraft<'_>,
    ) -> Result<(Account, Option<Activation>), StoreError> {
        check_username(draft.username)?;
        check_name(draft.display_name, "a display name")?;
        if draft.role.needs_site() && draft.site_id.is_none() {
            return Err(StoreError::Invalid(format!(
                "an account of role {} belongs to a site: site_id is needed",
                draft.role.as_str()
            )));
        }
        if let Some(site_id) = draft.site_id
            && self.site(site_id).await?.is_none()
        {
            return Err(StoreError::Invalid(format!("no site has the id {site_id}")));
        }
        let hash = match draft.password {
            Some(password) => {
                check_password(password)?;
                hash_password(password).await?
            }
            None if draft.role.needs_site() => String::new(),
            None => {
                return Err(StoreError::Invalid(format!(
                    "an account of role {} needs a password",
                    draft.role.as_str()
                )));
            }
        };
        let id = new_id();
        let now = super::unix_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO accounts (id, username, display_name, password_hash, role, disabled, \
             created_at, site_id) VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
        )
        .bind(&id)
        .bind(draft.username)
        .bind(draft.display_name.trim())
        .bind(&hash)
        .bind(draft.role.as_str())
        .bind(now)
        .bind(draft.site_id)
        .execute(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict(format!("the username {} is taken", draft.username))
            } else {
                err.into()
            }
        })?;
        let activation = if hash.is_empty() {
            Some(insert_activation(&mut tx, &id, now).await?)
        } else {
            None
        };
        tx.commit().await?;
        let account = self.account(&id).await?.ok_or(StoreError::NotFound)?;
        Ok((account, activation))
    }

    /// Every account, by username.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACCOUNT_SELECT}{ACCOUNT_FROM} ORDER BY a.username, a.id"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(Account::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// One page of the accounts that match `query`, by username, and how many match.
    pub async fn account_page(&self, query: &AccountQuery<'_>) -> Result<AccountPage, StoreError> {
        if !(1..=MAX_PER_PAGE).contains(&query.per_page) || query.page == 0 {
            return Err(StoreError::Invalid(format!(
                "page counts from 1 and per_page is 1 to {MAX_PER_PAGE}"
            )));
        }
        let mut conditions: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if let Some(search) = query.search.map(str::trim).filter(|s| !s.is_empty()) {
            binds.push(like_pattern(search));
            let n = binds.len();
            conditions.push(format!(
                "(LOWER(a.username) LIKE LOWER(${n}) ESCAPE '\\' \
                 OR LOWER(a.display_name) LIKE LOWER(${n}) ESCAPE '\\' \
                 OR LOWER(s.name) LIKE LOWER(${n}) ESCAPE '\\')"
            ));
        }
        if let Some(site_id) = query.site_id {
            binds.push(site_id.to_string());
            conditions.push(format!("a.site_id = ${}", binds.len()));
        }
        if let Some(role) = query.role {
            binds.push(role.as_str().to_string());
            conditions.push(format!("a.role = ${}", binds.len()));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let count_sql = format!(
            "SELECT COUNT(*) AS n FROM accounts a LEFT JOIN sites s ON s.id = a.site_id{filter}"
        );
        let mut count = sqlx::query(sqlx::AssertSqlSafe(count_sql));
        for value in &binds {
            count = count.bind(value);
        }
        let total: i64 = count.fetch_one(&self.pool).await?.try_get("n")?;
        let page_sql = format!(
            "{ACCOUNT_SELECT}{ACCOUNT_FROM}{filter} ORDER BY a.username, a.id LIMIT ${} OFFSET ${}",
            binds.len() + 1,
            binds.len() + 2
        );
        let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql));
        for value in &binds {
            page = page.bind(value);
        }
        let offset = i64::from(query.page - 1) * i64::from(query.per_page);
        let rows = page
            .bind(i64::from(query.per_page))
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        Ok(AccountPage {
            accounts: rows
                .iter()
                .map(Account::from_row)
                .collect::<Result<_, _>>()?,
            total,
        })
    }

    /// One account.
    pub async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACCOUNT_SELECT}{ACCOUNT_FROM} WHERE a.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Account::from_row).transpose()?)
    }

    /// Changes an account. A new password or disabling the account ends its logins; a new
    /// password also ends its activation link.
    pub async fn update_account(
        &self,
        id: &str,
        patch: &AccountPatch<'_>,
    ) -> Result<Account, StoreError> {
        let current = self.account(id).await?.ok_or(StoreError::NotFound)?;
        if let Some(name) = patch.display_name {
            check_name(name, "a display name")?;
        }
        if let Some(site_id) = patch.site_id
            && self.site(site_id).await?.is_none()
        {
            return Err(StoreError::Invalid(format!("no site has the id {site_id}")));
        }
        let role = patch.role.unwrap_or(current.role);
        let site_id = patch.site_id.or(current.site_id.as_deref());
        if role.needs_site() && site_id.is_none() {
            return Err(StoreError::Invalid(format!(
                "an account of role {} belongs to a site: site_id is needed",
                role.as_str()
            )));
        }
        let hash = match patch.password {
            Some(password) => {
                check_password(password)?;
                Some(hash_password(password).await?)
            }
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE accounts SET display_name = $1, role = $2, disabled = $3, site_id = $5 \
             WHERE id = $4",
        )
        .bind(patch.display_name.unwrap_or(&current.display_name).trim())
        .bind(role.as_str())
        .bind(i64::from(patch.disabled.unwrap_or(current.disabled)))
        .bind(id)
        .bind(site_id)
        .execute(&mut *tx)
        .await?;
        if let Some(hash) = &hash {
            sqlx::query("UPDATE accounts SET password_hash = $1 WHERE id = $2")
                .bind(hash)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM activations WHERE account_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if hash.is_some() || patch.disabled == Some(true) {
            sqlx::query("DELETE FROM logins WHERE account_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.account(id).await?.ok_or(StoreError::NotFound)
    }

    /// Signs in for [`LOGIN_LIFETIME_MS`]; see [`Store::sign_in`].
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<Option<Login>, StoreError> {
        self.sign_in(username, password, now_ms, false).await
    }

    /// Signs in: a new bearer token when the username and password match an enabled,
    /// activated account, `None` otherwise (whichever was wrong is not told). A remembered
    /// login lasts [`REMEMBERED_LOGIN_LIFETIME_MS`], another [`LOGIN_LIFETIME_MS`].
    pub async fn sign_in(
        &self,
        username: &str,
        password: &str,
        now_ms: i64,
        remember: bool,
    ) -> Result<Option<Login>, StoreError> {
        // The username is unique, so this is one lookup in its index whatever the number of
        // accounts.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACCOUNT_SELECT}, a.password_hash{ACCOUNT_FROM} WHERE a.username = $1"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let hash = row
            .as_ref()
            .map(|row| row.try_get::<String, _>("password_hash"))
            .transpose()?;
        let (Some(row), Some(hash)) = (row, hash.filter(|h| !h.is_empty())) else {
            // Spend the same work as for a real account (one argon2 hash, in the same bounded
            // queue), so that response times reveal neither which usernames exist nor which
            // accounts still wait for activation.
            hash_password(password).await?;
            return Ok(None);
        };
        let account = Account::from_row(&row)?;
        if !verify_password(password, &hash).await? || account.disabled {
            return Ok(None);
        }
        let expires_at = now_ms + lifetime(remember);
        let mut connection = self.pool.acquire().await?;
        let token = insert_login(&mut connection, &account.id, now_ms, expires_at).await?;
        Ok(Some(Login {
            token,
            expires_at,
            account,
        }))
    }

    /// Sets the password of the account an activation token names, once: the token is then
    /// spent, and the account is signed in. `None` when the token is unknown, spent or
    /// expired, or the account is disabled.
    pub async fn activate(
        &self,
        token: &str,
        password: &str,
        now_ms: i64,
        remember: bool,
    ) -> Result<Option<Login>, StoreError> {
        let hashed_token = token_hash(token);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACCOUNT_SELECT}{ACCOUNT_FROM} JOIN activations t ON t.account_id = a.id \
             WHERE t.token_hash = $1 AND t.expires_at > $2"
        )))
        .bind(&hashed_token)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let account = Account::from_row(&row)?;
        if account.disabled {
            return Ok(None);
        }
        // The token is checked before the password is hashed, so unknown tokens cost no hash.
        check_password(password)?;
        let hash = hash_password(password).await?;
        let mut tx = self.pool.begin().await?;
        // Whoever deletes the token first activates; a second use of the same link, even at
        // the same moment, finds nothing to delete.
        let spent =
            sqlx::query("DELETE FROM activations WHERE token_hash = $1 AND expires_at > $2")
                .bind(&hashed_token)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        if spent.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query("UPDATE accounts SET password_hash = $1 WHERE id = $2")
            .bind(&hash)
            .bind(&account.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM activations WHERE account_id = $1")
            .bind(&account.id)
            .execute(&mut *tx)
            .await?;
        let expires_at = now_ms + lifetime(remember);
        let token = insert_login(&mut tx, &account.id, now_ms, expires_at).await?;
        tx.commit().await?;
        let account = self
            .account(&account.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(Some(Login {
            token,
            expires_at,
            account,
        }))
    }

    /// A new activation link for an account that waits for activation (the earlier one stops
    /// working); [`StoreError::Conflict`] once it has a password.
    pub async fn reissue_activation(
        &self,
        account_id: &str,
        now_ms: i64,
    ) -> Result<Activation, StoreError> {
        let account = self
            .account(account_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if !account.pending_activation {
            return Err(StoreError::Conflict(
                "the account is activated already: change its password instead".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let activation = insert_activation(&mut tx, &account.id, now_ms).await?;
        tx.commit().await?;
        Ok(activation)
    }

    /// The enabled account a bearer token signs in, if the token is known and unexpired.
    pub async fn account_for_token(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACCOUNT_SELECT}{ACCOUNT_FROM} JOIN logins l ON l.account_id = a.id \
             WHERE l.token_hash = $1 AND l.expires_at > $2 AND a.disabled = 0"
        )))
        .bind(token_hash(token))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Account::from_row).transpose()?)
    }

    /// The hashes of the unexpired logins of an enabled account (file tickets verify against
    /// them: a ticket dies with the login that asked for it).
    pub async fn login_hashes(
        &self,
        account_id: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.token_hash FROM logins l JOIN accounts a ON a.id = l.account_id \
             WHERE l.account_id = $1 AND l.expires_at > $2 AND a.disabled = 0",
        )
        .bind(account_id)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<String, _>(0).ok())
            .collect())
    }

    /// Ends a login.
    pub async fn logout(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM logins WHERE token_hash = $1")
            .bind(token_hash(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::stores;
    use crate::store::unix_ms;

    fn alice() -> NewAccount<'static> {
        NewAccount {
            username: "alice",
            display_name: "Alice Nguyễn",
            password: "correct horse",
            role: AccountRole::Organizer,
        }
    }

    /// Sign-in, the check of a login on every request, the sweep of expired logins and an
    /// activation are each a lookup in an index, so their cost does not grow with 150,000
    /// accounts and their logins (SQLite's plans; PostgreSQL has the same indexes).
    #[tokio::test]
    async fn sign_in_and_session_checks_are_index_lookups() {
        let t = stores().await.remove(0);
        assert_eq!(t.store.backend(), crate::store::Backend::Sqlite);
        for sql in [
            format!("{ACCOUNT_SELECT}, a.password_hash{ACCOUNT_FROM} WHERE a.username = 'x'"),
            format!(
                "{ACCOUNT_SELECT}{ACCOUNT_FROM} JOIN logins l ON l.account_id = a.id \
                 WHERE l.token_hash = 'x' AND l.expires_at > 0 AND a.disabled = 0"
            ),
            format!(
                "{ACCOUNT_SELECT}{ACCOUNT_FROM} JOIN activations t ON t.account_id = a.id \
                 WHERE t.token_hash = 'x' AND t.expires_at > 0"
            ),
            "DELETE FROM logins WHERE expires_at <= 0".to_string(),
        ] {
            let plan: Vec<String> =
                sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&t.store.pool)
                    .await
                    .expect("a plan")
                    .iter()
                    .map(|row| row.try_get("detail").expect("detail"))
                    .collect();
            assert!(
                !plan.is_empty() && plan.iter().all(|step| step.starts_with("SEARCH")),
                "a table is scanned: {plan:?} for {sql}"
            );
        }
        t.finish().await;
    }

    #[tokio::test]
    async fn accounts_and_logins() {
        for t in stores().await {
            let store = &t.store;
            let account = store.create_account(&alice()).await.expect("created");
            assert_eq!(account.id.len(), 32);
            assert!(matches!(
                store.create_account(&alice()).await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store
                    .create_account(&NewAccount {
                        username: "bob",
                        password: "short",
                        ..alice()
                    })
                    .await,
                Err(StoreError::Invalid(_))
            ));
            let now = unix_ms();
            assert!(
                store
                    .login("alice", "wrong password", now)
                    .await
                    .expect("query")
                    .is_none()
            );
            assert!(
                store
                    .login("nobody", "correct horse", now)
                    .await
                    .expect("query")
                    .is_none()
            );
            let login = store
                .login("alice", "correct horse", now)
                .await
                .expect("query")
                .expect("signed in");
            assert_eq!(login.token.len(), 64);
            assert_eq!(login.expires_at, now + LOGIN_LIFETIME_MS);
            let found = store
                .account_for_token(&login.token, now)
                .await
                .expect("query");
            assert_eq!(
                found.as_ref().map(|a| a.id.as_str()),
                Some(account.id.as_str())
            );
            // Expired, unknown, then logged out.
            assert!(
                store
                    .account_for_token(&login.token, login.expires_at)
                    .await
                    .expect("query")
                    .is_none()
            );
            assert!(
                store
                    .account_for_token("garbage", now)
                    .await
                    .expect("query")
                    .is_none()
            );
            store.logout(&login.token).await.expect("logout");
            assert!(
                store
                    .account_for_token(&login.token, now)
                    .await
                    .expect("query")
                    .is_none()
            );

            // Disabling ends logins and refuses new ones; a new password replaces the old.
            let login = store
                .login("alice", "correct horse", now)
                .await
                .expect("query")
                .expect("signed in");
            let patched = store
                .update_account(
                    &account.id,
                    &AccountPatch {
                        disabled: Some(true),
                        role: Some(AccountRole::Admin),
                        ..AccountPatch::default()
                    },
                )
                .await
                .expect("patched");
            assert!(patched.disabled);
            assert_eq!(patched.role, AccountRole::Admin);
            assert!(
                store
                    .account_for_token(&login.token, now)
                    .await
                    .expect("query")
                    .is_none()
            );
            assert!(
                store
                    .login("alice", "correct horse", now)
                    .await
                    .expect("query")
                    .is_none()
            );
            store
                .update_account(
                    &account.id,
                    &AccountPatch {
                        disabled: Some(false),
                        password: Some("battery staple"),
                        ..AccountPatch::default()
                    },
                )
                .await
                .expect("patched");
            assert!(
                store
                    .login("alice", "correct horse", now)
                    .await
                    .expect("query")
                    .is_none()
            );
            assert!(
                store
                    .login("alice", "battery staple", now)
                    .await
                    .expect("query")
                    .is_some()
            );
            assert_eq!(store.accounts().await.expect("list").len(), 1);
            assert!(matches!(
                store
                    .update_account(&new_id(), &AccountPatch::default())
                    .await,
                Err(StoreError::NotFound)
            ));
            t.finish().await;
        }
    }
}
