//! The client half: what goes up for each client message, and what the session then
//! expects back. Query texts pass the gate ([`super::gate`]); Bind carries its parameters
//! encrypted for the protected columns they are bound for.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use super::audit::{refusal_recording, QueryAudit};
use super::copy_in::{self, CopyIn};
use super::fetch::{execute_cursor, execute_unbound, prepared_cursor};
use super::gate::{admit, Admission, Protocol};
use super::migrating;
use super::refusal::{injected_error, join, raising_query, refuse_parse};
use super::renew::{self, renew, Renewal};
use super::state::{Expect, Origin, Portal, Prepared, State};
use super::values::{encrypt_array_param, encrypt_param, encrypt_param_every_key};
use super::Session;
use crate::metrics;
use crate::net::frontend::{
    encode_query, BindHeader, FrontendMessage, FrontendTag, Parse, Target, TargetKind,
};
use crate::schema::LogicalType;
use crate::session::introspect::{Collector, Wanted};
use crate::session::relay::Action;
use crate::session::SessionError;
use crate::sql::{ColumnRef, CopyDirection, CopyPlan, StatementPlan};

/// Decides what goes upstream for one client message, and what to expect back.
pub(super) fn message(
    tag: FrontendTag,
    frame: &[u8],
    session: &Session,
    state: &mut State,
) -> Result<Action, SessionError> {
    follow_policy(session, state);
    if state.discarding {
        if tag != FrontendTag::Sync {
            return Ok(Action::Drop);
        }
        state.discarding = false;
    }
    if tag == FrontendTag::Copy {
        if !matches!(
            crate::net::copy::CopyMessage::decode(frame),
            Some(crate::net::copy::CopyMessage::Data(_))
        ) {
            state.copy_in_started = false;
        }
        return Ok(copy_in::message(frame, session, state));
    }
    if tag == FrontendTag::Sync && state.copy_in_started {
        // The database ignores it (copy-in mode): no ReadyForQuery will answer it.
        return Ok(Action::Forward);
    }
    if !matches!(tag, FrontendTag::Sync | FrontendTag::Flush) {
        // Any other message ends copy-in mode (the database aborts the copy).
        state.copy_in = None;
    }
    let metrics = metrics::get();
    if tag.awaits_ready() {
        metrics.queries.increment(1);
    }
    let message = tag
        .decode(frame)
        .map_err(|e| SessionError::Malformed(e.0))?;
    Ok(match message {
        FrontendMessage::Query(text) => simple_query(frame, text, session, state),
        FrontendMessage::Parse(parse) => parse_message(parse, session, state),
        FrontendMessage::Bind(bind) => match renew(bind.statement, session, state) {
            Renewal::Current => bind_message(&bind, session, state)?,
            Renewal::Ahead(ahead) => {
                renew::after(ahead, bind_message(&bind, session, state)?, frame)
            }
            Renewal::Refused(action) => action,
        },
        FrontendMessage::Describe(target) => {
            describe(target, state);
            Action::Forward
        }
        FrontendMessage::Execute(execute) => {
            execute_message(&execute.portal, frame, session, state)
        }
        FrontendMessage::Close(target) => {
            if target.kind == TargetKind::Statement {
                state.statements.remove(&target.name);
            } else {
                state.portals.remove(&target.name);
            }
            state.expect.push_back(Expect::Close);
            Action::Forward
        }
        FrontendMessage::Sync => sync(frame, state),
        FrontendMessage::FunctionCall => {
            state.cursors.cycle_sent();
            state.expect.push_back(Expect::Function(Instant::now()));
            Action::Forward
        }
        FrontendMessage::Terminate | FrontendMessage::Passive => Action::Forward,
    })
}

/// Applies a reloaded policy to this session from its next statement on.
fn follow_policy(session: &Session, state: &mut State) {
    let current = session.policy.load();
    if !Arc::ptr_eq(&current, &state.policy) {
        state.policy_access = current.access_for(&session.veil.protection, &state.roles);
        state.access = state.policy_access.clone();
        // `require_purpose` and `break_glass_roles` are read from it from now on.
        state.policy = Arc::clone(&current);
        state.follow_break_glass();
    }
}

