//! Statement analysis (`pgveil::sql::analyze`) on arbitrary UTF-8, with the protected
//! columns and catalog of `src/sql/tests.rs`: nothing panics, and every plan is one the
//! session can apply (ranges inside the text, on character boundaries, in order, not
//! overlapping), never claims protected data for text the fast path lets through, and its
//! fingerprint never holds a bound literal's value.
#![no_main]

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgveil::schema::{EncryptionMode, LogicalType, ProtectedColumn, TableName};
use pgveil::sql::{
    analyze, encoding_refusal, fingerprint, may_touch_protected, try_rewrite, Protection,
    StatementPlan, StaticCatalog, SubjectSource,
};

struct Fixture {
    protection: Protection,
    catalog: StaticCatalog,
    search_path: Vec<String>,
}

fn column(table: &str, column: &str, ty: LogicalType, mode: EncryptionMode) -> ProtectedColumn {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    ProtectedColumn {
        table: TableName::new(schema, name),
        column: column.into(),
        logical_type: ty,
        mode,
        domain: (column == "mrn").then(|| "mrn".to_string()),
    }
}

/// The configuration `src/sql/tests.rs` uses.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        use EncryptionMode::{Deterministic, Randomized};
        use LogicalType::{Date, Int4, Text};
        let columns = vec![
            column("patients", "ssn", Text, Deterministic),
            column("patients", "birth_date", Date, Randomized),
            column("patients", "mrn", Text, Deterministic),
            column("patients", "age", Int4, Deterministic),
            column("visits", "mrn", Text, Deterministic),
            column("visits", "note", Text, Randomized),
            column("ehr.records", "ssn", Text, Deterministic),
            column("patients", "Weird", Text, Deterministic),
        ];
        let mut subjects = HashMap::new();
        subjects.insert(TableName::new("public", "patients"), "id".to_string());
        subjects.insert(TableName::new("public", "visits"), "patient_id".to_string());
        let mut catalog = StaticCatalog::new();
        let patients = [
            "id",
            "ssn",
            "birth_date",
            "mrn",
            "name",
            "zip",
            "age",
            "Weird",
        ];
        catalog.add_table("public", "patients", 1001, &patients);
        let visits = ["id", "patient_id", "mrn", "note", "visit_date"];
        catalog.add_table("public", "visits", 1002, &visits);
        catalog.add_table("ehr", "records", 1003, &["id", "ssn", "data"]);
        catalog.add_table("public", "staff", 1004, &["id", "name", "ssn_plain"]);
        catalog.add_table("public", "Patients", 1005, &["id", "ssn"]);
        Fixture {
            protection: Protection::new(columns, subjects),
            catalog,
            search_path: vec!["$user".into(), "public".into()],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let _ = encoding_refusal(sql);
    let touches = may_touch_protected(sql, &f.protection);
    let Ok(plans) = analyze(sql, &f.protection, &f.catalog, &f.search_path) else {
        return;
    };
    let mut previous_end = 0;
    for plan in &plans {
        check_range(sql, &plan.byte_range, "statement");
        assert!(plan.byte_range.start >= previous_end, "statements overlap");
        previous_end = plan.byte_range.end;
        check_plan(sql, plan, f);
        if !touches {
            assert_nothing_protected(plan, f);
        }
    }
    check_rewrite(sql, &plans);
    check_fingerprint(sql, &plans);
});

fn check_range(sql: &str, range: &Range<usize>, what: &str) {
    assert!(
        range.start <= range.end && range.end <= sql.len(),
        "{what} range {range:?} outside a text of {} bytes",
        sql.len()
    );
    assert!(
        sql.is_char_boundary(range.start) && sql.is_char_boundary(range.end),
        "{what} range {range:?} splits a character"
    );
}

