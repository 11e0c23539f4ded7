//! Whole rows and row wildcards (issue 9, class 6): refused when the row holds a protected
//! column, allowed otherwise.

use super::*;

#[test]
fn whole_rows_with_a_protected_column_are_refused() {
    for sql in [
        "SELECT ARRAY[p.*] FROM patients p",
        "SELECT ARRAY[p] FROM patients p",
        "SELECT p FROM patients p",
        "SELECT patients FROM patients",
        "SELECT row_to_json(p) FROM patients p",
        "SELECT to_jsonb(p.*) FROM patients p",
        "SELECT ROW(p.*) FROM patients p",
        "SELECT ROW(p.*)::text FROM patients p",
        "SELECT (p.*)::text FROM patients p",
        "SELECT p.*::text FROM patients p",
        "SELECT 1 FROM (SELECT ssn FROM patients) a, (SELECT ssn FROM patients) b WHERE a.* = b.*",
        "SELECT 1 FROM (SELECT ssn FROM patients) a, (SELECT ssn FROM patients) b WHERE (a.*) IS NOT DISTINCT FROM (b.*)",
        "SELECT 1 FROM patients a JOIN patients b ON a = b",
        "SELECT 1 FROM patients a, patients b WHERE (a.*) = (b.*)",
        "SELECT x FROM (SELECT id, ssn FROM patients) x",
        "SELECT p FROM patients p, generate_series(1, 2) g",
        "SELECT 1 FROM patients p ORDER BY p",
        "SELECT count(*) FROM patients p GROUP BY p",
        "SELECT jsonb_build_object('r', p.*) FROM patients p",
        "SELECT CASE WHEN true THEN ARRAY[p.*] END FROM patients p",
    ] {
        let result = analyze(sql, &protection(), &catalog(), &sp());
        if let Ok(p) = result {
            let refusal = p[0]
                .refusal
                .as_ref()
                .unwrap_or_else(|| panic!("{sql}: not refused: {:?}", p[0]));
            assert_eq!(refusal.sqlstate, "0A000", "{sql}");
        }
    }
}

#[test]
fn whole_rows_without_a_protected_column_pass() {
    for sql in [
        "SELECT ARRAY[s.*] FROM staff s",
        "SELECT s FROM staff s",
        "SELECT row_to_json(x) FROM (SELECT id, name FROM patients) x",
        "SELECT 1 FROM (SELECT id FROM patients) a, (SELECT id FROM patients) b WHERE a.* = b.*",
        "SELECT p.* FROM patients p",
        "SELECT count(p.*) FROM patients p",
        "SELECT count(*) FROM patients",
    ] {
        ok(sql);
    }
}