/// An Execute: a cursor statement takes effect, a FETCH passes the gate with its cursor.
fn execute_message(name: &[u8], frame: &[u8], session: &Session, state: &mut State) -> Action {
    let portal = state.portals.get(name).cloned();
    if portal.is_none() {
        if let Err(error) = execute_unbound(name, session, state) {
            let recording = refusal_recording(session, state, None, String::new);
            return injected_error(&error, state, recording);
        }
    }
    if let Some(op) = portal.as_ref().and_then(|p| p.prepared.context.as_ref()) {
        if let Err(error) = super::context::execute(op, state) {
            let recording = refusal_recording(session, state, None, String::new);
            return injected_error(&error, state, recording);
        }
    }
    let fetch = match portal.as_ref() {
        Some(portal) => match execute_cursor(&portal.prepared, session, state) {
            Ok(fetch) => fetch,
            Err(error) => {
                let prepared = &portal.prepared;
                let recording = refusal_recording(session, state, None, || {
                    prepared
                        .cursor
                        .as_ref()
                        .map(|c| c.fingerprint.clone())
                        .unwrap_or_default()
                });
                return injected_error(&error, state, recording);
            }
        },
        None => None,
    };
    state.copy_in = portal
        .as_ref()
        .and_then(|p| p.prepared.plan())
        .and_then(copy_into_protected)
        .map(CopyIn::new);
    let owed = portal.as_ref().filter(|p| p.owes_describe()).map(|p| {
        p.describing.store(true, Ordering::Relaxed);
        p.prepared.clone()
    });
    state.expect.push_back(Expect::Execute(portal, fetch));
    match owed {
        Some(prepared) => {
            let at = state.expect.len() - 1;
            state.expect.insert(at, Expect::DescribeOwed(prepared));
            Action::Replace(join(&[&Target::describe_portal(name), frame]))
        }
        None => Action::Forward,
    }
}

fn describe(target: Target, state: &mut State) {
    let expect = match target.kind {
        TargetKind::Statement => {
            let prepared = state
                .statements
                .get(&target.name)
                .cloned()
                .unwrap_or_else(Prepared::plain);
            Expect::DescribeStatement {
                cursor: prepared.fetched(state),
                prepared,
                internal: false,
            }
        }
        TargetKind::Portal => {
            let portal = state.portals.get(&target.name).cloned();
            if let Some(portal) = &portal {
                portal.describing.store(true, Ordering::Relaxed);
            }
            // A portal runs a FETCH of a cursor, or is itself a cursor SQL DECLAREd (drivers
            // describe their server-side cursors by name).
            let cursor = match &portal {
                Some(portal) => portal.prepared.fetched(state),
                None => std::str::from_utf8(&target.name)
                    .ok()
                    .and_then(|name| state.cursors.lookup(name, &state.portals)),
            };
            Expect::DescribePortal(portal, cursor)
        }
    };
    state.expect.push_back(expect);
}

/// A Sync, followed by pgveil's own query when the batch changed what it must know.
fn sync(frame: &[u8], state: &mut State) -> Action {
    state.cursors.cycle_sent();
    state.context_sent.end_of_cycle();
    state.expect.push_back(Expect::Sync(Instant::now()));
    let follow_path = state.search_path_follow();
    match state.refresh_at_sync.take().or(follow_path) {
        Some(wanted) => {
            state
                .expect
                .push_back(Expect::Refresh(Collector::new(wanted)));
            Action::Replace(join(&[frame, &wanted.query()]))
        }
        None => Action::Forward,
    }
}

