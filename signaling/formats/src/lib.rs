//! The text that the REST API reads from clients, parsed without the server (docs/api.md):
//! RFC 3339 times ([`rfc3339`]) and the CSV imports of accounts ([`accounts`]) and sites
//! ([`sites`]), with the rules for the names and codes they carry; and the envelope that
//! authenticates what the nodes of a cluster write to NATS ([`cluster_envelope`]).
//!
//! A leaf crate (csv, serde, thiserror, aws-lc-rs for the envelope's HMAC), so that the fuzz targets (`fuzz/`) reach these
//! parsers of untrusted input without building the server (axum, sqlx, the SFU). The
//! `openapi` feature derives the types' OpenAPI schemas for the server's document.

pub mod accounts;
pub mod cluster_envelope;
mod csv_file;
pub mod rfc3339;
pub mod sites;

pub use csv_file::CsvLineError;
