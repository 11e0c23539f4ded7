//! Generated SQL: Debian's `sqlsmith` writes a fixed number of random statements over the
//! test schema (seeded, so a failure reproduces), and each one runs through pgveil as a
//! role that may read everything, one with masks and one denied. Whatever pgveil answers
//! (rows or an error), it must not panic, must keep serving, must never hand out a pgveil
//! envelope (`0x01` + a key id it uses), must never show a role a value its policy hides,
//! and must never send a registered plaintext upstream (the harness's leak check).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio_postgres::SimpleQueryMessage;

/// Statements per seed; with three roles each runs three times.
const STATEMENTS: usize = 250;
const SEEDS: [u64; 2] = [11, 2026];

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

struct Patient {
    name: String,
    ssn: String,
    diagnosis: String,
    birth_date: String,
}

fn patients() -> Vec<Patient> {
    (0..12)
        .map(|i| Patient {
            name: format!("Smith{i:02}"),
            ssn: format!("{:03}-{:02}-{:04}", 700 + i, 30 + i, 4100 + i),
            diagnosis: format!("diagnosis-sqlsmith-{i:02}"),
            birth_date: format!("19{:02}-0{}-1{}", 50 + i, 1 + i % 9, i % 10),
        })
        .collect()
}

fn columns() -> String {
    let mut toml = String::new();
    toml += &column_toml(
        "gen_patients",
        "ssn",
        "text",
        "deterministic",
        "domain = \"gen_ssn\"\naccess = { gen_billing = \"mask:last4\", gen_research = \"deny\" }",
    );
    toml += &column_toml(
        "gen_patients",
        "diagnosis",
        "text",
        "randomized",
        "access = { gen_billing = \"deny\", gen_research = \"deny\" }",
    );
    toml += &column_toml(
        "gen_patients",
        "birth_date",
        "date",
        "deterministic",
        "access = { gen_billing = \"mask:year\", gen_research = \"deny\" }",
    );
    toml += &column_toml(
        "gen_visits",
        "ssn",
        "text",
        "deterministic",
        "domain = \"gen_ssn\"\naccess = { gen_billing = \"deny\", gen_research = \"deny\" }",
    );
    toml
}

fn schema() {
    cluster().psql(
        "DROP TABLE IF EXISTS gen_visits, gen_patients, gen_notes;
         CREATE TABLE gen_patients (id serial PRIMARY KEY, name text NOT NULL, ssn bytea,
                                    diagnosis bytea, birth_date bytea, insured boolean);
         CREATE TABLE gen_visits (id serial PRIMARY KEY, patient_id int REFERENCES gen_patients,
                                  ssn bytea, seen_on date, note text);
         CREATE TABLE gen_notes (id serial PRIMARY KEY, body text, score int);
         INSERT INTO gen_notes (body, score) SELECT 'note ' || g, g FROM generate_series(1, 20) g;",
    );
    for role in ["gen_billing", "gen_research"] {
        login_role(role, "", &[]);
        cluster().psql(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON gen_patients, gen_visits, gen_notes TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        ));
    }
}

/// Statements written by sqlsmith from the schema as PostgreSQL shows it (directly: the
/// generator only reads the catalog); `--exclude-catalog` keeps them on the test tables.
fn generate(seed: u64) -> Vec<String> {
    let target = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=postgres",
        cluster().port,
        SUPERUSER,
        PASSWORD
    );
    let out = Command::new("sqlsmith")
        .args([
            format!("--target={target}"),
            "--dry-run".to_string(),
            "--exclude-catalog".to_string(),
            format!("--seed={seed}"),
            format!("--max-queries={STATEMENTS}"),
        ])
        .output()
        .expect("sqlsmith (Debian package sqlsmith; scripts/test.sh installs it)");
    assert!(out.status.success(), "sqlsmith failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let statements: Vec<String> = text
        .split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        statements.len() >= STATEMENTS / 2,
        "sqlsmith wrote {} statements",
        statements.len()
    );
    statements
}

fn birth_date(p: &Patient) -> chrono::NaiveDate {
    chrono::NaiveDate::parse_from_str(&p.birth_date, "%Y-%m-%d").unwrap()
}