/// What pgveil's own bookkeeping must refresh after a statement went through. One pass over
/// the text's words, as it runs on every statement.
fn refresh_needed(text: &str) -> Option<Wanted> {
    let (mut catalog, mut search_path, mut set, mut role) = (false, false, false, false);
    for word in crate::sql::words(text) {
        let is = |k: &str| word.eq_ignore_ascii_case(k.as_bytes());
        if is("create") || is("alter") || is("drop") {
            catalog = true;
        } else if is("search_path")
            // RESET ALL and DISCARD ALL put the session default back; a role change moves
            // "$user"; set_config may name its setting at run time (pg_dump:
            // `set_config(name, ...) FROM pg_settings`).
            || is("reset")
            || is("discard")
            || is("authorization")
            || is("set_config")
        {
            search_path = true;
        } else if is("set") {
            set = true;
        } else if is("role") {
            role = true;
        }
    }
    let search_path = search_path || (set && role);
    (catalog || search_path).then_some(Wanted {
        catalog,
        search_path: search_path || catalog,
        roles: false,
    })
}

fn simple_query(frame: &[u8], raw: &[u8], session: &Session, state: &mut State) -> Action {
    let sent = Instant::now();
    let admission = admit(raw, Protocol::Simple, session, state);
    // Text that is not UTF-8 cannot be read for what it changes.
    let text = std::str::from_utf8(raw).ok();
    let refresh = text.and_then(|text| refresh_needed(text).or(state.search_path_follow()));
    let refresh = match (refresh, migrating_refresh(&admission)) {
        (Some(a), Some(b)) => Some(Wanted {
            catalog: a.catalog || b.catalog,
            search_path: true,
            roles: a.roles,
        }),
        (a, b) => a.or(b),
    };
    let (action, analysis, audit, fetches, settings) = match admission {
        Admission::Forward {
            fingerprint,
            fetches,
            settings,
        } => {
            // A token's literal never goes upstream.
            let action = match text {
                Some(text) if !settings.replacements.is_empty() => Action::Replace(encode_query(
                    crate::sql::rewrite(text, &settings.replacements).as_bytes(),
                )),
                _ => Action::Forward,
            };
            (
                action,
                None,
                fingerprint.map(|f| QueryAudit::single(f, false)),
                fetches,
                settings.ops,
            )
        }
        Admission::Refuse { error, fingerprint } => (
            Action::Replace(raising_query(&error)),
            None,
            fingerprint.map(|f| QueryAudit::single(f, true)),
            Vec::new(),
            Vec::new(),
        ),
        Admission::Analysed(admitted) => {
            // The gate admits a COPY of protected columns only as a Query's one statement.
            state.copy_in = admitted
                .plan(0)
                .and_then(copy_into_protected)
                .filter(|_| admitted.refused.is_none())
                .map(CopyIn::new);
            let rewritten = text.and_then(|text| admitted.rewrite(text));
            let statements: Vec<_> = admitted
                .statements
                .iter()
                .map(|s| s.fingerprint.clone().map(|f| (f, s.injected)))
                .collect();
            let audit = statements.iter().any(Option::is_some).then(|| {
                Arc::new(QueryAudit {
                    statements,
                    refused: admitted.refused.as_ref().map(|(index, _)| *index),
                })
            });
            let action = match rewritten {
                Some(text) => Action::Replace(encode_query(text.as_bytes())),
                None => Action::Forward,
            };
            (
                action,
                Some(admitted.analysis),
                audit,
                admitted.fetches,
                admitted.settings.ops,
            )
        }
    };
    state.expect.push_back(Expect::Query {
        analysis,
        sent,
        statement: 0,
        audit,
        fetches,
        settings,
    });
    state.cursors.cycle_sent();
    match refresh {
        Some(wanted) => {
            state
                .expect
                .push_back(Expect::Refresh(Collector::new(wanted)));
            let first: Bytes = match &action {
                Action::Replace(bytes) => bytes.clone(),
                _ => Bytes::copy_from_slice(frame),
            };
            Action::Replace(join(&[&first, &wanted.query()]))
        }
        None => action,
    }
}

/// The catalog refresh a Query's statements on migrating columns ask for.
fn migrating_refresh(admission: &Admission) -> Option<Wanted> {
    let Admission::Analysed(admitted) = admission else {
        return None;
    };
    let plans = admitted.analysis.as_ref().as_ref().ok()?;
    plans
        .iter()
        .find_map(|plan| migrating::refresh_after(Some(plan)))
}

