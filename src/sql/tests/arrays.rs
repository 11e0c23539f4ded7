//! Arrays and VALUES lists written into protected columns (issue 9, class 2): bound element
//! by element, or refused.

use super::*;

fn rewrites(sql: &str, p: &StatementPlan) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p
        .rewrites
        .iter()
        .map(|(r, s)| (sql[r.clone()].to_string(), s.clone()))
        .collect();
    v.sort();
    v
}

fn arrays(p: &StatementPlan) -> Vec<(u32, String)> {
    p.array_params.iter().map(|(n, c)| (*n, name(*c))).collect()
}

#[test]
fn unnest_of_array_parameters_binds_each_array_to_its_column() {
    for sql in [
        "INSERT INTO patients (name, ssn) SELECT * FROM UNNEST($1::text[], $2::text[])",
        "INSERT INTO patients (name, ssn) SELECT * FROM unnest($1::varchar[], $2::varchar(20)[])",
        "INSERT INTO patients (name, ssn) SELECT a, b FROM UNNEST($1::text[], $2::text[]) AS u(a, b)",
        "INSERT INTO patients (name, ssn) SELECT u.a, u.b FROM UNNEST($1::text[], $2::text[]) AS u(a, b) RETURNING id",
    ] {
        let p = ok(sql);
        assert_eq!(arrays(&p), vec![(2, SSN.to_string())], "{sql}");
        assert!(p.params.is_empty(), "{sql}");
        let r = rewrites(sql, &p);
        assert_eq!(r.len(), 1, "{sql}");
        assert_eq!(r[0].1, "$2::bytea[]", "{sql}");
        assert!(r[0].0.starts_with("$2::"), "{sql}");
        assert_eq!(names(&p.writes), vec![SSN.to_string()]);
    }
    // Without a cast the session declares the parameter bytea[].
    let p = ok("INSERT INTO patients (ssn, name) SELECT * FROM UNNEST($1, $2)");
    assert_eq!(arrays(&p), vec![(1, SSN.to_string())]);
    assert!(p.rewrites.is_empty());
}

#[test]
fn unnest_of_array_literals_binds_each_element() {
    let sql = "INSERT INTO patients (name, ssn) SELECT * FROM UNNEST((ARRAY['Ann', 'Bob'])::varchar[], (ARRAY['111', NULL, '222'::text])::text[]) RETURNING patients.id";
    let p = ok(sql);
    assert_eq!(
        lits(sql, &p),
        vec![t("'111'", SSN, "111"), t("'222'::text", SSN, "222")]
    );
    assert_eq!(
        rewrites(sql, &p),
        vec![("::text[]".to_string(), "::bytea[]".to_string())]
    );
    let sql = "INSERT INTO patients (ssn) SELECT * FROM UNNEST(ARRAY['1', '2'])";
    assert_eq!(lit(sql), vec![t("'1'", SSN, "1"), t("'2'", SSN, "2")]);
    // The session's rewrite yields a bytea[] array.
    let p = ok(sql);
    let replaced: Vec<(std::ops::Range<usize>, String)> = p
        .literals
        .iter()
        .map(|l| (l.byte_range.clone(), "'\\x01'::bytea".to_string()))
        .collect();
    assert_eq!(
        rewrite(sql, &replaced),
        "INSERT INTO patients (ssn) SELECT * FROM UNNEST(ARRAY['\\x01'::bytea, '\\x01'::bytea])"
    );
}

#[test]
fn arrays_that_cannot_be_taken_apart_are_refused_into_protected_columns() {
    for sql in [
        // bytea arrays: not pgveil's ciphertext.
        "INSERT INTO patients (name, ssn) SELECT * FROM UNNEST($1::text[], $2::bytea[])",
        "INSERT INTO patients (name, ssn) SELECT * FROM UNNEST($1::text[], ARRAY['x']::bytea[])",
        // text form cast to bytea[], functions, subqueries, unknown relations, other
        // set-returning functions
        "INSERT INTO patients (ssn) SELECT * FROM UNNEST('{a,b}'::bytea[])",
        "INSERT INTO patients (ssn) SELECT * FROM UNNEST('{a,b}')",
        "INSERT INTO patients (ssn) SELECT * FROM UNNEST(string_to_array($1, ','))",
        "INSERT INTO patients (ssn) SELECT * FROM UNNEST(ARRAY[lower('x')])",
        "INSERT INTO patients (ssn) SELECT * FROM UNNEST(ARRAY[ARRAY['x']])",
        "INSERT INTO patients (name, ssn) SELECT * FROM generate_series(1, 2) g, generate_series(1, 2) h",
        "INSERT INTO patients (name, ssn) SELECT * FROM pg_catalog.unnest($1::text[], $2::text[])",
        "INSERT INTO patients (name, ssn) SELECT * FROM (SELECT * FROM json_to_record($1) AS x(a text, b text)) s",
        "INSERT INTO patients (name, ssn) WITH w AS (SELECT * FROM generate_series(1, 2)) SELECT * FROM w, w AS v",
        "INSERT INTO patients (ssn) SELECT unnest($1::text[])",
        "INSERT INTO patients (ssn) SELECT * FROM UNNEST($1::text[]) UNION ALL SELECT 'x'",
        // one array bound twice or also used plainly
        "INSERT INTO patients (ssn, name) SELECT a, a FROM UNNEST($1::text[]) AS u(a)",
        "INSERT INTO patients (ssn) SELECT a FROM UNNEST($1::text[]) AS u(a) WHERE a <> 'x'",
        "INSERT INTO patients (ssn) SELECT a FROM UNNEST($1::text[]) AS u(a) WHERE $1 IS NOT NULL AND cardinality($1) > 0",
        "INSERT INTO patients (ssn, mrn) SELECT a, a FROM UNNEST($1::text[]) AS u(a)",
        // a scalar cast of an array parameter
        "INSERT INTO patients (ssn) VALUES ($1::text[])",
        "INSERT INTO patients (ssn) VALUES ($1::varchar(9)[])",
    ] {
        let p = analyze(sql, &protection(), &catalog(), &sp());
        // An analysis error is refused by the gate as well.
        if let Ok(p) = p {
            assert!(p[0].refusal.is_some(), "{sql}: not refused: {:?}", p[0]);
        }
    }
}

