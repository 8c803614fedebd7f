//! What the CSV imports (accounts, sites) share: a file read record by record after a header
//! it must start with, each record with its line number, and the checks every import makes
//! the same way.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One bad line of a CSV import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CsvLineError {
    /// The line number, counting the header as line 1.
    pub line: u64,
    pub message: String,
}

/// An import file read record by record. A byte order mark is skipped, the first record must
/// be the header, and blank lines are passed over. Line numbers count the header as line 1.
#[derive(Debug)]
pub(crate) struct CsvRecords<'a, const N: usize> {
    reader: csv::Reader<&'a [u8]>,
    record: csv::StringRecord,
    header: [&'static str; N],
    header_seen: bool,
    /// Set once nothing more can be read.
    stopped: bool,
}

impl<'a, const N: usize> CsvRecords<'a, N> {
    pub(crate) fn new(csv_bytes: &'a [u8], header: [&'static str; N]) -> Self {
        let bytes = csv_bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(csv_bytes);
        Self {
            reader: csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(bytes),
            record: csv::StringRecord::new(),
            header,
            header_seen: false,
            stopped: false,
        }
    }

    /// The next record after the header and its line, or a bad line (an unreadable one, a
    /// wrong header, a file without even a header); `None` at the end.
    pub(crate) fn next_record(
        &mut self,
    ) -> Option<Result<(u64, &csv::StringRecord), CsvLineError>> {
        loop {
            if self.stopped {
                return self.empty_file();
            }
            let line = self.reader.position().line();
            match self.reader.read_record(&mut self.record) {
                Ok(false) => {
                    self.stopped = true;
                    continue;
                }
                Ok(true) => {}
                Err(err) => {
                    let line = err.position().map_or(line, |p| p.line());
                    let utf8 = matches!(err.kind(), csv::ErrorKind::Utf8 { .. });
                    let message = if utf8 {
                        "the line is not valid UTF-8".to_string()
                    } else {
                        format!("unreadable line: {err}")
                    };
                    // A syntax error can leave the reader unable to go on; invalid UTF-8 does
                    // not, and the next line is read as usual.
                    if utf8 {
                        self.header_seen = true;
                    } else {
                        self.stopped = true;
                    }
                    return Some(Err(CsvLineError { line, message }));
                }
            }
            let line = self.record.position().map_or(line, |p| p.line());
            if !self.header_seen {
                self.header_seen = true;
                let header: Vec<&str> = self.record.iter().map(str::trim).collect();
                if header != self.header {
                    return Some(Err(CsvLineError {
                        line,
                        message: format!("the header must be {}", self.header.join(",")),
                    }));
                }
                continue;
            }
            if self.record.len() == 1 && self.record.get(0).is_some_and(|f| f.trim().is_empty()) {
                // A blank line (often the last one) carries nothing.
                continue;
            }
            return Some(Ok((line, &self.record)));
        }
    }

    /// What the end of a file says, once, when it had not even a header.
    fn empty_file(&mut self) -> Option<Result<(u64, &csv::StringRecord), CsvLineError>> {
        if self.header_seen {
            return None;
        }
        self.header_seen = true;
        Some(Err(CsvLineError {
            line: 1,
            message: format!(
                "the file is empty (expected the header {})",
                self.header.join(",")
            ),
        }))
    }
}

/// The `N` fields of a record, trimmed, or why there are not `N`.
pub(crate) fn fields<const N: usize>(record: &csv::StringRecord) -> Result<[&str; N], String> {
    if record.len() != N {
        return Err(format!("expected {N} fields, found {}", record.len()));
    }
    Ok(std::array::from_fn(|i| {
        record.get(i).unwrap_or_default().trim()
    }))
}

/// A field naming one of a few choices (a role, a kind): the choice, or why it is none.
pub(crate) fn choice<T>(
    text: &str,
    parse: impl FnOnce(&str) -> Option<T>,
    what: &str,
    choices: &str,
) -> Result<T, String> {
    match parse(text) {
        Some(chosen) => Ok(chosen),
        None if text.is_empty() => Err(format!("the {what} is missing")),
        None => Err(format!("unknown {what} {text:?} ({choices})")),
    }
}

/// The line each key of a file (a username, a site code) first stood on, to name repeats.
#[derive(Debug, Default)]
pub(crate) struct FirstLines(HashMap<String, u64>);

impl FirstLines {
    /// The earlier line of a repeated `key`, or `None` when `line` is its first.
    pub(crate) fn earlier(&mut self, key: &str, line: u64) -> Option<u64> {
        if let Some(first) = self.0.get(key) {
            return Some(*first);
        }
        self.0.insert(key.to_string(), line);
        None
    }
}