/// The COPY FROM STDIN into protected columns a statement is, if it is one: its rows are
/// encrypted as they stream in (from the moment it is sent, so no row can slip past).
fn copy_into_protected(plan: &StatementPlan) -> Option<&CopyPlan> {
    plan.copy
        .as_ref()
        .filter(|copy| copy.direction == CopyDirection::In && copy.is_protected())
}

pub(super) fn parse_message(parse: Parse, session: &Session, state: &mut State) -> Action {
    if let Some(wanted) = std::str::from_utf8(&parse.query)
        .ok()
        .and_then(refresh_needed)
    {
        refresh_at_sync(state, wanted);
    }
    let admitted = match admit(&parse.query, Protocol::Extended, session, state) {
        Admission::Forward {
            fingerprint,
            settings,
            ..
        } => {
            let prepared = Arc::new(Prepared {
                fingerprint,
                cursor: prepared_cursor(&parse.query, state),
                context: settings.ops.into_iter().next().map(|(_, op)| op),
                ..Prepared::unprotected()
            });
            state.insert_statement(parse.name.clone(), prepared);
            // A token's literal never goes upstream.
            return match std::str::from_utf8(&parse.query) {
                Ok(text) if !settings.replacements.is_empty() => {
                    let rewritten = Parse {
                        query: Bytes::from(crate::sql::rewrite(text, &settings.replacements)),
                        ..parse
                    };
                    Action::Replace(rewritten.encode())
                }
                _ => Action::Forward,
            };
        }
        Admission::Refuse { error, fingerprint } => {
            return refuse_parse(session, state, (parse.name, None), None, fingerprint, error);
        }
        Admission::Analysed(admitted) => admitted,
    };
    let mut admitted = admitted;
    if let Some((index, error)) = admitted.refused.clone() {
        // Refused because a column is not migrated yet: the catalog is read again, so the
        // statement sent again after migrate prepared the column is not refused, and one
        // kept by name is prepared again at its next Bind.
        let mut origin = None;
        if let Some(wanted) = migrating::refresh_after(admitted.plan(index)) {
            refresh_at_sync(state, wanted);
            origin = Some(Origin::new(
                parse.query.clone(),
                parse.param_types.clone(),
                &state.database,
            ));
        }
        let fingerprint = admitted.statements[index].fingerprint.clone();
        return refuse_parse(
            session,
            state,
            (parse.name, origin),
            admitted.plan(index),
            fingerprint,
            error,
        );
    }
    let Some(plan) = admitted.plan(0) else {
        let prepared = Prepared {
            context: admitted.settings.ops.first().map(|(_, op)| op.clone()),
            ..Prepared::unprotected()
        };
        state.insert_statement(parse.name.clone(), Arc::new(prepared));
        return match std::str::from_utf8(&parse.query)
            .ok()
            .and_then(|text| admitted.rewrite(text))
        {
            Some(text) => Action::Replace(
                Parse {
                    query: Bytes::from(text),
                    ..parse
                }
                .encode(),
            ),
            None => Action::Forward,
        };
    };
    let mut params = parameters(plan, &parse.param_types, &session.veil);
    let (shadow_params, shadow) = migrating::shadow_params(plan, &mut params.types);
    let mut origin = None;
    if let Some(wanted) = migrating::refresh_after(Some(plan)) {
        refresh_at_sync(state, wanted);
        // Planned on a plaintext or migrating column: prepared again after the swap.
        origin = Some(Origin::new(
            parse.query.clone(),
            parse.param_types.clone(),
            &state.database,
        ));
    }
    admitted.statements[0].replacements.extend(shadow_params);
    let query = match std::str::from_utf8(&parse.query)
        .ok()
        .and_then(|text| admitted.rewrite(text))
    {
        Some(text) => Bytes::from(text),
        None => parse.query.clone(),
    };
    let rewritten = Parse {
        name: parse.name.clone(),
        query,
        param_types: params.types,
    };
    let statement = &admitted.statements[0];
    let cursor = prepared_cursor(&parse.query, state);
    let describe_now = cursor.is_some();
    let prepared = Arc::new(Prepared {
        analysis: Some(admitted.analysis.clone()),
        param_columns: params.columns,
        param_arrays: params.arrays,
        param_keyed: params.keyed,
        client_param_types: parse.param_types,
        row: OnceLock::new(),
        fingerprint: statement.fingerprint.clone(),
        injected: statement.injected,
        refused: None,
        cursor,
        context: admitted.settings.ops.first().map(|(_, op)| op.clone()),
        shadow,
        origin,
    });
    state.insert_statement(parse.name.clone(), prepared.clone());
    if !describe_now {
        // Its result columns come from a Describe the client sends (most drivers describe
        // each portal or statement), or else from pgveil's own Describe of the portal ahead
        // of its Execute (`Portal::owes_describe`): no Describe the client did not need.
        return Action::Replace(rewritten.encode());
    }
    // A cursor statement: pgveil describes it itself, so the cursor's plan knows its
    // result columns even when the client never asks.
    state.expect.push_back(Expect::DescribeStatement {
        prepared,
        internal: true,
        cursor: None,
    });
    Action::Replace(join(&[
        &rewritten.encode(),
        &Target::describe_statement(&parse.name),
    ]))
}

