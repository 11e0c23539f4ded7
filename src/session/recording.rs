//! The audit record of one statement, assembled from its plan and its response.
//!
//! While a statement in scope runs, the frames of its response are held; when it completes,
//! they travel with the record as one [`Audited`] item, so the rows reach the client only
//! after the record is durable.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;
use hashbrown::HashTable;

use super::relay::{Action, Audited};
use crate::audit::{self, ColumnAccess, Outcome, RecordDraft, StatementKind, SubjectIds, Subjects};
use crate::net::backend::{BackendMessage, DataRow};
use crate::pgtype::{self, oid, SessionTime, WireFormat};
use crate::policy::AccessMap;
use crate::schema::LogicalType;
use crate::sql::{ColumnRef, Protection, StatementPlan, SubjectSource};

/// Who is talking, for every record of a session.
pub struct Identity {
    pub session: String,
    pub client: String,
    pub user: String,
    pub roles: Vec<String>,
    pub application: String,
}

/// How the subject ids of a statement's rows are found.
#[derive(Debug, Clone)]
pub enum SubjectPositions {
    /// Nothing protected of a subject table is returned.
    None,
    /// Output positions holding each table's subject id (injected columns included).
    Columns(Vec<(String, usize)>),
    Unknown(String),
}

impl SubjectPositions {
    fn from_sources(sources: &[SubjectSource], injected_at: usize) -> Self {
        let mut columns = Vec::new();
        let mut next_injected = injected_at;
        for source in sources {
            match source {
                SubjectSource::Selected {
                    table,
                    output_position,
                } => columns.push((table.to_string(), *output_position)),
                SubjectSource::Injectable { table, .. } => {
                    columns.push((table.to_string(), next_injected));
                    next_injected += 1;
                }
                SubjectSource::Unknown { reason, .. } => return Self::Unknown(reason.clone()),
            }
        }
        if columns.is_empty() {
            Self::None
        } else {
            Self::Columns(columns)
        }
    }
}

/// The text insertions that append the subject columns.
pub fn injections(plan: &StatementPlan) -> Vec<(std::ops::Range<usize>, String)> {
    plan.subject
        .sources
        .iter()
        .filter_map(|s| match s {
            SubjectSource::Injectable {
                insert_at, text, ..
            } => Some((*insert_at..*insert_at, text.clone())),
            _ => None,
        })
        .collect()
}

/// A statement being recorded.
pub struct Recording {
    kind: StatementKind,
    fingerprint: String,
    tables: Vec<String>,
    columns: Vec<ColumnAccess>,
    /// The plan's subject sources, resolved to positions once the row layout is known.
    sources: Vec<SubjectSource>,
    subjects: SubjectPositions,
    ids: BTreeMap<String, IdList>,
    /// Type OID and format of each output column, for reading subject ids.
    row_types: Vec<(u32, i16)>,
    rows: u64,
    held: Vec<Bytes>,
    pub refused: bool,
    /// The session context the statement runs in.
    pub context: crate::audit::RecordContext,
}

