//! `pgveil migrate` of plaintext columns against real PostgreSQL: concurrent writers whose
//! committed writes must all survive, a run killed with SIGKILL and run again, a value that
//! is not valid for the configured type (reported by row id, left unchanged).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{cluster, column_toml, veil_config, Proxy, PASSWORD, SUPERUSER};

fn migrate_cmd(config: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgveil"));
    cmd.args(["migrate", "--config", config])
        .args(extra)
        .env("PGUSER", SUPERUSER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "postgres")
        .env_remove("PGVEIL_MASTER_KEY");
    cmd
}

fn migrate(config: &str, extra: &[&str]) -> Output {
    migrate_cmd(config, extra).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn setup(dir: &Path, table: &str, columns: &str) -> String {
    let config = veil_config(dir, "plaintext", columns);
    let path = dir.join("pgveil.toml");
    std::fs::write(&path, &config).unwrap();
    let _ = table;
    path.display().to_string()
}

fn value(id: i64, version: u32) -> String {
    format!("mig-{id:06}-v{version}-5521")
}

/// Every row through pgveil, as (id, ssn).
async fn read_all(proxy: &Proxy, table: &str) -> BTreeMap<i64, Option<String>> {
    let client = common::connect(proxy.port()).await;
    client
        .query(&format!("SELECT id, ssn FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn column_type(table: &str, column: &str) -> String {
    cluster()
        .psql(&format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = '{column}' AND NOT attisdropped"
        ))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_during_migration_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let table = "public.mig_concurrent";
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, ssn text, note text);
         INSERT INTO {table} SELECT g, 'mig-' || lpad(g::text, 6, '0') || '-v0-5521', 'n' FROM generate_series(1, 4000) g;
         UPDATE {table} SET ssn = NULL WHERE id % 97 = 0"
    ));
    let mut model: BTreeMap<i64, Option<String>> = (1..=4000)
        .map(|id| (id, (id % 97 != 0).then(|| value(id, 0))))
        .collect();
    common::secrets(model.values().flatten().take(50));
    let config = setup(
        dir.path(),
        table,
        &column_toml(table, "ssn", "text", "deterministic", ""),
    );

    // Writers straight to PostgreSQL while the column is still plaintext: updates of the
    // protected column, of another column, inserts. A write that fails (after the swap the
    // column is bytea and refuses a plaintext) is not in the model.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2i64 {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let client = common::connect(cluster().port).await;
            let mut applied: Vec<(i64, Option<String>)> = Vec::new();
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Each writer has its own rows (odd or even ids), so its order is the commit order.
                let id = 1 + ((i * 37) % 2000) * 2 + w;
                let version = u32::try_from(i).unwrap();
                let outcome = match i % 3 {
                    0 => {
                        let new_id = 10_000 + w * 100_000 + i;
                        let v = value(new_id, version);
                        client
                            .execute(
                                &format!("INSERT INTO {table} (id, ssn) VALUES ($1, $2::text)"),
                                &[&new_id, &v],
                            )
                            .await
                            .map(|_| (new_id, Some(v)))
                    }
                    1 => {
                        let v = value(id, version);
                        client
                            .execute(
                                &format!("UPDATE {table} SET ssn = $2::text WHERE id = $1"),
                                &[&id, &v],
                            )
                            .await
                            .map(|_| (id, Some(v)))
                    }
                    _ => {
                        // Not the protected column: must not disturb its migration.
                        client
                            .execute(
                                &format!("UPDATE {table} SET note = 'm' WHERE id = $1"),
                                &[&id],
                            )
                            .await
                            .map(|_| (0, None))
                    }
                };
                if let Ok(write) = outcome {
                    if write.0 != 0 {
                        applied.push(write);
                    }
                }
            }
            applied
        }));
    }
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || migrate(&config, &["--batch-size", "150"])
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for writer in writers {
        for (id, v) in writer.await.unwrap() {
            model.insert(id, v);
            writes += 1;
        }
    }
    assert!(out.status.success(), "{out:?}");
    assert!(writes > 0, "no concurrent write landed");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("public.mig_concurrent.ssn: encrypt plaintext column done")
            && stdout.contains("envelope constraint validated"),
        "{stdout}"
    );

    // The database holds bytea envelopes only; shadow, trigger and plaintext are gone.
    assert_eq!(column_type(table, "ssn"), "bytea");
    let leftovers = cluster().psql(&format!(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname LIKE 'ssn\\_\\_pgveil%' AND NOT attisdropped;
         SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass;
         SELECT count(*) FROM {table} WHERE ssn IS NOT NULL AND substring(ssn FROM 1 FOR 1) <> '\\x01'::bytea;
         SELECT phase FROM pgveil.migration WHERE table_name = '{table}' AND column_name = 'ssn'"
    ));
    assert_eq!(
        leftovers.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0", "done"]
    );

    // Through pgveil, every committed write is there.
    let proxy = Proxy::start(&std::fs::read_to_string(&config).unwrap(), dir.path());
    assert_eq!(read_all(&proxy, table).await, model);
    // And new writes through pgveil are encrypted and checked by the constraint.
    let client = common::connect(proxy.port()).await;
    let v = value(999_999, 1);
    common::secret(&v);
    client
        .execute(
            &format!("INSERT INTO {table} (id, ssn) VALUES (999999, $1)"),
            &[&v],
        )
        .await
        .unwrap();
    let rows = client
        .query(&format!("SELECT id FROM {table} WHERE ssn = $1"), &[&v])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_migration_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let table = "public.mig_killed";
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, ssn text);
         INSERT INTO {table} SELECT g, 'mig-' || lpad(g::text, 6, '0') || '-v0-5521' FROM generate_series(1, 30000) g"
    ));
    let config = setup(
        dir.path(),
        table,
        &column_toml(table, "ssn", "text", "randomized", ""),
    );
    let mut child = migrate_cmd(&config, &["--batch-size", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some batches are committed.
    let started = std::time::Instant::now();
    loop {
        let done = common::psql_at(
            cluster().port,
            SUPERUSER,
            PASSWORD,
            &format!("SELECT last_key FROM pgveil.migration WHERE table_name = '{table}'"),
        )
        .is_ok_and(|out| out.trim().parse::<i64>().is_ok_and(|k| k >= 500));
        if done {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the first batches never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SIGKILL: no cleanup of any kind.
    child.kill().unwrap();
    child.wait().unwrap();
    let state = cluster().psql(&format!(
        "SELECT phase, last_key::bigint < 30000, (SELECT count(*) FROM {table} WHERE ssn__pgveil IS NOT NULL) > 0 FROM pgveil.migration WHERE table_name = '{table}'"
    ));
    assert_eq!(state.trim(), "copy|t|t", "not stopped midway");
    assert_eq!(column_type(table, "ssn"), "text");

    let out = migrate(&config, &["--batch-size", "500"]);
    assert!(out.status.success(), "{out:?}");
    // The second run wrote only the rows the first did not.
    let stdout = text(&out.stdout);
    let written: u64 = stdout
        .split(", ")
        .find_map(|part| part.strip_suffix(" row(s) written"))
        .and_then(|n| n.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(written < 30000, "{stdout}");
    assert_eq!(column_type(table, "ssn"), "bytea");
    let proxy = Proxy::start(&std::fs::read_to_string(&config).unwrap(), dir.path());
    let all = read_all(&proxy, table).await;
    assert_eq!(all.len(), 30000);
    assert!(all
        .iter()
        .all(|(id, v)| v.as_deref() == Some(value(*id, 0).as_str())));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_value_is_reported_by_row_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let table = "public.mig_invalid";
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, dob text);
         INSERT INTO {table} VALUES (1, '1980-02-03'), (2, 'bad-date-8812'), (3, NULL), (4, '2001-12-31')"
    ));
    let config = setup(
        dir.path(),
        table,
        &column_toml(table, "dob", "date", "randomized", ""),
    );
    let out = migrate(&config, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("public.mig_invalid.dob: 1 row(s) hold a value that is not valid for the column, left unchanged (primary key 2)"),
        "{err}"
    );
    assert!(!err.contains("bad-date"), "a value was printed: {err}");
    assert!(text(&out.stdout).contains("incomplete"), "{out:?}");
    // Nothing swapped: the plaintext column is as it was.
    assert_eq!(column_type(table, "dob"), "text");
    assert_eq!(
        cluster()
            .psql(&format!("SELECT dob FROM {table} WHERE id = 2"))
            .trim(),
        "bad-date-8812"
    );

    // Fixed, the next run completes.
    cluster().psql(&format!(
        "UPDATE {table} SET dob = '1999-09-09' WHERE id = 2"
    ));
    let out = migrate(&config, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(column_type(table, "dob"), "bytea");
    let proxy = Proxy::start(&std::fs::read_to_string(&config).unwrap(), dir.path());
    let client = common::connect(proxy.port()).await;
    let rows: Vec<(i32, Option<String>)> = client
        .query(&format!("SELECT id, dob FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let dob: Option<chrono::NaiveDate> = r.get(1);
            (r.get(0), dob.map(|d| d.to_string()))
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, Some("1980-02-03".into())),
            (2, Some("1999-09-09".into())),
            (3, None),
            (4, Some("2001-12-31".into())),
        ]
    );
}

#[test]
fn a_missing_table_or_bad_option_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(
        dir.path(),
        "public.mig_absent",
        &column_toml("public.mig_absent", "ssn", "text", "randomized", ""),
    );
    let out = migrate(&config, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("table public.mig_absent does not exist"),
        "{err}"
    );

    // Bad arguments are an invalid input (exit 1), as for every command.
    let out = migrate(&config, &["--table", "public.other"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no configured column matches public.other"));

    let out = migrate(&config, &["--batch-size", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