#[test]
fn unnest_into_plain_columns_stays_plain() {
    let p = ok("INSERT INTO staff (name, ssn_plain) SELECT * FROM UNNEST($1::text[], $2::text[])");
    assert!(p.array_params.is_empty() && p.rewrites.is_empty());
    let p = ok("SELECT * FROM UNNEST(ARRAY['a', 'b']) WITH ORDINALITY AS u(x, n) WHERE x = 'a'");
    assert!(p.literals.is_empty());
    let p = ok("SELECT id FROM patients WHERE name IN (SELECT * FROM unnest($1::text[]))");
    assert!(p.array_params.is_empty());
}

#[test]
fn values_in_a_derived_table_bind_through_to_their_target() {
    // SQLAlchemy 2 insertmanyvalues.
    let sql = "INSERT INTO patients (name, ssn) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES ($1::VARCHAR, $2::VARCHAR, 0), ($3::VARCHAR, $4::VARCHAR, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING patients.id, patients.ssn";
    let p = ok(sql);
    assert_eq!(params(&p), vec![(2, SSN.to_string()), (4, SSN.to_string())]);
    assert_eq!(
        rewrites(sql, &p),
        vec![
            ("$2::VARCHAR".to_string(), "$2::bytea".to_string()),
            ("$4::VARCHAR".to_string(), "$4::bytea".to_string()),
            ("::VARCHAR".to_string(), "::bytea".to_string()),
        ]
    );
    let cast = p.rewrites.iter().find(|(_, s)| s == "::bytea").unwrap();
    assert_eq!(&sql[cast.0.start - 2..cast.0.start], "p1");
    assert_eq!(names(&p.reads), vec![SSN.to_string()]);
    // Literals in the same shape (simple protocol).
    let sql = "INSERT INTO patients (name, ssn) SELECT p0, p1 FROM (VALUES ('Ann', '111'), ('Bob', NULL)) AS v(p0, p1)";
    assert_eq!(lit(sql), vec![t("'111'", SSN, "111")]);
    // Used elsewhere too, or computed: refused.
    refused("INSERT INTO patients (ssn) SELECT p FROM (VALUES ('1'), (lower('x'))) AS v(p)");
    refused("INSERT INTO patients (ssn) SELECT p FROM (VALUES ('1')) AS v(p) WHERE p = '1'");
    refused("INSERT INTO patients (ssn) SELECT p::int FROM (VALUES ('1')) AS v(p)");
    refused("INSERT INTO patients (ssn) SELECT lower(p) FROM (VALUES ('1')) AS v(p)");
}

#[test]
fn text_form_array_literals_are_bound_whole() {
    let sql = "INSERT INTO patients (name, ssn) SELECT * FROM UNNEST('{Ann,Bob}'::text[], '{\"1\",NULL}'::varchar[])";
    let p = ok(sql);
    assert_eq!(p.literals.len(), 1);
    let l = &p.literals[0];
    assert!(l.array);
    assert_eq!(&sql[l.byte_range.clone()], "'{\"1\",NULL}'::varchar[]");
    assert_eq!(l.value.as_deref(), Some("{\"1\",NULL}"));
    assert_eq!(name(l.column), SSN);
}

#[test]
fn parenthesized_text_form_array_literals_are_bound_whole() {
    // psycopg 3 binding Django's lists on the client: `(%s)::text[]` becomes `('{…}')::text[]`.
    let sql = "INSERT INTO patients (name, ssn) SELECT * FROM UNNEST(('{Ann,Bob}')::text[], (('{\"1\",NULL}'))::text[])";
    let p = ok(sql);
    assert_eq!(p.literals.len(), 1);
    let l = &p.literals[0];
    assert!(l.array);
    assert_eq!(&sql[l.byte_range.clone()], "'{\"1\",NULL}'");
    assert_eq!(l.cast.as_deref(), Some("text[]"));
    assert_eq!(name(l.column), SSN);
    // The cast after the parentheses is rewritten with it.
    assert!(
        p.rewrites
            .iter()
            .any(|(r, to)| sql[r.clone()].trim() == "::text[]" && to == "::bytea[]"),
        "{:?}",
        p.rewrites
    );
}
