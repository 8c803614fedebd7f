//! Persistent state behind one interface, in SQLite (the default, an embedded file) or
//! PostgreSQL (chosen by a `postgres://` URL).
//!
//! Both databases are reached through sqlx's `Any` driver with one set of queries: `$N`
//! placeholders (which SQLite accepts too), times as integer milliseconds since the Unix epoch,
//! flags as 0/1 integers and ids as 32 hex characters. Each database has its own migration
//! folder, because their DDL differs.

mod account_import;
mod accounts;
mod attendance;
mod meetings;
mod recordings;
mod sites;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;

pub use account_import::{ImportedAccount, MAX_IMPORTED_ACCOUNTS};
pub(crate) use accounts::token_hash;
pub use accounts::{
    ACTIVATION_LIFETIME_MS, Account, AccountDraft, AccountPage, AccountPatch, AccountQuery,
    AccountRole, Activation, LOGIN_LIFETIME_MS, Login, MAX_PER_PAGE, NewAccount,
    REMEMBERED_LOGIN_LIFETIME_MS, WAITING_HASHES_PER_SLOT, max_concurrent_hashes,
};
pub use attendance::AttendanceRow;
pub use meetings::{
    Admission, Invitation, InvitedMeeting, Invitee, JoinCheck, MAX_INVITATIONS, MAX_MY_MEETINGS,
    MAX_MY_PAST_MEETINGS, Meeting, MeetingPatch, MeetingStatus, NewMeeting,
};
pub use recordings::{RecordingRow, RecordingStatus};
pub use sites::{CsvLineError, ImportOutcome, NewSite, Site, SiteKind};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// Something with the same unique name already exists.
    #[error("{0}")]
    Conflict(String),
    /// The thing named does not exist.
    #[error("not found")]
    NotFound,
    /// The request breaks a rule of the data (a length, an order of times, a reference).
    #[error("{0}")]
    Invalid(String),
    /// A CSV import was refused; every bad line is listed.
    #[error("the file has {} bad line(s)", .0.len())]
    InvalidCsv(Vec<CsvLineError>),
    /// Hashing a password failed (it does not for valid parameters), or a stored hash is not
    /// one this server can read.
    #[error("password hashing: {0}")]
    Password(String),
    #[error("a background task failed: {0}")]
    Task(String),
    /// Too many password hashes are running and waiting already: the request is refused
    /// rather than queued without bound.
    #[error("too many password hashes at once")]
    Busy,
}

/// Which database a [`Store`] talks to. Only DDL and a few pragmas differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a URL names, if it names one this server supports.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The server's storage.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// This server's node id in a cluster (attendance rows carry it); `None`: a single server.
    node: Option<std::sync::Arc<str>>,
}

/// The database URL used when none is configured: an SQLite file in the data directory.
pub fn default_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}", data_dir.join("meet.db").display())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh random id: 128 bits as 32 lower-case hex characters, so that ids cannot be guessed
/// or enumerated.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `text` is shaped like an id from [`new_id`]; anything else cannot name a row, so it
/// is answered "not found" without a query.
pub fn is_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn flag(value: i64) -> bool {
    value != 0
}

