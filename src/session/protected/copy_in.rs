//! `COPY … FROM STDIN` into protected columns: the client's rows are read as they stream in
//! (whole rows only; the incomplete tail waits for the next CopyData), each protected field
//! is replaced by its ciphertext in the stream's format, and the rest of the row goes up as
//! it came. A value that cannot be encrypted aborts the copy with CopyFail; the database's
//! answer to it is replaced by pgveil's error (see [`take_copy_error`]).

use bytes::Bytes;

use super::refusal::join;
use super::state::State;
use super::values::{encrypt_param, encrypt_text};
use super::Session;
use crate::net::copy::{encode_copy_done, encode_copy_fail, CopyMessage};
use crate::net::copy_rows::{CopyFormat, CopyRowError, FieldBuf, Fields, Out, RowSplitter, Unit};
use crate::net::copy_write::{CopyDataWriter, Payload};
use crate::pgerror::{sqlstate, PgError};
use crate::pgtype::SessionTime;
use crate::session::relay::Action;
use crate::sql::CopyPlan;
use crate::veil::Veil;

/// The largest row pgveil holds while it waits for the rest of it.
pub(super) const MAX_COPY_ROW: usize = 64 * 1024 * 1024;

/// A copy into protected columns in progress.
pub(super) struct CopyIn {
    plan: CopyPlan,
    splitter: RowSplitter,
    rows: u64,
    /// The end marker went by: blank lines after it (pg_restore sends `\\.` and two of
    /// them) carry nothing and pass as they are.
    ended: bool,
    /// pgveil aborted it: what the client still sends is dropped.
    failed: bool,
    /// Room reused from row to row.
    fields: FieldBuf,
    hex: Vec<u8>,
}

impl CopyIn {
    pub fn new(plan: &CopyPlan) -> Self {
        Self {
            splitter: RowSplitter::new(plan.options.clone(), MAX_COPY_ROW),
            plan: plan.clone(),
            rows: 0,
            ended: false,
            failed: false,
            fields: FieldBuf::default(),
            hex: Vec::new(),
        }
    }

    /// The CopyData of the rewritten stream for what is complete after `payload` (all of it
    /// when `done`); `None` when nothing is.
    fn feed(
        &mut self,
        payload: &[u8],
        done: bool,
        veil: &Veil,
        time: &SessionTime,
    ) -> Result<Option<Bytes>, PgError> {
        self.splitter.push(payload);
        let mut frame = CopyDataWriter::with_capacity(payload.len() * 2);
        let mut out = frame.payload();
        loop {
            let unit = match self.splitter.next_unit().map_err(row_error)? {
                Some(unit) => unit,
                None if done => match self.splitter.finish().map_err(row_error)? {
                    Some(unit) => unit,
                    None => break,
                },
                None => break,
            };
            match unit {
                Unit::Header(bytes) => out.extend_from_slice(&bytes),
                Unit::End(bytes) => {
                    self.ended = true;
                    out.extend_from_slice(&bytes);
                }
                Unit::Row(row) if self.ended && matches!(row.as_ref(), b"\n" | b"\r\n") => {
                    out.extend_from_slice(&row)
                }
                Unit::Row(row) => {
                    self.rows += 1;
                    self.row(&row, &mut out, veil, time)
                        .map_err(|e| at_row(e, self.rows))?;
                }
            }
        }
        Ok(frame.finish())
    }

    /// Writes one row with its protected fields encrypted. (A row that fails leaves part of
    /// itself in `out`, which is dropped with the copy.)
    fn row(
        &mut self,
        row: &[u8],
        out: &mut Payload<'_>,
        veil: &Veil,
        time: &SessionTime,
    ) -> Result<(), PgError> {
        let fields = Fields::parse_in(&self.plan.options, row, std::mem::take(&mut self.fields))
            .map_err(row_error)?;
        let written = write_row(&self.plan, &mut self.hex, &fields, out, veil, time);
        self.fields = fields.recycle();
        written
    }
}