/// What one role must never see in a result value, beyond envelopes.
fn hidden_from(role: &str, rows: &[Patient]) -> Vec<String> {
    let mut hidden = Vec::new();
    for p in rows {
        match role {
            "gen_billing" => {
                hidden.push(p.ssn.clone());
                hidden.push(p.diagnosis.clone());
                hidden.push(p.birth_date.clone());
            }
            "gen_research" => {
                hidden.push(p.ssn.clone());
                hidden.push(p.diagnosis.clone());
                hidden.push(p.birth_date.clone());
            }
            _ => {}
        }
    }
    hidden
}

/// A pgveil envelope as the text output of `bytea`: `\x01`, a key id, `44`/`52` (D/R).
fn envelope_prefixes(key_ids: &[String]) -> Vec<String> {
    key_ids
        .iter()
        .flat_map(|id| [format!("\\x01{id}44"), format!("\\x01{id}52")])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_statements_never_panic_leak_or_reveal() {
    count_panics();
    let dir = tempfile::tempdir().unwrap();
    schema();
    let rows = patients();
    for p in &rows {
        secrets([&p.ssn, &p.diagnosis]);
    }
    let proxy = Proxy::start(
        &veil_config(dir.path(), "plaintext", &columns()),
        dir.path(),
    );
    let owner = connect(proxy.port()).await;
    for (i, p) in rows.iter().enumerate() {
        owner
            .execute(
                "INSERT INTO gen_patients (name, ssn, diagnosis, birth_date, insured) VALUES ($1, $2, $3, $4, $5)",
                &[&p.name, &p.ssn, &p.diagnosis, &birth_date(p), &(i % 2 == 0)],
            )
            .await
            .unwrap();
        owner
            .execute(
                "INSERT INTO gen_visits (patient_id, ssn, seen_on, note) VALUES ($1, $2, DATE '2025-03-01', 'routine')",
                &[&(i as i32 + 1), &p.ssn],
            )
            .await
            .unwrap();
    }
    let key_ids: Vec<String> = cluster()
        .psql("SELECT DISTINCT encode(substring(ssn from 2 for 4), 'hex') FROM gen_patients")
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == 8)
        .map(str::to_string)
        .collect();
    assert!(!key_ids.is_empty(), "no envelopes stored");
    let envelopes = envelope_prefixes(&key_ids);

    let mut outcomes: BTreeMap<&str, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    let mut problems = Vec::new();
    for seed in SEEDS {
        let statements = generate(seed);
        for role in [SUPERUSER, "gen_billing", "gen_research"] {
            let client = connect_as(proxy.port(), role, PASSWORD).await.unwrap();
            client
                .simple_query("SET statement_timeout = '2s'")
                .await
                .unwrap();
            let hidden = hidden_from(role, &rows);
            let counts = outcomes.entry(role).or_default();
            for (n, sql) in statements.iter().enumerate() {
                // Generated DML must not change what the next role and the final check see.
                client.simple_query("BEGIN").await.unwrap();
                let answer = client.simple_query(sql).await;
                if !client.is_closed() {
                    client.simple_query("ROLLBACK").await.unwrap();
                }
                let messages = match answer {
                    Ok(messages) => messages,
                    Err(e) => {
                        let code = e.code().map_or("none", |c| c.code()).to_string();
                        *counts.1.entry(code).or_default() += 1;
                        if client.is_closed() {
                            panic!(
                                "seed {seed} statement {n} closed the session of {role}:\n{sql}"
                            );
                        }
                        continue;
                    }
                };
                counts.0 += 1;
                for message in &messages {
                    let SimpleQueryMessage::Row(row) = message else {
                        continue;
                    };
                    for i in 0..row.len() {
                        let Some(value) = row.get(i) else { continue };
                        if let Some(e) = envelopes.iter().find(|e| value.contains(e.as_str())) {
                            problems.push(format!(
                                "seed {seed} statement {n} as {role}: an envelope ({e}…) in a result:\n{sql}"
                            ));
                        }
                        if let Some(h) = hidden.iter().find(|h| value.contains(h.as_str())) {
                            problems.push(format!(
                                "seed {seed} statement {n} as {role}: a hidden value ({h}) in a result:\n{sql}"
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "pgveil panicked");
    // Still serving, data intact.
    let check = connect(proxy.port()).await;
    let row = check
        .query_one(
            "SELECT ssn FROM gen_patients WHERE ssn = $1",
            &[&rows[3].ssn],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), rows[3].ssn);
    for (role, (answered, errors)) in &outcomes {
        eprintln!("{role}: {answered} answered; errors by SQLSTATE: {errors:?}");
        assert!(*answered > 0, "{role}: every statement failed");
    }
}
