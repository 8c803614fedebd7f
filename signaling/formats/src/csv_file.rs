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
/// be the header, and blank lines are passed over. A record's line is the one an editor shows
/// it on (the header on line 1 unless blank lines come first).
#[derive(Debug)]
pub(crate) struct CsvRecords<'a, const N: usize> {
    reader: csv::Reader<&'a [u8]>,
    bytes: &'a [u8],
    /// The line breaks in `bytes[..counted_to]`, counted once as the records go by.
    counted_to: usize,
    breaks: u64,
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
            bytes,
            counted_to: 0,
            breaks: 0,
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
            let before = self.reader.position().byte();
            match self.reader.read_record(&mut self.record) {
                Ok(false) => {
                    self.stopped = true;
                    continue;
                }
                Ok(true) => {}
                Err(err) => {
                    let line = self.line_at(err.position().map_or(before, |p| p.byte()));
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
            let line = self.line_at(self.record.position().map_or(before, |p| p.byte()));
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

    /// The line of the record that the reader started to read at byte `start`.
    ///
    /// The csv crate's own line numbers count `\n` as it goes, and a record's position is taken
    /// before the reader has passed the end of the line before it: after a `\r\n`, a blank
    /// line or a lone `\r`, they are a line or more short. So the line breaks (`\r\n`, `\n`
    /// or a lone `\r`) are counted here, up to the record's first byte.
    fn line_at(&mut self, start: u64) -> u64 {
        let len = self.bytes.len();
        let start = usize::try_from(start).map_or(len, |start| start.min(len));
        let start = self.bytes[start..]
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .map_or(len, |skipped| start + skipped);
        if start < self.counted_to {
            // Positions only move forward; should one not, count again from the start.
            (self.counted_to, self.breaks) = (0, 0);
        }
        for at in self.counted_to..start {
            let lone_cr = self.bytes[at] == b'\r' && self.bytes.get(at + 1) != Some(&b'\n');
            if self.bytes[at] == b'\n' || lone_cr {
                self.breaks += 1;
            }
        }
        self.counted_to = start;
        self.breaks + 1
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of the records after the header, and of the bad lines.
    fn lines(csv: &str) -> (Vec<u64>, Vec<u64>) {
        let mut records = CsvRecords::new(csv.as_bytes(), ["a", "b"]);
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        while let Some(record) = records.next_record() {
            match record {
                Ok((line, _)) => good.push(line),
                Err(error) => bad.push(error.line),
            }
        }
        (good, bad)
    }

    #[test]
    fn lines_are_those_an_editor_shows_whatever_ends_them() {
        for csv in [
            "a,b\nx,1\ny,2\n",
            "a,b\r\nx,1\r\ny,2\r\n",
            "a,b\rx,1\ry,2\r",
            "\u{feff}a,b\r\nx,1\ny,2",
        ] {
            assert_eq!(lines(csv), (vec![2, 3], vec![]), "{csv:?}");
        }
        // Blank lines count, before the header too; a line break inside quotes counts.
        assert_eq!(
            lines("\r\na,b\r\n\r\n\r\nx,1\r\n  \r\n\"y\r\nz\",2\r\nw,3\n"),
            (vec![5, 7, 9], vec![])
        );
        assert_eq!(
            lines("\n\na,b\n\n\nx,1\n  \n\"y\nz\",2\nw,3\n"),
            (vec![6, 8, 10], vec![])
        );
        // Bad lines too: a wrong header, and a line that is not UTF-8.
        assert_eq!(lines("\r\nb,a\r\nx,1\r\n"), (vec![3], vec![2]));
        let mut records = CsvRecords::new(b"a,b\r\nx,\xff\r\ny,2\r\n", ["a", "b"]);
        let bad = records.next_record().and_then(Result::err);
        assert_eq!(bad.map(|e| e.line), Some(2));
        let good = records.next_record().and_then(Result::ok);
        assert_eq!(good.map(|(line, _)| line), Some(3));
    }
}
