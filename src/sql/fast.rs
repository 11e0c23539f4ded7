//! The pass-through check that runs on every query: no parse, no allocation.

use super::catalog::Protection;

/// True when the query text may refer to a protected table: some protected table's name
/// occurs in it as a whole word (ASCII case-insensitively, anywhere: identifiers, strings,
/// comments), or it uses a Unicode escape (`U&"…"`) that could spell one. A name inside a
/// longer identifier (`patients_id_seq`, `patients_plain`) is another object and does not
/// count. False means the query cannot name a protected table directly and may be forwarded
/// untouched. (Views and functions over protected tables are out of scope here; the
/// session's RowDescription backstop covers them.)
pub fn may_touch_protected(sql: &str, protection: &Protection) -> bool {
    let hay = sql.as_bytes();
    contains_ignore_ascii_case(hay, b"u&", false)
        || protection
            .needles()
            .iter()
            .any(|needle| contains_ignore_ascii_case(hay, needle, true))
}

/// Bytes that continue an unquoted identifier. Any other byte ends one; non-ASCII bytes
/// (letters to PostgreSQL) are counted as ending one too, which can only match more.
fn continues_identifier(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// `needle` must be ASCII-lower-case where it is ASCII. With `whole_word`, an occurrence
/// counts only when no identifier byte touches it on either side.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8], whole_word: bool) -> bool {
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
        if (c == first || c == upper)
            && hay[i + 1..i + needle.len()].eq_ignore_ascii_case(rest)
            && (!whole_word
                || ((i == 0 || !continues_identifier(hay[i - 1]))
                    && hay
                        .get(i + needle.len())
                        .is_none_or(|&b| !continues_identifier(b))))
        {
            return true;
        }
        i += 1;
    }
    false
}
