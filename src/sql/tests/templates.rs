//! Shared plans (`sql::template`): for many statement shapes and literal values, a plan
//! taken from a template made for one text must equal the analysis of the other text.

use super::*;

/// Statement shapes; `@S` is a string-like literal, `@N` a number, `@D` a date literal,
/// `@O` a small positive integer (an output position), `@A` an array literal.
const SHAPES: &[&str] = &[
    "SELECT * FROM patients WHERE ssn = @S",
    "SELECT name FROM patients WHERE @S = ssn AND zip = @S",
    "SELECT * FROM patients WHERE ssn IN (@S, @S) AND age <> @N",
    "SELECT id FROM patients WHERE birth_date = @D",
    "SELECT id, ssn FROM patients WHERE mrn = @S ORDER BY @O LIMIT @N",
    "SELECT ssn, name FROM patients ORDER BY @O",
    "SELECT name FROM patients GROUP BY @O",
    "INSERT INTO patients (ssn, birth_date, age, name) VALUES (@S, @D, @N, @S)",
    "INSERT INTO patients (ssn, name) VALUES (@S, @S), (@S, @S) RETURNING id, ssn",
    "INSERT INTO patients (ssn, age) VALUES (@S, @N) ON CONFLICT (id) DO UPDATE SET ssn = @S",
    "UPDATE patients SET ssn = @S, zip = @S WHERE age = @N",
    "DELETE FROM patients WHERE ssn = @S AND id = @N RETURNING ssn",
    "SELECT p.name FROM patients p JOIN visits v ON v.patient_id = p.id WHERE v.mrn = @S",
    "SELECT * FROM patients WHERE ssn = @S; SELECT note FROM visits WHERE note = @S",
    "SELECT set_config(@S, @S, false), ssn FROM patients WHERE ssn = @S",
    "SELECT * FROM patients WHERE ssn = ANY(@A::text[])",
    "INSERT INTO patients (ssn) SELECT unnest(@A::text[])",
    "SELECT * FROM patients WHERE ssn = @S::varchar(@O)",
    "SELECT * FROM patients WHERE age = @N::int4 AND age <> CAST(@N AS int8)",
    "SELECT * /* it's @S */ FROM patients -- it's\n WHERE ssn = @S",
    "SELECT ssn FROM patients WHERE ssn = $1 AND zip = @S AND age = $2",
    "WITH x AS (SELECT @S AS s) INSERT INTO patients (ssn) SELECT s FROM x",
    "SELECT ssn FROM patients WHERE ssn = @S UNION SELECT ssn FROM patients WHERE mrn = @S",
    "SELECT id FROM patients WHERE ssn = (SELECT ssn FROM patients WHERE age = @N LIMIT @O)",
    "SELECT ssn FROM patients WHERE ssn = @S AND name LIKE @S",
    "COPY patients (ssn, name) FROM STDIN WITH (FORMAT csv, DELIMITER @S)",
    "SELECT ssn FROM patients WHERE ssn = 'fixed' AND mrn = @S",
    "SELECT ssn FROM patients WHERE ssn = @S OR mrn = $1 OR @S <> mrn",
    // PLAIN_FROM..FIXED_FROM: plain literals (name, zip are unprotected) next to bound ones.
    "INSERT INTO patients (ssn, name, zip) VALUES (@S, @S, @S), (@S, @S, @N)",
    "UPDATE patients SET name = @S, zip = @N WHERE ssn = @S AND id = @N",
    "SELECT id FROM patients WHERE name = @S AND ssn = @S",
    "SELECT @S AS label, @N, ssn FROM patients WHERE ssn = @S",
    "SELECT id FROM patients WHERE ssn = (SELECT ssn FROM patients WHERE name = @S LIMIT @O)",
    "WITH c AS (SELECT @S AS label, @N AS n) SELECT label, ssn FROM patients, c WHERE ssn = @S",
    "SELECT id FROM patients WHERE name IN ('a', @S) AND zip <> @S ORDER BY 1 LIMIT @O",
    "INSERT INTO patients (ssn, name) SELECT @S, @S",
    "UPDATE patients SET name = @S WHERE ssn = @S RETURNING @S, ssn",
    "SELECT name FROM patients WHERE ssn = @S; SELECT @S, name FROM staff WHERE name = @S",
    "INSERT INTO patients (ssn, name) VALUES (@S, @S) ON CONFLICT (id) DO UPDATE SET name = @S",
    "SELECT CASE name WHEN @S THEN 'x' ELSE name END FROM patients WHERE ssn = @S",
    "SELECT id FROM (SELECT id, @S AS tag FROM patients WHERE ssn = @S) s WHERE s.tag = 'x'",
    "INSERT INTO patients (ssn, name) VALUES (@S, @S::varchar(@O))",
    "INSERT INTO patients (ssn, name) SELECT x, @S FROM (VALUES (@S)) v(x)",
    // FIXED_FROM..: literals the analysis reads or hands on, or after DDL or a SET in the
    // same Query, or in a statement pgveil only looks at: nothing reported as opaque.
    "SELECT set_config(@S, @S, false), ssn FROM patients WHERE ssn = @S",
    "INSERT INTO patients (ssn, name) VALUES (@S, lower(@S))",
    "SELECT name FROM patients WHERE name LIKE @S AND ssn = @S",
    "SET search_path = public; INSERT INTO patients (ssn, name) VALUES (@S, @S)",
    "CREATE TEMP TABLE patients (id int); INSERT INTO patients (ssn, name) VALUES (@S, @S)",
    "EXPLAIN SELECT name FROM patients WHERE name = @S AND ssn = @S",
    "SELECT name FROM patients WHERE ssn = @S GROUP BY @O LIMIT @O",
    "SELECT ssn FROM patients WHERE name = ANY(@A::text[]) AND ssn = @S",
    "SET pgveil.purpose = @S; SELECT ssn FROM patients WHERE ssn = @S",
];