impl Recording {
    pub fn new(
        plan: Option<&StatementPlan>,
        fingerprint: String,
        protection: &Protection,
        access: &AccessMap,
    ) -> Self {
        let mut columns: Vec<ColumnAccess> = Vec::new();
        let mut push = |column: ColumnRef, how: audit::Access| {
            if let Some(spec) = protection.column(column) {
                let name = spec.qualified_name();
                if !columns.iter().any(|c| c.column == name) {
                    columns.push(ColumnAccess::new(name, how));
                }
            }
        };
        if let Some(plan) = plan {
            for &column in &plan.reads {
                push(column, access.get(column).audited());
            }
            for &column in &plan.writes {
                push(column, audit::Access::Write);
            }
        }
        let sources = match plan {
            Some(plan) if !plan.reads.is_empty() => plan.subject.sources.clone(),
            _ => Vec::new(),
        };
        // An unknown source is known to be unknown before any row arrives.
        let subjects = match sources.iter().find_map(|s| match s {
            SubjectSource::Unknown { reason, .. } => Some(reason.clone()),
            _ => None,
        }) {
            Some(reason) => SubjectPositions::Unknown(reason),
            None => SubjectPositions::None,
        };
        Self {
            kind: plan.map_or_else(|| kind_of_text(&fingerprint), |p| p.kind),
            fingerprint,
            tables: plan
                .map(|p| p.tables.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            columns,
            sources,
            subjects,
            ids: BTreeMap::new(),
            row_types: Vec::new(),
            rows: 0,
            held: Vec::new(),
            refused: false,
            context: crate::audit::RecordContext::default(),
        }
    }

    /// Whether the response releases protected values (and so must wait for the record).
    pub fn discloses(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c.access, audit::Access::Plaintext | audit::Access::Masked))
    }

    /// Holds a frame that would have gone to the client.
    pub fn hold(&mut self, action: Action, frame: &[u8]) {
        match action {
            Action::Forward => self.held.push(Bytes::copy_from_slice(frame)),
            Action::Replace(bytes) => self.held.push(bytes),
            Action::Drop | Action::Audited(_) => {}
        }
    }

    /// The row layout: each output column's type OID and format, the last `injected` of
    /// them being subject columns pgveil appended.
    pub fn set_row_types(&mut self, types: Vec<(u32, i16)>, injected: usize) {
        if !matches!(self.subjects, SubjectPositions::Unknown(_)) && !self.sources.is_empty() {
            self.subjects =
                SubjectPositions::from_sources(&self.sources, types.len().saturating_sub(injected));
        }
        self.row_types = types;
    }

    /// Counts a row and reads its subject ids (the row as the database sent it).
    pub fn observe_row(&mut self, row: &DataRow<'_>) {
        let values = row.values().ok();
        self.observe_with(|position| {
            values
                .as_ref()
                .and_then(|v| v.get(position).copied().flatten())
                .map(std::borrow::Cow::Borrowed)
        });
    }

    /// Counts a row and reads its subject ids; `value(position)` is the value of an output
    /// column as the database sent it (`None`: NULL or absent).
    pub fn observe_with<'v>(
        &mut self,
        value: impl Fn(usize) -> Option<std::borrow::Cow<'v, [u8]>>,
    ) {
        self.rows += 1;
        let SubjectPositions::Columns(columns) = &self.subjects else {
            return;
        };
        for (table, position) in columns {
            let Some(value) = value(*position) else {
                continue;
            };
            let (type_oid, format) = self
                .row_types
                .get(*position)
                .copied()
                .unwrap_or((oid::TEXT, 0));
            let Some(id) = id_text(&value, type_oid, format) else {
                continue;
            };
            // Looked up before it is inserted: this runs for every row, and the table's
            // name is cloned only the first time.
            match self.ids.get_mut(table) {
                Some(ids) => ids.insert(&id),
                None => self.ids.entry(table.clone()).or_default().insert(&id),
            }
        }
    }

    /// Finishes the record: `complete` is the CommandComplete, ErrorResponse or other frame
    /// that ended the statement (already held).
    pub fn finish(mut self, identity: &Identity, end: &BackendMessage<'_>) -> Box<Audited> {
        let (outcome, sqlstate) = match end {
            BackendMessage::ErrorResponse(error) => {
                let code = error
                    .sqlstate()
                    .map(|c| String::from_utf8_lossy(c).into_owned());
                (
                    if self.refused {
                        Outcome::Refused
                    } else {
                        Outcome::Error
                    },
                    code,
                )
            }
            _ => (Outcome::Ok, None),
        };
        if let BackendMessage::CommandComplete(complete) = end {
            if let Some(affected) = complete.rows() {
                if self.rows == 0 {
                    self.rows = affected;
                }
            }
        }
        let subjects = match &self.subjects {
            SubjectPositions::Unknown(reason) => Subjects::Unknown(reason.clone()),
            SubjectPositions::None | SubjectPositions::Columns(_) => std::mem::take(&mut self.ids)
                .into_iter()
                .map(|(table, ids)| Some((table, ids.into_ids()?)))
                .collect::<Option<_>>()
                .map_or_else(
                    || Subjects::Unknown("more subject ids than one record holds".into()),
                    Subjects::Known,
                ),
        };
        let draft = RecordDraft {
            time: chrono::Utc::now(),
            session: identity.session.clone(),
            client: identity.client.clone(),
            user: identity.user.clone(),
            roles: identity.roles.clone(),
            application: identity.application.clone(),
            kind: self.kind,
            fingerprint: self.fingerprint,
            tables: self.tables,
            columns: self.columns,
            rows: self.rows,
            outcome,
            sqlstate,
            subjects,
        };
        Box::new(Audited {
            draft,
            context: self.context,
            frames: self.held,
        })
    }
}

