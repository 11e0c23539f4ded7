mod templates;

use std::collections::HashMap;

use super::*;
use crate::schema::{EncryptionMode, LogicalType, ProtectedColumn, TableName};

fn pc(
    table: &str,
    column: &str,
    ty: LogicalType,
    mode: EncryptionMode,
    domain: Option<&str>,
) -> ProtectedColumn {
    ProtectedColumn {
        table: TableName::parse(table).unwrap(),
        column: column.into(),
        logical_type: ty,
        mode,
        domain: domain.map(str::to_string),
    }
}

fn protection() -> Protection {
    use EncryptionMode::*;
    use LogicalType::*;
    let cols = vec![
        pc("patients", "ssn", Text, Deterministic, None),
        pc("patients", "birth_date", Date, Randomized, None),
        pc("patients", "mrn", Text, Deterministic, Some("mrn")),
        pc("patients", "age", Int4, Deterministic, None),
        pc("visits", "mrn", Text, Deterministic, Some("mrn")),
        pc("visits", "note", Text, Randomized, None),
        pc("ehr.records", "ssn", Text, Deterministic, None),
        pc("patients", "Weird", Text, Deterministic, None),
        pc("consents", "flag", Bool, Deterministic, None),
        pc("consents", "vip", Bool, Randomized, None),
    ];
    let mut subjects = HashMap::new();
    subjects.insert(TableName::new("public", "patients"), "id".to_string());
    subjects.insert(TableName::new("public", "visits"), "patient_id".to_string());
    Protection::new(cols, subjects)
}

fn catalog() -> StaticCatalog {
    let mut c = StaticCatalog::new();
    c.add_table(
        "public",
        "patients",
        1001,
        &[
            "id",
            "ssn",
            "birth_date",
            "mrn",
            "name",
            "zip",
            "age",
            "Weird",
        ],
    );
    c.add_table(
        "public",
        "visits",
        1002,
        &["id", "patient_id", "mrn", "note", "visit_date"],
    );
    c.add_table("ehr", "records", 1003, &["id", "ssn", "data"]);
    c.add_table("public", "staff", 1004, &["id", "name", "ssn_plain"]);
    c.add_table("public", "Patients", 1005, &["id", "ssn"]);
    c.add_table("public", "consents", 1006, &["id", "flag", "vip", "ok"]);
    c
}

fn sp() -> Vec<String> {
    vec!["$user".into(), "public".into()]
}

