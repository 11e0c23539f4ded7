//! The wire: framing, the startup handshake, TLS, and connections upstream.

pub mod auth;
pub mod frame;
pub mod handshake;
pub mod messages;
pub mod pgclient;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upstream;