/// A DDL or search_path change in the batch: pgveil's own query follows its Sync.
fn refresh_at_sync(state: &mut State, wanted: Wanted) {
    let merged = match state.refresh_at_sync {
        Some(w) => Wanted {
            catalog: w.catalog || wanted.catalog,
            search_path: true,
            roles: false,
        },
        None => wanted,
    };
    state.refresh_at_sync = Some(merged);
}

/// How a statement's parameters go up: per position, the protected column it is bound for,
/// whether it is an array of values for it, whether it carries its ciphertext under every
/// key ([`super::matching`]), and the types declared upstream: those bound for protected
/// columns are declared bytea (or bytea[]), as they carry ciphertext.
struct Parameters {
    columns: Vec<Option<ColumnRef>>,
    arrays: Vec<bool>,
    keyed: Vec<bool>,
    types: Vec<u32>,
}

fn parameters(plan: &StatementPlan, declared: &[u32], veil: &crate::veil::Veil) -> Parameters {
    let mut param_columns: Vec<Option<ColumnRef>> = Vec::new();
    let mut param_arrays: Vec<bool> = Vec::new();
    let keyed_numbers = super::matching::keyed_params(plan, veil);
    let bound = plan.params.iter().map(|&(n, c)| (n, c, false));
    let arrays = plan.array_params.iter().map(|&(n, c)| (n, c, true));
    for (n, column, array) in bound.chain(arrays) {
        let index = n.saturating_sub(1) as usize;
        if param_columns.len() <= index {
            param_columns.resize(index + 1, None);
            param_arrays.resize(index + 1, false);
        }
        param_columns[index] = Some(column);
        param_arrays[index] = array;
    }
    let keyed: Vec<bool> = (1..=param_columns.len() as u32)
        .map(|n| keyed_numbers.contains(&n))
        .collect();
    let mut param_types = declared.to_vec();
    for (index, column) in param_columns.iter().enumerate() {
        if column.is_some() {
            if param_types.len() <= index {
                param_types.resize(index + 1, 0);
            }
            param_types[index] = if param_arrays[index] || keyed[index] {
                crate::pgtype::oid::BYTEA_ARRAY
            } else {
                LogicalType::Bytea.oid()
            };
        }
    }
    Parameters {
        columns: param_columns,
        arrays: param_arrays,
        keyed,
        types: param_types,
    }
}