fn plans(sql: &str) -> Vec<StatementPlan> {
    analyze(sql, &protection(), &catalog(), &sp()).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn plan(sql: &str) -> StatementPlan {
    let mut p = plans(sql);
    assert_eq!(p.len(), 1, "{sql}");
    p.remove(0)
}

fn ok(sql: &str) -> StatementPlan {
    let p = plan(sql);
    assert!(
        p.refusal.is_none(),
        "{sql}: unexpected refusal {:?}",
        p.refusal
    );
    p
}

fn refused(sql: &str) -> String {
    let p = plan(sql);
    let Some(r) = p.refusal.clone() else {
        panic!("{sql}: not refused: {p:?}")
    };
    assert_eq!(r.sqlstate, "0A000");
    r.message
}

fn name(c: ColumnRef) -> String {
    protection().column(c).unwrap().qualified_name()
}

fn names(cs: &[ColumnRef]) -> Vec<String> {
    let mut v: Vec<String> = cs.iter().map(|c| name(*c)).collect();
    v.sort();
    v
}

/// (literal text as written, column, value)
fn lits(sql: &str, p: &StatementPlan) -> Vec<(String, String, String)> {
    p.literals
        .iter()
        .map(|l| {
            (
                sql[l.byte_range.clone()].to_string(),
                name(l.column),
                l.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn lit(sql: &str) -> Vec<(String, String, String)> {
    let p = ok(sql);
    lits(sql, &p)
}

fn params(p: &StatementPlan) -> Vec<(u32, String)> {
    p.params.iter().map(|(n, c)| (*n, name(*c))).collect()
}

fn t(s: &str, c: &str, v: &str) -> (String, String, String) {
    (s.to_string(), c.to_string(), v.to_string())
}

const SSN: &str = "public.patients.ssn";

// ----- fast path ---------------------------------------------------------------------------

#[test]
fn fast_path_matches_names_case_insensitively() {
    let p = protection();
    assert!(may_touch_protected("select * from patients", &p));
    assert!(may_touch_protected("SELECT * FROM PATIENTS", &p));
    assert!(may_touch_protected("select * from \"Patients\"", &p));
    assert!(may_touch_protected("select * from ehr.RECORDS", &p));
    assert!(may_touch_protected(
        "select 1 from x where y = U&\"d\\0061t\\+000061\"",
        &p
    ));
    assert!(may_touch_protected("select 1 from u&\"x\"", &p));
    assert!(!may_touch_protected(
        "select * from staff where name = 'x'",
        &p
    ));
    assert!(!may_touch_protected("", &p));
    assert!(!may_touch_protected("pat", &p));
    assert!(may_touch_protected("VISITS", &p));
    // Whole names only: longer identifiers are other objects (issue 10: pg_dump's
    // `CREATE SEQUENCE patients_id_seq`, `LOCK TABLE patients_plain`).
    assert!(!may_touch_protected(
        "CREATE SEQUENCE public.patients_id_seq AS integer",
        &p
    ));
    assert!(!may_touch_protected("LOCK TABLE patients_plain", &p));
    assert!(!may_touch_protected(
        "select * from xpatients, patients2",
        &p
    ));
    // `$` does not continue a word here: a dollar-quoted body names its table.
    assert!(may_touch_protected("DO $$BEGIN DELETE FROM patients$$", &p));
    assert!(may_touch_protected(
        "select * from public.patients_id_seq, patients",
        &p
    ));
    assert!(may_touch_protected("select 1 from\tpatients;", &p));
    assert!(may_touch_protected("select 1 from \"patients\"", &p));
    assert!(may_touch_protected(
        "EXECUTE 'select * from ' || 'patients'",
        &p
    ));
    // PostgreSQL's lexer reads every byte above 0x7f as part of an identifier.
    assert!(!may_touch_protected("select 1 from ëpatients", &p));
    assert!(may_touch_protected("patients", &p));
}

// ----- statements and ranges -------------------------------------------------------------

#[test]
fn unprotected_statements_have_no_bindings() {
    let sql = "SELECT * FROM staff WHERE name = 'bob'; UPDATE staff SET name = 'x' ;  ";
    let ps = plans(sql);
    assert_eq!(ps.len(), 2);
    assert_eq!(
        &sql[ps[0].byte_range.clone()],
        "SELECT * FROM staff WHERE name = 'bob'"
    );
    assert_eq!(
        &sql[ps[1].byte_range.clone()],
        "UPDATE staff SET name = 'x'"
    );
    assert_eq!(ps[0].kind, StatementKind::Select);
    assert_eq!(ps[1].kind, StatementKind::Update);
    for p in &ps {
        assert!(p.literals.is_empty() && p.refusal.is_none() && p.reads.is_empty());
    }
    assert_eq!(ps[0].tables, vec![TableName::new("public", "staff")]);
}

#[test]
fn multi_statement_with_protected_and_multibyte() {
    let sql = "SELECT 'héllo ☃';\nSELECT name FROM patients\n  WHERE ssn = 'ü-123' ; select 1";
    let ps = plans(sql);
    assert_eq!(ps.len(), 3);
    assert_eq!(
        &sql[ps[1].byte_range.clone()],
        "SELECT name FROM patients\n  WHERE ssn = 'ü-123'"
    );
    assert_eq!(lits(sql, &ps[1]), vec![t("'ü-123'", SSN, "ü-123")]);
    assert_eq!(&sql[ps[2].byte_range.clone()], "select 1");
}

#[test]
fn unparsable_statements() {
    // Does not mention a protected table: forwarded as Other.
    let ps = plans("DO $$ BEGIN PERFORM 1; END $$");
    assert_eq!(ps[0].kind, StatementKind::Other);
    // Mentions one: refused (DO) or an error (the session refuses).
    let m = refused("DO $$ BEGIN UPDATE patients SET ssn = '1'; END $$");
    assert!(m.contains("DO"), "{m}");
    assert!(analyze(
        "SELECT ssn FROM patients WHERE",
        &protection(),
        &catalog(),
        &sp()
    )
    .is_err());
    assert!(
        analyze("SELECT FROM WHERE staff", &protection(), &catalog(), &sp()).unwrap()[0]
            .literals
            .is_empty()
    );
}

// ----- SELECT --------------------------------------------------------------------------

#[test]
fn select_where_equality_binds_literal() {
    let sql = "SELECT name FROM patients WHERE ssn = '123-45-6789'";
    let p = ok(sql);
    assert_eq!(p.kind, StatementKind::Select);
    assert_eq!(lits(sql, &p), vec![t("'123-45-6789'", SSN, "123-45-6789")]);
    assert_eq!(names(&p.conditions), vec![SSN]);
    assert!(p.reads.is_empty());
    assert_eq!(p.tables, vec![TableName::new("public", "patients")]);
    assert_eq!(p.result_columns, vec![None]);
}

#[test]
fn literal_on_either_side_and_not_equal() {
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE '1' = ssn"),
        vec![t("'1'", SSN, "1")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn <> 'a'"),
        vec![t("'a'", SSN, "a")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn != 'a'"),
        vec![t("'a'", SSN, "a")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE NOT (ssn = 'a')"),
        vec![t("'a'", SSN, "a")]
    );
}

#[test]
fn in_and_not_in_lists() {
    let sql = "SELECT 1 FROM patients WHERE ssn IN ('a', 'b', NULL) AND age NOT IN (1, -2)";
    assert_eq!(
        lit(sql),
        vec![
            t("'a'", SSN, "a"),
            t("'b'", SSN, "b"),
            t("1", "public.patients.age", "1"),
            t("-2", "public.patients.age", "-2"),
        ]
    );
}

#[test]
fn parameters_bind() {
    let p = ok("SELECT name FROM patients WHERE ssn = $1 AND name = $2 AND $3 = mrn");
    assert_eq!(
        params(&p),
        vec![(1, SSN.to_string()), (3, "public.patients.mrn".to_string())]
    );
    let p = ok("SELECT name FROM patients WHERE ssn IN ($1, $2)");
    assert_eq!(params(&p).len(), 2);
    // A cast on a bound parameter is rewritten to bytea.
    let sql = "SELECT 1 FROM patients WHERE ssn = $1::text";
    let p = ok(sql);
    assert_eq!(params(&p), vec![(1, SSN.to_string())]);
    assert_eq!(p.rewrites.len(), 1);
    assert_eq!(&sql[p.rewrites[0].0.clone()], "$1::text");
    assert_eq!(
        rewrite(sql, &p.rewrites),
        "SELECT 1 FROM patients WHERE ssn = $1::bytea"
    );
}

#[test]
fn parameter_conflicts_are_refused() {
    refused("SELECT 1 FROM patients WHERE ssn = $1 AND name = $1");
    let p = ok("SELECT 1 FROM patients WHERE ($1 IS NULL OR ssn = $1)");
    assert_eq!(params(&p), vec![(1, SSN.to_string())]);
    refused("SELECT 1 FROM patients WHERE ssn = $1 AND age = $1");
    ok("SELECT 1 FROM patients p JOIN visits v ON v.mrn = p.mrn WHERE p.mrn = $1 AND v.mrn = $1");
}

#[test]
fn is_null_allowed_on_both_modes() {
    let p = ok("SELECT id FROM patients WHERE birth_date IS NULL OR ssn IS NOT NULL");
    assert_eq!(
        names(&p.conditions),
        vec!["public.patients.birth_date", SSN]
    );
    assert!(p.literals.is_empty());
}

#[test]
fn projection_reads_and_result_columns() {
    let p = ok("SELECT id, ssn, birth_date AS b FROM patients");
    assert_eq!(names(&p.reads), vec!["public.patients.birth_date", SSN]);
    assert_eq!(p.result_columns.len(), 3);
    assert!(p.result_columns[0].is_none());
    assert_eq!(name(p.result_columns[1].unwrap()), SSN);
}

#[test]
fn wildcard_expansion() {
    let p = ok("SELECT * FROM patients");
    assert_eq!(p.result_columns.len(), 8);
    assert_eq!(name(p.result_columns[1].unwrap()), SSN);
    assert_eq!(names(&p.reads).len(), 5);
    let p = ok("SELECT v.*, p.ssn FROM visits v JOIN patients p ON p.mrn = v.mrn");
    assert_eq!(p.result_columns.len(), 6);
    assert_eq!(name(p.result_columns[2].unwrap()), "public.visits.mrn");
    assert_eq!(name(p.result_columns[5].unwrap()), SSN);
    assert_eq!(
        names(&p.conditions),
        vec!["public.patients.mrn", "public.visits.mrn"]
    );
}

#[test]
fn name_resolution_forms() {
    assert_eq!(
        lit("SELECT 1 FROM patients p WHERE p.ssn = 'x'"),
        vec![t("'x'", SSN, "x")]
    );
    assert_eq!(
        lit("SELECT 1 FROM public.patients WHERE patients.ssn = 'x'"),
        vec![t("'x'", SSN, "x")]
    );
    assert_eq!(
        lit("SELECT 1 FROM public.patients WHERE public.patients.ssn = 'x'"),
        vec![t("'x'", SSN, "x")]
    );
    assert_eq!(
        lit("SELECT 1 FROM PUBLIC.\"patients\" P WHERE P.SSN = 'x'"),
        vec![t("'x'", SSN, "x")]
    );
    // Other schema via qualification, same column name, own key.
    assert_eq!(
        lit("SELECT 1 FROM ehr.records r WHERE r.ssn = 'x'"),
        vec![t("'x'", "ehr.records.ssn", "x")]
    );
    // Quoted identifiers keep case: "Patients" is another (unprotected) table.
    let p = ok("SELECT ssn FROM \"Patients\" WHERE ssn = 'x'");
    assert!(p.literals.is_empty() && p.reads.is_empty());
    // A quoted protected column name.
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE \"Weird\" = 'x'"),
        vec![t("'x'", "public.patients.Weird", "x")]
    );
    let p = ok("SELECT 1 FROM patients WHERE weird = 'x'");
    assert!(p.literals.is_empty());
    // search_path decides where an unqualified name lives.
    let p = analyze(
        "SELECT 1 FROM records WHERE ssn = 'x'",
        &protection(),
        &catalog(),
        &["ehr".to_string()],
    )
    .unwrap();
    assert_eq!(p[0].literals.len(), 1);
    assert_eq!(name(p[0].literals[0].column), "ehr.records.ssn");
}

#[test]
fn joins_and_domains() {
    let p = ok("SELECT p.name FROM patients p JOIN visits v ON p.mrn = v.mrn WHERE v.mrn = 'M1'");
    assert_eq!(
        names(&p.conditions),
        vec!["public.patients.mrn", "public.visits.mrn"]
    );
    assert_eq!(p.literals.len(), 1);
    ok("SELECT 1 FROM patients a JOIN patients b ON a.ssn = b.ssn");
    ok("SELECT 1 FROM patients JOIN visits USING (mrn)");
    let m = refused("SELECT 1 FROM patients p JOIN ehr.records r ON p.ssn = r.ssn");
    assert!(
        m.contains("public.patients.ssn") && m.contains("ehr.records.ssn"),
        "{m}"
    );
    let m = refused("SELECT 1 FROM patients p JOIN staff s ON p.ssn = s.ssn_plain");
    assert!(m.contains(SSN), "{m}");
    refused("SELECT 1 FROM patients p, visits v WHERE p.ssn = v.mrn");
    refused("SELECT 1 FROM patients a JOIN patients b ON a.birth_date = b.birth_date");
}

#[test]
fn subqueries_and_ctes() {
    let sql = "SELECT s.x FROM (SELECT ssn AS x FROM patients) s WHERE s.x = 'a'";
    let p = ok(sql);
    assert_eq!(lits(sql, &p), vec![t("'a'", SSN, "a")]);
    assert_eq!(names(&p.reads), vec![SSN]);
    let sql = "WITH c AS (SELECT ssn, id FROM patients) SELECT ssn FROM c WHERE ssn = 'a'";
    let p = ok(sql);
    assert_eq!(lits(sql, &p), vec![t("'a'", SSN, "a")]);
    assert_eq!(name(p.result_columns[0].unwrap()), SSN);
    let sql = "WITH c(s) AS (SELECT ssn FROM patients) SELECT s FROM c WHERE s IN ('a')";
    assert_eq!(lit(sql), vec![t("'a'", SSN, "a")]);
    let sql =
        "SELECT name FROM patients WHERE id IN (SELECT patient_id FROM visits WHERE mrn = 'm')";
    assert_eq!(lit(sql), vec![t("'m'", "public.visits.mrn", "m")]);
    let sql = "SELECT name FROM visits v WHERE EXISTS (SELECT 1 FROM patients p WHERE p.mrn = v.mrn AND p.ssn = 'z')";
    assert_eq!(lit(sql), vec![t("'z'", SSN, "z")]);
    let sql = "SELECT 1 FROM visits WHERE mrn IN (SELECT mrn FROM patients WHERE ssn = $1)";
    let p = ok(sql);
    assert_eq!(params(&p), vec![(1, SSN.to_string())]);
    refused("SELECT 1 FROM visits WHERE mrn IN (SELECT ssn FROM patients)");
    // Scalar subquery projecting a protected column is a read.
    let p = ok("SELECT (SELECT ssn FROM patients LIMIT 1)");
    assert_eq!(names(&p.reads), vec![SSN]);
}

#[test]
fn group_by_distinct_count() {
    let p = ok("SELECT ssn, count(*) FROM patients GROUP BY ssn");
    assert_eq!(names(&p.conditions), vec![SSN]);
    ok("SELECT ssn FROM patients GROUP BY 1");
    ok("SELECT DISTINCT ssn FROM patients");
    ok("SELECT count(ssn), count(DISTINCT ssn), count(*) FROM patients");
    ok("SELECT count(birth_date) FROM patients");
    refused("SELECT count(DISTINCT birth_date) FROM patients");
    refused("SELECT DISTINCT birth_date FROM patients");
    refused("SELECT birth_date FROM patients GROUP BY birth_date");
    ok("SELECT s FROM (SELECT ssn AS s FROM patients) x GROUP BY s HAVING count(*) > 1");
}

#[test]
fn refusals_name_column_and_operation() {
    let cases = [
        ("SELECT 1 FROM patients WHERE ssn LIKE '12%'", "LIKE"),
        ("SELECT 1 FROM patients WHERE ssn ILIKE '12%'", "ILIKE"),
        (
            "SELECT 1 FROM patients WHERE ssn SIMILAR TO '1'",
            "SIMILAR TO",
        ),
        ("SELECT 1 FROM patients WHERE ssn < '5'", "<"),
        ("SELECT 1 FROM patients WHERE age >= 5", ">="),
        (
            "SELECT 1 FROM patients WHERE ssn BETWEEN 'a' AND 'b'",
            "BETWEEN",
        ),
        ("SELECT ssn FROM patients ORDER BY ssn", "ORDER BY"),
        ("SELECT ssn AS s FROM patients ORDER BY s", "ORDER BY"),
        ("SELECT ssn FROM patients ORDER BY 1", "ORDER BY"),
        ("SELECT lower(ssn) FROM patients", "function lower()"),
        ("SELECT max(age) FROM patients", "function max()"),
        ("SELECT sum(age) FROM patients", "function sum()"),
        ("SELECT ssn::text FROM patients", "cast"),
        ("SELECT CAST(ssn AS text) FROM patients", "cast"),
        ("SELECT age + 1 FROM patients", "+"),
        ("SELECT ssn || 'x' FROM patients", "||"),
        (
            "SELECT 1 FROM patients WHERE birth_date = DATE '2000-01-01'",
            "randomized",
        ),
        ("SELECT 1 FROM patients WHERE ssn = lower('A')", "computed"),
        ("SELECT 1 FROM patients WHERE ssn", "boolean"),
        ("SELECT 1 FROM patients WHERE ssn > ANY($1)", "ANY"),
        ("SELECT CASE WHEN true THEN ssn END FROM patients", "CASE"),
        ("SELECT coalesce(ssn, 'x') FROM patients", "coalesce"),
        (
            "SELECT 1 FROM patients WHERE substring(ssn from 1 for 3) = '123'",
            "expression",
        ),
    ];
    for (sql, op) in cases {
        let m = refused(sql);
        assert!(m.contains(op), "{sql}: {m}");
        assert!(m.contains("public.patients."), "{sql}: {m}");
        assert!(
            !m.contains("12%") && !m.contains("2000-01-01"),
            "{sql}: {m}"
        );
    }
}

#[test]
fn set_operations() {
    let p = ok("SELECT ssn FROM patients WHERE id = 1 UNION SELECT ssn FROM patients WHERE id = 2");
    assert_eq!(name(p.result_columns[0].unwrap()), SSN);
    assert!(matches!(
        p.subject.sources[0],
        SubjectSource::Unknown { .. }
    ));
    ok("SELECT mrn FROM patients UNION ALL SELECT mrn FROM visits");
    ok("SELECT ssn FROM patients UNION ALL SELECT NULL");
    refused("SELECT ssn FROM patients UNION SELECT name FROM staff");
    refused("SELECT ssn FROM patients UNION SELECT ssn FROM ehr.records");
    refused("SELECT ssn FROM patients UNION SELECT '123'");
    refused("SELECT birth_date FROM patients UNION SELECT birth_date FROM patients");
    ok("SELECT birth_date FROM patients UNION ALL SELECT birth_date FROM patients");
}

// ----- literal forms -------------------------------------------------------------------

#[test]
fn literal_forms() {
    let sql = "SELECT 1 FROM patients WHERE ssn = E'a\\nb\\'c'";
    assert_eq!(lit(sql), vec![t("E'a\\nb\\'c'", SSN, "a\nb'c")]);
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = 'it''s'"),
        vec![t("'it''s'", SSN, "it's")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = $$dollar 'x'$$"),
        vec![t("$$dollar 'x'$$", SSN, "dollar 'x'")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = $q$x$q$"),
        vec![t("$q$x$q$", SSN, "x")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE age = 42"),
        vec![t("42", "public.patients.age", "42")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE age = - 42"),
        vec![t("- 42", "public.patients.age", "-42")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE age = -42"),
        vec![t("-42", "public.patients.age", "-42")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE age = 1.5e3"),
        vec![t("1.5e3", "public.patients.age", "1.5e3")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = 'x'::text"),
        vec![t("'x'::text", SSN, "x")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = 'x'::character varying(10)"),
        vec![t("'x'::character varying(10)", SSN, "x")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = CAST( 'x' AS text )"),
        vec![t("CAST( 'x' AS text )", SSN, "x")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE age = '5'::int8"),
        vec![t("'5'::int8", "public.patients.age", "5")]
    );
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE age = -5::int4"),
        vec![t("-5::int4", "public.patients.age", "-5")]
    );
    let p = ok("SELECT 1 FROM patients WHERE ssn = 'x'::text");
    assert_eq!(p.literals[0].cast.as_deref(), Some("text"));
    refused("SELECT 1 FROM patients WHERE ssn = '1'::int4");
    refused("SELECT 1 FROM patients WHERE ssn = ('x')::text");
    // NULL is not bound.
    let p = ok("SELECT 1 FROM patients WHERE ssn = NULL");
    assert!(p.literals.is_empty());
}

#[test]
fn typed_and_date_literals() {
    let sql = "INSERT INTO patients (birth_date) VALUES (DATE '2024-01-05'), ('2024-01-06'::date), (CAST('2024-01-07' AS date)), (timestamp with time zone '2024-01-08 00:00+00')";
    let p = ok(sql);
    let l = lits(sql, &p);
    let bd = "public.patients.birth_date";
    assert_eq!(l[0], t("DATE '2024-01-05'", bd, "2024-01-05"));
    assert_eq!(l[1], t("'2024-01-06'::date", bd, "2024-01-06"));
    assert_eq!(l[2], t("CAST('2024-01-07' AS date)", bd, "2024-01-07"));
    assert_eq!(
        l[3],
        t(
            "timestamp with time zone '2024-01-08 00:00+00'",
            bd,
            "2024-01-08 00:00+00"
        )
    );
    assert_eq!(p.literals[0].cast.as_deref(), Some("date"));
}

#[test]
fn booleans_and_multiline_ranges() {
    let sql = "SELECT 1\nFROM patients\nWHERE\n  ssn = 'é'\n  AND age = 7";
    let p = ok(sql);
    assert_eq!(
        lits(sql, &p),
        vec![t("'é'", SSN, "é"), t("7", "public.patients.age", "7")]
    );
    let out = rewrite(
        sql,
        &p.literals
            .iter()
            .map(|l| (l.byte_range.clone(), "X".to_string()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        out,
        "SELECT 1\nFROM patients\nWHERE\n  ssn = X\n  AND age = X"
    );
}

#[test]
fn deterministic_booleans_are_conditions_by_their_ciphertext_of_true() {
    let cases = [
        (
            "SELECT id FROM consents WHERE flag",
            "SELECT id FROM consents WHERE flag = X",
        ),
        (
            "SELECT id FROM consents WHERE NOT \"flag\"",
            "SELECT id FROM consents WHERE NOT \"flag\" = X",
        ),
        (
            "SELECT id FROM consents c WHERE (c.flag) AND ok OR NOT ((c.flag))",
            "SELECT id FROM consents c WHERE (c.flag = X) AND ok OR NOT ((c.flag = X))",
        ),
        (
            "UPDATE consents SET ok = true WHERE public.consents.flag",
            "UPDATE consents SET ok = true WHERE public.consents.flag = X",
        ),
        (
            "SELECT CASE WHEN flag THEN 1 END FROM consents",
            "SELECT CASE WHEN flag = X THEN 1 END FROM consents",
        ),
    ];
    for (sql, expected) in cases {
        let p = ok(sql);
        assert!(!p.literals.is_empty(), "{sql}");
        for l in &p.literals {
            assert_eq!(name(l.column), "public.consents.flag", "{sql}");
            assert_eq!(l.value.as_deref(), Some("true"), "{sql}");
            assert_eq!(l.matching, Some(KeyMatch::Any), "{sql}");
        }
        assert_eq!(names(&p.conditions)[0], "public.consents.flag");
        // The session applies the analysis' rewrites before the literals at one offset.
        let replacements: Vec<_> = p
            .rewrites
            .iter()
            .cloned()
            .chain(
                p.literals
                    .iter()
                    .map(|l| (l.byte_range.clone(), "X".to_string())),
            )
            .collect();
        assert_eq!(rewrite(sql, &replacements), expected, "{sql}");
    }
    // A randomized boolean has no comparable ciphertext; other boolean uses stay refused.
    for sql in [
        "SELECT id FROM consents WHERE vip",
        "SELECT id FROM consents WHERE NOT vip",
        "SELECT id FROM consents WHERE flag::boolean",
        "SELECT id FROM consents WHERE coalesce(flag, false)",
        "SELECT id FROM patients WHERE NOT ssn",
    ] {
        let m = refused(sql);
        assert!(
            m.contains("randomized")
                || m.contains("boolean")
                || m.contains("cast")
                || m.contains("coalesce"),
            "{sql}: {m}"
        );
    }
}

// ----- INSERT --------------------------------------------------------------------------

#[test]
fn insert_values_with_and_without_column_list() {
    let sql = "INSERT INTO patients (id, ssn, name) VALUES (1, '111', 'a'), (2, $1, 'b'), (3, DEFAULT, 'c'), (4, NULL, 'd')";
    let p = ok(sql);
    assert_eq!(p.kind, StatementKind::Insert);
    assert_eq!(lits(sql, &p), vec![t("'111'", SSN, "111")]);
    assert_eq!(params(&p), vec![(1, SSN.to_string())]);
    assert_eq!(names(&p.writes), vec![SSN]);
    assert!(p.reads.is_empty() && p.subject.sources.is_empty());
    let sql = "INSERT INTO patients VALUES (1, '111', DATE '2000-01-01', 'M', 'n', 'z', 30)";
    let p = ok(sql);
    assert_eq!(
        lits(sql, &p),
        vec![
            t("'111'", SSN, "111"),
            t(
                "DATE '2000-01-01'",
                "public.patients.birth_date",
                "2000-01-01"
            ),
            t("'M'", "public.patients.mrn", "M"),
            t("30", "public.patients.age", "30"),
        ]
    );
    refused("INSERT INTO patients (ssn) VALUES (lower('x'))");
    refused("INSERT INTO patients (ssn) VALUES ('1'::int4)");
}

#[test]
fn insert_returning_and_on_conflict() {
    let sql = "INSERT INTO patients AS p (id, ssn) VALUES (1, 'a') ON CONFLICT (ssn) DO UPDATE SET ssn = EXCLUDED.ssn, age = 5 RETURNING p.id, p.ssn";
    let p = ok(sql);
    assert_eq!(
        lits(sql, &p),
        vec![t("'a'", SSN, "a"), t("5", "public.patients.age", "5")]
    );
    assert_eq!(names(&p.reads), vec![SSN]);
    assert_eq!(p.result_columns.len(), 2);
    assert!(matches!(
        &p.subject.sources[..],
        [SubjectSource::Selected {
            output_position: 0,
            ..
        }]
    ));
    ok("INSERT INTO patients (ssn) VALUES ('a') ON CONFLICT (ssn) DO NOTHING");
    refused("INSERT INTO patients (birth_date) VALUES (NULL) ON CONFLICT (birth_date) DO NOTHING");
    refused("INSERT INTO patients (ssn) VALUES ('a') ON CONFLICT (ssn) DO UPDATE SET ssn = EXCLUDED.mrn");
    let sql = "INSERT INTO patients (ssn) VALUES ($1) RETURNING ssn";
    let p = ok(sql);
    match &p.subject.sources[..] {
        [SubjectSource::Injectable {
            insert_at, text, ..
        }] => {
            assert_eq!(*insert_at, sql.len());
            assert_eq!(text, ", \"patients\".\"id\"");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn insert_select() {
    let sql = "INSERT INTO patients (ssn, mrn, name) SELECT '1', v.mrn, 'x' FROM visits v WHERE v.mrn = $1";
    let p = ok(sql);
    assert_eq!(lits(sql, &p), vec![t("'1'", SSN, "1")]);
    assert_eq!(params(&p), vec![(1, "public.visits.mrn".to_string())]);
    assert!(p.reads.is_empty());
    ok("INSERT INTO patients (ssn) SELECT ssn FROM patients WHERE id = 1");
    refused("INSERT INTO patients (ssn) SELECT ssn FROM ehr.records");
    refused("INSERT INTO patients (ssn) SELECT name FROM staff");
    refused("INSERT INTO staff (name) SELECT ssn FROM patients");
}

// ----- UPDATE / DELETE -----------------------------------------------------------------

#[test]
fn update_forms() {
    let sql = "UPDATE patients p SET ssn = 'n', birth_date = DEFAULT, mrn = NULL, age = $2 FROM visits v WHERE v.patient_id = p.id AND v.mrn = $1 RETURNING p.id";
    let p = ok(sql);
    assert_eq!(p.kind, StatementKind::Update);
    assert_eq!(lits(sql, &p), vec![t("'n'", SSN, "n")]);
    assert_eq!(
        params(&p),
        vec![
            (2, "public.patients.age".to_string()),
            (1, "public.visits.mrn".to_string())
        ]
    );
    assert_eq!(
        names(&p.writes),
        vec![
            "public.patients.age",
            "public.patients.birth_date",
            "public.patients.mrn",
            SSN
        ]
    );
    assert!(p.reads.is_empty());
    refused("UPDATE patients SET ssn = name");
    refused("UPDATE patients SET ssn = ssn || 'x'");
    refused("UPDATE staff SET name = p.ssn FROM patients p");
    ok("UPDATE patients SET mrn = v.mrn FROM visits v WHERE v.patient_id = patients.id");
}

#[test]
fn delete_forms() {
    let sql = "DELETE FROM patients USING visits v WHERE v.patient_id = patients.id AND patients.ssn = 'q' RETURNING patients.ssn";
    let p = ok(sql);
    assert_eq!(p.kind, StatementKind::Delete);
    assert_eq!(lits(sql, &p), vec![t("'q'", SSN, "q")]);
    assert_eq!(names(&p.reads), vec![SSN]);
    refused("DELETE FROM patients WHERE ssn LIKE 'x%'");
}

// ----- statements not rewritten --------------------------------------------------------

#[test]
fn copy() {
    use crate::net::copy_rows::CopyFormat;
    use crate::sql::CopyDirection;
    // Whole table out: every column, in table order; the subject column is copied.
    let p = ok("COPY patients TO STDOUT");
    let c = p.copy.clone().unwrap();
    assert_eq!(c.direction, CopyDirection::Out);
    assert_eq!(c.fields.len(), 8);
    assert_eq!(
        c.fields[1].map(name).as_deref(),
        Some("public.patients.ssn")
    );
    assert!(c.fields[0].is_none());
    assert_eq!(p.kind, StatementKind::Select);
    assert_eq!(p.reads.len(), 5);
    assert!(matches!(
        p.subject.sources.as_slice(),
        [SubjectSource::Selected {
            output_position: 0,
            ..
        }]
    ));
    // Column list in: writes, csv options.
    let p =
        ok("COPY patients (id, ssn) FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';', NULL 'x')");
    let c = p.copy.unwrap();
    assert_eq!(c.direction, CopyDirection::In);
    assert_eq!(c.options.format, CopyFormat::Csv);
    assert_eq!((c.options.delimiter, c.options.header), (b';', true));
    assert_eq!(c.options.null, b"x".to_vec());
    assert_eq!(names(&p.writes), vec!["public.patients.ssn"]);
    assert_eq!(p.kind, StatementKind::Insert);
    // The subject column not copied: rewritten as a query so it can be appended.
    let sql = "COPY patients (ssn) TO STDOUT (FORMAT binary)";
    let p = ok(sql);
    let mut replacements = p.rewrites.clone();
    replacements.extend(crate::session::recording::injections(&p));
    assert_eq!(
        crate::sql::rewrite(sql, &replacements),
        "COPY (SELECT \"ssn\", \"id\"  FROM ONLY \"public\".\"patients\") TO STDOUT (FORMAT binary)"
    );
    assert_eq!(p.copy.unwrap().types, vec![17, 17]);
    // Plain columns only: nothing to do.
    assert!(ok("COPY patients (id, name) TO STDOUT").copy.is_none());
    assert!(ok("COPY staff FROM STDIN").copy.is_none());
    assert!(ok("COPY (SELECT id FROM patients) TO STDOUT")
        .copy
        .is_none());
    assert!(ok("COPY (SELECT id FROM staff) TO STDOUT").copy.is_none());
    // A query: its result columns and subjects.
    let p = ok("COPY (SELECT v.note FROM visits v WHERE v.mrn = 'm1') TO STDOUT");
    assert_eq!(p.copy.unwrap().fields.len(), 1);
    assert_eq!(p.literals.len(), 1);
    assert!(matches!(
        p.subject.sources.as_slice(),
        [SubjectSource::Injectable { .. }]
    ));
    // What cannot be done correctly.
    refused("COPY patients FROM '/tmp/x'");
    refused("COPY patients TO PROGRAM 'cat'");
    refused("COPY (SELECT ssn FROM patients) TO '/tmp/x'");
    refused("COPY patients TO STDOUT (FORMAT csv, FORCE_QUOTE (ssn))");
    refused("COPY patients FROM STDIN (ENCODING 'LATIN1')");
    ok("COPY patients FROM STDIN (ENCODING 'UTF8', FREEZE)");
    refused("COPY patients FROM STDIN (DELIMITER '\\')");
}

#[test]
fn prepare_declare_explain_ddl() {
    refused("PREPARE q AS SELECT 1 FROM patients WHERE ssn = $1");
    ok("PREPARE q AS SELECT 1 FROM staff WHERE name = $1");
    let sql = "DECLARE c CURSOR FOR SELECT ssn FROM patients WHERE ssn = 'a'";
    let p = ok(sql);
    assert_eq!(lits(sql, &p), vec![t("'a'", SSN, "a")]);
    assert_eq!(names(&p.reads), vec![SSN]);
    let sql = "EXPLAIN ANALYZE UPDATE patients SET ssn = 'a' WHERE ssn = 'b'";
    let p = ok(sql);
    assert_eq!(p.kind, StatementKind::Update);
    assert_eq!(p.literals.len(), 2);
    refused("EXPLAIN SELECT 1 FROM patients WHERE ssn LIKE 'a'");
    for ddl in [
        "CREATE INDEX ON patients (ssn)",
        "CREATE UNIQUE INDEX pi ON patients (ssn)",
        "ALTER TABLE patients ADD COLUMN x int",
        "TRUNCATE patients",
        "DROP TABLE patients",
        "BEGIN",
    ] {
        let p = ok(ddl);
        assert_eq!(p.kind, StatementKind::Other, "{ddl}");
        if ddl != "BEGIN" {
            assert_eq!(
                p.tables,
                vec![TableName::new("public", "patients")],
                "{ddl}"
            );
        }
        assert!(p.literals.is_empty(), "{ddl}");
    }
    for lock in [
        "LOCK TABLE public.patients IN ACCESS SHARE MODE",
        "LOCK patients, staff",
    ] {
        let p = ok(lock);
        assert_eq!(p.kind, StatementKind::Other, "{lock}");
        assert!(p.literals.is_empty(), "{lock}");
    }
    refused("CREATE INDEX ON patients (ssn) WHERE ssn = '123'");
    refused("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT count(*) FROM patients WHERE ssn = '1' $$");
    ok("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$");
    refused("CREATE TABLE x AS SELECT ssn FROM patients");
    refused("SELECT ssn INTO x FROM patients");
    refused("CREATE VIEW v AS SELECT * FROM patients WHERE ssn = '1'");
}

// ----- subjects ------------------------------------------------------------------------

#[test]
fn subjects() {
    let p = ok("SELECT id, ssn FROM patients WHERE age = 3");
    assert_eq!(
        p.subject.sources,
        vec![SubjectSource::Selected {
            table: TableName::new("public", "patients"),
            output_position: 0
        }]
    );
    let sql = "SELECT p.ssn, v.note FROM patients p /* c */ JOIN visits v ON v.patient_id = p.id";
    let p = ok(sql);
    assert_eq!(p.subject.sources.len(), 2);
    match &p.subject.sources[0] {
        SubjectSource::Injectable {
            insert_at, text, ..
        } => {
            assert_eq!(&sql[..*insert_at], "SELECT p.ssn, v.note");
            assert_eq!(text, ", \"p\".\"id\"");
        }
        other => panic!("{other:?}"),
    }
    let p = ok("SELECT ssn, count(*) FROM patients GROUP BY ssn");
    assert!(matches!(
        &p.subject.sources[..],
        [SubjectSource::Unknown { .. }]
    ));
    let p = ok("SELECT DISTINCT ssn FROM patients");
    assert!(matches!(
        &p.subject.sources[..],
        [SubjectSource::Unknown { .. }]
    ));
    let p = ok("SELECT s FROM (SELECT ssn AS s FROM patients) x");
    assert!(matches!(
        &p.subject.sources[..],
        [SubjectSource::Unknown { .. }]
    ));
    // Nothing read → no subject entry.
    let p = ok("SELECT id FROM patients WHERE ssn = 'a'");
    assert!(p.subject.sources.is_empty());
    // ehr.records has no subject column configured.
    let p = ok("SELECT ssn FROM ehr.records");
    assert!(p.subject.sources.is_empty());
}

// ----- fingerprint ---------------------------------------------------------------------

#[test]
fn fingerprint_strips_values() {
    let f = fingerprint("SELECT  name FROM patients\n WHERE ssn = '123-45-6789' AND age = -42 -- ssn 999-99-9999\n AND x = $1 /* 555 */");
    assert_eq!(
        f,
        "SELECT name FROM patients WHERE ssn = ? AND age = -? AND x = $1"
    );
    for sql in [
        "select E'se\\'cret', $$secret$$, $t$secret$t$, B'1010', X'ff', N'secret', U&'secret', 3.14e2, DATE '2024-01-05'",
        "select 'secret",
        "select $$secret",
        "select /* secret",
        "select \"ok\" from t where a = 'secret'' more secret",
        "insert into t values ('secret', 12345)",
    ] {
        let f = fingerprint(sql);
        assert!(!f.contains("secret") && !f.contains("12345") && !f.contains("2024") && !f.contains("1010"), "{sql} → {f}");
        assert!(!f.contains("3.14") && !f.contains("ff'"), "{sql} → {f}");
    }
    assert_eq!(fingerprint("select 'unterminated"), "select ?");
    assert_eq!(fingerprint("SELECT $1, $2"), "SELECT $1, $2");
}

// ----- rewrite -------------------------------------------------------------------------

#[test]
fn rewrite_replaces_ranges() {
    let sql = "SELECT 1 FROM patients WHERE ssn = 'a' AND mrn IN ('b', 'c')";
    let p = ok(sql);
    let reps: Vec<_> = p
        .literals
        .iter()
        .map(|l| (l.byte_range.clone(), "'\\x00'::bytea".to_string()))
        .collect();
    assert_eq!(
        rewrite(sql, &reps),
        "SELECT 1 FROM patients WHERE ssn = '\\x00'::bytea AND mrn IN ('\\x00'::bytea, '\\x00'::bytea)"
    );
    assert_eq!(rewrite("abc", &[(1..5, "x".into())]), "");
    assert!(try_rewrite("abc", &[(0..2, "x".into()), (1..3, "y".into())]).is_err());
}

// ----- more constructs -----------------------------------------------------------------

#[test]
fn join_using_merged_column_and_case_and_distinct_from() {
    let sql = "SELECT mrn FROM patients JOIN visits USING (mrn) WHERE mrn = 'x'";
    let p = ok(sql);
    assert_eq!(lits(sql, &p), vec![t("'x'", "public.patients.mrn", "x")]);
    let sql = "SELECT CASE ssn WHEN 'a' THEN 1 ELSE 0 END FROM patients";
    assert_eq!(lit(sql), vec![t("'a'", SSN, "a")]);
    let sql = "SELECT 1 FROM patients WHERE ssn IS NOT DISTINCT FROM $1";
    assert_eq!(params(&ok(sql)), vec![(1, SSN.to_string())]);
    let sql = "SELECT ssn = 'x' AS m FROM patients";
    let p = ok(sql);
    assert_eq!(lits(sql, &p).len(), 1);
    assert!(p.reads.is_empty());
    ok("SELECT row_number() OVER (PARTITION BY ssn) FROM patients");
    refused("SELECT row_number() OVER (ORDER BY ssn) FROM patients");
    refused("SELECT string_agg(name, ',' ORDER BY ssn) FROM patients");
}

#[test]
fn data_modifying_cte_and_lateral() {
    let sql = "WITH n AS (INSERT INTO patients (ssn) VALUES ('a') RETURNING id, ssn) SELECT id, ssn FROM n";
    let p = ok(sql);
    assert_eq!(p.kind, StatementKind::Insert);
    assert_eq!(lits(sql, &p), vec![t("'a'", SSN, "a")]);
    assert_eq!(names(&p.reads), vec![SSN]);
    let sql = "SELECT v.note FROM patients p, LATERAL (SELECT note FROM visits WHERE visits.mrn = p.mrn) v WHERE p.ssn = 'k'";
    let p = ok(sql);
    assert_eq!(lits(sql, &p), vec![t("'k'", SSN, "k")]);
    assert_eq!(names(&p.reads), vec!["public.visits.note"]);
}

#[test]
fn unknown_and_catalog_relations() {
    // pg_catalog or other relations the catalog does not know: fine when no protected
    // column can be involved.
    ok("SELECT c.relname, p.ssn FROM pg_class c JOIN patients p ON p.id = c.oid");
    // An unqualified protected column name next to a relation of unknown columns: cannot
    // tell which it is → error (fail closed).
    assert!(analyze(
        "SELECT 1 FROM unknown_t, patients WHERE ssn = 'x'",
        &protection(),
        &catalog(),
        &sp()
    )
    .is_ok());
    assert!(analyze(
        "SELECT 1 FROM patients WHERE EXISTS (SELECT 1 FROM unknown_t WHERE ssn = 'x')",
        &protection(),
        &catalog(),
        &sp()
    )
    .is_err());
    // A protected table the catalog cannot resolve.
    assert!(matches!(
        analyze(
            "SELECT 1 FROM patients",
            &protection(),
            &StaticCatalog::new(),
            &sp()
        ),
        Err(AnalyzeError::Resolve(_))
    ));
    // A stale catalog missing a protected column.
    let mut cat = StaticCatalog::new();
    cat.add_table("public", "patients", 1, &["id", "name"]);
    assert!(analyze(
        "SELECT name FROM patients WHERE ssn = 'x'",
        &protection(),
        &cat,
        &sp()
    )
    .is_err());
    // Unprotected statements never fail because of the catalog.
    let p = analyze(
        "SELECT * FROM nowhere WHERE a = 'x'",
        &protection(),
        &StaticCatalog::new(),
        &sp(),
    )
    .unwrap();
    assert!(p[0].literals.is_empty());
}

#[test]
fn message_never_contains_values() {
    for sql in [
        "SELECT 1 FROM patients WHERE ssn LIKE 'SECRET%'",
        "SELECT 1 FROM patients WHERE ssn = 'SECRET'::int4",
        "INSERT INTO patients (ssn) VALUES (upper('SECRET'))",
        "COPY (SELECT ssn FROM patients WHERE ssn = 'SECRET') TO '/tmp/SECRET'",
        "CREATE VIEW v AS SELECT 1 FROM patients WHERE ssn = 'SECRET'",
        "ALTER TABLE patients ADD CONSTRAINT c CHECK (ssn <> 'SECRET')",
    ] {
        let m = refused(sql);
        assert!(!m.contains("SECRET"), "{sql}: {m}");
    }
}

#[test]
fn large_insert_is_linear() {
    let mut sql = String::from("INSERT INTO patients (id, ssn, name) VALUES ");
    for i in 0..20_000 {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("({i}, '{i:09}', 'n{i}')"));
    }
    let start = std::time::Instant::now();
    let p = ok(&sql);
    assert_eq!(p.literals.len(), 20_000);
    // Generous bound for an unoptimized build on a shared machine.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let mut params = String::from("INSERT INTO patients (ssn) VALUES ");
    for i in 1..=30_000 {
        if i > 1 {
            params.push_str(", ");
        }
        params.push_str(&format!("(${i})"));
    }
    let p = ok(&params);
    assert_eq!(p.params.len(), 30_000);
}

#[test]
fn fast_path_is_cheap_and_consistent_with_analysis() {
    let p = protection();
    // Anything the analysis binds must have been caught by the fast path.
    for sql in [
        "select 1 from PATIENTS where SSN = 'x'",
        "select 1 from \"patients\" where ssn = 'x'",
        "select 1 from public . patients where ssn = 'x'",
    ] {
        assert!(may_touch_protected(sql, &p), "{sql}");
        assert_eq!(plan(sql).literals.len(), 1, "{sql}");
    }
}

#[test]
fn never_panics_on_truncated_input() {
    let samples = [
        "SELECT p.ssn, E'x\\'y', $$a$$ FROM patients p /* c */ JOIN visits v USING (mrn) WHERE p.ssn = 'é' AND age = -1::int4 -- x\n ORDER BY 1",
        "INSERT INTO patients (ssn, birth_date) VALUES ($1, DATE '2024-01-01') ON CONFLICT (ssn) DO UPDATE SET ssn = EXCLUDED.ssn RETURNING id",
        "WITH c AS (SELECT ssn FROM patients) SELECT * FROM c WHERE ssn IN (SELECT ssn FROM patients WHERE CAST('1' AS text) = ssn)",
        "COPY (SELECT 1) TO STDOUT; DO $x$ BEGIN END $x$; U&\"p\" ",
    ];
    let (p, c, s) = (protection(), catalog(), sp());
    for sample in samples {
        for (i, _) in sample.char_indices() {
            let sql = &sample[..i];
            if let Ok(plans) = analyze(sql, &p, &c, &s) {
                for plan in plans {
                    let reps: Vec<_> = plan
                        .literals
                        .iter()
                        .map(|l| (l.byte_range.clone(), "?".to_string()))
                        .collect();
                    assert!(try_rewrite(sql, &reps).is_ok(), "{sql}");
                    for l in &plan.literals {
                        assert!(
                            l.byte_range.start >= plan.byte_range.start
                                && l.byte_range.end <= plan.byte_range.end
                        );
                    }
                }
            }
            let _ = fingerprint(sql);
            let _ = may_touch_protected(sql, &p);
        }
    }
}

#[test]
fn subjects_follow_the_reference_that_was_read() {
    // The id selected is a's, the ssn read is b's: not "Selected".
    let sql = "SELECT a.id, b.ssn FROM patients a JOIN patients b ON a.mrn = b.mrn";
    let p = ok(sql);
    match &p.subject.sources[..] {
        [SubjectSource::Injectable {
            text, insert_at, ..
        }] => {
            assert_eq!(text, ", \"b\".\"id\"");
            assert_eq!(&sql[..*insert_at], "SELECT a.id, b.ssn");
        }
        other => panic!("{other:?}"),
    }
    let p = ok("SELECT b.id, b.ssn FROM patients a JOIN patients b ON a.mrn = b.mrn");
    assert!(matches!(
        &p.subject.sources[..],
        [SubjectSource::Selected {
            output_position: 0,
            ..
        }]
    ));
    let p = ok("SELECT a.ssn, b.ssn FROM patients a JOIN patients b ON a.mrn = b.mrn");
    assert!(matches!(
        &p.subject.sources[..],
        [SubjectSource::Unknown { .. }]
    ));
    // Through a derived table the origin is kept.
    let p = ok("SELECT s.id, s.ssn FROM (SELECT id, ssn FROM patients) s");
    assert!(matches!(
        &p.subject.sources[..],
        [SubjectSource::Selected {
            output_position: 0,
            ..
        }]
    ));
}

#[test]
fn crlf_tabs_and_named_windows() {
    let sql = "SELECT 1\r\nFROM\tpatients\r\n\tWHERE ssn = 'ä'\r\n AND mrn = $$m$$";
    let p = ok(sql);
    assert_eq!(
        lits(sql, &p),
        vec![t("'ä'", SSN, "ä"), t("$$m$$", "public.patients.mrn", "m")]
    );
    refused("SELECT rank() OVER w FROM patients WINDOW w AS (ORDER BY ssn)");
}

#[test]
fn unicode_escaped_identifiers_fail_closed() {
    for sql in [
        "SELECT * FROM patients WHERE U&\"ss\\006e\" = 'x'",
        "SELECT * FROM U&\"p\\0061tients\" WHERE ssn = 'x'",
        "SELECT * FROM staff WHERE u&\"n\\0061me\" = 'x'",
    ] {
        assert!(may_touch_protected(sql, &protection()), "{sql}");
        assert!(
            analyze(sql, &protection(), &catalog(), &sp()).is_err(),
            "{sql}"
        );
    }
    // Unicode string literals are fine.
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = U&'d\\0061t'"),
        vec![t("U&'d\\0061t'", SSN, "dat")]
    );
}

#[test]
fn lexer_agrees_with_postgres() {
    // standard_conforming_strings: a backslash does not escape in '…'.
    let sql = "SELECT 1 FROM patients WHERE name = 'a\\' AND ssn = '123'";
    assert_eq!(lit(sql), vec![t("'123'", SSN, "123")]);
    // Nested block comments, comments and strings holding `;`.
    let sql = "SELECT 1 /* a /* b; */ c; */ FROM patients -- x; y\n WHERE ssn = ';'";
    let ps = plans(sql);
    assert_eq!(ps.len(), 1);
    assert_eq!(lits(sql, &ps[0]), vec![t("';'", SSN, ";")]);
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE age=-1"),
        vec![t("-1", "public.patients.age", "-1")]
    );
}

#[test]
fn whole_row_references_are_refused() {
    for sql in [
        "SELECT 1 FROM patients p WHERE ssn(p) = '123'",
        "SELECT 1 FROM patients p WHERE (p).ssn = '123'",
        "SELECT p FROM patients p",
        "SELECT row_to_json(p) FROM patients p",
        "SELECT row_to_json(p.*) FROM patients p",
        "SELECT json_agg(patients) FROM patients",
    ] {
        let m = refused(sql);
        assert!(m.contains("public.patients."), "{sql}: {m}");
    }
    ok("SELECT count(*), count(p.*) FROM patients p");
    ok("SELECT row_to_json(s) FROM staff s");
}

#[test]
fn parse_errors_do_not_echo_values() {
    for sql in [
        "SELECT ssn FROM patients WHERE ssn = 'SECRET' 'MORE'",
        "SELECT ssn FROM patients WHERE ssn = 'SECRET",
        "SELECT ssn FROM patients WHERE ssn = 12345 12345",
    ] {
        let e = analyze(sql, &protection(), &catalog(), &sp())
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("SECRET") && !e.contains("MORE") && !e.contains("12345"),
            "{sql}: {e}"
        );
    }
    assert_eq!(
        lit("SELECT 1 FROM patients WHERE ssn = TRUE"),
        vec![t("TRUE", SSN, "true")]
    );
}

#[test]
fn from_only_is_read_as_its_table() {
    // pg_dump --inserts reads each table through a cursor over `FROM ONLY`.
    let sql = "DECLARE _pg_dump_cursor CURSOR FOR SELECT * FROM ONLY public.patients";
    assert_eq!(
        names(&ok(sql).reads).len(),
        names(&ok("SELECT * FROM patients").reads).len()
    );
    let sql = "SELECT ssn FROM ONLY patients JOIN ONLY staff ON true WHERE ssn = 'a'";
    let p = ok(sql);
    assert_eq!(lits(sql, &p), vec![t("'a'", SSN, "a")]);
    refused("SELECT 1 FROM ONLY patients WHERE ssn LIKE 'a'");
    ok("SELECT 1 FROM staff FETCH FIRST 1 ROWS ONLY");
}

#[test]
fn sequence_ddl_the_parser_does_not_know_is_forwarded() {
    // pg_dump's forms.
    for sql in [
        "CREATE SEQUENCE public.patients_id_seq AS integer START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1",
        "ALTER SEQUENCE public.patients_id_seq OWNED BY public.patients.id",
        "ALTER SEQUENCE patients_seq OWNED BY patients.id",
    ] {
        let p = ok(sql);
        assert_eq!(p.kind, StatementKind::Other, "{sql}");
        assert!(p.literals.is_empty(), "{sql}");
    }
    // Anything else that does not parse and names a protected table is still refused.
    assert!(analyze(
        "CREATE SEQUENCE s AS (SELECT ssn FROM patients)",
        &protection(),
        &catalog(),
        &sp()
    )
    .is_err());
    assert!(analyze(
        "ALTER SEQUENCE s OWNED BY patients.id 'x'",
        &protection(),
        &catalog(),
        &sp()
    )
    .is_err());
}

mod arrays;
mod catalog_per_session;
mod key_match;
mod whole_rows;
