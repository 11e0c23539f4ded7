//! `COPY … TO STDOUT` of protected columns: the database's rows are read as they stream out
//! (whole rows only; the incomplete tail waits for the next CopyData), each protected field is
//! decrypted or masked under the session's policy and written back in the stream's format, and
//! the subject columns pgveil appended for the audit log are taken off. Rows stream through,
//! so memory stays bounded; the CopyDone and CommandComplete wait for the audit record.

use bytes::Bytes;
use zeroize::Zeroizing;

use super::state::State;
use super::values::{corrupt_value, reveal, reveal_ciphertext};
use crate::net::copy::CopyResponse;
use crate::net::copy_rows::{CopyFormat, CopyRowError, FieldBuf, Fields, Out, RowSplitter, Unit};
use crate::net::copy_write::{encode_row, CopyDataWriter, Payload};
use crate::pgerror::{sqlstate, PgError};
use crate::pgtype;
use crate::policy::Access;
use crate::session::recording::Recording;
use crate::sql::{ColumnRef, CopyPlan};
use crate::veil::Veil;

use super::copy_in::MAX_COPY_ROW;

/// A copy of protected columns to the client in progress.
pub(super) struct CopyOut {
    plan: CopyPlan,
    /// Fields the client sees; the rest are pgveil's subject columns.
    shown: usize,
    splitter: RowSplitter,
    /// Room for field positions, reused from row to row.
    fields: FieldBuf,
    /// Buffers of the revealing fast path, reused from value to value.
    scratch: Scratch,
}

/// A protected value on its way out: its ciphertext, its plaintext, its text form. Reused,
/// so a bulk copy allocates nothing per value (three allocations a value were ~10% of
/// COPY TO's CPU). Plaintext is overwritten by the next value and dropped with the copy.
#[derive(Default)]
struct Scratch {
    ciphertext: Vec<u8>,
    canonical: Zeroizing<Vec<u8>>,
    text: Zeroizing<Vec<u8>>,
}

impl CopyOut {
    /// Starts from the database's CopyOutResponse: the copy and the response the client
    /// gets (without pgveil's subject columns).
    pub fn start(body: &[u8], plan: &CopyPlan, strip: usize) -> Result<(Self, Bytes), PgError> {
        let mut response = CopyResponse::decode(body).map_err(|_| {
            PgError::error(
                sqlstate::PROTOCOL_VIOLATION,
                "pgveil: malformed CopyOutResponse from the database",
            )
        })?;
        let binary = plan.options.format == CopyFormat::Binary;
        if response.columns.len() != plan.fields.len() + strip || (response.format == 1) != binary {
            return Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "pgveil: the COPY output does not have the expected columns, so it is withheld",
            ));
        }
        response.columns.truncate(plan.fields.len());
        let copy = Self {
            plan: plan.clone(),
            shown: plan.fields.len(),
            splitter: RowSplitter::new(plan.options.clone(), MAX_COPY_ROW),
            fields: FieldBuf::default(),
            scratch: Scratch::default(),
        };
        Ok((copy, response.encode(b'H')))
    }

    /// Type OID and format of each field as the database sends it, for the audit log.
    pub fn row_types(&self) -> Vec<(u32, i16)> {
        let format = i16::from(self.plan.options.format == CopyFormat::Binary);
        self.plan.types.iter().map(|&t| (t, format)).collect()
    }

    /// The CopyData for the client after `payload` (`None`: no whole row yet).
    pub fn data(
        &mut self,
        payload: &[u8],
        veil: &Veil,
        state: &State,
        mut recording: Option<&mut Recording>,
    ) -> Result<Option<Bytes>, PgError> {
        self.splitter.push(payload);
        let mut frame = CopyDataWriter::with_capacity(payload.len() + payload.len() / 2);
        let mut out = frame.payload();
        while let Some(unit) = self.splitter.next_unit().map_err(row_error)? {
            match unit {
                Unit::End(bytes) => out.extend_from_slice(&bytes),
                Unit::Header(bytes) if self.plan.options.format == CopyFormat::Binary => {
                    out.extend_from_slice(&bytes);
                }
                Unit::Header(bytes) => {
                    // Column names: pgveil's own are taken off.
                    let fields = Fields::parse(&self.plan.options, &bytes).map_err(row_error)?;
                    let shown: Vec<Out<'_>> = (0..self.shown.min(fields.len()))
                        .map(|i| fields.out(i))
                        .collect();
                    let mut header = Vec::new();
                    encode_row(&self.plan.options, &shown, fields.terminator(), &mut header);
                    out.extend_from_slice(&header);
                }
                Unit::Row(row) => {
                    let buf = std::mem::take(&mut self.fields);
                    let fields =
                        Fields::parse_in(&self.plan.options, &row, buf).map_err(row_error)?;
                    if let Some(recording) = recording.as_deref_mut() {
                        recording.observe_with(|i| fields.value(i));
                    }
                    let (plan, shown) = (&self.plan, self.shown);
                    let written = write_row(
                        plan,
                        shown,
                        &mut self.scratch,
                        &fields,
                        veil,
                        state,
                        &mut out,
                    );
                    self.fields = fields.recycle();
                    written?;
                }
            }
        }
        Ok(frame.finish())
    }
}

