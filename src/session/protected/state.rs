//! What a protected session knows between messages: its prepared statements and portals,
//! the queue of responses it awaits, its settings, and its access to each protected column.
//! Both halves of the relay share it behind one lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use bytes::Bytes;

use super::audit::QueryAudit;
use super::cursors::{CursorSource, Cursors, Fetch};
use super::values::RowPlan;
use crate::pgtype::SessionTime;
use crate::policy::{AccessMap, Policy};
use crate::session::introspect::{Collector, Wanted};
use crate::session::recording::Recording;
use crate::sql::{ColumnRef, CursorOp, StatementPlan};
use crate::veil::{Analysis, Database};

/// A statement prepared with Parse.
pub(super) struct Prepared {
    /// The analysis, when the statement mentions a protected table.
    pub analysis: Option<Arc<Analysis>>,
    /// Parameter position (0-based) → the protected column it is bound for.
    pub param_columns: Vec<Option<ColumnRef>>,
    /// Parameter position (0-based) → true when it is an array whose elements are bound for
    /// its column (`UNNEST($1::text[])`): encrypted element by element, declared `bytea[]`.
    pub param_arrays: Vec<bool>,
    /// Parameter position (0-based) → true when it is compared with its column while several
    /// master keys are configured: declared `bytea[]`, bound as its ciphertext under every
    /// key (the client still sees and sends the column's type).
    pub param_keyed: Vec<bool>,
    /// The types the client declared (0: unspecified).
    pub client_param_types: Vec<u32>,
    /// Result columns, from the statement's RowDescription.
    pub row: OnceLock<RowInfo>,
    /// For the audit log, when the statement is in scope.
    pub fingerprint: Option<String>,
    /// Subject columns pgveil appended to the statement's output.
    pub injected: usize,
    /// Set when pgveil refused the Parse: a later Bind to it gets the same error instead of
    /// carrying its parameters upstream.
    pub refused: Option<crate::pgerror::PgError>,
    /// What the statement does to a cursor by name (DECLARE, FETCH, CLOSE), done when a
    /// portal of it is executed.
    pub cursor: Option<PreparedCursor>,
    /// The pgveil setting it changes, or the transaction boundary it is, when executed.
    pub context: Option<super::context::ContextOp>,
    /// pgveil's extra parameters: ciphertexts for the shadow columns of migrating columns.
    pub shadow: Option<super::migrating::ShadowParams>,
    /// For a statement planned while a column was plaintext or migrating: what the client
    /// parsed, so the statement is prepared again once the catalog has changed.
    pub origin: Option<Box<Origin>>,
}

/// What a client's Parse was, and the catalog its plan was made against.
pub(super) struct Origin {
    pub query: Bytes,
    pub param_types: Vec<u32>,
    /// Weak, so an old catalog is not kept alive; its address is not reused while this
    /// lives, so comparing addresses tells whether the catalog is still the same.
    pub catalog: Weak<Database>,
}

impl Origin {
    pub fn new(query: Bytes, param_types: Vec<u32>, catalog: &Arc<Database>) -> Box<Self> {
        Box::new(Self {
            query,
            param_types,
            catalog: Arc::downgrade(catalog),
        })
    }
}

/// A prepared statement that opens, reads or closes a cursor.
pub(super) struct PreparedCursor {
    pub op: CursorOp,
    /// The statement's audit fingerprint (a FETCH is recorded with its cursor's plan).
    pub fingerprint: String,
}

/// A statement's result columns: the protected column behind each (if any) and its type.
#[derive(Clone, Default)]
pub(super) struct RowInfo {
    pub columns: Vec<Option<ColumnRef>>,
    pub types: Vec<u32>,
}

impl Prepared {
    pub fn plan(&self) -> Option<&StatementPlan> {
        plan_at(self.analysis.as_ref(), 0)
    }

    pub fn plain() -> Arc<Self> {
        Arc::new(Self::unprotected())
    }

    pub fn unprotected() -> Self {
        Self {
            analysis: None,
            param_columns: Vec::new(),
            param_arrays: Vec::new(),
            param_keyed: Vec::new(),
            client_param_types: Vec::new(),
            row: OnceLock::new(),
            fingerprint: None,
            injected: 0,
            refused: None,
            cursor: None,
            context: None,
            shadow: None,
            origin: None,
        }
    }

    /// What the client parsed, when the statement was planned against a catalog the
    /// session no longer has (a migration's swap, or its prepare step, came in between).
    pub fn stale(&self, state: &State) -> Option<&Origin> {
        self.origin
            .as_deref()
            .filter(|origin| !std::ptr::eq(origin.catalog.as_ptr(), Arc::as_ptr(&state.database)))
    }

