//! The subject ids of one table in a record, kept back to back in one buffer.
//!
//! A COPY of a whole table is one record listing as many ids as rows: as a `Vec<String>`,
//! 1,000,000 ids took ~56 MB (a `String` and an allocation each) on top of their ~7 MB of
//! text, and that list was most of pgveil's peak memory. Stored and read as a JSON array of
//! strings, as before (DESIGN.md "Audit log").

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A table's subject ids in the order they were listed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SubjectIds {
    text: String,
    /// Where each id ends in `text`.
    ends: Vec<usize>,
}

impl SubjectIds {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Id `at` (`None` past the end).
    pub fn get(&self, at: usize) -> Option<&str> {
        let end = *self.ends.get(at)?;
        let start = match at {
            0 => 0,
            _ => self.ends[at - 1],
        };
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|at| self.get(at).unwrap_or_default())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.iter().any(|i| i == id)
    }
}

impl<S: AsRef<str>> FromIterator<S> for SubjectIds {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> Self {
        let mut list = Self::new();
        for id in ids {
            list.push(id.as_ref());
        }
        list
    }
}

impl From<Vec<String>> for SubjectIds {
    fn from(ids: Vec<String>) -> Self {
        ids.into_iter().collect()
    }
}

impl From<Vec<&str>> for SubjectIds {
    fn from(ids: Vec<&str>) -> Self {
        ids.into_iter().collect()
    }
}

impl std::fmt::Debug for SubjectIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for SubjectIds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for SubjectIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_in_order_and_stored_as_a_json_array() {
        let ids = SubjectIds::from(vec!["7", "", "12"]);
        assert_eq!(ids.len(), 3);
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec!["7", "", "12"]);
        assert_eq!(ids.get(1), Some(""));
        assert_eq!(ids.get(3), None);
        assert!(ids.contains("12") && !ids.contains("1"));
        let json = serde_json::to_string(&ids).unwrap();
        assert_eq!(json, r#"["7","","12"]"#);
        let back: SubjectIds = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ids);
        assert_eq!(format!("{ids:?}"), r#"["7", "", "12"]"#);
        assert!(SubjectIds::new().is_empty());
        assert_eq!(serde_json::to_string(&SubjectIds::new()).unwrap(), "[]");
    }
}
