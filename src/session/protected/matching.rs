//! Comparisons with deterministic columns while several master keys are configured (after
//! `keys rotate`, until `migrate` has re-encrypted every value): the column may hold a value
//! under any configured key, so a literal or parameter compared with it is compared with its
//! ciphertext under every key (`col = ANY(ARRAY[…])`, `col <> ALL(…)`, the ciphertexts in an
//! `IN` list). The plan says how each value is compared ([`KeyMatch`]); the text it becomes
//! depends on the keys, so it is made here, per session, and the cached plan stays the same
//! for one key or several. With one key nothing here changes a statement.

use std::collections::HashSet;
use std::ops::Range;

use super::state::State;
use super::values::{
    bytea_literal, encrypt_text, encrypt_text_array, encrypt_text_every_key, key_count,
};
use crate::pgerror::{sqlstate, PgError};
use crate::pgtype::SessionTime;
use crate::sql::{ColumnRef, KeyMatch, StatementPlan};
use crate::veil::Veil;

/// True when the statement binds values for protected columns whose values may be under
/// more than one master key.
fn several_keys(plan: &StatementPlan, veil: &Veil) -> bool {
    plan.literals
        .iter()
        .map(|l| l.column)
        .chain(plan.params.iter().map(|&(_, c)| c))
        .chain(plan.array_params.iter().map(|&(_, c)| c))
        .any(|c| key_count(veil, c) > 1)
}

/// The parameters that carry their ciphertext under every key (declared `bytea[]`): those
/// compared with their column, when several keys are configured (an array parameter
/// compared with `= ANY`: each element under every key). Empty with one key.
pub(super) fn keyed_params(plan: &StatementPlan, veil: &Veil) -> HashSet<u32> {
    if !several_keys(plan, veil) {
        return HashSet::new();
    }
    plan.param_uses
        .iter()
        .filter(|u| u.matching.is_some())
        .map(|u| u.number)
        .chain(plan.array_matches.iter().copied())
        .collect()
}

/// The statement's replacements: the analysis' rewrites and each literal's ciphertext, in
/// the form its comparison needs when several keys are configured.
pub(super) fn replacements(
    plan: &StatementPlan,
    state: &State,
    veil: &Veil,
) -> Result<Vec<(Range<usize>, String)>, PgError> {
    replacements_with(plan, veil, &state.time, state.standard_strings)
}

/// [`replacements`] with the session's time settings and `standard_conforming_strings`.
fn replacements_with(
    plan: &StatementPlan,
    veil: &Veil,
    time: &SessionTime,
    strings: bool,
) -> Result<Vec<(Range<usize>, String)>, PgError> {
    let several = several_keys(plan, veil);
    let mut out = Vec::with_capacity(plan.rewrites.len() + plan.literals.len());
    let keyed = if several {
        param_replacements(plan, veil, &mut out)?
    } else {
        HashSet::new()
    };
    // A keyed parameter's `$n::text` → `$n::bytea` rewrite gives way to its own.
    out.extend(
        plan.rewrites
            .iter()
            .filter(|(range, _)| !keyed.contains(range))
            .cloned(),
    );
    for literal in &plan.literals {
        let Some(value) = &literal.value else {
            continue;
        };
        let value = value.as_bytes();
        if literal.array {
            let every = several && literal.matching.is_some();
            let array = encrypt_text_array(veil, literal.column, value, time, strings, every)?;
            out.push((literal.byte_range.clone(), array));
            continue;
        }
        let matching = literal.matching.as_ref().filter(|_| several);
        let Some(matching) = matching else {
            let ciphertext = encrypt_text(veil, literal.column, value, time)?;
            out.push((
                literal.byte_range.clone(),
                bytea_literal(&ciphertext, strings),
            ));
            continue;
        };
        let every = encrypt_text_every_key(veil, literal.column, value, time)?;
        let list = every
            .iter()
            .map(|c| bytea_literal(c, strings))
            .collect::<Vec<_>>()
            .join(", ");
        let array = format!("ARRAY[{list}]");
        place(
            matching,
            literal.byte_range.clone(),
            literal.column,
            &array,
            list,
            veil,
            &mut out,
        )?;
    }
    Ok(out)
}