impl Store {
    /// Opens (creating an SQLite file if needed) the database at `url`, applies migrations
    /// and closes attendance left open by a previous process.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_as_node(url, None).await
    }

    /// Opens the storage of a cluster's node `node`: the attendance rows it opens carry its id,
    /// and at start it closes only its own rows left open (the other nodes' meetings go on).
    pub async fn open_as_node(url: &str, node: Option<&str>) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or(StoreError::UnsupportedUrl)?;
        let pool = match backend {
            Backend::Sqlite => {
                // `mode=rwc` creates the file when it is missing.
                let url = if url.contains("mode=") {
                    url.to_string()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .connect(&url)
                    .await?;
                // WAL lets readers proceed while the hub writes attendance; the mode is a
                // property of the file, so setting it once is enough.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&pool)
                    .await?;
                sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
                pool
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .connect(url)
                    .await?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                pool
            }
        };
        let store = Self {
            pool,
            backend,
            node: node.map(Into::into),
        };
        store.close_dangling().await?;
        Ok(store)
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the connections; the store is unusable afterwards.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Marks attendance left open by a previous process (a crash or kill) as ended.
    /// A single server closes every row without a node; a cluster's node only its own.
    async fn close_dangling(&self) -> Result<(), StoreError> {
        let query = match &self.node {
            None => sqlx::query(
                "UPDATE attendance SET left_at = $1, leave_reason = 'server_restart' \
                 WHERE left_at IS NULL AND node IS NULL",
            )
            .bind(unix_ms()),
            Some(node) => sqlx::query(
                "UPDATE attendance SET left_at = $1, leave_reason = 'server_restart' \
                 WHERE left_at IS NULL AND node = $2",
            )
            .bind(unix_ms())
            .bind(node.to_string()),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// The nodes holding attendance rows open (a cluster's nodes; a single server's rows have
    /// none).
    pub async fn nodes_with_open_attendance(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT node FROM attendance WHERE left_at IS NULL AND node IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<String, _>(0).ok())
            .collect())
    }

    /// Ends the open attendance of a node that died (its lease ended): its participants left
    /// when it did, as far as anyone can know. Returns the rows closed.
    pub async fn close_attendance_of_node(&self, node: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE attendance SET left_at = $1, leave_reason = 'server_lost' \
             WHERE left_at IS NULL AND node = $2",
        )
        .bind(unix_ms())
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Whether a database error is a unique-constraint violation (a duplicate name).
fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Stores for tests, on every backend this machine offers.

    use sqlx::migrate::MigrateDatabase;

    use super::{NewSite, Site, SiteKind, Store};

    /// A store for one test, and how to reach it again.
    #[derive(Debug)]
    pub struct TestStore {
        pub store: Store,
        pub url: String,
        cleanup: Cleanup,
    }

    #[derive(Debug)]
    enum Cleanup {
        Dir(std::path::PathBuf),
        Database(String),
    }

    impl TestStore {
        /// Closes the store and removes its database.
        pub async fn finish(self) {
            self.store.close().await;
            match self.cleanup {
                Cleanup::Dir(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Cleanup::Database(url) => {
                    let _ = sqlx::Any::force_drop_database(&url).await;
                }
            }
        }
    }

    /// A fresh SQLite store and, when `MEET_TEST_POSTGRES_URL` names a server, a fresh
    /// PostgreSQL database. Under CI (`CI` set) a missing PostgreSQL URL fails the test, so
    /// that the PostgreSQL coverage cannot be lost silently.
    pub async fn stores() -> Vec<TestStore> {
        sqlx::any::install_default_drivers();
        let dir = std::env::temp_dir().join(format!("meet-store-{}", super::new_id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory can be created");
        let url = format!("sqlite://{}/test.db", dir.display());
        let store = Store::open(&url).await.expect("sqlite store opens");
        let mut out = vec![TestStore {
            store,
            url,
            cleanup: Cleanup::Dir(dir),
        }];
        match std::env::var("MEET_TEST_POSTGRES_URL") {
            Ok(server) => {
                let url = database_url(&server, &format!("meet_t_{}", super::new_id()));
                sqlx::Any::create_database(&url)
                    .await
                    .expect("a test database can be created on MEET_TEST_POSTGRES_URL");
                let store = Store::open(&url).await.expect("postgres store opens");
                out.push(TestStore {
                    store,
                    url: url.clone(),
                    cleanup: Cleanup::Database(url),
                });
            }
            Err(_) if std::env::var_os("CI").is_some() => {
                panic!("CI is set but MEET_TEST_POSTGRES_URL is not: PostgreSQL is untested")
            }
            Err(_) => {
                eprintln!("note: MEET_TEST_POSTGRES_URL is not set; testing SQLite only");
            }
        }
        out
    }

    /// A site without a parent, which a test needs in the directory.
    pub async fn site(store: &Store, code: &str, name: &str, kind: SiteKind) -> Site {
        store
            .create_site(&NewSite {
                code,
                name,
                kind,
                parent_code: None,
            })
            .await
            .expect("site")
    }

    /// `server` (a `postgres://` URL) with its database name replaced by `name`.
    fn database_url(server: &str, name: &str) -> String {
        let (base, query) = match server.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (server, None),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[scheme_end..].find('/') {
            Some(slash) => &base[..scheme_end + slash],
            None => base,
        };
        match query {
            Some(query) => format!("{base}/{name}?{query}"),
            None => format!("{base}/{name}"),
        }
    }

    #[test]
    fn database_urls_are_rewritten() {
        assert_eq!(
            database_url("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h", "x"), "postgres://h/x");
    }
}
