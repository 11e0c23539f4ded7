//! Reading a section's keys: each typed reader takes a key, checks its type and range, and
//! reports a problem with the key's line and column instead of stopping.

use std::collections::HashSet;
use std::ops::Range;

use toml_edit::{Item, Value};

use super::{Section, Walker};

impl Walker<'_> {
    pub(super) fn sub_table<'t>(
        &mut self,
        parent: &mut Section<'t>,
        key: &'static str,
    ) -> Option<Section<'t>> {
        parent.seen.insert(key);
        let item = parent.table.get(key)?;
        match item.as_table_like() {
            Some(table) => Some(Section {
                name: format!("[{key}]"),
                table,
                span: item.span(),
                seen: HashSet::new(),
            }),
            None => {
                self.problem(item.span(), format!("{key} must be a table ([{key}])"));
                None
            }
        }
    }

    pub(super) fn array_of_tables<'t, T>(
        &mut self,
        parent: &mut Section<'t>,
        key: &'static str,
        read: impl Fn(&mut Self, &mut Section<'t>) -> Option<T>,
    ) -> Vec<Option<T>> {
        parent.seen.insert(key);
        let Some(item) = parent.table.get(key) else {
            return Vec::new();
        };
        let Some(array) = item.as_array_of_tables() else {
            self.problem(
                item.span(),
                format!("{key} must be an array of tables ([[{key}]])"),
            );
            return Vec::new();
        };
        array
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let mut section = Section {
                    name: format!("[[{key}]] #{}", i + 1),
                    table,
                    span: table.span(),
                    seen: HashSet::new(),
                };
                let value = read(self, &mut section);
                self.finish(section);
                value
            })
            .collect()
    }

    /// Reports every key of the section that no reader consumed.
    pub(super) fn finish(&mut self, s: Section<'_>) {
        for (key, item) in s.table.iter() {
            if !s.seen.contains(key) {
                let span = s
                    .table
                    .key(key)
                    .and_then(|k| k.span())
                    .or_else(|| item.span());
                let place = if s.name.is_empty() {
                    String::new()
                } else {
                    format!("{} ", s.name)
                };
                self.problem(span, format!("{place}unknown key \"{key}\""));
            }
        }
    }

    pub(super) fn span_of(&self, s: &Section<'_>, key: &str) -> Option<Range<usize>> {
        s.table
            .get(key)
            .and_then(Item::span)
            .or_else(|| s.span.clone())
    }

    pub(super) fn value<'t>(
        &mut self,
        s: &mut Section<'t>,
        key: &'static str,
    ) -> Option<&'t Value> {
        s.seen.insert(key);
        let item = s.table.get(key)?;
        match item.as_value() {
            Some(v) => Some(v),
            None => {
                self.problem(
                    item.span(),
                    format!("{} {key}: expected a value, found a table", s.name),
                );
                None
            }
        }
    }

    pub(super) fn opt_str(&mut self, s: &mut Section<'_>, key: &'static str) -> Option<String> {
        let value = self.value(s, key)?;
        match value.as_str() {
            Some(text) => Some(text.to_string()),
            None => {
                self.problem(value.span(), format!("{} {key}: expected a string", s.name));
                None
            }
        }
    }

    pub(super) fn req_str(&mut self, s: &mut Section<'_>, key: &'static str) -> Option<String> {
        let present = s.table.contains_key(key);
        let value = self.opt_str(s, key);
        if !present {
            self.problem(
                s.span.clone(),
                format!("{}: missing required key \"{key}\"", s.name),
            );
        }
        value
    }

    /// An array of strings; a missing key is an empty list.
    pub(super) fn opt_str_array(&mut self, s: &mut Section<'_>, key: &'static str) -> Vec<String> {
        let Some(value) = self.value(s, key) else {
            return Vec::new();
        };
        let Some(array) = value.as_array() else {
            self.problem(
                value.span(),
                format!("{} {key}: expected an array of strings", s.name),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in array.iter() {
            match item.as_str() {
                Some(text) => out.push(text.to_string()),
                None => self.problem(
                    item.span(),
                    format!("{} {key}: expected an array of strings", s.name),
                ),
            }
        }
        out
    }

    pub(super) fn opt_bool(&mut self, s: &mut Section<'_>, key: &'static str) -> Option<bool> {
        let value = self.value(s, key)?;
        match value.as_bool() {
            Some(b) => Some(b),
            None => {
                self.problem(
                    value.span(),
                    format!("{} {key}: expected true or false", s.name),
                );
                None
            }
        }
    }

    pub(super) fn opt_int(
        &mut self,
        s: &mut Section<'_>,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let value = self.value(s, key)?;
        match value.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problem(
                    value.span(),
                    format!("{} {key}: {n} is outside {min}..={max}", s.name),
                );
                None
            }
            None => {
                self.problem(
                    value.span(),
                    format!("{} {key}: expected an integer", s.name),
                );
                None
            }
        }
    }

    pub(super) fn opt_choice(
        &mut self,
        s: &mut Section<'_>,
        key: &'static str,
        choices: &[&str],
    ) -> Option<String> {
        let text = self.opt_str(s, key)?;
        if choices.contains(&text.as_str()) {
            Some(text)
        } else {
            let span = self.span_of(s, key);
            self.problem(
                span,
                format!(
                    "{} {key}: \"{text}\" is not one of {}",
                    s.name,
                    choices.join(", ")
                ),
            );
            None
        }
    }
}
