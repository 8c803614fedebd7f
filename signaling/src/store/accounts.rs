//! Accounts of administrators and organizers, and their logins (bearer tokens).
//!
//! Passwords are hashed with argon2id (default parameters) on a blocking thread, because one
//! hash takes tens of milliseconds of CPU and 19 MiB of memory. Hashes are bounded
//! process-wide ([`max_concurrent_hashes`] threads, a few jobs each waiting; beyond, the
//! request is refused as [`StoreError::Busy`]), so a flood of sign-ins costs a known amount
//! of memory and leaves cores to the meetings. A login token is 256 random bits; only its
//! SHA-256 is stored, so a copy of the database does not let anyone sign in.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Store, StoreError, flag, hex, is_id, is_unique_violation, new_id};

/// How long a login lasts.
pub const LOGIN_LIFETIME_MS: i64 = 12 * 3600 * 1000;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountRole {
    /// Everything, including accounts and the site directory.
    Admin,
    /// Schedules and manages their own meetings.
    Organizer,
}

impl AccountRole {
    fn as_str(self) -> &'static str {
        match self {
            AccountRole::Admin => "admin",
            AccountRole::Organizer => "organizer",
        }
    }

    fn parse(text: &str) -> AccountRole {
        // Anything but "admin" gets the lesser rights, so a damaged row never grants more.
        if text == "admin" {
            AccountRole::Admin
        } else {
            AccountRole::Organizer
        }
    }
}

/// An account as shown to people (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: AccountRole,
    pub disabled: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl Account {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            display_name: row.try_get("display_name")?,
            role: AccountRole::parse(&row.try_get::<String, _>("role")?),
            disabled: flag(row.try_get("disabled")?),
            created_at: row.try_get("created_at")?,
        })
    }

    pub fn is_admin(&self) -> bool {
        self.role == AccountRole::Admin
    }
}

/// A new account.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub password: &'a str,
    pub role: AccountRole,
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch<'a> {
    pub display_name: Option<&'a str>,
    pub password: Option<&'a str>,
    pub role: Option<AccountRole>,
    pub disabled: Option<bool>,
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

const ACCOUNT_COLUMNS: &str = "id, username, display_name, role, disabled, created_at";

fn check_username(username: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&username.chars().count())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "a username is 1 to 64 letters, digits, '.', '_', '-' or '@'".into(),
        ))
    }
}

/// A display name: 1 to 64 printable characters, not only spaces.
pub(crate) fn check_name(name: &str, what: &str) -> Result<(), StoreError> {
    let count = name.chars().count();
    if (1..=64).contains(&count) && !name.trim().is_empty() && !name.chars().any(char::is_control) {
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

/// The stored form of a login token.
fn token_hash(token: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

impl Store {
    /// Creates an account; a taken username is a [`StoreError::Conflict`].
    pub async fn create_account(&self, new: &NewAccount<'_>) -> Result<Account, StoreError> {
        check_username(new.username)?;
        check_name(new.display_name, "a display name")?;
        check_password(new.password)?;
        let hash = hash_password(new.password).await?;
        let account = Account {
            id: new_id(),
            username: new.username.to_string(),
            display_name: new.display_name.to_string(),
            role: new.role,
            disabled: false,
            created_at: super::unix_ms(),
        };
        sqlx::query(
            "INSERT INTO accounts (id, username, display_name, password_hash, role, disabled, \
             created_at) VALUES ($1, $2, $3, $4, $5, 0, $6)",
        )
        .bind(&account.id)
        .bind(&account.username)
        .bind(&account.display_name)
        .bind(&hash)
        .bind(account.role.as_str())
        .bind(account.created_at)
        .execute(&self.pool)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict(format!("the username {} is taken", new.username))
            } else {
                err.into()
            }
        })?;
        Ok(account)
    }

    /// Every account, by username.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY username"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(Account::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// One account.
    pub async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Account::from_row).transpose()?)
    }

    /// Changes an account. A new password or disabling the account ends its logins.
    pub async fn update_account(
        &self,
        id: &str,
        patch: &AccountPatch<'_>,
    ) -> Result<Account, StoreError> {
        let current = self.account(id).await?.ok_or(StoreError::NotFound)?;
        if let Some(name) = patch.display_name {
            check_name(name, "a display name")?;
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
            "UPDATE accounts SET display_name = $1, role = $2, disabled = $3 WHERE id = $4",
        )
        .bind(patch.display_name.unwrap_or(&current.display_name))
        .bind(patch.role.unwrap_or(current.role).as_str())
        .bind(i64::from(patch.disabled.unwrap_or(current.disabled)))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(hash) = &hash {
            sqlx::query("UPDATE accounts SET password_hash = $1 WHERE id = $2")
                .bind(hash)
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

    /// Signs in: a new bearer token when the username and password match an enabled account,
    /// `None` otherwise (whichever of the three was wrong is not told).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<Option<Login>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ACCOUNT_COLUMNS}, password_hash FROM accounts WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Spend the same work as for a real account (one argon2 hash, in the same bounded
            // queue), so that response times do not reveal which usernames exist.
            hash_password(password).await?;
            return Ok(None);
        };
        let account = Account::from_row(&row)?;
        let hash: String = row.try_get("password_hash")?;
        if !verify_password(password, &hash).await? || account.disabled {
            return Ok(None);
        }
        let token = hex(&rand::random::<[u8; 32]>());
        let expires_at = now_ms + LOGIN_LIFETIME_MS;
        // Expired logins are swept here, where they are cheap to find and nobody waits long.
        sqlx::query("DELETE FROM logins WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO logins (token_hash, account_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash(&token))
        .bind(&account.id)
        .bind(now_ms)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(Some(Login {
            token,
            expires_at,
            account,
        }))
    }

    /// The enabled account a bearer token signs in, if the token is known and unexpired.
    pub async fn account_for_token(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(
            "SELECT a.id, a.username, a.display_name, a.role, a.disabled, a.created_at \
             FROM logins l JOIN accounts a ON a.id = l.account_id \
             WHERE l.token_hash = $1 AND l.expires_at > $2 AND a.disabled = 0",
        )
        .bind(token_hash(token))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Account::from_row).transpose()?)
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
