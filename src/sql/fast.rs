//! The pass-through check that runs on every query: no parse, no allocation.

use super::catalog::Protection;

/// True when the query text may refer to a protected table: some protected table's name
/// occurs in it (ASCII case-insensitively, anywhere: identifiers, strings, comments), or
/// it uses a Unicode escape (`U&"…"`) that could spell one. False means the query cannot
/// name a protected table directly and may be forwarded untouched. (Views and functions
/// over protected tables are out of scope here; the session's RowDescription backstop
/// covers them.)
pub fn may_touch_protected(sql: &str, protection: &Protection) -> bool {
    let hay = sql.as_bytes();
    contains_ignore_ascii_case(hay, b"u&")
        || protection
            .needles()
            .iter()
            .any(|needle| contains_ignore_ascii_case(hay, needle))
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
