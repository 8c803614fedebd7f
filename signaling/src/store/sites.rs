//! The directory of sites (the central site, provinces, communes) and its CSV import.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

pub use formats::CsvLineError;
pub use formats::sites::SiteKind;
use formats::sites::{code_problem, name_problem, parse_sites_csv};

use super::{Store, StoreError, is_id, is_unique_violation, new_id, unix_ms};

/// A site of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Site {
    pub id: String,
    pub code: String,
    pub name: String,
    pub kind: SiteKind,
    pub parent_id: Option<String>,
    pub parent_code: Option<String>,
}

impl Site {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let kind: String = row.try_get("kind")?;
        Ok(Self {
            id: row.try_get("id")?,
            code: row.try_get("code")?,
            name: row.try_get("name")?,
            // Only known kinds are ever written; a damaged row reads as the lowest level.
            kind: SiteKind::parse(&kind).unwrap_or(SiteKind::Commune),
            parent_id: row.try_get("parent_id")?,
            parent_code: row.try_get("parent_code")?,
        })
    }
}

/// A new site.
#[derive(Debug, Clone)]
pub struct NewSite<'a> {
    pub code: &'a str,
    pub name: &'a str,
    pub kind: SiteKind,
    pub parent_code: Option<&'a str>,
}

/// What a CSV import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportOutcome {
    pub created: u64,
    pub updated: u64,
}

const SITE_SELECT: &str = "SELECT s.id, s.code, s.name, s.kind, s.parent_id, p.code AS parent_code \
     FROM sites s LEFT JOIN sites p ON p.id = s.parent_id";

