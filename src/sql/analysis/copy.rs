//! COPY: which protected column each field of the copied rows holds, and what the audit log
//! needs to learn the rows' subjects. `COPY table TO` whose subject column is not copied is
//! rewritten as `COPY (SELECT … FROM ONLY table) TO`, the same rows, so the subject column can
//! be appended for the audit log as it is for a SELECT.

use sqlparser::ast::{CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, ObjectName};

use crate::schema::TableName;
use crate::sql::catalog::Catalog;
use crate::sql::copy::{copy_options, CopyDirection, CopyPlan};
use crate::sql::{SubjectPlan, SubjectSource};

use super::scopes::normalize;
use super::{unsupported, Analyzer, Halt, Outcome};

/// The parts of a COPY statement the analysis reads.
pub(super) struct CopyStatement<'s> {
    pub source: &'s CopySource,
    pub to: bool,
    pub target: &'s CopyTarget,
    pub options: &'s [CopyOption],
    pub legacy: &'s [CopyLegacyOption],
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Analyzer<'_> {
    pub(super) fn copy(&mut self, copy: &CopyStatement<'_>, first: usize) -> Outcome<()> {
        match copy.source {
            CopySource::Table {
                table_name,
                columns,
            } => self.copy_table(copy, table_name, columns, first),
            CopySource::Query(q) => {
                let outputs = self.query(q, true)?;
                self.record_output(outputs)?;
                let fields = self.result_columns.clone();
                let Some(&protected) = fields.iter().flatten().next() else {
                    return Ok(());
                };
                self.no_plaintext_copy(&fields)?;
                self.copy_checks(copy, protected)?;
                let options = self.copy_format(copy)?;
                self.copy_plan = Some(CopyPlan {
                    direction: CopyDirection::Out,
                    options,
                    types: vec![0; fields.len()],
                    fields,
                });
                Ok(())
            }
        }
    }

    fn copy_checks(
        &self,
        copy: &CopyStatement<'_>,
        protected: crate::sql::ColumnRef,
    ) -> Outcome<()> {
        if !matches!(copy.target, CopyTarget::Stdin | CopyTarget::Stdout) {
            return self.refuse("COPY to or from a file or program on the server", protected);
        }
        Ok(())
    }

    /// COPY rows of a column that is plaintext in the database are not handled: refused.
    fn no_plaintext_copy(&mut self, fields: &[Option<crate::sql::ColumnRef>]) -> Outcome<()> {
        for &c in fields.iter().flatten() {
            if self.is_plaintext(c) {
                return self.refuse_migrating(c, "COPY of it");
            }
        }
        Ok(())
    }

    fn copy_format(&self, copy: &CopyStatement<'_>) -> Outcome<crate::net::copy_rows::CopyOptions> {
        copy_options(copy.options, copy.legacy).map_err(|what| {
            Halt::Refuse(format!(
                "pgveil: {what} is not supported when copying protected columns"
            ))
        })
    }

    fn copy_table(
        &mut self,
        copy: &CopyStatement<'_>,
        table_name: &ObjectName,
        columns: &[Ident],
        first: usize,
    ) -> Outcome<()> {
        let Some(source) = self.table_source(table_name, None)? else {
            return Ok(());
        };
        let (Some(table), Some(known)) = (source.table.clone(), source.columns.clone()) else {
            return Ok(());
        };
        self.tables.push(table.clone());
        let names: Vec<String> = if columns.is_empty() {
            known.iter().map(|c| c.name.clone()).collect()
        } else {
            columns.iter().map(normalize).collect()
        };
        let fields: Vec<_> = names
            .iter()
            .map(|n| self.protection.lookup(&table, n))
            .collect();
        let Some(&protected) = fields.iter().flatten().next() else {
            return Ok(());
        };
        self.no_plaintext_copy(&fields)?;
        self.copy_checks(copy, protected)?;
        let options = self.copy_format(copy)?;
        let mut types: Vec<u32> = names.iter().map(|n| self.type_of(&table, n)).collect();
        let direction = if copy.to {
            CopyDirection::Out
        } else {
            CopyDirection::In
        };
        let protected: Vec<_> = fields.iter().flatten().copied().collect();
        match direction {
            CopyDirection::In => self.writes.extend(protected),
            CopyDirection::Out => {
                self.reads.extend(protected);
                self.result_columns = fields.clone();
                self.copy_subjects = Some(self.copy_table_subject(&table, &names, first)?);
                if let Some(SubjectSource::Injectable { table, .. }) =
                    self.copy_subjects.as_ref().and_then(|s| s.sources.first())
                {
                    let subject = self.protection.subject_column(table).unwrap_or_default();
                    types.push(self.type_of(table, subject));
                }
            }
        }
        self.copy_plan = Some(CopyPlan {
            direction,
            options,
            fields,
            types,
        });
        Ok(())
    }

    /// The database type of a table's column (0: unknown).
    fn type_of(&self, table: &TableName, column: &str) -> u32 {
        self.catalog
            .resolve(Some(&table.schema), &table.name, self.search_path)
            .and_then(|info| info.columns.into_iter().find(|c| c.name == column))
            .map_or(0, |c| c.type_oid)
    }

    /// Where the subject id of a copied table's rows comes from: a copied column, or one
    /// appended after the statement is rewritten as a query.
    fn copy_table_subject(
        &mut self,
        table: &TableName,
        names: &[String],
        first: usize,
    ) -> Outcome<SubjectPlan> {
        let Some(subject) = self.protection.subject_column(table) else {
            return Ok(SubjectPlan::default());
        };
        if let Some(output_position) = names.iter().position(|n| n == subject) {
            return Ok(SubjectPlan {
                sources: vec![SubjectSource::Selected {
                    table: table.clone(),
                    output_position,
                }],
            });
        }
        let tokens = self.tokens;
        let Some(start) = tokens.next_solid(first) else {
            return unsupported("COPY statement shape");
        };
        let Some(to) = (start..tokens.spanned.len()).find(|&i| tokens.is_keyword(i, "to")) else {
            return unsupported("COPY statement shape");
        };
        let Some(before_to) = tokens.prev_solid(to) else {
            return unsupported("COPY statement shape");
        };
        let list: Vec<String> = names.iter().map(|n| quote(n)).collect();
        let end = tokens.ranges[before_to].end;
        self.rewrites.push((
            tokens.ranges[start].start..end,
            format!("(SELECT {}", list.join(", ")),
        ));
        self.rewrites.push((
            tokens.ranges[to].clone(),
            format!(
                " FROM ONLY {}.{}) TO",
                quote(&table.schema),
                quote(&table.name)
            ),
        ));
        Ok(SubjectPlan {
            sources: vec![SubjectSource::Injectable {
                table: table.clone(),
                insert_at: end,
                text: format!(", {}", quote(subject)),
            }],
        })
    }
}

/// Fills in the type of each subject column of a `COPY (query)`'s rows, so subject ids of
/// binary rows can be read.
pub(super) fn subject_types(
    plan: &mut CopyPlan,
    subject: &SubjectPlan,
    protection: &crate::sql::Protection,
    catalog: &dyn Catalog,
    search_path: &[String],
) {
    let type_of = |table: &TableName| {
        let column = protection.subject_column(table)?;
        catalog
            .resolve(Some(&table.schema), &table.name, search_path)?
            .columns
            .into_iter()
            .find(|c| c.name == column)
            .map(|c| c.type_oid)
    };
    for source in &subject.sources {
        match source {
            SubjectSource::Selected {
                table,
                output_position,
            } => {
                if let (Some(slot), Some(t)) =
                    (plan.types.get_mut(*output_position), type_of(table))
                {
                    *slot = t;
                }
            }
            SubjectSource::Injectable { table, .. } => plan.types.push(type_of(table).unwrap_or(0)),
            SubjectSource::Unknown { .. } => {}
        }
    }
}