impl Scratch {
    /// The fast path of a text-format value the session sees in plaintext: `\\x` hex
    /// decoded, decrypted and printed into [`Scratch`], nothing allocated. `false` when it
    /// does not apply or fails; the caller then takes the general path, which reports the
    /// error (so failures are counted and worded in one place).
    fn reveal_plain_text(
        &mut self,
        hex: &[u8],
        column: ColumnRef,
        veil: &Veil,
        state: &State,
    ) -> bool {
        if state.access.get(column) != Access::Plaintext {
            return false;
        }
        let (Some(cipher), Some(spec)) = (veil.cipher(column), veil.protection.column(column))
        else {
            return false;
        };
        pgtype::decode_bytea_text_into(hex, &mut self.ciphertext)
            && cipher
                .decrypt_into(&self.ciphertext, &mut self.canonical)
                .is_ok()
            && pgtype::text_out_into(
                spec.logical_type,
                &self.canonical,
                &state.time,
                &mut self.text,
            )
            .is_ok()
    }
}

/// Writes one row with its protected fields revealed as the policy allows and pgveil's
/// subject columns left out. (A row that fails leaves part of itself in `out`, which is
/// dropped with the copy.)
#[allow(clippy::too_many_arguments)]
fn write_row(
    plan: &CopyPlan,
    shown: usize,
    scratch: &mut Scratch,
    fields: &Fields<'_>,
    veil: &Veil,
    state: &State,
    out: &mut Payload<'_>,
) -> Result<(), PgError> {
    let format = i16::from(plan.options.format == CopyFormat::Binary);
    let shown = shown.min(fields.len());
    let mut row = out.row(&plan.options, shown);
    for index in 0..shown {
        let column: Option<ColumnRef> = plan.fields.get(index).copied().flatten();
        let Some(column) = column else {
            row.field(fields.out(index));
            continue;
        };
        // The database prints a bytea as `\x` and hex, which text format escapes to
        // `\\x`: decoded straight from the row, without unescaping it first.
        let hex = fields
            .raw(index)
            .filter(|_| plan.options.format == CopyFormat::Text)
            .and_then(|raw| raw.strip_prefix(b"\\"))
            .filter(|rest| rest.starts_with(b"\\x") && !rest[1..].contains(&b'\\'));
        if let Some(hex) = hex {
            if scratch.reveal_plain_text(hex, column, veil, state) {
                row.field(Out::Value(Some(&scratch.text)));
                continue;
            }
        }
        // The field is unescaped only when it is not that plain `\\x` form.
        let shown = match hex {
            Some(hex) => {
                let ciphertext =
                    pgtype::decode_bytea_text(hex).ok_or_else(|| corrupt_value(veil, column))?;
                reveal_ciphertext(&ciphertext, column, format, veil, state)?
            }
            None => match fields.value(index) {
                Some(stored) => reveal(&stored, column, format, veil, state)?,
                None => {
                    row.field(fields.out(index));
                    continue;
                }
            },
        };
        row.field(Out::Value(shown.as_deref()));
    }
    row.finish(fields.terminator());
    Ok(())
}

fn row_error(e: CopyRowError) -> PgError {
    PgError::error(
        sqlstate::PROTOCOL_VIOLATION,
        format!("pgveil: the database's COPY stream cannot be read: {e}"),
    )
}