/// The replacements of every use of a keyed parameter (its value: a `bytea[]` of its
/// ciphertexts under every key); returns the ranges replaced.
fn param_replacements(
    plan: &StatementPlan,
    veil: &Veil,
    out: &mut Vec<(Range<usize>, String)>,
) -> Result<HashSet<Range<usize>>, PgError> {
    let keyed = keyed_params(plan, veil);
    let mut replaced = HashSet::new();
    for used in plan.param_uses.iter().filter(|u| keyed.contains(&u.number)) {
        let n = used.number;
        let Some(column) = plan.params.iter().find(|&&(m, _)| m == n).map(|&(_, c)| c) else {
            continue;
        };
        let array = format!("${n}::bytea[]");
        let element = |i: usize| format!("(${n}::bytea[])[{i}]");
        replaced.insert(used.byte_range.clone());
        match &used.matching {
            // A write takes the current key's ciphertext, which comes first.
            None => out.push((used.byte_range.clone(), element(1))),
            Some(matching) => {
                let list = (1..=key_count(veil, column))
                    .map(element)
                    .collect::<Vec<_>>()
                    .join(", ");
                place(
                    matching,
                    used.byte_range.clone(),
                    column,
                    &array,
                    list,
                    veil,
                    out,
                )?;
            }
        }
    }
    Ok(replaced)
}

