//! The wire: framing, the messages pgveil reads (frontend and backend), the startup
//! handshake, TLS, and connections upstream.

pub mod auth;
pub mod backend;
pub mod frame;
pub mod frontend;
pub mod handshake;
pub mod pgclient;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upstream;
