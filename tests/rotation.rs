//! Equality across key versions against real PostgreSQL: rows written under key A, `pgveil
//! keys rotate`, rows written under key B; with both keys configured, `=`, `<>`, `IN`,
//! `NOT IN`, `= ANY`, `<> ALL` and comparisons on a shared domain find values under either
//! key, by the simple protocol (psql) and the extended one (tokio-postgres binary
//! parameters, text parameters by hand); joins of two columns see pairs under the same key
//! only, never a wrong pair; after `pgveil migrate` everything is found, joins included; a
//! value under a key no longer configured is XX001 on read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{cluster, column_toml, psql_script, veil_config, Proxy, Raw, PASSWORD, SUPERUSER};

const PATIENTS: &str = "public.rq_patients";
const VISITS: &str = "public.rq_visits";

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

/// The key id (hex) each row's value of `column` is stored under, read directly.
fn stored_key_ids(table: &str, column: &str) -> Vec<(i32, String)> {
    cluster()
        .psql(&format!(
            "SELECT id, encode(substring({column} FROM 2 FOR 4), 'hex') FROM {table} ORDER BY id"
        ))
        .lines()
        .map(|l| {
            let (id, key) = l.split_once('|').unwrap();
            (id.parse().unwrap(), key.to_string())
        })
        .collect()
}