fn within(inner: &Range<usize>, outer: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn check_plan(sql: &str, plan: &StatementPlan, f: &Fixture) {
    let valid = |c| f.protection.column(c).is_some();
    let mut previous_end = plan.byte_range.start;
    for literal in &plan.literals {
        check_range(sql, &literal.byte_range, "literal");
        assert!(
            within(&literal.byte_range, &plan.byte_range),
            "literal outside its statement"
        );
        assert!(
            literal.byte_range.start >= previous_end,
            "literals unsorted or overlapping"
        );
        assert!(!literal.byte_range.is_empty(), "empty literal range");
        previous_end = literal.byte_range.end;
        assert!(valid(literal.column));
    }
    for (range, _) in &plan.rewrites {
        check_range(sql, range, "rewrite");
        assert!(
            within(range, &plan.byte_range),
            "rewrite outside its statement"
        );
    }
    for (n, c) in &plan.params {
        assert!(*n >= 1 && valid(*c), "parameter ${n}");
    }
    let columns = plan
        .reads
        .iter()
        .chain(&plan.conditions)
        .chain(&plan.writes);
    assert!(columns.clone().all(|c| valid(*c)));
    assert!(plan.result_columns.iter().flatten().all(|c| valid(*c)));
    for source in &plan.subject.sources {
        if let SubjectSource::Injectable { insert_at, .. } = source {
            let at = *insert_at..*insert_at;
            check_range(sql, &at, "subject injection");
            assert!(
                within(&at, &plan.byte_range),
                "injection outside its statement"
            );
        }
    }
    if let Some(refusal) = &plan.refusal {
        assert!(refusal.sqlstate.len() == 5, "SQLSTATE {}", refusal.sqlstate);
    }
}

/// What the fast path forwards untouched must not involve a protected column. (A refusal
/// alone may be over-cautious, e.g. a table function called with an argument named like a
/// protected column, so it is not asserted: no data is found.)
fn assert_nothing_protected(plan: &StatementPlan, f: &Fixture) {
    assert!(
        plan.literals.is_empty()
            && plan.params.is_empty()
            && plan.reads.is_empty()
            && plan.conditions.is_empty()
            && plan.writes.is_empty()
            && plan.rewrites.is_empty()
            && plan.subject.sources.is_empty(),
        "the fast path passes a statement the analysis finds protected data in: {plan:?}"
    );
    for table in &plan.tables {
        assert!(!f.protection.is_protected_table(table), "{table:?}");
    }
}

/// The replacements the session makes (`session::protected::gate`): literals, rewrites and
/// subject injections of each statement up to a refused one, which with the rest of the text
/// is replaced by one statement. They must apply in one go.
fn check_rewrite(sql: &str, plans: &[StatementPlan]) {
    let mut replacements: Vec<(Range<usize>, String)> = Vec::new();
    for plan in plans {
        if plan.refusal.is_some() {
            replacements.push((plan.byte_range.start..sql.len(), "SELECT 1".into()));
            break;
        }
        for literal in &plan.literals {
            replacements.push((literal.byte_range.clone(), "'\\x00'::bytea".into()));
        }
        replacements.extend(plan.rewrites.iter().cloned());
        for source in &plan.subject.sources {
            if let SubjectSource::Injectable {
                insert_at, text, ..
            } = source
            {
                replacements.push((*insert_at..*insert_at, text.clone()));
            }
        }
    }
    if let Err(e) = try_rewrite(sql, &replacements) {
        panic!("the session could not apply the plans: {e}");
    }
}

/// A literal's value that occurs nowhere else in the text must not reach the audit log.
/// (Only alphanumeric values: other text in the fingerprint is the statement's own, so
/// such a value can appear there only through the literal.)
fn check_fingerprint(sql: &str, plans: &[StatementPlan]) {
    let printed = fingerprint(sql);
    for literal in plans.iter().flat_map(|p| &p.literals) {
        let Some(value) = literal.value.as_deref() else {
            continue;
        };
        let alphanumeric = value.bytes().all(|b| b.is_ascii_alphanumeric());
        if value.len() >= 6 && alphanumeric && sql.matches(value).count() == 1 {
            assert!(
                !printed.contains(value),
                "fingerprint holds a literal value: {printed:?}"
            );
        }
    }
}