    /// The cursor a FETCH statement reads, as pgveil knows it now.
    pub fn fetched(&self, state: &State) -> Option<Arc<CursorSource>> {
        match &self.cursor.as_ref()?.op {
            CursorOp::Fetch { name } => state.cursors.lookup(name, &state.portals),
            _ => None,
        }
    }
}

/// The plan of statement `index` of an analysis.
pub(super) fn plan_at(analysis: Option<&Arc<Analysis>>, index: usize) -> Option<&StatementPlan> {
    analysis
        .and_then(|a| a.as_ref().as_ref().ok())
        .and_then(|plans| plans.get(index))
}

pub(super) type Portals = HashMap<Bytes, Arc<Portal>>;

pub(super) struct Portal {
    pub prepared: Arc<Prepared>,
    /// As the client sent them in Bind (also for statements pgveil did not analyse, once a
    /// Describe showed they return protected columns).
    pub result_formats: Vec<i16>,
    /// What a Describe of this portal showed the client (columns and their formats, as the
    /// database reported them for this portal): its Execute is decoded the same way.
    pub described: OnceLock<RowPlan>,
    /// The client sent a Describe of this portal: its answer, which precedes the portal's
    /// rows, tells pgveil the statement's result columns, so pgveil need not ask itself.
    pub describing: AtomicBool,
}

impl Portal {
    pub fn new(prepared: Arc<Prepared>, result_formats: Vec<i16>) -> Arc<Self> {
        Arc::new(Self {
            prepared,
            result_formats,
            described: OnceLock::new(),
            describing: AtomicBool::new(false),
        })
    }

    /// Whether pgveil must describe this portal itself before its Execute: its statement was
    /// analysed (its rows may carry protected columns), and neither an earlier answer (a
    /// Describe of the statement or of one of its portals) nor a Describe of this portal the
    /// client sent ahead of the Execute tells pgveil its result columns. Statements that
    /// open, read or close cursors are described at their Parse instead (their plan is
    /// needed when a portal of them runs, not only when rows arrive). A Describe the
    /// database skipped after an error leaves the columns unknown, so a later Execute asks
    /// again; an Execute in the same batch as that Describe is skipped too.
    pub fn owes_describe(&self) -> bool {
        let prepared = &self.prepared;
        prepared.analysis.is_some()
            && prepared.refused.is_none()
            && prepared.cursor.is_none()
            && prepared.row.get().is_none()
            && !self.describing.load(Ordering::Relaxed)
    }
}

/// What the database will answer a client message with, in order.
pub(super) enum Expect {
    /// With the statement a named Parse replaced, to put back if the Parse fails.
    Parse(Option<Box<(Bytes, Arc<Prepared>)>>),
    Bind,
    Close,
    Sync(Instant),
    Query {
        analysis: Option<Arc<Analysis>>,
        sent: Instant,
        statement: usize,
        audit: Option<Arc<QueryAudit>>,
        /// The FETCH statements (by index) and the cursors they read.
        fetches: Vec<(usize, Arc<Fetch>)>,
        /// The pgveil setting statements and transaction boundaries (by index).
        settings: Vec<(usize, super::context::ContextOp)>,
    },
    Function(Instant),
    DescribeStatement {
        prepared: Arc<Prepared>,
        internal: bool,
        /// For a FETCH: the cursor it reads, whose columns it returns.
        cursor: Option<Arc<CursorSource>>,
    },
    DescribePortal(Option<Arc<Portal>>, Option<Arc<CursorSource>>),
    /// pgveil's own Describe of a portal, sent ahead of its Execute because nothing told
    /// pgveil the result columns of its statement yet (see [`Portal::owes_describe`]); its
    /// answer sets them and is never shown.
    DescribeOwed(Arc<Prepared>),
    /// The portal, and for a FETCH the cursor it reads as the gate admitted it.
    Execute(Option<Arc<Portal>>, Option<Arc<Fetch>>),
    /// A refused Parse or Bind, replaced by Parse/Bind/Execute of a raising statement:
    /// its ParseComplete and BindComplete are dropped, its error forwarded.
    Injected(Option<Box<Recording>>),
    /// pgveil's own query; nothing of it reaches the client.
    Refresh(Collector),
    /// pgveil's own Close or Parse of a statement it prepares again ahead of the client's
    /// Bind ([`super::renew`]): its completion is dropped, an error forwarded.
    Silent,
}

impl Expect {
    /// Ends with ReadyForQuery.
    pub fn ends_cycle(&self) -> bool {
        matches!(
            self,
            Expect::Sync(_) | Expect::Query { .. } | Expect::Function(_) | Expect::Refresh(_)
        )
    }
}