fn bind_message(
    header: &BindHeader<'_>,
    session: &Session,
    state: &mut State,
) -> Result<Action, SessionError> {
    let veil = &session.veil;
    let prepared = state
        .statements
        .get(header.statement)
        .cloned()
        .unwrap_or_else(Prepared::plain);
    if let Some(error) = &prepared.refused {
        let recording = refusal_recording(session, state, None, String::new);
        return Ok(injected_error(error, state, recording));
    }
    let portal_name = Bytes::copy_from_slice(header.portal);
    // A FETCH needs its result formats, to re-encode the rows of its cursor.
    if prepared.analysis.is_none() && prepared.cursor.is_none() {
        state
            .portals
            .insert(portal_name, Portal::new(prepared, Vec::new()));
        state.expect.push_back(Expect::Bind);
        return Ok(Action::Forward);
    }
    let mut bind = header.bind().map_err(|e| SessionError::Malformed(e.0))?;
    let mut changed = false;
    if let Some(wanted) = migrating::refresh_after(prepared.plan()) {
        refresh_at_sync(state, wanted);
    }
    if let Some(shadow) = &prepared.shadow {
        let declared = &prepared.client_param_types;
        if let Err(error) = migrating::bind_shadow_params(&mut bind, shadow, declared, veil, state)
        {
            let recording = refusal_recording(session, state, prepared.plan(), || {
                prepared.fingerprint.clone().unwrap_or_default()
            });
            return Ok(injected_error(&error, state, recording));
        }
        changed = true;
    }
    if prepared.param_columns.iter().any(Option::is_some) {
        bind.expand_param_formats();
        for (index, column) in prepared.param_columns.iter().enumerate() {
            let (Some(column), Some(Some(value))) = (column, bind.params.get(index)) else {
                continue;
            };
            let declared = prepared.client_param_types.get(index).copied().unwrap_or(0);
            let format = bind.param_format(index);
            let keyed = prepared.param_keyed.get(index).copied().unwrap_or(false);
            let encrypted = if prepared.param_arrays.get(index).copied().unwrap_or(false) {
                encrypt_array_param(veil, *column, value, format, &state.time, keyed)
            } else if keyed {
                encrypt_param_every_key(veil, *column, value, format, declared, &state.time)
            } else {
                encrypt_param(veil, *column, value, format, declared, &state.time)
            };
            match encrypted {
                Ok(ciphertext) => {
                    bind.params[index] = Some(Bytes::from(ciphertext));
                    bind.param_formats[index] = 1;
                    changed = true;
                }
                Err(error) => {
                    let recording = refusal_recording(session, state, prepared.plan(), || {
                        prepared.fingerprint.clone().unwrap_or_default()
                    });
                    return Ok(injected_error(&error, state, recording));
                }
            }
        }
    }
    let injected = prepared
        .fetched(state)
        .map_or(prepared.injected, |cursor| cursor.injected);
    if injected > 0 && bind.result_formats.len() > 1 {
        // The appended subject columns are read as text; the client never sees them.
        bind.result_formats.extend(std::iter::repeat_n(0, injected));
        changed = true;
    }
    let result_formats = bind.result_formats.clone();
    state
        .portals
        .insert(portal_name, Portal::new(prepared, result_formats));
    state.expect.push_back(Expect::Bind);
    Ok(if changed {
        Action::Replace(bind.encode())
    } else {
        Action::Forward
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_detection_is_by_whole_words() {
        assert!(refresh_needed("ALTER TABLE t ADD x int").unwrap().catalog);
        assert!(refresh_needed("select 1; Drop view v").unwrap().catalog);
        assert!(refresh_needed("SET ROLE app").unwrap().search_path);
        assert!(refresh_needed("RESET ALL").is_some());
        for text in [
            "SELECT created_at, dropped, altered FROM t",
            "SELECT settle, roles FROM t",
            "SELECT 1 FROM role_set",
            "INSERT INTO resets (search_path_x) VALUES (1)",
        ] {
            assert!(refresh_needed(text).is_none(), "{text}");
        }
    }

    #[test]
    fn refresh_detection() {
        assert!(refresh_needed("CREATE TABLE x (a int)").unwrap().catalog);
        assert!(refresh_needed("set search_path = app").unwrap().search_path);
        assert!(
            refresh_needed("SELECT set_config(name, 'x', false) FROM pg_settings")
                .unwrap()
                .search_path
        );
        assert!(refresh_needed("SELECT created_at FROM t").is_none());
    }
}