/// [`CopyIn::row`] once the row is split; `hex` is room for a ciphertext's text form.
fn write_row(
    plan: &CopyPlan,
    hex: &mut Vec<u8>,
    fields: &Fields<'_>,
    out: &mut Payload<'_>,
    veil: &Veil,
    time: &SessionTime,
) -> Result<(), PgError> {
    let options = &plan.options;
    // A row pgveil did not split as the database will would carry values past it
    // unencrypted (in a field it leaves alone): refused before it leaves.
    if fields.len() != plan.fields.len() {
        return Err(PgError::error(
            sqlstate::BAD_COPY_FILE_FORMAT,
            format!(
                "pgveil: a COPY row has {} fields where {} are copied",
                fields.len(),
                plan.fields.len()
            ),
        ));
    }
    if fields.has_bare_cr() {
        return Err(PgError::error(
            sqlstate::BAD_COPY_FILE_FORMAT,
            "pgveil: literal carriage return found in COPY data (write it as \\r)",
        ));
    }
    let mut row = out.row(options, fields.len());
    for (index, column) in plan.fields.iter().enumerate() {
        // Unescaped only when it is encrypted; NULL stays NULL.
        let Some((column, value)) = column.and_then(|c| Some((c, fields.value(index)?))) else {
            row.field(fields.out(index));
            continue;
        };
        if options.format == CopyFormat::Binary {
            let stored = encrypt_param(veil, column, &value, 1, 0, time)?;
            row.field(Out::Value(Some(&stored)));
        } else {
            // bytea's text input: `\x` and hex (escaped again by the row's encoding).
            let ciphertext = encrypt_text(veil, column, &value, time)?;
            row.bytea_hex(&ciphertext, hex);
        }
    }
    row.finish(fields.terminator());
    Ok(())
}

fn row_error(e: CopyRowError) -> PgError {
    match e {
        CopyRowError::TooLarge(_) => {
            PgError::error(sqlstate::PROGRAM_LIMIT_EXCEEDED, e.to_string())
        }
        CopyRowError::Malformed(_) => {
            PgError::error(sqlstate::BAD_COPY_FILE_FORMAT, format!("pgveil: {e}"))
        }
    }
}

fn at_row(mut e: PgError, row: u64) -> PgError {
    e.message = format!("{} (COPY data row {row})", e.message);
    e
}

/// What goes up for a CopyData, CopyDone or CopyFail from the client.
pub(super) fn message(frame: &[u8], session: &Session, state: &mut State) -> Action {
    let Some(message) = CopyMessage::decode(frame) else {
        return Action::Forward;
    };
    let State {
        copy_in,
        copy_error,
        time,
        ..
    } = state;
    let Some(copy) = copy_in.as_mut() else {
        return Action::Forward;
    };
    let done = match message {
        CopyMessage::Data(_) => false,
        CopyMessage::Done => true,
        CopyMessage::Fail => {
            let failed = copy.failed;
            *copy_in = None;
            return if failed {
                Action::Drop
            } else {
                Action::Forward
            };
        }
    };
    if copy.failed {
        if done {
            *copy_in = None;
        }
        return Action::Drop;
    }
    let payload = match message {
        CopyMessage::Data(payload) => payload,
        _ => &[],
    };
    match copy.feed(payload, done, &session.veil, time) {
        Ok(data) => {
            if done {
                *copy_in = None;
                return Action::Replace(match data {
                    Some(data) => join(&[&data, &encode_copy_done()]),
                    None => encode_copy_done(),
                });
            }
            data.map_or(Action::Drop, Action::Replace)
        }
        Err(error) => {
            // The database ends the copy on CopyFail; the client gets this error instead of
            // the database's, and what it still sends is dropped.
            *copy_error = Some(error);
            if done {
                *copy_in = None;
            } else {
                copy.failed = true;
            }
            Action::Replace(encode_copy_fail("pgveil: a row could not be encrypted"))
        }
    }
}

/// pgveil's error for a copy it aborted, to stand in for the database's answer to CopyFail.
pub(super) fn take_copy_error(state: &mut State) -> Option<Bytes> {
    state.copy_error.take().map(|e| e.encode())
}
