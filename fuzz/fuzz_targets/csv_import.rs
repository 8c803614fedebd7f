//! The CSV imports of accounts (`POST /api/accounts/import`) and sites (`POST
//! /api/sites/import`): `formats::accounts::parse_accounts_csv` and
//! `formats::sites::parse_sites_csv`, which read an administrator's file before anything
//! touches the database. See `meet_fuzz::api_text::csv_import` for the input and the checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("csv_import");
    },
    |data: &[u8]| {
        meet_fuzz::api_text::csv_import(data);
    }
);
