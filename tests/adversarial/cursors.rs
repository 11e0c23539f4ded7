//! Class 4 of issue 9, variants: cursors and portals read by name, by the simple and the
//! extended protocol and pipelined, by every role; cursors pgveil did not see opened.

use super::*;

const SSN1: &str = "464-55-6661";
const SSN2: &str = "464-55-6662";

/// Two patients (ids 1 and 2) written by the clinician.
async fn two_patients(proxy: &Proxy, s: &Schema) {
    secrets([SSN1, SSN2]);
    let clinician = as_role(proxy, CLINICIAN).await;
    insert_patient(&clinician, s, "Ann", SSN1).await;
    insert_patient(&clinician, s, "Bob", SSN2).await;
}

fn error_code(result: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>) -> String {
    code(result).unwrap_or_else(|| "no error".to_string())
}

/// Waits for `count` FETCH records after `after` and returns them.
fn wait_fetches(dir: &Path, after: usize, count: usize) -> Vec<serde_json::Value> {
    wait_for(
        || fetch_records(dir, after).len() >= count,
        "audit records of the FETCH statements",
    );
    fetch_records(dir, after)
}

fn subjects(record: &serde_json::Value, s: &Schema) -> serde_json::Value {
    record["subjects"][format!("public.{}", s.patients)].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fetch_form_is_decrypted_and_audited() {
    let (dir, s, proxy) = start("curforms");
    two_patients(&proxy, &s).await;
    let client = as_role(&proxy, CLINICIAN).await;
    let before = audit_records(dir.path()).len();
    let p = &s.patients;
    client
        .simple_query(&format!(
            "BEGIN; DECLARE \"Cur\" SCROLL CURSOR WITH HOLD FOR SELECT name, ssn FROM {p} ORDER BY id"
        ))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for (sql, rows) in [
        ("FETCH NEXT FROM \"Cur\"", vec![("Ann", SSN1)]),
        ("FETCH ABSOLUTE 2 IN \"Cur\"", vec![("Bob", SSN2)]),
        ("FETCH BACKWARD 1 \"Cur\"", vec![("Ann", SSN1)]),
        ("MOVE LAST IN \"Cur\"", vec![]),
        ("FETCH PRIOR FROM \"Cur\"", vec![("Ann", SSN1)]),
        ("FETCH FIRST \"Cur\"", vec![("Ann", SSN1)]),
        ("FETCH FORWARD ALL FROM \"Cur\"", vec![("Bob", SSN2)]),
    ] {
        let got = client.simple_query(sql).await.unwrap();
        let want: Vec<Option<String>> = rows
            .iter()
            .flat_map(|(n, v)| [Some(n.to_string()), Some(v.to_string())])
            .collect();
        assert_eq!(values(&got), want, "{sql}");
        if sql.starts_with("FETCH") {
            expected.push(rows.len() as u64);
        }
    }
    // WITH HOLD: still readable after COMMIT, with the same plan.
    client.simple_query("COMMIT").await.unwrap();
    let got = client
        .simple_query("FETCH ABSOLUTE 1 FROM \"Cur\"")
        .await
        .unwrap();
    assert_eq!(values(&got), vec![Some("Ann".into()), Some(SSN1.into())]);
    expected.push(1);
    let records = wait_fetches(dir.path(), before, expected.len());
    let rows: Vec<u64> = records
        .iter()
        .map(|r| r["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, expected, "{records:#?}");
    for record in &records {
        assert_eq!(record["outcome"], "ok");
        assert_eq!(record["kind"], "select");
        assert!(record["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["column"] == format!("public.{p}.ssn") && c["access"] == "plaintext"));
    }
    assert_eq!(subjects(&records[0], &s), serde_json::json!(["1"]));
    assert_eq!(subjects(&records[1], &s), serde_json::json!(["2"]));
    // Closed: pgveil forgets it at once, and refuses before the database is asked.
    client.simple_query("CLOSE \"Cur\"").await.unwrap();
    let closed = client.simple_query("FETCH ALL FROM \"Cur\"").await;
    assert_eq!(error_code(closed), "0A000");
}

#[tokio::test(flavor = "multi_thread")]
async fn cursors_follow_their_transactions() {
    let (_dir, s, proxy) = start("curlife");
    two_patients(&proxy, &s).await;
    let client = as_role(&proxy, CLINICIAN).await;
    let p = &s.patients;
    // Several cursors at once; one closed and declared again with another query.
    client
        .simple_query(&format!(
            "BEGIN; DECLARE a CURSOR FOR SELECT ssn FROM {p} ORDER BY id;
             DECLARE b CURSOR FOR SELECT name FROM {p} ORDER BY id"
        ))
        .await
        .unwrap();
    let got = client
        .simple_query("FETCH 1 FROM a; FETCH 1 FROM b; FETCH 1 FROM a")
        .await;
    assert_eq!(
        values(&got.unwrap()),
        vec![Some(SSN1.into()), Some("Ann".into()), Some(SSN2.into())]
    );
    client
        .simple_query(&format!(
            "CLOSE b; DECLARE b CURSOR FOR SELECT id, ssn FROM {p} WHERE id = 2"
        ))
        .await
        .unwrap();
    let got = client.simple_query("FETCH ALL FROM b").await.unwrap();
    assert_eq!(values(&got), vec![Some("2".into()), Some(SSN2.into())]);
    // CLOSE ALL forgets every cursor.
    client.simple_query("CLOSE ALL").await.unwrap();
    assert_eq!(
        error_code(client.simple_query("FETCH 1 FROM a").await),
        "0A000"
    );
    client.simple_query("COMMIT").await.unwrap();
    // A rollback discards cursors, WITH HOLD ones declared in it too.
    client
        .simple_query(&format!(
            "BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT ssn FROM {p}; ROLLBACK"
        ))
        .await
        .unwrap();
    assert_eq!(
        error_code(client.simple_query("FETCH 1 FROM h").await),
        "0A000"
    );
    // A non-holdable cursor ends with its transaction.
    client
        .simple_query(&format!(
            "BEGIN; DECLARE t CURSOR FOR SELECT ssn FROM {p}; COMMIT"
        ))
        .await
        .unwrap();
    assert_eq!(
        error_code(client.simple_query("FETCH 1 FROM t").await),
        "0A000"
    );
    // A failed transaction rolls its cursors back.
    let failed = client
        .simple_query(&format!(
            "BEGIN; DECLARE f CURSOR WITH HOLD FOR SELECT ssn FROM {p}; SELECT 1/0"
        ))
        .await;
    assert_eq!(error_code(failed), "22012");
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        error_code(client.simple_query("FETCH 1 FROM f").await),
        "0A000"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_pgveil_did_not_see_opened_is_refused() {
    let (_dir, s, proxy) = start("curfunc");
    two_patients(&proxy, &s).await;
    let p = &s.patients;
    let open = "adv_open_refcursor";
    cluster().psql(&format!(
        "CREATE OR REPLACE FUNCTION {open}(c refcursor) RETURNS refcursor LANGUAGE plpgsql AS
         $$BEGIN OPEN c FOR EXECUTE 'SELECT ssn FROM ' || '{p}'; RETURN c; END$$;
         GRANT EXECUTE ON FUNCTION {open}(refcursor) TO PUBLIC;"
    ));
    let client = as_role(&proxy, CLINICIAN).await;
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!("SELECT {open}('fc')"))
        .await
        .unwrap();
    for sql in ["FETCH ALL FROM fc", "FETCH 1 IN \"fc\"", "FETCH fc"] {
        assert_eq!(error_code(client.simple_query(sql).await), "0A000", "{sql}");
        client.simple_query("ROLLBACK; BEGIN").await.unwrap();
        client
            .simple_query(&format!("SELECT {open}('fc')"))
            .await
            .unwrap();
    }
    // By the extended protocol too.
    let fetched = client.query("FETCH ALL FROM fc", &[]).await;
    assert_eq!(
        fetched
            .err()
            .and_then(|e| e.code().map(|c| c.code().to_string())),
        Some("0A000".into())
    );
    client.simple_query("ROLLBACK").await.unwrap();
    // A name pgveil knew, closed and then opened by the function: refused, never read with
    // the old plan.
    client
        .simple_query(&format!(
            "BEGIN; DECLARE fc CURSOR FOR SELECT name FROM {p}; CLOSE fc; SELECT {open}('fc')"
        ))
        .await
        .unwrap();
    assert_eq!(
        error_code(client.simple_query("FETCH ALL FROM fc").await),
        "0A000"
    );
    client.simple_query("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn masked_and_denied_roles_fetch_what_their_select_would() {
    let (dir, s, proxy) = start("curroles");
    two_patients(&proxy, &s).await;
    let p = &s.patients;
    let masked = as_role(&proxy, MASKED).await;
    let before = audit_records(dir.path()).len();
    let got = masked
        .simple_query(&format!(
            "BEGIN; DECLARE m CURSOR FOR SELECT ssn FROM {p} ORDER BY id; FETCH ALL FROM m"
        ))
        .await
        .unwrap();
    assert_eq!(
        values(&got),
        vec![Some("*******6661".into()), Some("*******6662".into())]
    );
    masked.simple_query("COMMIT").await.unwrap();
    let records = wait_fetches(dir.path(), before, 1);
    assert!(records[0]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["column"] == format!("public.{p}.ssn") && c["access"] == "masked"));
    assert_eq!(subjects(&records[0], &s), serde_json::json!(["1", "2"]));
    // A column the role may not read: the DECLARE is refused, by either protocol.
    masked.simple_query("BEGIN").await.unwrap();
    let refused = masked
        .simple_query(&format!("DECLARE d CURSOR FOR SELECT diagnosis FROM {p}"))
        .await;
    assert_eq!(error_code(refused), "42501");
    masked.simple_query("ROLLBACK").await.unwrap();
    let denied = as_role(&proxy, DENIED).await;
    denied.simple_query("BEGIN").await.unwrap();
    let refused = denied
        .simple_query(&format!("DECLARE d CURSOR FOR SELECT ssn FROM {p}"))
        .await;
    assert_eq!(error_code(refused), "42501");
    denied.simple_query("ROLLBACK; BEGIN").await.unwrap();
    let refused = denied
        .execute(&format!("DECLARE d CURSOR FOR SELECT ssn FROM {p}"), &[])
        .await;
    assert_eq!(
        refused
            .err()
            .and_then(|e| e.code().map(|c| c.code().to_string())),
        Some("42501".into())
    );
    denied.simple_query("ROLLBACK").await.unwrap();
    // A query the analysis refuses cannot be declared either.
    let clinician = as_role(&proxy, CLINICIAN).await;
    clinician.simple_query("BEGIN").await.unwrap();
    let refused = clinician
        .simple_query(&format!(
            "DECLARE x CURSOR FOR SELECT 1 FROM {p} WHERE ssn LIKE '4%'"
        ))
        .await;
    assert_eq!(error_code(refused), "0A000");
    clinician.simple_query("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_extended_protocol_fetches_through_the_same_gate() {
    let (dir, s, proxy) = start("curext");
    two_patients(&proxy, &s).await;
    let p = &s.patients;
    let mut client = as_role(&proxy, CLINICIAN).await;
    let before = audit_records(dir.path()).len();
    let txn = client.transaction().await.unwrap();
    // Declared with a parameter bound for the protected column (encrypted in Bind).
    txn.execute(
        &format!("DECLARE e CURSOR FOR SELECT name, ssn FROM {p} WHERE ssn = $1"),
        &[&SSN2],
    )
    .await
    .unwrap();
    let rows = txn.query("FETCH ALL FROM e", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].len(), 2, "the subject column reached the client");
    assert_eq!(rows[0].get::<_, String>(1), SSN2);
    // Declared by SQL, fetched by the extended protocol (binary results).
    txn.simple_query(&format!(
        "DECLARE e2 CURSOR FOR SELECT ssn FROM {p} ORDER BY id"
    ))
    .await
    .unwrap();
    let rows = txn.query("FETCH 2 FROM e2", &[]).await.unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, vec![SSN1.to_string(), SSN2.to_string()]);
    txn.commit().await.unwrap();
    let records = wait_fetches(dir.path(), before, 2);
    assert_eq!(records[0]["rows"], 1);
    assert_eq!(subjects(&records[0], &s), serde_json::json!(["2"]));
    assert_eq!(records[1]["rows"], 2);
    assert_eq!(subjects(&records[1], &s), serde_json::json!(["1", "2"]));
    // A masked role, extended.
    let mut masked = as_role(&proxy, MASKED).await;
    let txn = masked.transaction().await.unwrap();
    txn.execute(
        &format!("DECLARE m CURSOR FOR SELECT ssn FROM {p} ORDER BY id"),
        &[],
    )
    .await
    .unwrap();
    let rows = txn.query("FETCH 1 FROM m", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "*******6661");
    txn.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_declare_and_fetch_are_attributed() {
    let (dir, s, proxy) = start("curpipe");
    two_patients(&proxy, &s).await;
    let p = &s.patients;
    let before = audit_records(dir.path()).len();
    let mut raw = Raw::connect(proxy.port()).await;
    raw.simple("BEGIN").await;
    let answer = raw
        .batch(&[
            Raw::parse(
                "",
                &format!("DECLARE pc CURSOR FOR SELECT name, ssn FROM {p} ORDER BY id"),
                &[],
            ),
            Raw::bind("", "", &[], &[], 0),
            Raw::execute("", 0),
            Raw::parse("", "FETCH 2 FROM pc", &[]),
            Raw::bind("", "", &[], &[], 0),
            Raw::execute("", 0),
            Raw::parse("", "FETCH ALL FROM unknown_cursor", &[]),
            Raw::bind("", "", &[], &[], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    let rows: Vec<Vec<Option<Vec<u8>>>> = answer
        .iter()
        .filter(|m| m.tag == b'D')
        .map(Msg::values)
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![Some(b"Ann".to_vec()), Some(SSN1.as_bytes().to_vec())],
            vec![Some(b"Bob".to_vec()), Some(SSN2.as_bytes().to_vec())],
        ],
        "{}",
        tags(&answer)
    );
    let error = answer
        .iter()
        .find(|m| m.tag == b'E')
        .expect("unknown cursor fetched");
    assert_eq!(error.field(b'C').as_deref(), Some("0A000"));
    raw.simple("ROLLBACK").await;
    let records = wait_fetches(dir.path(), before, 1);
    assert_eq!(records[0]["rows"], 2);
    assert_eq!(subjects(&records[0], &s), serde_json::json!(["1", "2"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_named_cursors_are_decrypted_and_audited() {
    let (dir, s, proxy) = start("curpsy");
    two_patients(&proxy, &s).await;
    let before = audit_records(dir.path()).len();
    let out = run_python(
        "named_cursor.py",
        proxy.port(),
        CLINICIAN,
        &[&s.patients, "000"],
    );
    assert_eq!(
        out,
        format!(
            "columns id,name,ssn\nmany 1 Ann {SSN1}\nall 1 Ann {SSN1}\nall 2 Bob {SSN2}\n\
             binary Ann {SSN1}\nbinary Bob {SSN2}\n"
        )
    );
    let records = wait_fetches(dir.path(), before, 3);
    let rows: u64 = records.iter().map(|r| r["rows"].as_u64().unwrap()).sum();
    assert!(rows >= 5, "{records:#?}");
    for record in &records {
        assert!(subjects(record, &s)
            .as_array()
            .is_some_and(|ids| !ids.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_of_a_statement_prepared_behind_pgveils_back_are_withheld() {
    let (_dir, s, proxy) = start("curprep");
    two_patients(&proxy, &s).await;
    let (head, tail) = s.patients.split_at(4);
    let client = as_role(&proxy, CLINICIAN).await;
    // The table's name never appears whole, so the text passes unanalysed.
    client
        .simple_query(&format!(
            "DO $$BEGIN EXECUTE 'PREPARE adv_hidden AS SELECT ssn FROM ' || '{head}' || '{tail}'; END$$"
        ))
        .await
        .unwrap();
    let released = client.simple_query("EXECUTE adv_hidden").await;
    assert_eq!(error_code(released), "0A000");
}

#[tokio::test(flavor = "multi_thread")]
async fn executing_a_cursors_portal_by_protocol_is_refused() {
    let (_dir, s, proxy) = start("curexec");
    two_patients(&proxy, &s).await;
    let mut raw = Raw::connect(proxy.port()).await;
    raw.simple(&format!(
        "BEGIN; DECLARE xc CURSOR FOR SELECT ssn FROM {}",
        s.patients
    ))
    .await;
    for name in ["xc", "not_a_cursor"] {
        let answer = raw.batch(&[Raw::execute(name, 0), Raw::sync()]).await;
        assert!(
            !answer.iter().any(|m| m.tag == b'D'),
            "{name}: {}",
            tags(&answer)
        );
        let error = answer.iter().find(|m| m.tag == b'E').expect("executed");
        assert_eq!(error.field(b'C').as_deref(), Some("0A000"), "{name}");
        raw.simple("ROLLBACK").await;
        raw.simple(&format!(
            "BEGIN; DECLARE xc CURSOR FOR SELECT ssn FROM {}",
            s.patients
        ))
        .await;
    }
    raw.simple("ROLLBACK").await;
}
