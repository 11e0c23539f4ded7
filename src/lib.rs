//! pgveil: a transparent encrypting proxy for PostgreSQL.
//!
//! The path of one query: `net` (framing, startup, TLS) → `session` (one connection's
//! state) → `sql` (analysis into a plan) → `pgtype` (typed values, canonical encoding),
//! `crypto` (keys, envelope) and `policy` (roles, masks) → `audit` (records, chain,
//! verify/search/report).
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented,
    clippy::dbg_macro,
    clippy::print_stdout,
    rust_2018_idioms
)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod context;
pub mod crypto;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod net;
pub mod pgerror;
pub mod pgtype;
pub mod policy;
pub mod schema;
pub mod server;
pub mod session;
pub mod sql;
pub mod veil;
