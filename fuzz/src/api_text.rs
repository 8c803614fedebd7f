//! Harness for the text the REST API reads from clients (the `meet-formats` crate): the CSV
//! imports of accounts and sites (`csv_import`) and RFC 3339 times (`rfc3339`).

use formats::accounts::{
    AccountRole, MAX_LISTED_ERRORS, Problems, is_display_name, parse_accounts_csv, username_problem,
};
use formats::rfc3339;
use formats::sites::{code_problem, name_problem, parse_sites_csv};

/// `csv_import`: the first byte picks the import (even: accounts, odd: sites), the rest is the
/// file. Checked: the good lines keep every rule the import states; each good line is named
/// by its place in the file (after the header, in order, within the file's lines); every bad
/// line too.
pub fn csv_import(data: &[u8]) {
    let Some((&selector, csv)) = data.split_first() else {
        return;
    };
    let lines = physical_lines(csv);
    let mut good = Vec::new();
    let errors = if selector % 2 == 0 {
        let mut problems = Problems::default();
        let accounts = parse_accounts_csv(csv, &mut problems);
        let mut usernames = std::collections::HashSet::new();
        for account in &accounts {
            assert_eq!(username_problem(&account.username), None, "{account:?}");
            assert!(is_display_name(&account.display_name), "{account:?}");
            assert_eq!(
                account.display_name.trim(),
                account.display_name,
                "{account:?}"
            );
            assert_ne!(account.role, AccountRole::Admin, "{account:?}");
            if let Some(code) = &account.site_code {
                assert!(!code.is_empty() && code.trim() == code, "{account:?}");
            } else {
                assert!(!account.role.needs_site(), "{account:?}");
            }
            assert!(usernames.insert(&account.username), "{account:?} twice");
            good.push(account.number);
        }
        let errors = problems.into_errors();
        assert!(
            errors.len() <= MAX_LISTED_ERRORS + 1,
            "{} errors",
            errors.len()
        );
        errors
    } else {
        let (sites, errors) = parse_sites_csv(csv);
        let mut codes = std::collections::HashSet::new();
        for site in &sites {
            assert_eq!(code_problem(&site.code), None, "{site:?}");
            assert_eq!(name_problem(&site.name), None, "{site:?}");
            assert_eq!(site.name.trim(), site.name, "{site:?}");
            assert_ne!(site.parent_code.as_ref(), Some(&site.code), "{site:?}");
            if let Some(parent) = &site.parent_code {
                assert!(!parent.is_empty() && parent.trim() == parent, "{site:?}");
            }
            assert!(codes.insert(&site.code), "{site:?} twice");
            good.push(site.number);
        }
        errors
    };
    // The header is a line of its own, so no good line is line 1.
    let mut previous = 1;
    for &number in &good {
        assert!(
            number > previous && number <= lines,
            "good line numbers {good:?} in a file of {lines} lines"
        );
        previous = number;
    }
    for error in &errors {
        assert!(
            (1..=lines).contains(&error.line),
            "{error:?} in a file of {lines} lines"
        );
        assert!(!error.message.is_empty(), "{error:?}");
    }
}

/// How many lines an editor shows for `bytes`: one more than its line breaks (`\r\n`, `\n` or
/// a lone `\r`).
fn physical_lines(bytes: &[u8]) -> u64 {
    let mut breaks = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\r' if bytes.get(at + 1) == Some(&b'\n') => {
                breaks += 1;
                at += 1;
            }
            b'\r' | b'\n' => breaks += 1,
            _ => {}
        }
        at += 1;
    }
    breaks + 1
}

/// `rfc3339`: the input as text, parsed; and its first 8 bytes as milliseconds, formatted.
/// Checked: a time that parses is within a day of the years 0000–9999 (the widest offset), and
/// formats (when in those years) to the fixed shape, which parses back to the same instant;
/// any millisecond in those years formats and parses back to itself.
pub fn rfc3339(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(ms) = rfc3339::parse(&text) {
        const DAY_MS: i64 = 86_400_000;
        assert!(
            (rfc3339::EARLIEST_MS - DAY_MS..=rfc3339::LATEST_MS + DAY_MS).contains(&ms),
            "{text:?} is {ms} ms"
        );
        match rfc3339::format(ms) {
            Some(written) => round_trip(ms, &written),
            None => assert!(
                !(rfc3339::EARLIEST_MS..=rfc3339::LATEST_MS).contains(&ms),
                "{text:?} ({ms} ms) does not format"
            ),
        }
    }
    let mut eight = [0; 8];
    for (to, from) in eight.iter_mut().zip(data) {
        *to = *from;
    }
    let ms = i64::from_le_bytes(eight);
    let in_range = (rfc3339::EARLIEST_MS..=rfc3339::LATEST_MS).contains(&ms);
    match rfc3339::format(ms) {
        Some(written) => {
            assert!(in_range, "{ms} ms formats as {written}");
            round_trip(ms, &written);
        }
        None => assert!(!in_range, "{ms} ms does not format"),
    }
}