const STRINGS: &[&str] = &[
    "'123-45-6789'",
    "'O''Brien'",
    "E'a\\nb\\'c'",
    "E'plain'",
    "$$x'y$$",
    "$t$z$t$",
    "''",
    "'ü€'",
    "N'abc'",
    "'-5'",
    "'1'",
    "'2'",
    "'search_path'",
    "'client_encoding'",
    "'@S'",
    "'a;b'",
    "'{a,b}'",
    "U&'d\\0061t'",
    "X'1F'",
];
const NUMBERS: &[&str] = &[
    "5",
    "-5",
    "42",
    "3.14",
    "- 7",
    "1e3",
    "99999999999",
    "0",
    "+2",
    "1.5e-3",
    ".5",
];
const DATES: &[&str] = &[
    "date '2020-01-01'",
    "DATE '1999-12-31'",
    "'2021-02-03'::date",
    "CAST('2001-01-01' AS date)",
    "'2022-02-02'",
    "timestamp with time zone '2024-01-08 00:00+00'",
];
const POSITIONS: &[&str] = &["1", "2", "3", "10"];
const ARRAYS: &[&str] = &["'{a,b}'", "'{x}'", "'{\"q,r\",NULL}'", "'{}'"];

/// The first shape with plain literals, and the first whose literals must all stay fixed.
const PLAIN_FROM: usize = 28;
const FIXED_FROM: usize = 43;

/// A small deterministic generator (no dependency, no randomness between runs).
struct Lcg(u64);

impl Lcg {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        from[((self.0 >> 33) as usize) % from.len()]
    }
}

