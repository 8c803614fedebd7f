//! The CSV import of accounts (docs/api.md): tens of thousands of site accounts at once, all
//! or none.
//!
//! No password is hashed: an argon2 hash takes tens of milliseconds, so 150,000 of them would
//! take hours. Every imported account waits for activation instead, with an activation token
//! of its own (256 random bits, stored as their SHA-256), and the caller turns the tokens into
//! links. The rows are written in batches of a few hundred inside one transaction.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, Row};

pub use formats::accounts::MAX_IMPORTED_ACCOUNTS;
use formats::accounts::{AccountLine, AccountRole, Problems, parse_accounts_csv};

use super::accounts::{ACTIVATION_LIFETIME_MS, new_token, token_hash};
use super::{Backend, Store, StoreError, is_unique_violation, new_id};

/// Rows per INSERT: well under SQLite's and PostgreSQL's limits on bound values (8 per row).
const BATCH: usize = 500;
/// The most page cache an SQLite import may use, in KiB: most of the pages that 150,000
/// accounts with their indexes and activations change (about 80 MiB), which halves the
/// import's time (7 s to 3.5 s); the memory is given back when the import ends.
const IMPORT_CACHE_KIB: i64 = 64 * 1024;

/// One imported account and its activation token (shown once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedAccount {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: AccountRole,
    pub site_code: Option<String>,
    pub activation_token: String,
}

/// The `n`th (from 1) of many bound values. SQLite gets plain `?`: it finds each numbered
/// parameter (`$n`) by a walk through the list of their names, so binding thousands of them
/// took time growing with their square (half of a 150,000-account import).
fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_string(),
        Backend::Postgres => format!("${n}"),
    }
}

/// `INSERT INTO table (columns) VALUES ($1, …), (…)` for `rows` rows of `columns.len()` values.
fn batch_insert(backend: Backend, table: &str, columns: &[&str], rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let row: Vec<String> = (1..=columns.len())
                .map(|column| placeholder(backend, row * columns.len() + column))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES {}",
        columns.join(", "),
        values.join(", ")
    )
}

impl Store {
    /// Imports a CSV file of accounts (`username,display_name,role,site_code`): all of them,
    /// each waiting for activation with a fresh token, or nothing and
    /// [`StoreError::InvalidCsv`] listing the bad lines. A username taken meanwhile by someone
    /// else is a [`StoreError::Conflict`], and nothing is imported either.
    pub async fn import_accounts(
        &self,
        csv_bytes: &[u8],
        now_ms: i64,
    ) -> Result<Vec<ImportedAccount>, StoreError> {
        let mut problems = Problems::default();
        let lines = parse_accounts_csv(csv_bytes, &mut problems);
        let mut connection = self.pool.acquire().await?;
        if self.backend != Backend::Sqlite {
            return import_on(&mut connection, self.backend, lines, problems, now_ms).await;
        }
        // SQLite's page cache (2 MiB by default) cannot hold what one transaction of 150,000
        // accounts changes: rows and index entries with random keys, so the same pages are
        // spilled and written again. This connection's cache may grow for the import, and is
        // set back afterwards.
        let before: i64 = sqlx::query("PRAGMA cache_size")
            .fetch_one(&mut *connection)
            .await?
            .try_get(0)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA cache_size = -{IMPORT_CACHE_KIB}"
        )))
        .execute(&mut *connection)
        .await?;
        let outcome = import_on(&mut connection, self.backend, lines, problems, now_ms).await;
        let restored = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = {before}")))
            .execute(&mut *connection)
            .await;
        if let Err(err) = restored {
            // A connection that keeps the large cache is not returned to the pool.
            tracing::warn!(%err, "the import's page cache was not set back; closing its connection");
            let _ = connection.close().await;
        }
        outcome
    }
}

