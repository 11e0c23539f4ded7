//! pgveil's own queries on a session's upstream connection: the catalog (relations and
//! columns), the effective search path, and the login's role memberships.
//!
//! They run on the client's own connection, under its own login, so they see exactly what
//! the client's statements will see and need no credentials of pgveil's.

use crate::net::backend::BackendMessage;
use crate::net::frontend::encode_query;
use crate::schema::TableName;
use crate::sql::{ColumnInfo, StaticCatalog, TableInfo};

/// Relations a statement can name, with their live columns.
const CATALOG_SQL: &str = "SELECT n.nspname, c.relname, c.oid, a.attname, a.attnum, a.atttypid \
FROM pg_catalog.pg_class c \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped \
AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
ORDER BY c.oid, a.attnum";

/// Which relations each view reads (its rewrite rule's dependencies).
const VIEWS_SQL: &str = "SELECT DISTINCT vn.nspname, v.relname, tn.nspname, t.relname \
FROM pg_catalog.pg_depend d \
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace \
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid \
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND v.oid <> t.oid";

/// The schemas a name resolves in, in order, implicit ones included: the session's own
/// temporary schema (once it exists) and pg_catalog where PostgreSQL searches them.
const SEARCH_PATH_SQL: &str = "SELECT s FROM unnest(pg_catalog.current_schemas(true)) AS s";

/// The login's roles: itself and every role it belongs to, directly or through others.
/// `session_user`, not `current_user`: `SET ROLE` must never widen access.
const ROLES_SQL: &str = "WITH RECURSIVE member_of(oid) AS ( \
SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user \
UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN member_of ON m.member = member_of.oid) \
SELECT r.rolname FROM pg_catalog.pg_roles r JOIN member_of USING (oid)";

/// Which of the session's facts a refresh asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub catalog: bool,
    pub search_path: bool,
    pub roles: bool,
}

impl Wanted {
    /// One simple Query frame asking for what is wanted, in a fixed order.
    pub fn query(self) -> bytes::Bytes {
        let mut parts = Vec::new();
        if self.catalog {
            parts.push(CATALOG_SQL);
            parts.push(VIEWS_SQL);
        }
        if self.search_path {
            parts.push(SEARCH_PATH_SQL);
        }
        if self.roles {
            parts.push(ROLES_SQL);
        }
        encode_query(parts.join("; ").as_bytes())
    }
}

/// What a refresh returned.
#[derive(Debug, Default)]
pub struct Facts {
    pub catalog: Option<StaticCatalog>,
    /// (view, relation it reads), both schema-qualified.
    pub views: Vec<(TableName, TableName)>,
    pub search_path: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
}

/// Collects the responses to a [`Wanted::query`], frame by frame, up to ReadyForQuery.
pub struct Collector {
    wanted: Wanted,
    sets: Vec<Vec<Vec<Option<String>>>>,
    current: Vec<Vec<Option<String>>>,
    pub failed: bool,
}

impl Collector {
    pub fn new(wanted: Wanted) -> Self {
        Self {
            wanted,
            sets: Vec::new(),
            current: Vec::new(),
            failed: false,
        }
    }

    /// Feeds one backend message; true once ReadyForQuery has arrived.
    pub fn feed(&mut self, message: &BackendMessage<'_>) -> bool {
        match message {
            BackendMessage::DataRow(row) => match row.values() {
                Ok(values) => self.current.push(
                    values
                        .into_iter()
                        .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                ),
                Err(_) => self.failed = true,
            },
            BackendMessage::CommandComplete(_) => self.sets.push(std::mem::take(&mut self.current)),
            BackendMessage::ErrorResponse(_) => self.failed = true,
            BackendMessage::ReadyForQuery(_) => return true,
            _ => {}
        }
        false
    }