fn fill(shape: &str, rng: &mut Lcg) -> String {
    let mut out = String::new();
    let mut rest = shape;
    while let Some(i) = rest.find('@') {
        out.push_str(&rest[..i]);
        let slot = rest.as_bytes().get(i + 1).copied();
        let value = match slot {
            Some(b'S') => rng.pick(STRINGS),
            Some(b'N') => rng.pick(NUMBERS),
            Some(b'D') => rng.pick(DATES),
            Some(b'O') => rng.pick(POSITIONS),
            Some(b'A') => rng.pick(ARRAYS),
            _ => panic!("bad slot in {shape}"),
        };
        out.push_str(value);
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

/// The text the session would send: each bound literal replaced by a marker of its column
/// and value, each replacement and injection applied.
fn rewritten(sql: &str, plans: &[StatementPlan]) -> String {
    let mut edits = Vec::new();
    for p in plans {
        for l in &p.literals {
            let value = l.value.clone().unwrap_or_default();
            edits.push((l.byte_range.clone(), format!("<{}={value}>", l.column.0)));
        }
        edits.extend(p.rewrites.iter().cloned());
        for s in &p.subject.sources {
            if let SubjectSource::Injectable {
                insert_at, text, ..
            } = s
            {
                edits.push((*insert_at..*insert_at, text.clone()));
            }
        }
    }
    try_rewrite(sql, &edits).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn analysed(sql: &str) -> Result<Vec<StatementPlan>, AnalyzeError> {
    analyze(sql, &protection(), &catalog(), &sp())
}

#[test]
fn shared_plans_equal_separate_analysis() {
    let mut rng = Lcg(14);
    let mut shared = 0usize;
    let mut shared_by_shape = vec![0usize; SHAPES.len()];
    // Shared plans whose texts differ in a literal reported as opaque plain.
    let mut plain_by_shape = vec![0usize; SHAPES.len()];
    for (n, shape) in SHAPES.iter().enumerate() {
        let texts: Vec<String> = (0..40).map(|_| fill(shape, &mut rng)).collect();
        for a in &texts {
            let Some(shape_a) = Shape::of(a) else {
                continue;
            };
            let Ok(plans_a) = analysed(a) else { continue };
            let Some(template) = Template::new(&shape_a, a, &plans_a) else {
                continue;
            };
            // The template reproduces its own text's analysis.
            assert_eq!(template.apply(&shape_a, a).as_ref(), Some(&plans_a), "{a}");
            for b in &texts {
                let Some(shape_b) = Shape::of(b) else {
                    continue;
                };
                if shape_b.key() != shape_a.key() {
                    continue;
                }
                let Some(from_template) = template.apply(&shape_b, b) else {
                    continue;
                };
                let direct =
                    analysed(b).unwrap_or_else(|e| panic!("{a} shared with {b}, which fails: {e}"));
                assert_eq!(from_template, direct, "\n{a}\nshared with\n{b}");
                assert_eq!(rewritten(b, &from_template), rewritten(b, &direct));
                if a != b {
                    shared += 1;
                    shared_by_shape[n] += 1;
                }
                let opaque = |t: &str, plans: &[StatementPlan]| -> Vec<String> {
                    plans
                        .iter()
                        .flat_map(|p| p.opaque_literals.iter().map(|r| t[r.clone()].to_string()))
                        .collect()
                };
                if opaque(a, &plans_a) != opaque(b, &from_template) {
                    plain_by_shape[n] += 1;
                }
                if n >= FIXED_FROM {
                    assert!(opaque(a, &plans_a).is_empty(), "{a}");
                }
            }
        }
    }
    eprintln!("shared per shape: {shared_by_shape:?}");
    assert!(shared > 1000, "only {shared} shared plans");
    // The plain lookups, inserts, updates and deletes do share.
    for n in [0, 1, 2, 7, 8, 9, 10, 11, 12, 13, 19, 22, 23, 27] {
        assert!(shared_by_shape[n] > 0, "{} never shared", SHAPES[n]);
    }
    // COPY and array literals never do.
    for n in [15, 16, 25] {
        assert_eq!(shared_by_shape[n], 0, "{} shared", SHAPES[n]);
    }
    eprintln!("shared with another plain literal, per shape: {plain_by_shape:?}");
    assert!(SHAPES[FIXED_FROM].starts_with("SELECT set_config"));
    // Texts that differ in a plain literal share.
    for n in PLAIN_FROM..FIXED_FROM {
        assert!(
            plain_by_shape[n] > 0,
            "{} never shared across plain literals",
            SHAPES[n]
        );
    }
    // Where the analysis reads a literal or hands it on (set_config, a function argument,
    // a pattern, a position, an array) or the statement follows DDL or is no query, no
    // literal is reported, so only bound values vary.
    for (n, count) in plain_by_shape.iter().enumerate().skip(FIXED_FROM) {
        assert_eq!(*count, 0, "{} shared across plain literals", SHAPES[n]);
    }
    // (Their bound values still vary; a statement after DDL is refused, so never shared.)
    for n in FIXED_FROM..FIXED_FROM + 3 {
        assert!(shared_by_shape[n] > 0, "{} never shared", SHAPES[n]);
    }
}

/// The literals the analysis reports as opaque plain values, as written.
fn opaque_of(sql: &str) -> Vec<Vec<&str>> {
    analysed(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|p| p.opaque_literals.iter().map(|r| &sql[r.clone()]).collect())
        .collect()
}

#[test]
fn opaque_literals_are_the_plain_values_only() {
    // Written into an unprotected column, compared with no protected side, returned.
    assert_eq!(
        opaque_of("INSERT INTO patients (ssn, name, zip) VALUES ('s', 'n', -5::int8)"),
        [["'n'", "5"]]
    );
    assert_eq!(
        opaque_of("UPDATE patients SET name = 'n', ssn = 's' WHERE zip = 'z' AND ssn = 't'"),
        [["'n'", "'z'"]]
    );
    assert_eq!(
        opaque_of("SELECT 'a', ssn, 2 FROM patients WHERE ssn = 's' ORDER BY 1 LIMIT 3 OFFSET 4"),
        [["'a'", "2"]]
    );
    assert_eq!(
        opaque_of("WITH c AS (SELECT 'k' AS v) SELECT v FROM c, patients WHERE ssn = 's'"),
        [["'k'"]]
    );
    // A literal the analysis reads, or hands to a function, a cast's typmod, a pattern, an
    // array taken apart, a value bound for a protected column: never reported.
    for (sql, reported) in [
        (
            "SELECT set_config('a', 'b', false) FROM patients WHERE ssn = 's'",
            &[][..],
        ),
        (
            "SELECT name FROM patients WHERE ssn = 's' GROUP BY 1 ORDER BY 1 LIMIT 2",
            &[],
        ),
        (
            "SELECT name FROM patients WHERE name LIKE 'x%' AND ssn = 's'",
            &[],
        ),
        (
            "SELECT name FROM patients WHERE name = ANY('{a,b}'::text[])",
            &[],
        ),
        ("SELECT lower('x') FROM patients WHERE ssn = 's'", &[]),
        ("SELECT ssn FROM patients WHERE ssn = (SELECT 'x')", &[]),
        ("INSERT INTO patients (ssn) SELECT 'x'", &[]),
        ("SET pgveil.purpose = 'treatment'", &[]),
        ("SET client_encoding = 'UTF8'", &[]),
        (
            "SELECT name FROM patients WHERE name = 'n'::varchar(5) LIMIT 1",
            &["'n'"],
        ),
        ("SELECT 7 FROM patients WHERE ssn = 's' OFFSET 3", &["7"]),
        (
            "SELECT name FROM patients WHERE 'a' || name = 'b'",
            &["'b'"],
        ),
    ] {
        assert_eq!(opaque_of(sql).concat(), reported, "{sql}");
    }
    // After DDL or a SET in the same Query, or in a statement of another kind: none.
    for sql in [
        "SET search_path = public; INSERT INTO patients (ssn, name) VALUES ('s', 'n')",
        "DROP TABLE IF EXISTS patients; SELECT 'n' FROM patients",
        "EXPLAIN SELECT 'n' FROM patients WHERE name = 'n'",
        "CREATE TABLE x AS SELECT 'n' FROM patients",
        "PREPARE q AS SELECT 'n' FROM staff WHERE name = 'n'",
    ] {
        assert!(opaque_of(sql).concat().is_empty(), "{sql}");
    }
}

#[test]
fn value_dependent_literals_stay_in_the_key() {
    let template_of = |sql: &str| {
        let shape = Shape::of(sql).unwrap();
        Template::new(&shape, sql, &analysed(sql).unwrap())
    };
    let applies = |t: &Template, sql: &str| t.apply(&Shape::of(sql).unwrap(), sql).is_some();
    // Output positions, limits, set_config's names and typmods are fixed.
    let t = template_of("SELECT id, ssn FROM patients WHERE mrn = 'a' ORDER BY 1").unwrap();
    assert!(applies(
        &t,
        "SELECT id, ssn FROM patients WHERE mrn = 'zz' ORDER BY 1"
    ));
    assert!(!applies(
        &t,
        "SELECT id, ssn FROM patients WHERE mrn = 'zz' ORDER BY 2"
    ));
    let t = template_of("SELECT set_config('a', 'b', false), ssn FROM patients WHERE ssn = 'x'")
        .unwrap();
    assert!(!applies(
        &t,
        "SELECT set_config('search_path', 'b', false), ssn FROM patients WHERE ssn = 'x'"
    ));
    assert!(applies(
        &t,
        "SELECT set_config('a', 'b', false), ssn FROM patients WHERE ssn = 'other'"
    ));
    assert!(!applies(
        &t,
        "SELECT set_config('a', 'c', false), ssn FROM patients WHERE ssn = 'x'"
    ));
    // A literal compared with a plain column is generalized; LIMIT, the pattern and the
    // typmod next to it are not.
    let t = template_of(
        "SELECT 1 FROM patients WHERE ssn = 'x' AND zip = '1' AND name LIKE 'a%' LIMIT 1",
    )
    .unwrap();
    assert!(applies(
        &t,
        "SELECT 1 FROM patients WHERE ssn = 'y' AND zip = '2' AND name LIKE 'a%' LIMIT 1"
    ));
    for other in [
        "SELECT 1 FROM patients WHERE ssn = 'y' AND zip = '2' AND name LIKE 'b%' LIMIT 1",
        "SELECT 1 FROM patients WHERE ssn = 'y' AND zip = '2' AND name LIKE 'a%' LIMIT 2",
    ] {
        assert!(!applies(&t, other), "{other}");
    }
    let t = template_of("INSERT INTO patients (ssn, name) VALUES ('x', 'n'::varchar(5))").unwrap();
    assert!(applies(
        &t,
        "INSERT INTO patients (ssn, name) VALUES ('y', 'other'::varchar(5))"
    ));
    assert!(!applies(
        &t,
        "INSERT INTO patients (ssn, name) VALUES ('y', 'n'::varchar(6))"
    ));
    // Arrays, COPY, SET, set_config alone: no template.
    assert!(template_of("SELECT * FROM patients WHERE ssn = ANY('{a}'::text[])").is_none());
    assert!(template_of("COPY patients (ssn) FROM STDIN WITH (DELIMITER ',')").is_none());
    assert!(template_of("SET pgveil.purpose = 'a'").is_none());
    assert!(template_of("SELECT set_config('pgveil.purpose', 'a', false)").is_none());
    assert!(template_of("SELECT set_config('x', 'a', false) FROM patients").is_none());
    // Plain literals alone make a template (the statement is analysed once).
    assert!(template_of("SELECT ssn FROM patients WHERE zip = '1'").is_some());
    assert!(template_of("COPY patients (ssn) FROM STDIN WITH (DELIMITER ',')").is_none());
    // Kinds of literal are told apart: '' vs E'' vs $$, integers vs decimals, signs.
    let key = |sql: &str| Shape::of(sql).unwrap().key().to_string();
    let base = "SELECT 1 FROM patients WHERE ssn = ";
    let keys: Vec<String> = ["'a'", "E'a'", "$$a$$", "N'a'", "1", "1.5", "-1"]
        .iter()
        .map(|v| key(&format!("{base}{v}")))
        .collect();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Comments and parameters stay as written; a quote in a comment is no literal.
    assert_eq!(
        key("SELECT $1 /* 'x' */ FROM patients -- 'y'\nWHERE ssn = 'z'"),
        "SELECT $1 /* 'x' */ FROM patients -- 'y'\nWHERE ssn = \0s"
    );
    assert!(Shape::of("SELECT $1 FROM patients").is_none());
}

#[test]
fn negative_numbers_take_their_sign_from_the_text() {
    let a = "SELECT 1 FROM patients WHERE age = -42";
    let t = Template::new(&Shape::of(a).unwrap(), a, &analysed(a).unwrap()).unwrap();
    let b = "SELECT 1 FROM patients WHERE age = -7000";
    let shared = t.apply(&Shape::of(b).unwrap(), b).unwrap();
    assert_eq!(shared[0].literals[0].value.as_deref(), Some("-7000"));
    assert_eq!(&b[shared[0].literals[0].byte_range.clone()], "-7000");
    assert_eq!(shared, analysed(b).unwrap());
}

/// The PHI benchmark's simple INSERT (every column protected, bench/phi.py) binds all its
/// literals: it shared one plan before plain literals were generalized, and reports none.
#[test]
fn an_insert_of_protected_values_only_shares_by_its_bindings() {
    let sql = |ssn: &str, day: &str| {
        format!(
            "INSERT INTO patients (ssn, birth_date, mrn) VALUES ('{ssn}', '{day}', 'Follow-up visit: blood pressure 128/82.')"
        )
    };
    let a = sql("200000001", "19301205");
    let plans = analysed(&a).unwrap();
    assert_eq!(plans[0].literals.len(), 3);
    assert!(plans[0].opaque_literals.is_empty());
    let t = Template::new(&Shape::of(&a).unwrap(), &a, &plans).unwrap();
    let b = sql("899999999", "20151228");
    assert_eq!(
        t.apply(&Shape::of(&b).unwrap(), &b),
        Some(analysed(&b).unwrap())
    );
}
