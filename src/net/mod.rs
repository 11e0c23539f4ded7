//! The wire: framing, the messages pgveil reads (frontend and backend), the startup
//! handshake, TLS, and connections upstream.

pub mod auth;
pub mod backend;
pub mod copy;
pub mod copy_rows;
pub mod copy_write;
pub mod frame;
pub mod frontend;
pub mod handshake;
pub mod pgclient;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upstream;
