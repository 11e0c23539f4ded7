//! The pass-through check that runs on every query: no parse, no allocation.

use super::catalog::Protection;

/// True when the query text may refer to a protected table: some protected table's name
/// occurs in it as a whole word (ASCII case-insensitively, anywhere: identifiers, strings,
/// comments, function bodies), or it uses a Unicode escape (`U&"…"`) that could spell one.
/// A word is bounded by bytes that cannot continue an identifier, so `patients_plain` or
/// `patients_id_seq` does not name `patients`. False means the query cannot name a
/// protected table directly and may be forwarded untouched. (Views over protected tables
/// are looked for by the session's catalog, [`crate::sql::Catalog::mentions_protected_view`].)
pub fn may_touch_protected(sql: &str, protection: &Protection) -> bool {
    let hay = sql.as_bytes();
    contains_ignore_ascii_case(hay, b"u&")
        || protection
            .needles()
            .iter()
            .any(|needle| contains_word(hay, needle))
}

/// A byte that continues an identifier on either side of a word. `$` is not one: a
/// dollar-quoted body (`$$…patients$$`) must still count as naming the table, and a
/// `patients$x` identifier only costs an analysis.
fn continues_identifier(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// `needle` occurs in `hay` (ASCII case ignored) as a whole word. `needle` must be
/// ASCII-lower-case where it is ASCII.
pub(crate) fn contains_word(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return false;
    };
    if hay.len() < needle.len() {
        return false;
    }
    let upper = first.to_ascii_uppercase();
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        let c = hay[i];
        if (c == first || c == upper)
            && hay[i + 1..i + needle.len()].eq_ignore_ascii_case(rest)
            && (i == 0 || !continues_identifier(hay[i - 1]))
            && hay
                .get(i + needle.len())
                .is_none_or(|&b| !continues_identifier(b))
        {
            return true;
        }
        i += 1;
    }
    false
}

/// `needle` must be ASCII-lower-case where it is ASCII.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    let upper = first.to_ascii_uppercase();
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        let c = hay[i];
        if (c == first || c == upper) && hay[i + 1..i + needle.len()].eq_ignore_ascii_case(rest) {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_not_substrings() {
        for hay in [
            "SELECT * FROM patients",
            "select * from PATIENTS p",
            "SELECT 1 FROM public.patients",
            "SELECT 1 FROM \"patients\"",
            "SELECT 'patients'",
            "DO $$BEGIN DELETE FROM patients$$",
            "SELECT 1 FROM patients$x",
        ] {
            assert!(contains_word(hay.as_bytes(), b"patients"), "{hay}");
        }
        for hay in [
            "LOCK TABLE patients_plain",
            "CREATE SEQUENCE patients_id_seq",
            "SELECT 1 FROM mypatients",
            "SELECT 1 FROM patients2",
            "SELECT 1 FROM patientsé",
            "SELECT 'select everything here' AS x",
        ] {
            assert!(!contains_word(hay.as_bytes(), b"patients"), "{hay}");
        }
        assert!(contains_word(b"SELECT 1 AS e", b"e"));
        assert!(!contains_word(b"SELECT 'select everything here'", b"e"));
    }
}