/// What a compared value's place (`at`) becomes: `array` is the ciphertexts as one array
/// expression, `list` the same comma-separated.
fn place(
    matching: &KeyMatch,
    at: Range<usize>,
    column: ColumnRef,
    array: &str,
    list: String,
    veil: &Veil,
    out: &mut Vec<(Range<usize>, String)>,
) -> Result<(), PgError> {
    match matching {
        KeyMatch::Any => out.push((at, format!("ANY({array})"))),
        KeyMatch::All => out.push((at, format!("ALL({array})"))),
        KeyMatch::List => out.push((at, list)),
        KeyMatch::Distinct { text } => out.push((
            at,
            format!("(CASE WHEN {text} = ANY({array}) THEN {text} ELSE ({array})[1] END)"),
        )),
        KeyMatch::Swapped {
            column: place,
            text,
            all,
        } => {
            let quantifier = if *all { "ALL" } else { "ANY" };
            out.push((at, text.clone()));
            out.push((place.clone(), format!("{quantifier}({array})")));
        }
        KeyMatch::Unsupported { op } => {
            let name = veil
                .protection
                .column(column)
                .map(|c| c.qualified_name())
                .unwrap_or_default();
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "pgveil: {op} on encrypted column {name} cannot match values under every configured master key; until pgveil migrate has re-encrypted them to the current key, write it as column = value, column <> value or column IN (…)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::crypto::{KeyRing, MasterKey};
    use crate::sql::{self, StaticCatalog};

    const CONFIG: &str = "[keys]\nmaster_key_file = \"k\"\n[[column]]\ntable = \"public.patients\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\n";

    fn veil(keys: usize) -> Veil {
        let config = Config::parse(CONFIG, "t.toml", Path::new(".")).unwrap();
        let previous = (1..keys)
            .map(|i| MasterKey::from_bytes([i as u8; 32]))
            .collect();
        let ring = KeyRing::from_master_keys(MasterKey::from_bytes([9; 32]), previous).unwrap();
        Veil::new(&config, Some(&ring)).unwrap()
    }

    fn plan(sql: &str, veil: &Veil) -> StatementPlan {
        let mut catalog = StaticCatalog::new();
        catalog.add_table("public", "patients", 1001, &["id", "ssn"]);
        let path = vec!["public".to_string()];
        let mut plans = sql::analyze(sql, &veil.protection, &catalog, &path).unwrap();
        assert_eq!(plans.len(), 1);
        plans.remove(0)
    }

    fn rewritten(sql: &str, veil: &Veil) -> Result<String, PgError> {
        let plan = plan(sql, veil);
        let replacements = replacements_with(&plan, veil, &SessionTime::utc(), true)?;
        Ok(sql::try_rewrite(sql, &replacements).unwrap())
    }

    /// The ciphertexts of `value` under every key, as bytea literals.
    fn every(veil: &Veil, value: &str) -> Vec<String> {
        veil.cipher(ColumnRef(0))
            .unwrap()
            .ciphertexts_under_every_key(value.as_bytes())
            .iter()
            .map(|c| bytea_literal(c, true))
            .collect()
    }

    #[test]
    fn one_key_changes_nothing() {
        let veil = veil(1);
        let [c] = every(&veil, "x").try_into().unwrap();
        let sql = "SELECT id FROM patients WHERE ssn = 'x' OR 'x' = ssn OR ssn IN ('x')";
        assert_eq!(
            rewritten(sql, &veil).unwrap(),
            format!("SELECT id FROM patients WHERE ssn = {c} OR {c} = ssn OR ssn IN ({c})")
        );
        let p = plan("SELECT id FROM patients WHERE ssn = $1", &veil);
        assert!(keyed_params(&p, &veil).is_empty());
        // Forms that cannot hold several ciphertexts are fine with one key.
        assert!(rewritten("SELECT CASE ssn WHEN 'x' THEN 1 END FROM patients", &veil).is_ok());
    }

    #[test]
    fn literals_are_compared_under_every_key() {
        let veil = veil(3);
        let c = every(&veil, "x");
        assert_eq!(c.len(), 3);
        let list = c.join(", ");
        let sql = "SELECT id FROM patients p WHERE p.ssn = 'x' AND 'x'::text <> p.ssn AND ssn NOT IN ('x', 'x') AND ssn = ANY('{x,NULL}'::text[])";
        assert_eq!(
            rewritten(sql, &veil).unwrap(),
            format!("SELECT id FROM patients p WHERE p.ssn = ANY(ARRAY[{list}]) AND p.ssn <> ALL(ARRAY[{list}]) AND ssn NOT IN ({list}, {list}) AND ssn = ANY(ARRAY[{list}, NULL]::bytea[])")
        );
        // Written values stay under the current key only.
        assert_eq!(
            rewritten("UPDATE patients SET ssn = 'x' WHERE ssn = 'x'", &veil).unwrap(),
            format!(
                "UPDATE patients SET ssn = {} WHERE ssn = ANY(ARRAY[{list}])",
                c[0]
            )
        );
    }

    #[test]
    fn parameters_become_arrays_of_every_key() {
        let veil = veil(2);
        let sql = "UPDATE patients SET ssn = $1 WHERE ssn IN ($1, $2::text) OR $3 = ssn OR id = $4";
        assert_eq!(
            rewritten(sql, &veil).unwrap(),
            "UPDATE patients SET ssn = ($1::bytea[])[1] WHERE ssn IN (($1::bytea[])[1], ($1::bytea[])[2], ($2::bytea[])[1], ($2::bytea[])[2]) OR ssn = ANY($3::bytea[]) OR id = $4"
        );
        let p = plan(sql, &veil);
        let mut keyed: Vec<u32> = keyed_params(&p, &veil).into_iter().collect();
        keyed.sort_unstable();
        assert_eq!(keyed, vec![1, 2, 3]);
        // A parameter only written keeps its one ciphertext.
        let p = plan("INSERT INTO patients (ssn) VALUES ($1)", &veil);
        assert!(keyed_params(&p, &veil).is_empty());
        // An array compared with `= ANY` is keyed (each element under every key).
        let p = plan("SELECT id FROM patients WHERE ssn = ANY($1)", &veil);
        assert_eq!(
            keyed_params(&p, &veil).into_iter().collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn is_distinct_from_compares_with_the_column_itself_when_it_holds_the_value() {
        let veil = veil(2);
        let list = every(&veil, "x").join(", ");
        assert_eq!(
            rewritten("SELECT id FROM patients WHERE ssn IS NOT DISTINCT FROM 'x'", &veil).unwrap(),
            format!("SELECT id FROM patients WHERE ssn IS NOT DISTINCT FROM (CASE WHEN ssn = ANY(ARRAY[{list}]) THEN ssn ELSE (ARRAY[{list}])[1] END)")
        );
        assert_eq!(
            rewritten("SELECT id FROM patients WHERE $1 IS DISTINCT FROM ssn", &veil).unwrap(),
            "SELECT id FROM patients WHERE (CASE WHEN ssn = ANY($1::bytea[]) THEN ssn ELSE ($1::bytea[])[1] END) IS DISTINCT FROM ssn"
        );
    }

    #[test]
    fn forms_without_room_for_several_ciphertexts_are_refused_with_several_keys() {
        let veil = veil(2);
        for sql in [
            "SELECT CASE ssn WHEN 'x' THEN 1 END FROM patients",
            "SELECT id FROM patients WHERE 'x' IS NOT DISTINCT FROM (SELECT ssn FROM patients LIMIT 1)",
            "SELECT id FROM patients WHERE 'x' IN (ssn)",
        ] {
            let err = rewritten(sql, &veil).unwrap_err();
            assert_eq!(err.code, "0A000", "{sql}");
            assert!(err.message.contains("public.patients.ssn"), "{sql}");
            assert!(!err.message.contains("'x'"), "{sql}");
        }
    }

    #[test]
    fn escape_string_syntax_when_standard_strings_are_off() {
        let veil = veil(2);
        let sql = "SELECT id FROM patients WHERE ssn = 'x'";
        let p = plan(sql, &veil);
        let replacements = replacements_with(&p, &veil, &SessionTime::utc(), false).unwrap();
        let text = sql::try_rewrite(sql, &replacements).unwrap();
        assert!(text.contains("ANY(ARRAY[E'\\\\x"), "{text}");
    }
}
