//! pgveil's own logins to the database through tokio-postgres (`check --live`, the
//! `auth_user` connection of `auth = "scram"`): `[upstream]` host, port and TLS mode, with
//! channel binding where the database offers it.

use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::{Client, NoTls};

use super::tls;
use crate::config::{UpstreamConfig, UpstreamTls};

/// Who logs in, where.
pub struct Login<'a> {
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    pub application: &'a str,
}

/// Connects and drives the connection on the current runtime. The error is one line.
pub async fn connect(upstream: &UpstreamConfig, login: &Login<'_>) -> Result<Client, String> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&upstream.host)
        .port(upstream.port)
        .user(login.user)
        .dbname(login.database)
        .application_name(login.application)
        .connect_timeout(upstream.connect_timeout)
        .channel_binding(ChannelBinding::Prefer);
    if let Some(password) = login.password {
        pg.password(password);
    }
    let client = match upstream.tls {
        UpstreamTls::Disable => {
            pg.ssl_mode(SslMode::Disable);
            let (client, connection) = pg.connect(NoTls).await.map_err(|e| error_text(&e))?;
            tokio::spawn(connection);
            client
        }
        mode => {
            let ca = match mode {
                UpstreamTls::VerifyFull => upstream.ca_file.as_deref(),
                _ => None,
            };
            let tls = tls::upstream_config(ca).map_err(|e| e.to_string())?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            pg.ssl_mode(match mode {
                UpstreamTls::Prefer => SslMode::Prefer,
                _ => SslMode::Require,
            });
            let (client, connection) = pg.connect(tls).await.map_err(|e| error_text(&e))?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// One line for a client error: the server's message (with its SQLSTATE) for a database
/// error, otherwise the error and its cause (tokio-postgres prints only "db error").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    let text = if let Some(db) = e.as_db_error() {
        format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        )
    } else {
        let mut text = e.to_string();
        if let Some(source) = e.source() {
            let source = source.to_string();
            if !text.contains(&source) {
                text = format!("{text}: {source}");
            }
        }
        text
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
