//! What the alert rules need of a durable audit record, taken on the writer thread: who,
//! when, what happened, and the data subjects as keyed tags. The subject ids themselves
//! never leave the writer: the rules only count distinct tags, and no alert can carry one.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::audit::{Outcome, RecordContext, RecordDraft, RecordObserver, Subjects};

/// One statement record as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary {
    pub seq: u64,
    pub time: DateTime<Utc>,
    /// The database login (session user).
    pub login: String,
    pub end_user: Option<String>,
    pub refused: bool,
    /// Protected values (or their masks) were returned to the client.
    pub read_protected: bool,
    pub break_glass: bool,
    /// One tag per distinct data subject (table and id) the statement returned; a keyed
    /// hash, unique to this process, so neither an id nor a guessable digest of one.
    pub subjects: Vec<u64>,
}

impl RecordSummary {
    pub fn new(
        seq: u64,
        draft: &RecordDraft,
        context: &RecordContext,
        tag: Option<&SubjectTagger>,
    ) -> Self {
        let refused = draft.outcome == Outcome::Refused;
        let read_protected =
            !refused && draft.rows > 0 && draft.columns.iter().any(|c| c.access.is_read());
        let subjects = match (&draft.subjects, tag) {
            (Subjects::Known(map), Some(tagger)) if read_protected => {
                let mut tags: Vec<u64> = map
                    .iter()
                    .flat_map(|(table, ids)| {
                        let table = table.to_ascii_lowercase();
                        ids.iter().map(move |id| tagger.tag(&table, id))
                    })
                    .collect();
                tags.sort_unstable();
                tags.dedup();
                tags
            }
            _ => Vec::new(),
        };
        Self {
            seq,
            time: draft.time,
            login: draft.user.clone(),
            end_user: context.end_user.clone(),
            refused,
            read_protected,
            break_glass: context.break_glass.is_some(),
            subjects,
        }
    }
}

/// Keyed hashing of subject ids (SipHash with a random key drawn at start).
#[derive(Debug, Clone, Default)]
pub struct SubjectTagger(RandomState);

impl SubjectTagger {
    /// The tag of `id` in `table` (`schema.table`, lower case).
    pub fn tag(&self, table: &str, id: &str) -> u64 {
        // Hashing the pair (each with its length) keeps ("a.b", "c") and ("a", "b.c") apart.
        self.0.hash_one((table, id))
    }
}

/// Hands each durable record to the alert task. Never blocks the writer: when the queue is
/// full the evaluation is dropped and counted (`pgveil_alert_evaluations_dropped_total`).
pub struct AlertSink {
    tx: mpsc::Sender<RecordSummary>,
    /// Only when a rule counts subjects.
    tagger: Option<SubjectTagger>,
}

impl AlertSink {
    pub(crate) fn new(tx: mpsc::Sender<RecordSummary>, count_subjects: bool) -> Self {
        Self {
            tx,
            tagger: count_subjects.then(SubjectTagger::default),
        }
    }
}

impl RecordObserver for AlertSink {
    fn durable(&self, seq: u64, draft: &RecordDraft, context: &RecordContext) {
        let summary = RecordSummary::new(seq, draft, context, self.tagger.as_ref());
        if self.tx.try_send(summary).is_err() {
            crate::metrics::alert_evaluation_dropped();
        }
    }
}