impl Store {
    /// Every site, by code.
    pub async fn sites(&self) -> Result<Vec<Site>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SITE_SELECT} ORDER BY s.code"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(Site::from_row).collect::<Result<_, _>>()?)
    }

    /// One site.
    pub async fn site(&self, id: &str) -> Result<Option<Site>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SITE_SELECT} WHERE s.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Site::from_row).transpose()?)
    }

    /// Adds a site; a code already used is a [`StoreError::Conflict`].
    pub async fn create_site(&self, new: &NewSite<'_>) -> Result<Site, StoreError> {
        if let Some(problem) = code_problem(new.code).or_else(|| name_problem(new.name)) {
            return Err(StoreError::Invalid(problem));
        }
        let parent_id = match new.parent_code.filter(|c| !c.is_empty()) {
            Some(code) => Some(
                sqlx::query("SELECT id FROM sites WHERE code = $1")
                    .bind(code)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::Invalid(format!("no site has the code {code}")))?
                    .try_get::<String, _>("id")?,
            ),
            None => None,
        };
        let id = new_id();
        let now = unix_ms();
        sqlx::query(
            "INSERT INTO sites (id, code, name, kind, parent_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(&id)
        .bind(new.code)
        .bind(new.name.trim())
        .bind(new.kind.as_str())
        .bind(parent_id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict(format!("the code {} is taken", new.code))
            } else {
                err.into()
            }
        })?;
        self.site(&id).await?.ok_or(StoreError::NotFound)
    }

    /// Imports a CSV file of sites (see docs/api.md): all of it, or nothing and
    /// [`StoreError::InvalidCsv`] listing every bad line.
    pub async fn import_sites(&self, csv_bytes: &[u8]) -> Result<ImportOutcome, StoreError> {
        let (lines, mut errors) = parse_sites_csv(csv_bytes);
        let mut tx = self.pool.begin().await?;
        // The directory is read inside the transaction, so the checks and the writes see the
        // same state.
        let rows = sqlx::query(
            "SELECT s.id, s.code, p.code AS parent_code FROM sites s \
                                LEFT JOIN sites p ON p.id = s.parent_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut ids: HashMap<String, String> = HashMap::new();
        // The parent of every code after the import: the directory's, overlaid by the file's.
        let mut parent_of: HashMap<String, Option<String>> = HashMap::new();
        for row in &rows {
            let code: String = row.try_get("code")?;
            ids.insert(code.clone(), row.try_get("id")?);
            parent_of.insert(code, row.try_get("parent_code")?);
        }
        for line in &lines {
            parent_of.insert(line.code.clone(), line.parent_code.clone());
        }
        for line in &lines {
            let Some(parent) = &line.parent_code else {
                continue;
            };
            if !parent_of.contains_key(parent) {
                errors.push(CsvLineError {
                    line: line.number,
                    message: format!("unknown parent {parent}"),
                });
                continue;
            }
            // Walk up; more steps than there are sites means a loop.
            let mut seen = HashSet::from([line.code.as_str()]);
            let mut at = Some(parent.as_str());
            while let Some(code) = at {
                if !seen.insert(code) {
                    errors.push(CsvLineError {
                        line: line.number,
                        message: format!("the parents of {} form a cycle", line.code),
                    });
                    break;
                }
                at = parent_of.get(code).and_then(|p| p.as_deref());
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line);
            return Err(StoreError::InvalidCsv(errors));
        }

        let now = unix_ms();
        let mut outcome = ImportOutcome {
            created: 0,
            updated: 0,
        };
        // First every site exists, then every parent is set, so that a parent may come after
        // its children in the file.
        for line in &lines {
            if let Some(id) = ids.get(&line.code) {
                sqlx::query("UPDATE sites SET name = $1, kind = $2, updated_at = $3 WHERE id = $4")
                    .bind(&line.name)
                    .bind(line.kind.as_str())
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                outcome.updated += 1;
            } else {
                let id = new_id();
                sqlx::query(
                    "INSERT INTO sites (id, code, name, kind, parent_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, NULL, $5, $5)",
                )
                .bind(&id)
                .bind(&line.code)
                .bind(&line.name)
                .bind(line.kind.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                ids.insert(line.code.clone(), id);
                outcome.created += 1;
            }
        }
        for line in &lines {
            let parent_id = line.parent_code.as_ref().and_then(|code| ids.get(code));
            sqlx::query("UPDATE sites SET parent_id = $1 WHERE code = $2")
                .bind(parent_id)
                .bind(&line.code)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{site, stores};

    #[tokio::test]
    async fn sites_are_created_and_listed() {
        for t in stores().await {
            let store = &t.store;
            let central = store
                .create_site(&NewSite {
                    code: "VN",
                    name: "Trung ương",
                    kind: SiteKind::Central,
                    parent_code: None,
                })
                .await
                .expect("created");
            let province = store
                .create_site(&NewSite {
                    code: "HG",
                    name: "Hà Giang",
                    kind: SiteKind::Province,
                    parent_code: Some("VN"),
                })
                .await
                .expect("created");
            assert_eq!(province.parent_id.as_deref(), Some(central.id.as_str()));
            assert_eq!(province.parent_code.as_deref(), Some("VN"));
            assert!(matches!(
                store
                    .create_site(&NewSite {
                        code: "HG",
                        name: "again",
                        kind: SiteKind::Province,
                        parent_code: None,
                    })
                    .await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store
                    .create_site(&NewSite {
                        code: "X",
                        name: "orphan",
                        kind: SiteKind::Commune,
                        parent_code: Some("NOPE"),
                    })
                    .await,
                Err(StoreError::Invalid(_))
            ));
            let sites = store.sites().await.expect("list");
            assert_eq!(
                sites.iter().map(|s| s.code.as_str()).collect::<Vec<_>>(),
                ["HG", "VN"]
            );
            t.finish().await;
        }
    }

    #[tokio::test]
    async fn a_bad_file_imports_nothing_and_names_every_bad_line() {
        for t in stores().await {
            let store = &t.store;
            site(store, "VN", "Trung ương", SiteKind::Central).await;
            let long_name = "x".repeat(129);
            let csv = format!(
                "code,name,kind,parent_code\n\
                 HG,Hà Giang,province,VN\n\
                 HG,Hà Giang again,province,VN\n\
                 C1,Commune 1,village,HG\n\
                 C2,,commune,HG\n\
                 C3,Commune 3,commune,NOWHERE\n\
                 A,Loop A,commune,B\n\
                 B,Loop B,commune,A\n\
                 C4,{long_name},commune,HG\n\
                 C5,too,many,fields,here\n\
                 \"C6\",\"Xã \"\"Quoted\"\", ok\",commune,HG\n"
            );
            let Err(StoreError::InvalidCsv(errors)) = store.import_sites(csv.as_bytes()).await
            else {
                panic!("the file is refused");
            };
            let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
            assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10], "{errors:#?}");
            assert!(
                errors[0].message.contains("duplicate code HG"),
                "{errors:?}"
            );
            assert!(errors[1].message.contains("unknown kind"));
            assert!(errors[2].message.contains("name is missing"));
            assert!(errors[3].message.contains("unknown parent NOWHERE"));
            assert!(errors[4].message.contains("cycle"));
            assert!(errors[5].message.contains("cycle"));
            assert!(errors[6].message.contains("over 128"));
            assert!(errors[7].message.contains("expected 4 fields"));
            assert_eq!(
                store.sites().await.expect("list").len(),
                1,
                "nothing imported"
            );

            let Err(StoreError::InvalidCsv(errors)) = store.import_sites(b"name,code\nx,y\n").await
            else {
                panic!("a wrong header is refused");
            };
            assert_eq!(errors[0].line, 1);
            t.finish().await;
        }
    }

    #[tokio::test]
    async fn a_good_file_imports_parents_in_any_order_and_updates_known_codes() {
        for t in stores().await {
            let store = &t.store;
            site(store, "VN", "Old name", SiteKind::Central).await;
            let csv = "\u{feff}code,name,kind,parent_code\r\n\
                       C1,\"Xã Tân Lập, huyện A\",commune,HG\r\n\
                       HG,Hà Giang,province,VN\r\n\
                       VN,Trung ương,central,\r\n";
            let outcome = store.import_sites(csv.as_bytes()).await.expect("imported");
            assert_eq!(
                outcome,
                ImportOutcome {
                    created: 2,
                    updated: 1
                }
            );
            let sites = store.sites().await.expect("list");
            let by_code: HashMap<&str, &Site> =
                sites.iter().map(|s| (s.code.as_str(), s)).collect();
            assert_eq!(by_code["C1"].name, "Xã Tân Lập, huyện A");
            assert_eq!(by_code["C1"].parent_code.as_deref(), Some("HG"));
            assert_eq!(by_code["HG"].parent_code.as_deref(), Some("VN"));
            assert_eq!(by_code["VN"].name, "Trung ương");
            assert_eq!(by_code["VN"].parent_id, None);

            // Moving VN under C1 would close a loop through the directory.
            let Err(StoreError::InvalidCsv(errors)) = store
                .import_sites(b"code,name,kind,parent_code\nVN,Trung uong,central,C1\n")
                .await
            else {
                panic!("a cycle through the directory is refused");
            };
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].line, 2);
            t.finish().await;
        }
    }
}