/// Checks that `written`, the formatted `ms`, has the fixed shape and parses back to `ms`.
fn round_trip(ms: i64, written: &str) {
    assert!(
        written.len() == 24 && written.ends_with('Z') && written.as_bytes()[19] == b'.',
        "{ms} ms formats as {written:?}"
    );
    assert_eq!(rfc3339::parse(written), Ok(ms), "{written}");
}

/// Seeds for `csv_import`: small files of each import with a header, quotes (commas, doubled
/// quotes and a line break inside), Vietnamese names, a byte order mark, CRLF and bad lines.
pub fn csv_seeds() -> Vec<(String, Vec<u8>)> {
    let files: [(&str, u8, &str); 10] = [
        (
            "accounts",
            0,
            "username,display_name,role,site_code\n\
             hg.op,Phòng họp Hà Giang,site_operator,HG\n\
             lan,Chị Lan,organizer,\n\
             hg.chu-tich,Chủ tịch,official,HG\n",
        ),
        (
            "accounts_bom_crlf_quotes",
            0,
            "\u{feff}username,display_name,role,site_code\r\n\
             \"c1.room\",\"Xã \"\"Một\"\", huyện A\",site_operator,C1\r\n\
             c2.room , Xã Hai ,site_operator, C2 \r\n\
             \r\n",
        ),
        (
            "accounts_bad_lines",
            0,
            "username,display_name,role,site_code\n\
             cb.op,Phòng họp Cao Bằng,site_operator,CB\n\
             cb.op,Lần hai,site_operator,CB\n\
             sai tên,Sai,official,CB\n\
             khong.xa,Không xã,site_operator,\n\
             quan.tri,Quản trị,admin,\n\
             chu.tich,Chủ tịch,chairman,CB\n\
             thieu,Thiếu\n\
             trong, ,official,CB\n",
        ),
        (
            "accounts_line_break_in_quotes",
            0,
            "username,display_name,role,site_code\n\
             a,\"two\nlines\",organizer,\n\
             b,B,organizer,\n",
        ),
        ("accounts_wrong_header", 0, "name,role\nx,y\n"),
        (
            "sites",
            1,
            "code,name,kind,parent_code\n\
             VN,Trung ương,central,\n\
             HG,Hà Giang,province,VN\n\
             C1,\"Xã Tân Lập, huyện A\",commune,HG\n",
        ),
        (
            "sites_bom_crlf",
            1,
            "\u{feff}code,name,kind,parent_code\r\n\
             C1,Xã Một,commune,P1\r\n\
             P1,Tỉnh Một,province,VN\r\n",
        ),
        (
            "sites_bad_lines",
            1,
            "code,name,kind,parent_code\n\
             HG,Hà Giang,province,VN\n\
             HG,Hà Giang again,province,VN\n\
             C1,Commune 1,village,HG\n\
             C2,,commune,HG\n\
             C4,Loop,commune,C4\n\
             C5,too,many,fields,here\n\
             bad code!,X,commune,\n",
        ),
        (
            "sites_blank_lines",
            1,
            "\n\ncode,name,kind,parent_code\n\n\nA,A,central,\n   \nB,B,province,A",
        ),
        ("sites_empty", 1, ""),
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(name, selector, csv)| {
            let mut data = vec![*selector];
            data.extend_from_slice(csv.as_bytes());
            ((*name).to_owned(), data)
        })
        .collect();
    let mut not_utf8 =
        b"\x00username,display_name,role,site_code\nx,\xff\xfe,organizer,\n".to_vec();
    not_utf8.extend_from_slice(b"y,Y,organizer,\n");
    seeds.push(("accounts_not_utf8".to_owned(), not_utf8));
    seeds
}

/// Seeds for `rfc3339`: times with offsets, fractions of every length, `Z` and `z`, a space
/// or `t` for the `T`, the first and last days of the years written, leap days, and near
/// misses.
pub fn rfc3339_seeds() -> Vec<(String, Vec<u8>)> {
    let times = [
        ("offset", "2026-12-01T09:00:00+07:00"),
        ("negative_offset", "2027-01-15t03:30:00.123-04:30"),
        ("fraction_one_digit", "2026-12-01T02:00:00.5Z"),
        ("fraction_many_digits", "2027-01-15 08:00:00.1239999z"),
        ("milliseconds_z", "2027-01-15T08:00:00.123Z"),
        ("earliest", "0000-01-01T00:00:00.000Z"),
        ("latest", "9999-12-31T23:59:59.999Z"),
        ("before_the_earliest", "0000-01-01T00:00:00+23:59"),
        ("after_the_latest", "9999-12-31T23:59:59.999-23:59"),
        ("leap_day", "2000-02-29T00:00:00Z"),
        ("no_leap_day", "1900-02-29T00:00:00Z"),
        ("leap_second", "2016-12-31T23:59:60Z"),
        ("no_offset", "2027-01-15T08:00:00"),
        ("offset_without_colon", "2027-01-15T08:00:00+0700"),
        ("unicode_digits", "２０２７-01-15T08:00:00Z"),
    ];
    times
        .iter()
        .map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec()))
        .collect()
}