/// Distinct ids in order of first appearance. A large result (a COPY of a whole table)
/// has as many ids as rows, so duplicates are found through a hash index rather than a
/// scan, the ids are kept back to back in one buffer ([`SubjectIds`]) rather than one
/// allocation each, and the index holds 8 bytes an id: its position and 32 bits of its hash,
/// so growing the index rehashes no text (for 1,000,000 ids ~19 MiB, where a map from 64-bit
/// hashes to positions took ~34 MiB).
#[derive(Default)]
struct IdList {
    ids: SubjectIds,
    /// Each id's position and hash.
    index: HashTable<(u32, u32)>,
    hasher: RandomState,
    /// More ids than 4-byte positions address: the list is incomplete.
    overflow: bool,
}

/// The index's hash of an id: 32 bits of SipHash (keyed per list), spread over the 64 bits
/// the table reads (its bucket from the low bits, its tag from the high ones).
fn spread(hash: u32) -> u64 {
    u64::from(hash) << 32 | u64::from(hash)
}

impl IdList {
    fn insert(&mut self, id: &str) {
        let Self {
            ids,
            index,
            hasher,
            overflow,
        } = self;
        let hash = hasher.hash_one(id) as u32;
        let same = |&(at, h): &(u32, u32)| h == hash && ids.get(at as usize) == Some(id);
        if index.find(spread(hash), same).is_some() {
            return;
        }
        let Ok(at) = u32::try_from(ids.len()) else {
            *overflow = true;
            return;
        };
        ids.push(id);
        index.insert_unique(spread(hash), (at, hash), |&(_, h)| spread(h));
    }

    /// The ids, or `None` when there were more than the list could hold.
    fn into_ids(self) -> Option<SubjectIds> {
        (!self.overflow).then_some(self.ids)
    }
}

/// The kind of a statement pgveil did not analyse, from its first keyword.
fn kind_of_text(fingerprint: &str) -> StatementKind {
    let first = fingerprint
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    match first.to_ascii_lowercase().as_str() {
        "select" | "with" | "table" | "values" => StatementKind::Select,
        "insert" => StatementKind::Insert,
        "update" => StatementKind::Update,
        "delete" => StatementKind::Delete,
        _ => StatementKind::Other,
    }
}

/// A subject id as text, from the text or binary form of common id types.
fn id_text(value: &[u8], type_oid: u32, format: i16) -> Option<Cow<'_, str>> {
    if format == 0 {
        return std::str::from_utf8(value).ok().map(Cow::Borrowed);
    }
    let printed = LogicalType::ALL
        .into_iter()
        .find(|t| t.oid() == type_oid)
        .and_then(|ty| match ty {
            LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 | LogicalType::Uuid => {
                pgtype::to_wire(ty, value, WireFormat::Text, &SessionTime::utc()).ok()
            }
            LogicalType::Text | LogicalType::Varchar => Some(value.to_vec()),
            _ => None,
        });
    match printed {
        Some(text) => String::from_utf8(text).ok().map(Cow::Owned),
        // bpchar is sent as its characters too.
        None if type_oid == oid::BPCHAR => std::str::from_utf8(value).ok().map(Cow::Borrowed),
        None => {
            let mut text = Vec::new();
            pgtype::push_bytea_hex(value, &mut text);
            String::from_utf8(text).ok().map(Cow::Owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_binary_and_text() {
        assert_eq!(id_text(&7i32.to_be_bytes(), 23, 1).as_deref(), Some("7"));
        assert_eq!(id_text(&42i64.to_be_bytes(), 20, 1).as_deref(), Some("42"));
        assert_eq!(id_text(b"17", 23, 0).as_deref(), Some("17"));
        assert_eq!(
            id_text(&[0u8; 16], 2950, 1).as_deref(),
            Some("00000000-0000-0000-0000-000000000000")
        );
    }
}

#[cfg(test)]
mod id_list_tests {
    use super::IdList;

    #[test]
    fn distinct_in_order_of_first_appearance() {
        let mut ids = IdList::default();
        for id in ["7", "12", "7", "", "12", "3", ""] {
            ids.insert(id);
        }
        assert_eq!(ids.into_ids().unwrap(), vec!["7", "12", "", "3"].into());
    }

    #[test]
    fn many_ids_survive_the_index_growing() {
        let mut ids = IdList::default();
        for _ in 0..2 {
            for i in (0..20_000).rev() {
                ids.insert(&(i * 7).to_string());
            }
        }
        let list = ids.into_ids().unwrap();
        assert_eq!(list.len(), 20_000);
        assert_eq!(list.get(0), Some("139993"));
        assert_eq!(list.get(19_999), Some("0"));
    }
}