/// psql through pgveil (simple protocol): the output lines.
fn simple(port: u16, sql: &str) -> Vec<String> {
    psql_script(port, SUPERUSER, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

fn ids(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

async fn extended_ids(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<i32> {
    client
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Rows 1..=3 (patients) and 1..=2 (visits) under key A, 11..=13 and 11..=12 under key B.
fn insert(port: u16, first: i32) {
    let tag = if first == 1 { "a" } else { "b" };
    let mut sql = String::new();
    for i in 0..3 {
        let id = first + i;
        sql.push_str(&format!(
            "INSERT INTO {PATIENTS} (id, ssn, mrn) VALUES ({id}, 'rq-{tag}-{i}', 'M-{id}');\n"
        ));
    }
    // Visit 12 (under key B) is for patient 2, whose mrn is stored under key A.
    let visits = if first == 1 { [1, 2] } else { [11, 2] };
    for (i, mrn) in visits.iter().enumerate() {
        let id = first + i as i32;
        sql.push_str(&format!(
            "INSERT INTO {VISITS} (id, mrn) VALUES ({id}, 'M-{mrn}');\n"
        ));
    }
    simple(port, &sql);
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("pgveil.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// The pairs (visit, patient) a join on the shared domain finds, by either protocol.
const JOIN: &str =
    "SELECT v.id, p.id FROM rq_visits v JOIN rq_patients p ON p.mrn = v.mrn ORDER BY 1, 2";

#[tokio::test(flavor = "multi_thread")]
async fn equality_finds_values_under_every_configured_key() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {PATIENTS}, {VISITS}; \
         CREATE TABLE {PATIENTS} (id int PRIMARY KEY, ssn bytea, mrn bytea, note text); \
         CREATE INDEX rq_patients_ssn ON {PATIENTS} (ssn); \
         CREATE TABLE {VISITS} (id int PRIMARY KEY, mrn bytea)"
    ));
    let columns = [
        column_toml(PATIENTS, "ssn", "text", "deterministic", ""),
        column_toml(
            PATIENTS,
            "mrn",
            "text",
            "deterministic",
            "domain = \"rq_mrn\"",
        ),
        column_toml(
            VISITS,
            "mrn",
            "text",
            "deterministic",
            "domain = \"rq_mrn\"",
        ),
    ]
    .concat();
    let config = veil_config(dir.path(), "plaintext", &columns);
    common::secrets(
        ["a", "b"]
            .iter()
            .flat_map(|t| (0..3).map(move |i| format!("rq-{t}-{i}"))),
    );

    {
        let proxy = Proxy::start(&config, dir.path());
        insert(proxy.port(), 1);
    }
    let old_id = stored_key_ids(PATIENTS, "ssn")[0].1.clone();

    let keys = dir.path().join("keys");
    let out = pgveil(&["keys", "rotate", "--dir", keys.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let rotated = config.replace(
        "master_key_file = \"keys/master.key\"",
        &format!(
            "master_key_file = \"keys/master.key\"\nprevious_master_key_files = [\"keys/master-{old_id}.key\"]"
        ),
    );
    let config_path = write_config(dir.path(), &rotated);

    let proxy = Proxy::start(&rotated, dir.path());
    let port = proxy.port();
    insert(port, 11);
    let stored = stored_key_ids(PATIENTS, "ssn");
    let new_id = stored.iter().find(|(id, _)| *id == 11).unwrap().1.clone();
    assert_ne!(new_id, old_id);
    assert_eq!(stored_key_ids(VISITS, "mrn")[3], (12, new_id.clone()));

    // Simple protocol.
    let t = PATIENTS;
    for (sql, want) in [
        (format!("SELECT id FROM {t} WHERE ssn = 'rq-a-0'"), ids(&["1"])),
        (format!("SELECT id FROM {t} WHERE ssn = 'rq-b-0'"), ids(&["11"])),
        (
            format!("SELECT id FROM {t} WHERE 'rq-a-1' = ssn OR ssn = 'rq-b-1'::text ORDER BY id"),
            ids(&["2", "12"]),
        ),
        (
            format!("SELECT id FROM {t} WHERE ssn IN ('rq-a-2', 'rq-b-2') ORDER BY id"),
            ids(&["3", "13"]),
        ),
        (
            format!("SELECT id FROM {t} WHERE ssn NOT IN ('rq-a-2', 'rq-b-2') ORDER BY id"),
            ids(&["1", "2", "11", "12"]),
        ),
        (
            format!("SELECT count(*) FROM {t} WHERE ssn <> 'rq-a-0' AND 'rq-b-0' <> ssn"),
            ids(&["4"]),
        ),
        (
            format!("SELECT id FROM {t} WHERE ssn = ANY('{{rq-a-1,rq-b-1}}'::text[]) ORDER BY id"),
            ids(&["2", "12"]),
        ),
        (
            format!("SELECT id FROM {t} WHERE ssn = ANY(ARRAY['rq-a-0', 'rq-b-2']) ORDER BY id"),
            ids(&["1", "13"]),
        ),
        (
            format!("SELECT id, CASE WHEN ssn = 'rq-a-1' THEN 'y' ELSE 'n' END FROM {t} WHERE id < 3 ORDER BY id"),
            ids(&["1|n", "2|y"]),
        ),
        (
            format!("SELECT id FROM {t} p WHERE p.ssn IS NOT DISTINCT FROM 'rq-a-1' OR 'rq-b-1' IS NOT DISTINCT FROM ssn ORDER BY id"),
            ids(&["2", "12"]),
        ),
        (
            format!("SELECT count(*) FROM {t} WHERE ssn IS DISTINCT FROM 'rq-a-0'"),
            ids(&["5"]),
        ),
        // A shared domain: both tables' mrn compared with one value, under either key.
        (
            format!("SELECT v.id FROM {VISITS} v WHERE v.mrn = 'M-2' ORDER BY 1"),
            ids(&["2", "12"]),
        ),
        (
            format!("SELECT p.id FROM {t} p JOIN {VISITS} v ON v.id = p.id AND v.mrn = 'M-11' ORDER BY 1"),
            ids(&["11"]),
        ),
        (
            format!("UPDATE {t} SET note = 'seen' WHERE ssn = 'rq-a-2' RETURNING id"),
            ids(&["3"]),
        ),
    ] {
        assert_eq!(simple(port, &sql), want, "{sql}");
    }
    // A join of two columns compares stored ciphertexts: pairs under the same key only
    // (visit 12's mrn is under key B, patient 2's under key A), never a wrong pair.
    assert_eq!(simple(port, JOIN), ids(&["1|1", "2|2", "11|11"]));
    // A form that cannot hold several ciphertexts is refused while two keys are configured.
    let err = psql_script(
        port,
        SUPERUSER,
        &format!("SELECT CASE ssn WHEN 'rq-a-0' THEN 1 END FROM {t}"),
    )
    .unwrap_err();
    assert!(
        err.contains("cannot match values under every configured master key"),
        "{err}"
    );
    assert!(!err.contains("rq-a-0"), "{err}");

    // Extended protocol, binary parameters.
    let client = common::connect(port).await;
    let sql = format!("SELECT id FROM {t} WHERE ssn = $1");
    assert_eq!(extended_ids(&client, &sql, &[&"rq-a-0"]).await, vec![1]);
    assert_eq!(extended_ids(&client, &sql, &[&"rq-b-0"]).await, vec![11]);
    let sql = format!("SELECT id FROM {t} WHERE ssn IN ($1, $2) OR $3 = ssn ORDER BY id");
    assert_eq!(
        extended_ids(&client, &sql, &[&"rq-a-1", &"rq-b-1", &"rq-b-2"]).await,
        vec![2, 12, 13]
    );
    let sql = format!("SELECT id FROM {t} WHERE ssn <> $1 AND ssn NOT IN ($2) ORDER BY id");
    assert_eq!(
        extended_ids(&client, &sql, &[&"rq-a-0", &"rq-b-0"]).await,
        vec![2, 3, 12, 13]
    );
    let both: Vec<&str> = vec!["rq-a-2", "rq-b-1"];
    let sql = format!("SELECT id FROM {t} WHERE ssn = ANY($1) ORDER BY id");
    assert_eq!(extended_ids(&client, &sql, &[&both]).await, vec![3, 12]);
    let sql = format!("SELECT id FROM {t} WHERE ssn <> ALL($1::text[]) ORDER BY id");
    assert_eq!(
        extended_ids(&client, &sql, &[&both]).await,
        vec![1, 2, 11, 13]
    );
    let sql = format!("SELECT id FROM {t} WHERE ssn IS NOT DISTINCT FROM $1 ORDER BY id");
    assert_eq!(extended_ids(&client, &sql, &[&"rq-a-0"]).await, vec![1]);
    assert_eq!(
        extended_ids(&client, &sql, &[&None::<&str>]).await,
        Vec::<i32>::new()
    );
    let sql = format!(
        "SELECT p.id FROM {t} p JOIN {VISITS} v ON v.id = p.id AND v.mrn = $1 \
         WHERE CASE WHEN p.ssn = $2 THEN true ELSE false END"
    );
    assert_eq!(
        extended_ids(&client, &sql, &[&"M-11", &"rq-b-0"]).await,
        vec![11]
    );
    let sql = format!("SELECT id FROM {VISITS} WHERE mrn = $1 ORDER BY id");
    assert_eq!(extended_ids(&client, &sql, &[&"M-2"]).await, vec![2, 12]);
    // One parameter written and compared: the write takes the current key's ciphertext.
    let sql = format!("UPDATE {t} SET ssn = $1 WHERE ssn = $1 RETURNING id");
    assert_eq!(extended_ids(&client, &sql, &[&"rq-a-1"]).await, vec![2]);
    let stored = stored_key_ids(PATIENTS, "ssn");
    assert_eq!(stored[1], (2, new_id.clone()));
    assert_eq!(stored[0], (1, old_id.clone()));
    let sql = format!("SELECT id, ssn FROM {t} WHERE ssn = $1");
    let row = &client.query(&sql, &[&"rq-a-1"]).await.unwrap()[0];
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (2, "rq-a-1".into())
    );

    // Extended protocol, a text parameter; the client is shown its column's type.
    let mut raw = Raw::connect(port).await;
    let msgs = raw
        .batch(&[
            Raw::parse("s", &format!("SELECT id FROM {t} WHERE ssn = $1"), &[]),
            Raw::describe(b'S', "s"),
            Raw::bind("", "s", &[Some(b"rq-a-2")], &[0], 0),
            Raw::execute("", 0),
            Raw::bind("", "s", &[Some(b"rq-b-2")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    let description = msgs.iter().find(|m| m.tag == b't').unwrap();
    assert_eq!(description.param_types(), vec![25]);
    let rows: Vec<Vec<Option<Vec<u8>>>> = msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.values())
        .collect();
    assert_eq!(
        rows,
        vec![vec![Some(b"3".to_vec())], vec![Some(b"13".to_vec())]],
        "{}",
        common::tags(&msgs)
    );

    // psycopg 3: text and binary parameters, a list bound as an array.
    let out = common::run_python("rotation_equality.py", port, SUPERUSER, &[t]);
    assert_eq!(
        out.trim(),
        r#"{"any_list": [3, 13], "eq_binary": [11], "eq_text": [1], "in_text": [2, 12], "not_in_binary": [2, 3, 11, 12, 13]}"#
    );

    // `= ANY(array)` keeps using the index.
    let plan = simple(
        port,
        &format!("SET enable_seqscan = off; EXPLAIN SELECT id FROM {t} WHERE ssn = 'rq-a-0'"),
    )
    .join("\n");
    assert!(
        plan.contains("rq_patients_ssn") && plan.contains("ANY"),
        "{plan}"
    );
    drop(client);
    drop(proxy);

    // Before migrate, without the previous key: an old value is XX001 on read.
    {
        let proxy = Proxy::start(&config, dir.path());
        let client = common::connect(proxy.port()).await;
        let err = client
            .query(&format!("SELECT ssn FROM {t} WHERE id = 1"), &[])
            .await
            .unwrap_err();
        assert_eq!(common::db_error(&err).0, "XX001");
    }

    // migrate re-encrypts everything to the current key; everything is still found, and
    // the join now finds visit 12's patient.
    let out = pgveil(&["migrate", "--config", &config_path]);
    assert!(out.status.success(), "{out:?}");
    assert!(stored_key_ids(PATIENTS, "ssn")
        .iter()
        .chain(&stored_key_ids(VISITS, "mrn"))
        .all(|(_, k)| *k == new_id));
    for body in [&rotated, &config] {
        let proxy = Proxy::start(body, dir.path());
        let port = proxy.port();
        assert_eq!(
            simple(
                port,
                &format!("SELECT id FROM {t} WHERE ssn IN ('rq-a-0', 'rq-b-0') ORDER BY id")
            ),
            ids(&["1", "11"])
        );
        assert_eq!(simple(port, JOIN), ids(&["1|1", "2|2", "11|11", "12|2"]));
        let client = common::connect(port).await;
        let sql = format!("SELECT id FROM {t} WHERE ssn = $1");
        assert_eq!(extended_ids(&client, &sql, &[&"rq-a-2"]).await, vec![3]);
    }
}