pub(super) struct State {
    pub expect: VecDeque<Expect>,
    pub statements: HashMap<Bytes, Arc<Prepared>>,
    pub portals: Portals,
    /// Cursors opened by SQL DECLARE, and what each returns.
    pub cursors: Cursors,
    pub time: SessionTime,
    pub timezone: String,
    pub datestyle: String,
    pub standard_strings: bool,
    /// False once the server reports a client encoding pgveil cannot analyse (selected in a
    /// way no statement showed, e.g. dynamic SQL): from then on the session is treated as
    /// sending text that cannot be analysed.
    pub encoding_readable: bool,
    pub search_path: Vec<String>,
    pub database: Arc<Database>,
    /// The access in effect: the policy's, raised while break-glass is on.
    pub access: AccessMap,
    /// The access the policy gives the session's roles.
    pub policy_access: AccessMap,
    /// The session context as the database confirmed it (see [`super::context`]).
    pub context: super::context::ContextModel,
    /// The session context once every statement already sent has run (the gate's view).
    pub context_sent: super::context::ContextModel,
    /// The login's roles (memberships read at session start; `SET ROLE` changes nothing).
    pub roles: Vec<String>,
    /// The policy `access` was computed from.
    pub policy: Arc<Policy>,
    pub status: u8,
    pub client_terminated: bool,
    /// A DDL or search_path change went up in the current extended batch.
    pub refresh_at_sync: Option<Wanted>,
    /// pgveil raised an error inside a transaction block that the database does not know
    /// about: abort that transaction before the client's next message reaches it.
    pub abort_before_next: bool,
    /// The search_path changed inside the current transaction block, where ROLLBACK, ROLLBACK
    /// TO SAVEPOINT or the end of a SET LOCAL undo it: re-read it after every statement until
    /// the block ends.
    pub search_path_in_txn: bool,
    /// After pgveil refused an extended-protocol message, everything up to Sync is dropped
    /// here, as the database would skip it: none of it (parameters included) goes upstream.
    pub discarding: bool,
    /// A `COPY … FROM STDIN` into protected columns is running: the client's rows are
    /// encrypted on the way up.
    pub copy_in: Option<super::copy_in::CopyIn>,
    /// pgveil aborted that copy: its error replaces the database's answer to the CopyFail.
    pub copy_error: Option<crate::pgerror::PgError>,
    /// An Execute put the database in copy-in mode, where it ignores Sync.
    pub copy_in_started: bool,
}

impl State {
    /// Records a statement the client parses, and expects its ParseComplete. A name pgveil
    /// already knows is replaced too: the database may have dropped it behind pgveil's back
    /// (`DEALLOCATE`, `DISCARD ALL` in SQL), and then this Parse succeeds and its Binds must
    /// be treated as this statement's. When it still exists the Parse fails (42P05) and the
    /// old one is put back (and Binds of the same batch are skipped by the database).
    pub fn insert_statement(&mut self, name: Bytes, prepared: Arc<Prepared>) {
        let previous = self.statements.insert(name.clone(), prepared);
        let undo = previous
            .filter(|_| !name.is_empty())
            .map(|p| Box::new((name, p)));
        self.expect.push_back(Expect::Parse(undo));
    }

    /// The refresh that follows a statement while a search_path set in the transaction
    /// block may be undone by it.
    pub fn search_path_follow(&self) -> Option<Wanted> {
        self.search_path_in_txn.then_some(Wanted {
            catalog: false,
            search_path: true,
            roles: false,
        })
    }

    /// Break-glass in the confirmed context raises the session's access while the live
    /// policy's `break_glass_roles` still name one of its roles; otherwise the policy's
    /// access is back.
    pub fn follow_break_glass(&mut self) {
        let on = self.context.current().break_glass.is_some()
            && crate::context::SessionContext::may_break_glass(
                &self.roles,
                self.policy.break_glass_roles(),
            );
        let raised = self.policy_access.raised();
        let want = if on { &raised } else { &self.policy_access };
        if &self.access != want {
            self.access = want.clone();
        }
    }

    /// Gives back the room a finished exchange left allocated: a session spends most of its
    /// life waiting for its client, and then needs no queue and no portals (issue #14).
    pub fn release_idle(&mut self) {
        if self.expect.is_empty() {
            self.expect = VecDeque::new();
        }
        if self.portals.is_empty() {
            self.portals = HashMap::new();
        }
    }

    /// A TimeZone or DateStyle the database reported.
    pub fn set_time(&mut self, timezone: Option<String>, datestyle: Option<String>) {
        if let Some(timezone) = timezone {
            self.timezone = timezone;
        }
        if let Some(datestyle) = datestyle {
            self.datestyle = datestyle;
        }
        self.time =
            SessionTime::from_timezone_or_utc(&self.timezone).with_datestyle(&self.datestyle);
    }
}

pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A poisoned lock only means the other half panicked; the state is still usable.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
