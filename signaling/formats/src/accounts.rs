//! Accounts as the CSV import reads them (docs/api.md): the roles, the rules for usernames
//! and display names, and the file's lines checked one by one.

use serde::{Deserialize, Serialize};

use crate::CsvLineError;
use crate::csv_file::{CsvRecords, FirstLines, choice, fields};

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AccountRole {
    /// Everything, including accounts and the site directory.
    Admin,
    /// Schedules and manages their own meetings.
    Organizer,
    /// A person of a site (`site_id`): sees and joins the meetings that invite that site.
    Official,
    /// The meeting room of a site (`site_id`): sees and joins the meetings that invite it.
    SiteOperator,
}

impl AccountRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountRole::Admin => "admin",
            AccountRole::Organizer => "organizer",
            AccountRole::Official => "official",
            AccountRole::SiteOperator => "site_operator",
        }
    }

    /// The role a stored or written name stands for.
    pub fn from_name(text: &str) -> Option<AccountRole> {
        match text {
            "admin" => Some(AccountRole::Admin),
            "organizer" => Some(AccountRole::Organizer),
            "official" => Some(AccountRole::Official),
            "site_operator" => Some(AccountRole::SiteOperator),
            _ => None,
        }
    }

    /// The role of a stored name. A damaged row gets the least rights, so it never grants
    /// more.
    pub fn from_stored(text: &str) -> AccountRole {
        AccountRole::from_name(text).unwrap_or(AccountRole::SiteOperator)
    }

    /// Whether accounts of this role belong to a site.
    pub fn needs_site(self) -> bool {
        matches!(self, AccountRole::Official | AccountRole::SiteOperator)
    }

    /// Whether this role schedules meetings.
    pub fn schedules_meetings(self) -> bool {
        matches!(self, AccountRole::Admin | AccountRole::Organizer)
    }
}

impl std::str::FromStr for AccountRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AccountRole::from_name(text).ok_or_else(|| {
            format!("unknown role {text:?} (admin, organizer, official or site_operator)")
        })
    }
}

/// Why `username` cannot be one, if it cannot.
pub fn username_problem(username: &str) -> Option<String> {
    let ok = (1..=64).contains(&username.chars().count())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    (!ok).then(|| "a username is 1 to 64 letters, digits, '.', '_', '-' or '@'".to_string())
}

/// Whether `name` is a display name: 1 to 64 printable characters, not only spaces.
pub fn is_display_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=64).contains(&count) && !name.trim().is_empty() && !name.chars().any(char::is_control)
}

/// Most accounts one file may hold, which bounds the memory an import takes.
pub const MAX_IMPORTED_ACCOUNTS: usize = 200_000;
/// Bad lines listed at most; the rest are counted in one last entry.
pub const MAX_LISTED_ERRORS: usize = 1_000;

/// One good line of an accounts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLine {
    /// The line number, counting the header as line 1.
    pub number: u64,
    pub username: String,
    pub display_name: String,
    pub role: AccountRole,
    pub site_code: Option<String>,
}

/// The bad lines found so far: the first [`MAX_LISTED_ERRORS`] in full, the others counted.
#[derive(Debug, Default)]
pub struct Problems {
    listed: Vec<CsvLineError>,
    more: u64,
}

impl Problems {
    /// A bad line and why; listed while fewer than [`MAX_LISTED_ERRORS`] are, else counted.
    pub fn add(&mut self, line: u64, message: String) {
        if self.listed.len() < MAX_LISTED_ERRORS {
            self.listed.push(CsvLineError { line, message });
        } else {
            self.more += 1;
        }
    }

    /// Whether no line is bad.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The bad lines by line number, and a last entry that counts those not listed.
    pub fn into_errors(mut self) -> Vec<CsvLineError> {
        self.listed.sort_by_key(|e| e.line);
        if self.more > 0 {
            let last = self.listed.last().map_or(0, |e| e.line);
            self.listed.push(CsvLineError {
                line: last,
                message: format!("and {} more bad line(s), not listed", self.more),
            });
        }
        self.listed
    }
}

const HEADER: [&str; 4] = ["username", "display_name", "role", "site_code"];

