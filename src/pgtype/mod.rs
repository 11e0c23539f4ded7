//! The PostgreSQL type codec. It holds no cryptography: it turns what clients send for a
//! protected column into the plaintext that `crypto` encrypts, and back.
//!
//! Typed values: parsing what clients send (text or binary, any accepted spelling) into one
//! canonical byte string per value, and printing canonical values back in the wire format a
//! client asked for, exactly as PostgreSQL would (DateStyle ISO, bytea_output hex,
//! extra_float_digits 1).
//!
//! Canonical encodings (the plaintext that gets encrypted):
//!
//! | type | canonical bytes |
//! |---|---|
//! | text, varchar | the bytes as sent |
//! | int2 / int4 / int8 | 2 / 4 / 8 bytes big-endian |
//! | float8 | IEEE 754 big-endian (every NaN as the one quiet NaN; `-0` kept) |
//! | bool | one byte, 0 or 1 |
//! | date | i32 BE days since 2000-01-01 (`±infinity` as `i32::MAX` / `i32::MIN`) |
//! | timestamp, timestamptz | i64 BE µs since 2000-01-01 (timestamptz in UTC; `±infinity` as `i64::MAX` / `i64::MIN`) |
//! | uuid | 16 bytes |
//! | bytea | the raw bytes |
//! | numeric | normalized decimal text: `1.50` → `1.5`, `-0` → `0`, `NaN`, `Infinity`, `-Infinity` |
//! | jsonb | the text PostgreSQL's jsonb output prints |
//!
//! Error messages name the type, never the value (values are PHI).
//!
//! Known differences from PostgreSQL, all refused with an error rather than misread:
//! hexadecimal float input (`0x1p3`), dates with month names (`Jan 5 2024`) or Julian days,
//! timestamps with a POSIX zone rule inside the value. Text output is always ISO DateStyle
//! ([`SessionTime::output_is_iso`] tells when the session asked for another). Equality is
//! byte equality of the canonical form: float8 `-0` and `0`, and jsonb numbers that differ
//! only in scale (`1.5` / `1.50`, which jsonb prints differently), are distinct values here.
//!
//! One job per file: `oid` (the type OIDs pgveil knows), `error` (the one error type),
//! `time` (the session's TimeZone and DateStyle), `timezone` (zone names, offsets and
//! abbreviations), `calendar` (day and microsecond arithmetic), `datetime` (date and timestamp
//! text), `numeric`, `float`, `json`, `scalar` (bool and integers), `uuid`, `bytea`, `recv`
//! (binary input of each type itself), `cast` (assignment casts from other declared types),
//! `input` (any client value to its canonical bytes), `output` (text and binary output) and
//! `format` (the wire format code).

pub mod array;
mod bytea;
pub mod calendar;
mod cast;
mod datetime;
mod error;
mod float;
mod format;
mod input;
mod json;
mod numeric;
pub mod oid;
mod output;
mod recv;
mod scalar;
mod time;
mod timezone;
mod uuid;

#[cfg(test)]
mod tests;

pub use bytea::{decode_bytea_text, decode_bytea_text_into, push_bytea_hex};
pub use error::{ValueError, ValueErrorKind};
pub use format::WireFormat;
pub use input::{canonical_from_binary, canonical_from_text};
pub use output::{text_out_into, to_wire};
pub use time::{DateOrder, SessionTime};
