//! Times as the API writes and reads them (docs/api.md): RFC 3339 strings on output, always in
//! UTC with `Z` and exactly three fraction digits (`2026-12-01T02:00:00.000Z`), so that they sort
//! as text; on input either such a string (any offset, any number of fraction digits) or an
//! integer count of milliseconds since the Unix epoch, which earlier clients sent. Inside the
//! server a time stays an `i64` of milliseconds; these functions are used through
//! `#[serde(with = "crate::rfc3339")]` and [`option`] on the fields the API shows.
//!
//! The text itself is written and read by `formats::rfc3339` (the `meet-formats` crate, which
//! the fuzz targets reach without the server); this module puts it behind serde and utoipa.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};

pub use formats::rfc3339::{EARLIEST_MS, LATEST_MS, ParseError, format, parse};

/// Writes a time field as an RFC 3339 string (`#[serde(with = "crate::rfc3339")]`).
pub fn serialize<S: Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    // Stored times come from checked input or the clock, so this fails only on a damaged row;
    // the answer is then an error rather than a wrong time.
    format(*ms)
        .ok_or_else(|| S::Error::custom(format_args!("the time {ms} ms is beyond the year 9999")))?
        .serialize(serializer)
}

/// Reads a time field: an RFC 3339 string or integer milliseconds since the epoch.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    deserializer.deserialize_any(TimeVisitor)
}

/// The same for optional fields: `null` or absent is `None`. Use with `#[serde(default)]`.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::TimeInput;

    pub fn serialize<S: Serializer>(ms: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::serialize(ms, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<i64>, D::Error> {
        Ok(Option::<TimeInput>::deserialize(deserializer)?.map(|t| t.0))
    }
}

/// A time as a client may send it: an RFC 3339 string or integer milliseconds since the
/// epoch. Named in the OpenAPI document as the schema of every time the API reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeInput(pub i64);

impl<'de> serde::Deserialize<'de> for TimeInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TimeVisitor).map(TimeInput)
    }
}

struct TimeVisitor;

impl Visitor<'_> for TimeVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "an RFC 3339 time (\"2026-12-01T09:00:00+07:00\") or integer milliseconds since 1970",
        )
    }

    fn visit_i64<E: de::Error>(self, ms: i64) -> Result<i64, E> {
        Ok(ms)
    }

    fn visit_u64<E: de::Error>(self, ms: u64) -> Result<i64, E> {
        i64::try_from(ms).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(ms), &self))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<i64, E> {
        parse(text).map_err(E::custom)
    }
}

impl utoipa::PartialSchema for TimeInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        OneOfBuilder::new()
            .description(Some(
                "An RFC 3339 time (any offset), or milliseconds since the Unix epoch.",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                    .examples(["2026-12-01T09:00:00+07:00"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
            )
            .into()
    }
}

impl utoipa::ToSchema for TimeInput {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TimeInput")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_fields_take_strings_and_integers() {
        #[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
        struct Row {
            #[serde(with = "super")]
            at: i64,
            #[serde(default, with = "super::option")]
            until: Option<i64>,
        }
        let row: Row = serde_json::from_str(r#"{"at": 1800000000123}"#).expect("ms");
        assert_eq!(
            row,
            Row {
                at: 1_800_000_000_123,
                until: None
            }
        );
        let row: Row =
            serde_json::from_str(r#"{"at": "2027-01-15T15:00:00.123+07:00", "until": 5}"#)
                .expect("text");
        assert_eq!(
            row,
            Row {
                at: 1_800_000_000_123,
                until: Some(5)
            }
        );
        assert_eq!(
            serde_json::to_string(&row).expect("json"),
            r#"{"at":"2027-01-15T08:00:00.123Z","until":"1970-01-01T00:00:00.005Z"}"#
        );
        let row: Row = serde_json::from_str(r#"{"at": 0, "until": null}"#).expect("null");
        assert_eq!(row.until, None);
        for bad in [
            r#"{"at": 1.5}"#,
            r#"{"at": true}"#,
            r#"{"at": "tomorrow"}"#,
            r#"{"at": 18446744073709551615}"#,
            r#"{"at": [1]}"#,
        ] {
            assert!(serde_json::from_str::<Row>(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<Row>(r#"{"at": "2027-02-30T00:00:00Z"}"#)
            .expect_err("no such day");
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }
}
