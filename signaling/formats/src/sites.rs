//! Sites as the CSV import reads them (docs/api.md): their kinds, the rules for codes and
//! names, and the file's lines checked one by one.

use serde::{Deserialize, Serialize};

use crate::CsvLineError;
use crate::csv_file::{CsvRecords, FirstLines, choice, fields};

/// Longest site name.
pub const MAX_SITE_NAME: usize = 128;
/// Longest site code.
pub const MAX_SITE_CODE: usize = 32;

/// The level of a site in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    Central,
    Province,
    Commune,
}

impl SiteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::Central => "central",
            SiteKind::Province => "province",
            SiteKind::Commune => "commune",
        }
    }

    pub fn parse(text: &str) -> Option<SiteKind> {
        match text {
            "central" => Some(SiteKind::Central),
            "province" => Some(SiteKind::Province),
            "commune" => Some(SiteKind::Commune),
            _ => None,
        }
    }
}

/// Why `code` cannot be a site's code, if it cannot.
pub fn code_problem(code: &str) -> Option<String> {
    if code.is_empty() {
        Some("the code is missing".into())
    } else if code.chars().count() > MAX_SITE_CODE
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Some(format!(
            "the code {code:?} is not 1 to {MAX_SITE_CODE} letters, digits, '.', '_' or '-'"
        ))
    } else {
        None
    }
}

/// Why `name` cannot be a site's name, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        Some("the name is missing".into())
    } else if name.chars().count() > MAX_SITE_NAME {
        Some(format!("the name is over {MAX_SITE_NAME} characters"))
    } else if name.chars().any(char::is_control) {
        Some("the name contains control characters".into())
    } else {
        None
    }
}

/// One good line of a sites file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteLine {
    /// The line number, counting the header as line 1.
    pub number: u64,
    pub code: String,
    pub name: String,
    pub kind: SiteKind,
    pub parent_code: Option<String>,
}

/// Reads and checks every line of a sites file (`code,name,kind,parent_code`) on its own:
/// fields, code, name, kind, duplicates, a site its own parent. References between sites are
/// checked by the caller, which knows the directory. Any input is a list of good lines and of
/// bad ones, never a panic.
pub fn parse_sites_csv(csv_bytes: &[u8]) -> (Vec<SiteLine>, Vec<CsvLineError>) {
    let mut records = CsvRecords::new(csv_bytes, ["code", "name", "kind", "parent_code"]);
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut first_lines = FirstLines::default();
    while let Some(record) = records.next_record() {
        let (line, record) = match record {
            Ok(record) => record,
            Err(bad) => {
                errors.push(bad);
                continue;
            }
        };
        let [code, name, kind, parent] = match fields(record) {
            Ok(fields) => fields,
            Err(message) => {
                errors.push(CsvLineError { line, message });
                continue;
            }
        };
        let mut problems = Vec::new();
        problems.extend(code_problem(code));
        problems.extend(name_problem(name));
        let kind = match choice(
            kind,
            SiteKind::parse,
            "kind",
            "central, province or commune",
        ) {
            Ok(kind) => Some(kind),
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        if !code.is_empty()
            && let Some(first) = first_lines.earlier(code, line)
        {
            problems.push(format!("duplicate code {code} (first on line {first})"));
        }
        if !parent.is_empty() && parent == code {
            problems.push(format!(
                "the site {code} is its own parent (a parent cycle)"
            ));
        }
        match kind {
            Some(kind) if problems.is_empty() => lines.push(SiteLine {
                number: line,
                code: code.to_string(),
                name: name.to_string(),
                kind,
                parent_code: (!parent.is_empty()).then(|| parent.to_string()),
            }),
            _ => errors.push(CsvLineError {
                line,
                message: problems.join("; "),
            }),
        }
    }
    (lines, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_checked_on_its_own() {
        let long_name = "x".repeat(MAX_SITE_NAME + 1);
        let csv = format!(
            "code, name ,kind,parent_code\n\
             QN, Quảng Ninh ,province,VN\n\
             QN,Quảng Ninh lần hai,province,VN\n\
             X1,Xã 1,hamlet,QN\n\
             X2, ,commune,QN\n\
             X3,{long_name},commune,QN\n\
             X4,Vòng,commune,X4\n\
             X5,một,hai,ba,bốn\n\
             \"X6\",\"Xã \"\"Ngoặc\"\", có phẩy\",commune,\n"
        );
        let (lines, errors) = parse_sites_csv(csv.as_bytes());
        assert_eq!(
            lines,
            [
                SiteLine {
                    number: 2,
                    code: "QN".into(),
                    name: "Quảng Ninh".into(),
                    kind: SiteKind::Province,
                    parent_code: Some("VN".into()),
                },
                SiteLine {
                    number: 9,
                    code: "X6".into(),
                    name: "Xã \"Ngoặc\", có phẩy".into(),
                    kind: SiteKind::Commune,
                    parent_code: None,
                },
            ]
        );
        let numbers: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(numbers, [3, 4, 5, 6, 7, 8], "{errors:#?}");
        for (error, expected) in errors.iter().zip([
            "duplicate code QN (first on line 2)",
            "unknown kind \"hamlet\"",
            "the name is missing",
            "over 128 characters",
            "its own parent",
            "expected 4 fields, found 5",
        ]) {
            assert!(error.message.contains(expected), "{error:?}: {expected}");
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_and_the_next_is_read() {
        let (lines, errors) =
            parse_sites_csv(b"code,name,kind,parent_code\nA,\xff,commune,\nB,Xa B,commune,\n");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].number, 3);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].message.contains("UTF-8"), "{errors:?}");
    }
}
