//! The analysis of statements on columns being migrated (plaintext in the database with
//! migrate's shadow column beside them).

use std::collections::HashMap;

use super::*;
use crate::schema::{EncryptionMode, LogicalType, ProtectedColumn, TableName};

fn protection() -> Protection {
    let column = |name: &str, ty| ProtectedColumn {
        table: TableName::new("public", "patients"),
        column: name.into(),
        logical_type: ty,
        mode: EncryptionMode::Deterministic,
        domain: None,
    };
    Protection::new(
        vec![
            column("ssn", LogicalType::Text),
            column("birth", LogicalType::Date),
            column("mrn", LogicalType::Text),
        ],
        HashMap::new(),
    )
}

/// `ssn` is migrating (text with its shadow), `birth` plaintext without a shadow, `mrn`
/// encrypted.
fn catalog() -> StaticCatalog {
    let columns = [
        ("id", 20),
        ("ssn", 25),
        ("birth", 1082),
        ("mrn", 17),
        ("note", 25),
        ("ssn__pgveil", 17),
    ];
    let mut c = StaticCatalog::new();
    c.insert(TableInfo {
        name: TableName::new("public", "patients"),
        oid: 1001,
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, (name, type_oid))| ColumnInfo {
                name: (*name).into(),
                attnum: i as i16 + 1,
                type_oid: *type_oid,
            })
            .collect(),
    });
    c
}

fn plan(sql: &str) -> StatementPlan {
    let mut plans = analyze(sql, &protection(), &catalog(), &["public".to_string()])
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(plans.len(), 1);
    plans.remove(0)
}

fn rewritten(sql: &str, p: &StatementPlan) -> String {
    let mut replacements = p.rewrites.clone();
    for w in &p.shadow_writes {
        let value = match &w.value {
            ShadowValue::Literal(v) => format!("enc({v})"),
            ShadowValue::Param(n) => format!("enc(${n})"),
        };
        replacements.push((w.insert_at..w.insert_at, format!("{}{value}", w.prefix)));
    }
    rewrite(sql, &replacements)
}

#[test]
fn conditions_compare_plaintext_cast_to_the_logical_type() {
    let sql = "SELECT id, ssn FROM patients WHERE ssn = 'a' AND birth = $1 AND mrn = 'm'";
    let p = plan(sql);
    assert!(p.refusal.is_none(), "{:?}", p.refusal);
    assert_eq!(p.migrating.len(), 2);
    // Only the encrypted column's literal is encrypted; no parameter is.
    assert_eq!(p.literals.len(), 1);
    assert!(p.params.is_empty());
    assert_eq!(
        rewritten(sql, &p),
        "SELECT id, ssn FROM patients WHERE ssn = ('a')::pg_catalog.text AND birth = $1::pg_catalog.date AND mrn = 'm'"
    );
}

#[test]
fn inserts_and_updates_write_the_shadow_too() {
    let sql = "INSERT INTO patients (id, ssn, birth) VALUES ($1, $2, NULL), (2, 'b', DEFAULT)";
    let p = plan(sql);
    assert!(p.refusal.is_none(), "{:?}", p.refusal);
    assert_eq!(p.max_param, 2);
    assert_eq!(
        rewritten(sql, &p),
        "INSERT INTO patients (id, ssn, \"ssn__pgveil\", birth) VALUES ($1, $2::pg_catalog.text, enc($2), NULL), (2, ('b')::pg_catalog.text, enc(b), DEFAULT)"
    );
    let sql = "UPDATE patients SET ssn = $1, note = 'x' WHERE id = 1";
    let p = plan(sql);
    assert_eq!(
        rewritten(sql, &p),
        "UPDATE patients SET ssn = $1::pg_catalog.text, \"ssn__pgveil\" = enc($1), note = 'x' WHERE id = 1"
    );
    let sql = "UPDATE patients SET ssn = DEFAULT WHERE id = 1";
    assert_eq!(
        rewritten(sql, &plan(sql)),
        "UPDATE patients SET ssn = DEFAULT, \"ssn__pgveil\" = NULL WHERE id = 1"
    );
}

#[test]
fn other_write_shapes_and_copy_are_refused() {
    for sql in [
        "INSERT INTO patients VALUES (1, 'a')",
        "INSERT INTO patients (id, ssn) SELECT id, ssn FROM patients",
        "INSERT INTO patients (id, ssn) SELECT * FROM unnest($1::int8[], $2::text[])",
        "INSERT INTO patients (id, ssn) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET ssn = excluded.ssn",
        "UPDATE patients SET ssn = note",
        "UPDATE patients SET ssn = ('a')",
        "UPDATE patients SET (ssn, note) = ('a', 'b')",
        "INSERT INTO patients (id, birth) SELECT 1, birth FROM patients",
        "COPY patients (id, ssn) FROM STDIN",
        "COPY patients (id, birth) TO STDOUT",
    ] {
        let p = plan(sql);
        let refusal = p.refusal.unwrap_or_else(|| panic!("{sql} was not refused"));
        assert_eq!(refusal.sqlstate, "0A000");
        assert!(
            refusal.message.contains("is being migrated")
                || refusal.message.contains("not yet migrated")
                || refusal.message.contains("not supported"),
            "{sql}: {}",
            refusal.message
        );
    }
}

#[test]
fn a_plaintext_column_without_shadow_is_not_written() {
    // No shadow yet (migrate has not prepared it): the write would store plaintext only.
    for sql in [
        "INSERT INTO patients (id, birth) VALUES (1, $1)",
        "UPDATE patients SET birth = '2020-01-02' WHERE id = 1",
    ] {
        let refusal = plan(sql)
            .refusal
            .unwrap_or_else(|| panic!("{sql} was not refused"));
        assert_eq!(refusal.sqlstate, "0A000");
        assert!(
            refusal.message.contains("not yet migrated"),
            "{}",
            refusal.message
        );
    }
    // Reading and comparing it stays plaintext, cast to its type.
    let sql = "SELECT id FROM patients WHERE birth = $1";
    let p = plan(sql);
    assert!(p.refusal.is_none());
    assert_eq!(
        rewritten(sql, &p),
        "SELECT id FROM patients WHERE birth = $1::pg_catalog.date"
    );
}