/// The import's checks against the database and its writes, in one transaction on
/// `connection`.
async fn import_on(
    connection: &mut sqlx::AnyConnection,
    backend: Backend,
    lines: Vec<AccountLine>,
    mut problems: Problems,
    now_ms: i64,
) -> Result<Vec<ImportedAccount>, StoreError> {
    let mut tx = connection.begin().await?;
    // Read inside the transaction, so that the checks and the writes see the same state.
    let mut site_ids: HashMap<String, String> = HashMap::new();
    for row in sqlx::query("SELECT id, code FROM sites")
        .fetch_all(&mut *tx)
        .await?
    {
        site_ids.insert(row.try_get("code")?, row.try_get("id")?);
    }
    let mut taken: HashSet<String> = HashSet::new();
    for chunk in lines.chunks(BATCH) {
        let placeholders: Vec<String> =
            (1..=chunk.len()).map(|n| placeholder(backend, n)).collect();
        let sql = format!(
            "SELECT username FROM accounts WHERE username IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for line in chunk {
            query = query.bind(&line.username);
        }
        for row in query.fetch_all(&mut *tx).await? {
            taken.insert(row.try_get("username")?);
        }
    }
    for line in &lines {
        if taken.contains(&line.username) {
            problems.add(
                line.number,
                format!("the username {} is taken", line.username),
            );
        }
        if let Some(code) = &line.site_code
            && !site_ids.contains_key(code)
        {
            problems.add(line.number, format!("unknown site_code {code}"));
        }
    }
    if !problems.is_empty() {
        return Err(StoreError::InvalidCsv(problems.into_errors()));
    }

    let imported: Vec<ImportedAccount> = lines
        .into_iter()
        .map(|line| ImportedAccount {
            id: new_id(),
            username: line.username,
            display_name: line.display_name,
            role: line.role,
            site_code: line.site_code,
            activation_token: new_token(),
        })
        .collect();
    let expires_at = now_ms + ACTIVATION_LIFETIME_MS;
    const ACCOUNT_COLUMNS: [&str; 8] = [
        "id",
        "username",
        "display_name",
        "password_hash",
        "role",
        "disabled",
        "created_at",
        "site_id",
    ];
    const ACTIVATION_COLUMNS: [&str; 4] = ["token_hash", "account_id", "created_at", "expires_at"];
    for chunk in imported.chunks(BATCH) {
        let mut accounts = sqlx::query(sqlx::AssertSqlSafe(batch_insert(
            backend,
            "accounts",
            &ACCOUNT_COLUMNS,
            chunk.len(),
        )));
        for account in chunk {
            let site_id = account
                .site_code
                .as_ref()
                .and_then(|code| site_ids.get(code));
            // An empty password hash: the account waits for its activation link.
            accounts = accounts
                .bind(&account.id)
                .bind(&account.username)
                .bind(&account.display_name)
                .bind("")
                .bind(account.role.as_str())
                .bind(0_i64)
                .bind(now_ms)
                .bind(site_id);
        }
        accounts.execute(&mut *tx).await.map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict(
                    "a username of the file was taken during the import; nothing was \
                     imported"
                        .into(),
                )
            } else {
                err.into()
            }
        })?;
        let mut activations = sqlx::query(sqlx::AssertSqlSafe(batch_insert(
            backend,
            "activations",
            &ACTIVATION_COLUMNS,
            chunk.len(),
        )));
        for account in chunk {
            activations = activations
                .bind(token_hash(&account.activation_token))
                .bind(&account.id)
                .bind(now_ms)
                .bind(expires_at);
        }
        activations.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use formats::accounts::MAX_LISTED_ERRORS;

    use super::*;
    use crate::store::test_support::{site, stores};
    use crate::store::{AccountQuery, SiteKind, unix_ms};

    #[test]
    fn batches_number_their_placeholders() {
        assert_eq!(
            batch_insert(Backend::Postgres, "t", &["a", "b"], 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            batch_insert(Backend::Sqlite, "t", &["a", "b"], 2),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }

    #[tokio::test]
    async fn a_bad_file_imports_nothing_and_names_every_bad_line() {
        for t in stores().await {
            let store = &t.store;
            site(store, "HG", "Hà Giang", SiteKind::Province).await;
            store
                .create_account(&crate::store::NewAccount {
                    username: "taken",
                    display_name: "Taken",
                    password: "a long password",
                    role: AccountRole::Organizer,
                })
                .await
                .expect("account");
            let csv = "username,display_name,role,site_code\n\
                       ok1,Xã Một,site_operator,HG\n\
                       ok1,Again,official,HG\n\
                       taken,Taken,official,HG\n\
                       bad name,X,official,HG\n\
                       nosite,X,official,\n\
                       ghost,X,official,NOWHERE\n\
                       boss,X,admin,\n\
                       who,X,mayor,HG\n\
                       short,X,official\n\
                       \"quoted\",\"Phường \"\"A\"\", B\",official,HG\n\
                       empty,,official,HG\n";
            let Err(StoreError::InvalidCsv(errors)) =
                store.import_accounts(csv.as_bytes(), unix_ms()).await
            else {
                panic!("the file is refused");
            };
            let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
            assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10, 12], "{errors:#?}");
            let message = |line: u64| {
                errors
                    .iter()
                    .find(|e| e.line == line)
                    .map(|e| e.message.clone())
                    .unwrap_or_default()
            };
            assert!(message(3).contains("duplicate username ok1"), "{errors:?}");
            assert!(message(4).contains("taken"), "{errors:?}");
            assert!(message(5).contains("username"), "{errors:?}");
            assert!(message(6).contains("site_code"), "{errors:?}");
            assert!(
                message(7).contains("unknown site_code NOWHERE"),
                "{errors:?}"
            );
            assert!(message(8).contains("administrators"), "{errors:?}");
            assert!(message(9).contains("unknown role"), "{errors:?}");
            assert!(message(10).contains("expected 4 fields"), "{errors:?}");
            assert!(message(12).contains("display name"), "{errors:?}");
            assert_eq!(store.accounts().await.expect("list").len(), 1);

            for bad in [
                &b""[..],
                &b"name,role\nx,y\n"[..],
                &b"username,display_name,role,site_code\n\xff,x,official,HG\n"[..],
            ] {
                let Err(StoreError::InvalidCsv(errors)) =
                    store.import_accounts(bad, unix_ms()).await
                else {
                    panic!("refused: {bad:?}");
                };
                assert!(!errors.is_empty());
            }
            t.finish().await;
        }
    }

    #[tokio::test]
    async fn many_bad_lines_are_listed_up_to_a_bound() {
        let t = stores().await.remove(0);
        let mut csv = String::from("username,display_name,role,site_code\n");
        for n in 0..(MAX_LISTED_ERRORS + 50) {
            csv.push_str(&format!("u{n},Name,mayor,\n"));
        }
        let Err(StoreError::InvalidCsv(errors)) =
            t.store.import_accounts(csv.as_bytes(), unix_ms()).await
        else {
            panic!("refused");
        };
        assert_eq!(errors.len(), MAX_LISTED_ERRORS + 1);
        assert!(
            errors[MAX_LISTED_ERRORS].message.contains("50 more"),
            "{:?}",
            errors.last()
        );
        t.finish().await;
    }

    #[tokio::test]
    async fn a_good_file_imports_accounts_waiting_for_activation() {
        for t in stores().await {
            let store = &t.store;
            let hg = site(store, "HG", "Hà Giang", SiteKind::Province).await;
            // More than one batch, with a byte order mark and CRLF line ends.
            let mut csv = String::from("\u{feff}username,display_name,role,site_code\r\n");
            for n in 0..(BATCH + 7) {
                csv.push_str(&format!("hg.{n},Phòng họp {n},site_operator,HG\r\n"));
            }
            csv.push_str("lan,Chị Lan,organizer,\r\n");
            let now = unix_ms();
            let imported = store
                .import_accounts(csv.as_bytes(), now)
                .await
                .expect("imported");
            assert_eq!(imported.len(), BATCH + 8);
            let tokens: HashSet<&str> = imported
                .iter()
                .map(|a| a.activation_token.as_str())
                .collect();
            assert_eq!(tokens.len(), imported.len(), "every token is its own");
            let page = store
                .account_page(&AccountQuery {
                    site_id: Some(&hg.id),
                    page: 1,
                    per_page: 10,
                    ..AccountQuery::default()
                })
                .await
                .expect("page");
            assert_eq!(page.total, (BATCH + 7) as i64);
            assert!(page.accounts.iter().all(|a| a.pending_activation
                && a.role == AccountRole::SiteOperator
                && a.site_code.as_deref() == Some("HG")));

            // Nobody signs in before activating; the link sets the password once.
            let first = &imported[0];
            assert!(
                store
                    .login(&first.username, "", now)
                    .await
                    .expect("query")
                    .is_none()
            );
            let login = store
                .activate(&first.activation_token, "a long password", now, true)
                .await
                .expect("query")
                .expect("activated");
            assert_eq!(login.account.username, first.username);
            assert!(!login.account.pending_activation);
            assert!(
                store
                    .activate(&first.activation_token, "another password", now, false)
                    .await
                    .expect("query")
                    .is_none(),
                "a link works once"
            );
            assert!(
                store
                    .login(&first.username, "a long password", now)
                    .await
                    .expect("query")
                    .is_some()
            );
            // Importing the same file again names every line as taken.
            let Err(StoreError::InvalidCsv(errors)) =
                store.import_accounts(csv.as_bytes(), now).await
            else {
                panic!("refused");
            };
            assert!(errors[0].message.contains("taken"), "{errors:?}");
            t.finish().await;
        }
    }
}
