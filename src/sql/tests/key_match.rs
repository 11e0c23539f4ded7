//! How values compared with deterministic columns are marked ([`KeyMatch`]), so that with
//! several master keys the session compares their ciphertext under every key.

use super::*;

/// (literal as written, its matching)
fn literal_matches(sql: &str) -> Vec<(String, Option<KeyMatch>)> {
    let p = ok(sql);
    p.literals
        .iter()
        .map(|l| (sql[l.byte_range.clone()].to_string(), l.matching.clone()))
        .collect()
}

/// (parameter as written, its matching)
fn param_matches(sql: &str) -> Vec<(String, Option<KeyMatch>)> {
    let p = ok(sql);
    p.param_uses
        .iter()
        .map(|u| (sql[u.byte_range.clone()].to_string(), u.matching.clone()))
        .collect()
}

fn swapped(sql: &str, column: &str, all: bool) -> KeyMatch {
    let start = sql.find(column).unwrap();
    KeyMatch::Swapped {
        column: start..start + column.len(),
        text: column.to_string(),
        all,
    }
}

fn unsupported(op: &str) -> Option<KeyMatch> {
    Some(KeyMatch::Unsupported { op: op.into() })
}

#[test]
fn equality_and_inequality_with_the_value_on_the_right() {
    let sql = "SELECT id FROM patients WHERE ssn = '1' AND mrn <> 'M'::text AND age = -3";
    assert_eq!(
        literal_matches(sql),
        vec![
            ("'1'".into(), Some(KeyMatch::Any)),
            ("'M'::text".into(), Some(KeyMatch::All)),
            ("-3".into(), Some(KeyMatch::Any)),
        ]
    );
    let sql = "SELECT id FROM patients p JOIN visits v ON v.mrn = $1 WHERE p.ssn <> $2::text";
    assert_eq!(
        param_matches(sql),
        vec![
            ("$1".into(), Some(KeyMatch::Any)),
            ("$2::text".into(), Some(KeyMatch::All)),
        ]
    );
}

#[test]
fn a_value_on_the_left_swaps_with_a_plain_column_reference() {
    let sql = "SELECT id FROM patients p WHERE '1' = p.ssn";
    assert_eq!(
        literal_matches(sql),
        vec![("'1'".into(), Some(swapped(sql, "p.ssn", false)))]
    );
    let sql = "DELETE FROM patients WHERE $1 <> \"ssn\"";
    assert_eq!(
        param_matches(sql),
        vec![("$1".into(), Some(swapped(sql, "\"ssn\"", true)))]
    );
    // Not a plain column reference: cannot be moved.
    let sql = "SELECT id FROM patients WHERE '1' = (SELECT ssn FROM patients LIMIT 1)";
    assert_eq!(literal_matches(sql), vec![("'1'".into(), unsupported("="))]);
}

#[test]
fn in_and_not_in_lists() {
    let sql = "SELECT id FROM patients WHERE ssn IN ('1', $1) AND mrn NOT IN ($2, 'M')";
    assert_eq!(
        literal_matches(sql),
        vec![
            ("'1'".into(), Some(KeyMatch::List)),
            ("'M'".into(), Some(KeyMatch::List)),
        ]
    );
    assert_eq!(
        param_matches(sql),
        vec![
            ("$1".into(), Some(KeyMatch::List)),
            ("$2".into(), Some(KeyMatch::List)),
        ]
    );
    // The value outside the list, columns inside: no form holds several ciphertexts.
    let sql = "SELECT id FROM patients WHERE '1' IN (ssn)";
    assert_eq!(
        literal_matches(sql),
        vec![("'1'".into(), unsupported("IN"))]
    );
}