/// Reads and checks every line of an accounts file (`username,display_name,role,site_code`)
/// on its own: fields, username, name, role, duplicates in the file. What needs the
/// database (taken usernames, site codes) is checked by the caller, which adds its own
/// problems to `problems`. Any input is a list of good lines and of bad ones, never a panic.
pub fn parse_accounts_csv(csv_bytes: &[u8], problems: &mut Problems) -> Vec<AccountLine> {
    let mut records = CsvRecords::new(csv_bytes, HEADER);
    let mut lines = Vec::new();
    let mut first_lines = FirstLines::default();
    while let Some(record) = records.next_record() {
        let (line, record) = match record {
            Ok(record) => record,
            Err(bad) => {
                problems.add(bad.line, bad.message);
                continue;
            }
        };
        if lines.len() >= MAX_IMPORTED_ACCOUNTS {
            problems.add(
                line,
                format!("a file holds at most {MAX_IMPORTED_ACCOUNTS} accounts: split it"),
            );
            break;
        }
        let [username, display_name, role, site_code] = match fields(record) {
            Ok(fields) => fields,
            Err(message) => {
                problems.add(line, message);
                continue;
            }
        };
        let mut found = Vec::new();
        found.extend(username_problem(username));
        if !is_display_name(display_name) {
            found.push("the display name is not 1 to 64 printable characters".into());
        }
        let role = match choice(
            role,
            AccountRole::from_name,
            "role",
            "official, site_operator or organizer",
        ) {
            Ok(AccountRole::Admin) => {
                found.push("administrators are not imported: create them one by one".into());
                None
            }
            Ok(role) => Some(role),
            Err(problem) => {
                found.push(problem);
                None
            }
        };
        if role.is_some_and(AccountRole::needs_site) && site_code.is_empty() {
            found.push("an official or site operator needs a site_code".into());
        }
        if !username.is_empty()
            && let Some(first) = first_lines.earlier(username, line)
        {
            found.push(format!(
                "duplicate username {username} (first on line {first})"
            ));
        }
        match role {
            Some(role) if found.is_empty() => lines.push(AccountLine {
                number: line,
                username: username.to_string(),
                display_name: display_name.to_string(),
                role,
                site_code: (!site_code.is_empty()).then(|| site_code.to_string()),
            }),
            _ => problems.add(line, found.join("; ")),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_checked_on_its_own() {
        let csv = "\u{feff}username , display_name,role,site_code\n\
                   ok1,Xã Một,site_operator,HG\n\
                   ok1,Again,official,HG\n\
                   bad name,X,official,HG\n\
                   nosite,X,official,\n\
                   boss,X,admin,\n\
                   who,X,mayor,HG\n\
                   short,X,official\n\
                   \"quoted\",\"Phường \"\"A\"\", B\",organizer,\n\
                   empty,,official,HG\n";
        let mut problems = Problems::default();
        let lines = parse_accounts_csv(csv.as_bytes(), &mut problems);
        assert_eq!(
            lines,
            [
                AccountLine {
                    number: 2,
                    username: "ok1".into(),
                    display_name: "Xã Một".into(),
                    role: AccountRole::SiteOperator,
                    site_code: Some("HG".into()),
                },
                AccountLine {
                    number: 9,
                    username: "quoted".into(),
                    display_name: "Phường \"A\", B".into(),
                    role: AccountRole::Organizer,
                    site_code: None,
                },
            ]
        );
        let errors = problems.into_errors();
        let numbers: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(numbers, [3, 4, 5, 6, 7, 8, 10], "{errors:#?}");
        for (error, expected) in errors.iter().zip([
            "duplicate username ok1 (first on line 2)",
            "a username is",
            "needs a site_code",
            "administrators are not imported",
            "unknown role \"mayor\"",
            "expected 4 fields, found 3",
            "the display name is not",
        ]) {
            assert!(error.message.contains(expected), "{error:?}: {expected}");
        }
    }

    #[test]
    fn a_file_without_its_header_is_refused() {
        for (csv, expected) in [
            (&b""[..], "the file is empty"),
            (&b"name,role\nx,y\n"[..], "the header must be"),
        ] {
            let mut problems = Problems::default();
            assert!(parse_accounts_csv(csv, &mut problems).is_empty());
            let errors = problems.into_errors();
            assert!(
                errors
                    .iter()
                    .any(|e| e.line == 1 && e.message.contains(expected)),
                "{csv:?}: {errors:?}"
            );
        }
    }
}
