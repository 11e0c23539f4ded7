//! Key rotation against real PostgreSQL: `pgveil keys rotate`, values under the previous key
//! still read through pgveil, new writes under the new key id, `pgveil migrate` re-encrypting
//! to the current key and reporting duplicates a unique index could not see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{cluster, column_toml, veil_config, Proxy, PASSWORD, SUPERUSER};

fn pgveil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .env("PGUSER", SUPERUSER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "postgres")
        .env_remove("PGVEIL_MASTER_KEY")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The key id of each row's stored value, read directly from PostgreSQL.
fn stored_key_ids(table: &str) -> Vec<(i32, String)> {
    cluster()
        .psql(&format!(
            "SELECT id, encode(substring(ssn FROM 2 FOR 4), 'hex') FROM {table} ORDER BY id"
        ))
        .lines()
        .map(|l| {
            let (id, key) = l.split_once('|').unwrap();
            (id.parse().unwrap(), key.to_string())
        })
        .collect()
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("pgveil.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_read_both_keys_then_migrate_to_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let table = "public.rot_patients";
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, ssn bytea UNIQUE)"
    ));
    let columns = column_toml(table, "ssn", "text", "deterministic", "");
    let config = veil_config(dir.path(), "plaintext", &columns);
    let old_values: Vec<String> = (0..5).map(|i| format!("rot-old-{i:04}-7731")).collect();
    let new_values: Vec<String> = (0..3).map(|i| format!("rot-new-{i:04}-7731")).collect();
    common::secrets(old_values.iter().chain(&new_values));

    // Values written under the first key.
    {
        let proxy = Proxy::start(&config, dir.path());
        let client = common::connect(proxy.port()).await;
        for (i, v) in old_values.iter().enumerate() {
            client
                .execute(
                    &format!("INSERT INTO {table} (id, ssn) VALUES ($1, $2)"),
                    &[&(i as i32), v],
                )
                .await
                .unwrap();
        }
    }
    let first_ids = stored_key_ids(table);
    let old_id = first_ids[0].1.clone();
    assert!(first_ids.iter().all(|(_, k)| *k == old_id));

    // Rotate.
    let keys = dir.path().join("keys");
    let out = pgveil(&["keys", "rotate", "--dir", keys.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let kept = keys.join(format!("master-{old_id}.key"));
    assert!(kept.exists(), "{stdout}");
    assert!(
        stdout.contains(&format!("kept the master key {old_id} as")),
        "{stdout}"
    );
    assert!(
        stdout.contains("add to [keys]: previous_master_key_files = ["),
        "{stdout}"
    );
    let key_text = std::fs::read_to_string(keys.join("master.key")).unwrap();
    assert!(!stdout.contains(key_text.trim()), "a key was printed");

    // Without the previous key, an old value cannot be decrypted: XX001, not a wrong value.
    {
        let proxy = Proxy::start(&config, dir.path());
        let client = common::connect(proxy.port()).await;
        let err = client
            .query(&format!("SELECT ssn FROM {table} WHERE id = 0"), &[])
            .await
            .unwrap_err();
        assert_eq!(common::db_error(&err).0, "XX001");
    }

    // With it: old values read, new writes carry the new id.
    let rotated = config.replace(
        "master_key_file = \"keys/master.key\"",
        &format!(
            "master_key_file = \"keys/master.key\"\nprevious_master_key_files = [\"keys/master-{old_id}.key\"]"
        ),
    );
    let config_path = write_config(dir.path(), &rotated);
    {
        let proxy = Proxy::start(&rotated, dir.path());
        let client = common::connect(proxy.port()).await;
        for (i, v) in new_values.iter().enumerate() {
            client
                .execute(
                    &format!("INSERT INTO {table} (id, ssn) VALUES ($1, $2)"),
                    &[&(100 + i as i32), v],
                )
                .await
                .unwrap();
        }
        // The same value as row 0, under the new key: the unique index cannot see it.
        client
            .execute(
                &format!("INSERT INTO {table} (id, ssn) VALUES (200, $1)"),
                &[&old_values[0]],
            )
            .await
            .unwrap();
        let rows = client
            .query(&format!("SELECT id, ssn FROM {table} ORDER BY id"), &[])
            .await
            .unwrap();
        let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut want: Vec<(i32, String)> = old_values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i32, v.clone()))
            .collect();
        want.extend(
            new_values
                .iter()
                .enumerate()
                .map(|(i, v)| (100 + i as i32, v.clone())),
        );
        want.push((200, old_values[0].clone()));
        assert_eq!(got, want);
    }
    let ids = stored_key_ids(table);
    let new_id = ids.iter().find(|(id, _)| *id == 100).unwrap().1.clone();
    assert_ne!(new_id, old_id);
    assert!(ids.iter().all(|(id, k)| if *id >= 100 {
        *k == new_id
    } else {
        *k == old_id
    }));

    // migrate: everything but the duplicate goes to the new key; the duplicate is reported
    // by row id (never by value) and the exit is non-zero.
    let out = pgveil(&["migrate", "--config", &config_path, "--batch-size", "2"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("1 row(s) hold a value another row holds under the current key")
            && err.contains("(primary key 0)"),
        "{err}"
    );
    assert!(!err.contains("rot-old"), "a value was printed: {err}");
    let ids = stored_key_ids(table);
    for (id, key) in &ids {
        let want = if *id == 0 { &old_id } else { &new_id };
        assert_eq!(key, want, "row {id}");
    }

    // Remove the duplicate; a second run completes, validates the envelope constraint.
    cluster().psql(&format!("DELETE FROM {table} WHERE id = 200"));
    let out = pgveil(&["migrate", "--config", &config_path]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("public.rot_patients.ssn: re-encrypt to the current key done"),
        "{out:?}"
    );
    assert!(stored_key_ids(table).iter().all(|(_, k)| *k == new_id));
    let validated = cluster().psql(&format!(
        "SELECT convalidated FROM pg_constraint WHERE conrelid = '{table}'::regclass AND conname = 'pgveil_envelope_ssn'"
    ));
    assert_eq!(validated.trim(), "t");

    // Every value is under the new key: the configuration without the old key reads all, and
    // equality finds a value first written under the old key.
    let proxy = Proxy::start(&config, dir.path());
    let client = common::connect(proxy.port()).await;
    let rows = client
        .query(
            &format!("SELECT id FROM {table} WHERE ssn = $1"),
            &[&old_values[3]],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 3);
    let n = client
        .query(&format!("SELECT ssn FROM {table}"), &[])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 8);

    // The constraint refuses a value under a key id pgveil does not know.
    let bad = common::psql_at(
        cluster().port,
        SUPERUSER,
        PASSWORD,
        &format!(
        "UPDATE {table} SET ssn = decode('01deadbeef44' || repeat('00', 40), 'hex') WHERE id = 1"
    ),
    );
    assert!(bad.unwrap_err().contains("pgveil_envelope_ssn"));
}

#[test]
fn rotate_without_a_key_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = pgveil(&["keys", "rotate", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("pgveil: ") && err.contains("master.key"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn migrate_with_a_missing_previous_key_file_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let columns = column_toml("public.rot_missing", "ssn", "text", "deterministic", "");
    let config = veil_config(dir.path(), "plaintext", &columns).replace(
        "master_key_file = \"keys/master.key\"",
        "master_key_file = \"keys/master.key\"\nprevious_master_key_files = [\"keys/master-00000000.key\"]",
    );
    let path = write_config(dir.path(), &config);
    let out = pgveil(&["migrate", "--config", &path]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("master-00000000.key"), "{err}");
}