#[test]
fn other_comparisons_are_marked_unsupported_and_writes_are_not_compared() {
    // IS [NOT] DISTINCT FROM with a plain column reference on either side.
    let distinct = |text: &str| {
        Some(KeyMatch::Distinct {
            text: text.to_string(),
        })
    };
    let sql = "SELECT id FROM patients p WHERE p.ssn IS NOT DISTINCT FROM '1' AND $1 IS DISTINCT FROM mrn";
    assert_eq!(
        literal_matches(sql),
        vec![("'1'".into(), distinct("p.ssn"))]
    );
    assert_eq!(param_matches(sql), vec![("$1".into(), distinct("mrn"))]);
    for (sql, op) in [
        (
            "SELECT id FROM patients WHERE '1' IS DISTINCT FROM (SELECT ssn FROM patients LIMIT 1)",
            "IS DISTINCT FROM",
        ),
        ("SELECT CASE ssn WHEN '1' THEN 1 END FROM patients", "CASE"),
        ("SELECT id FROM patients WHERE ssn IN (SELECT '1')", "IN"),
    ] {
        assert_eq!(literal_matches(sql)[0].1, unsupported(op), "{sql}");
    }
    // A searched CASE compares with `=`.
    let sql = "SELECT CASE WHEN ssn = '1' THEN 1 END FROM patients";
    assert_eq!(literal_matches(sql)[0].1, Some(KeyMatch::Any));
    // Written values are not compared; a parameter both written and compared has both uses.
    let sql = "UPDATE patients SET ssn = $1, mrn = 'M' WHERE ssn = $1";
    assert_eq!(literal_matches(sql), vec![("'M'".into(), None)]);
    assert_eq!(
        param_matches(sql),
        vec![("$1".into(), None), ("$1".into(), Some(KeyMatch::Any))]
    );
    let sql = "INSERT INTO patients (ssn) VALUES ('1')";
    assert_eq!(literal_matches(sql), vec![("'1'".into(), None)]);
}

#[test]
fn domain_columns_compare_with_each_other_without_values() {
    let p = ok("SELECT p.id FROM patients p JOIN visits v ON v.mrn = p.mrn WHERE v.mrn = 'M'");
    assert_eq!(p.literals.len(), 1);
    assert_eq!(p.literals[0].matching, Some(KeyMatch::Any));
    assert!(p.param_uses.is_empty());
}

#[test]
fn membership_in_arrays() {
    // An array parameter: bound element by element, its cast becomes bytea[].
    let sql = "SELECT id FROM patients WHERE ssn = ANY($1::text[]) AND mrn <> ALL($2)";
    let p = ok(sql);
    assert_eq!(p.array_matches, vec![1, 2]);
    assert_eq!(p.array_params.len(), 2);
    assert!(p.params.is_empty());
    assert_eq!(
        p.rewrites
            .iter()
            .map(|(r, s)| (sql[r.clone()].to_string(), s.clone()))
            .collect::<Vec<_>>(),
        vec![("$1::text[]".to_string(), "$1::bytea[]".to_string())]
    );
    // A text-form array literal: taken apart in the session.
    let sql = "SELECT id FROM patients WHERE ssn = ANY('{a,b}'::text[])";
    let p = ok(sql);
    assert_eq!(p.literals.len(), 1);
    assert!(p.literals[0].array);
    assert_eq!(p.literals[0].matching, Some(KeyMatch::List));
    assert_eq!(&sql[p.literals[0].byte_range.clone()], "'{a,b}'::text[]");
    // ARRAY[…]: each element bound as one value of a list; the cast becomes bytea[].
    let sql = "SELECT id FROM patients WHERE ssn = ANY(ARRAY['a', $1]::varchar[])";
    let p = ok(sql);
    assert_eq!(
        literal_matches(sql),
        vec![("'a'".into(), Some(KeyMatch::List))]
    );
    assert_eq!(
        param_matches(sql),
        vec![("$1".into(), Some(KeyMatch::List))]
    );
    assert_eq!(p.rewrites.len(), 1);
    assert_eq!(p.rewrites[0].1, "::bytea[]");
    assert_eq!(&sql[p.rewrites[0].0.clone()], "::varchar[]");
}

#[test]
fn arrays_that_are_not_membership_are_refused() {
    for (sql, op) in [
        ("SELECT 1 FROM patients WHERE ssn <> ANY($1)", "<> ANY"),
        ("SELECT 1 FROM patients WHERE ssn = ALL($1)", "= ALL"),
        ("SELECT 1 FROM patients WHERE ssn = ANY($1::int[])", "cast"),
        (
            "SELECT 1 FROM patients WHERE ssn = ANY(string_to_array('a', ','))",
            "computed",
        ),
        (
            "SELECT 1 FROM patients WHERE birth_date = ANY($1)",
            "randomized",
        ),
        (
            "INSERT INTO patients (ssn) SELECT u FROM unnest($1::text[]) u WHERE EXISTS (SELECT 1 FROM patients WHERE ssn = ANY($1))",
            "also unnested",
        ),
    ] {
        let m = refused(sql);
        assert!(m.contains(op), "{sql}: {m}");
    }
}