    pub fn finish(self) -> Option<Facts> {
        if self.failed {
            return None;
        }
        let mut sets = self.sets.into_iter();
        let mut facts = Facts::default();
        if self.wanted.catalog {
            facts.catalog = Some(build_catalog(sets.next()?));
            facts.views = sets
                .next()?
                .into_iter()
                .filter_map(|row| match <[Option<String>; 4]>::try_from(row) {
                    Ok([Some(vs), Some(v), Some(ts), Some(t)]) => {
                        Some((TableName::new(vs, v), TableName::new(ts, t)))
                    }
                    _ => None,
                })
                .collect();
        }
        if self.wanted.search_path {
            facts.search_path = Some(
                sets.next()?
                    .into_iter()
                    .filter_map(|mut r| r.pop().flatten())
                    .collect(),
            );
        }
        if self.wanted.roles {
            facts.roles = Some(
                sets.next()?
                    .into_iter()
                    .filter_map(|mut r| r.pop().flatten())
                    .collect(),
            );
        }
        Some(facts)
    }
}

fn build_catalog(rows: Vec<Vec<Option<String>>>) -> StaticCatalog {
    let mut catalog = StaticCatalog::new();
    let mut current: Option<TableInfo> = None;
    for row in rows {
        let [Some(schema), Some(name), Some(oid), Some(column), Some(attnum), Some(type_oid)] =
            <[Option<String>; 6]>::try_from(row).unwrap_or_default()
        else {
            continue;
        };
        let (Ok(oid), Ok(attnum), Ok(type_oid)) = (
            oid.parse::<u32>(),
            attnum.parse::<i16>(),
            type_oid.parse::<u32>(),
        ) else {
            continue;
        };
        if current.as_ref().is_none_or(|t| t.oid != oid) {
            if let Some(done) = current.take() {
                catalog.insert(done);
            }
            current = Some(TableInfo {
                name: TableName::new(schema, name),
                oid,
                columns: Vec::new(),
            });
        }
        if let Some(table) = current.as_mut() {
            table.columns.push(ColumnInfo {
                name: column,
                attnum,
                type_oid,
            });
        }
    }
    if let Some(done) = current {
        catalog.insert(done);
    }
    catalog
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::backend::DataRow;

    #[test]
    fn collects_catalog_search_path_and_roles() {
        let wanted = Wanted {
            catalog: true,
            search_path: true,
            roles: true,
        };
        let query = wanted.query();
        assert!(query.windows(12).any(|w| w == b"session_user"));
        let mut collector = Collector::new(wanted);
        let row = |values: &[&str]| {
            DataRow::encode(
                values
                    .iter()
                    .map(|v| Some(v.as_bytes()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        };
        for frame in [
            row(&["public", "patients", "16384", "id", "1", "23"]),
            row(&["public", "patients", "16384", "ssn", "2", "17"]),
            bytes::Bytes::from_static(b"C\0\0\0\x0dSELECT 2\0"),
            row(&["public", "patient_names", "public", "patients"]),
            bytes::Bytes::from_static(b"C\0\0\0\x0dSELECT 1\0"),
            row(&["public"]),
            bytes::Bytes::from_static(b"C\0\0\0\x0dSELECT 1\0"),
            row(&["alice"]),
            row(&["clinician"]),
            bytes::Bytes::from_static(b"C\0\0\0\x0dSELECT 2\0"),
        ] {
            assert!(!collector.feed(&BackendMessage::decode(&frame)));
        }
        assert!(collector.feed(&BackendMessage::decode(b"Z\0\0\0\x05I")));
        let facts = collector.finish().unwrap();
        let catalog = facts.catalog.unwrap();
        let table = catalog.tables().next().unwrap();
        assert_eq!(table.columns.len(), 2);
        assert_eq!(table.columns[1].attnum, 2);
        assert_eq!(
            facts.views,
            vec![(
                TableName::new("public", "patient_names"),
                TableName::new("public", "patients")
            )]
        );
        assert_eq!(facts.search_path.unwrap(), vec!["public"]);
        assert_eq!(facts.roles.unwrap(), vec!["alice", "clinician"]);
    }

    #[test]
    fn an_error_means_no_facts() {
        let mut collector = Collector::new(Wanted {
            catalog: false,
            search_path: true,
            roles: false,
        });
        collector.feed(&BackendMessage::decode(b"E\0\0\0\x05\0"));
        collector.feed(&BackendMessage::decode(b"Z\0\0\0\x05E"));
        assert!(collector.finish().is_none());
    }
}
