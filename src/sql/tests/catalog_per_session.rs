//! Names resolve as the database resolves them for this session (issue 9, class 3):
//! identifiers, not substrings; the session's own temporary schema; DDL earlier in the same
//! Query.

use super::*;

fn with_views() -> StaticCatalog {
    let mut c = catalog();
    c.add_table("public", "e", 2001, &["id", "ssn"]);
    c.add_table("pg_temp_3", "v_secret", 2002, &["id", "ssn"]);
    c.add_table("pg_temp_7", "patients", 2003, &["id", "ssn", "name"]);
    c.add_table("public", "patients_plain", 2004, &["id", "ssn"]);
    c.set_protected_views([
        TableName::new("public", "e"),
        TableName::new("pg_temp_3", "v_secret"),
    ]);
    c
}

fn analyse_in(sql: &str, path: &[&str]) -> Result<Vec<StatementPlan>, AnalyzeError> {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    analyze(sql, &protection(), &with_views(), &path)
}

fn refusal_in(sql: &str, path: &[&str]) -> Option<String> {
    let plans = analyse_in(sql, path).unwrap_or_else(|e| panic!("{sql}: {e}"));
    plans
        .iter()
        .find_map(|p| p.refusal.as_ref().map(|r| r.message.clone()))
}

#[test]
fn views_are_told_by_resolved_name_not_by_letters() {
    let c = with_views();
    assert!(c.mentions_protected_view("SELECT * FROM e"));
    assert!(!c.mentions_protected_view("SELECT 'select everything here'"));
    let refused = refusal_in("SELECT * FROM e", &["public"]).unwrap();
    assert!(refused.contains("public.e is a view"), "{refused}");
    for sql in [
        "SELECT 'select everything here' AS e",
        "SELECT e.name FROM patients e",
        "SELECT 1 FROM staff WHERE name = 'e'",
        "DROP VIEW e",
    ] {
        assert_eq!(refusal_in(sql, &["public"]), None, "{sql}");
    }
    // A routine body is code: a view named in it counts.
    assert!(refusal_in(
        "CREATE FUNCTION f() RETURNS SETOF record LANGUAGE sql AS $$ SELECT * FROM e $$",
        &["public"]
    )
    .is_some());
    // Another session's temporary view is not in this session's path.
    assert_eq!(
        refusal_in("SELECT * FROM v_secret", &["pg_temp_5", "public"]),
        None
    );
    assert!(refusal_in("SELECT * FROM v_secret", &["pg_temp_3", "public"]).is_some());
    assert!(refusal_in("SELECT * FROM pg_temp.v_secret", &["pg_temp_3", "public"]).is_some());
    assert_eq!(
        refusal_in("SELECT * FROM pg_temp.v_secret", &["public"]),
        None
    );
}

#[test]
fn the_sessions_own_temporary_schema_resolves_first() {
    // Session with pg_temp_7: its temporary `patients` hides public.patients.
    let plans = analyse_in(
        "INSERT INTO patients (ssn) VALUES ('1')",
        &["pg_temp_7", "pg_catalog", "public"],
    )
    .unwrap();
    assert!(plans[0].literals.is_empty());
    assert_eq!(
        plans[0].tables,
        vec![TableName::new("pg_temp_7", "patients")]
    );
    // Any other session: public.patients, encrypted.
    let plans = analyse_in(
        "INSERT INTO patients (ssn) VALUES ('1')",
        &["pg_temp_2", "pg_catalog", "public"],
    )
    .unwrap();
    assert_eq!(plans[0].literals.len(), 1);
    let plans = analyse_in(
        "INSERT INTO pg_temp.patients (ssn) VALUES ('1')",
        &["public"],
    );
    assert!(plans.is_err() || plans.unwrap()[0].literals.is_empty());
}

#[test]
fn ddl_earlier_in_the_same_query_refuses_what_depends_on_it() {
    let path = ["pg_temp_7", "public"];
    for sql in [
        "DROP TABLE pg_temp.patients; INSERT INTO patients (ssn) VALUES ('1')",
        "CREATE TEMP TABLE patients (id int, ssn text); INSERT INTO patients (ssn) VALUES ('1')",
        "ALTER TABLE patients RENAME TO p2; SELECT ssn FROM patients",
        "SET search_path = public; INSERT INTO patients (ssn) VALUES ('1')",
        "BEGIN; DROP VIEW IF EXISTS patients; SELECT ssn FROM patients WHERE ssn = '1'",
        "CREATE SCHEMA s; SELECT ssn FROM patients",
    ] {
        let message = refusal_in(sql, &path).unwrap_or_else(|| panic!("{sql}: not refused"));
        assert!(message.contains("separately"), "{sql}: {message}");
    }
    for sql in [
        "CREATE TABLE notes (id int); INSERT INTO patients (ssn) VALUES ('1')",
        "DROP TABLE IF EXISTS notes; SELECT ssn FROM patients WHERE ssn = '1'",
        "INSERT INTO patients (ssn) VALUES ('1'); DROP TABLE patients_plain",
        "BEGIN; SET LOCAL statement_timeout = 1000; SELECT ssn FROM patients",
    ] {
        assert_eq!(refusal_in(sql, &["public"]), None, "{sql}");
    }
}

#[test]
fn the_fast_path_matches_words() {
    let p = protection();
    assert!(!may_touch_protected("LOCK TABLE patients_plain", &p));
    assert!(!may_touch_protected("CREATE SEQUENCE patients_id_seq", &p));
    assert!(may_touch_protected("SELECT 'patients'", &p));
    // A protected name inside a string is analysed, and nothing is refused for it.
    assert!(ok("SELECT 'patients' AS x").refusal.is_none());
    assert!(ok("SELECT 1 FROM staff WHERE name = 'patients'")
        .literals
        .is_empty());
}
