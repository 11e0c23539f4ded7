//! What a COPY statement that carries protected columns needs from the session: which
//! direction the rows flow, how they are formatted, and which protected column each field
//! of a row holds. Options pgveil cannot honour while rewriting rows are refused here.

use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};

use crate::net::copy_rows::{CopyFormat, CopyOptions};
use crate::sql::ColumnRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY … FROM STDIN`: the client sends rows.
    In,
    /// `COPY … TO STDOUT`: the database sends rows.
    Out,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub direction: CopyDirection,
    pub options: CopyOptions,
    /// Per field of a row, in order: the protected column it holds.
    pub fields: Vec<Option<ColumnRef>>,
    /// Per field (then per subject column pgveil appends): its type OID in the database,
    /// 0 when unknown; read subject ids of binary rows.
    pub types: Vec<u32>,
}

impl CopyPlan {
    /// Whether any field is protected (only then must rows be rewritten).
    pub fn is_protected(&self) -> bool {
        self.fields.iter().any(Option::is_some)
    }
}

/// The stream format a COPY's options ask for; `Err` names what pgveil cannot honour.
pub fn copy_options(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> Result<CopyOptions, String> {
    let mut format = CopyFormat::Text;
    let mut delimiter = None;
    let mut null = None;
    let mut header = false;
    let mut quote = None;
    let mut escape = None;
    for option in options {
        match option {
            CopyOption::Format(name) => {
                format = match name.value.to_ascii_lowercase().as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    _ => return Err("an unknown COPY format".into()),
                }
            }
            CopyOption::Freeze(_) => {}
            CopyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "DELIMITER")?),
            CopyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(one_byte(*c, "QUOTE")?),
            CopyOption::Escape(c) => escape = Some(one_byte(*c, "ESCAPE")?),
            CopyOption::Encoding(e) => {
                let e = e.to_ascii_lowercase().replace(['-', '_'], "");
                if e != "utf8" && e != "unicode" {
                    return Err("COPY with an ENCODING other than UTF8".into());
                }
            }
            CopyOption::ForceQuote(_) | CopyOption::ForceNotNull(_) | CopyOption::ForceNull(_) => {
                return Err("COPY with FORCE_QUOTE, FORCE_NOT_NULL or FORCE_NULL".into())
            }
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Binary => format = CopyFormat::Binary,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "DELIMITER")?),
            CopyLegacyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyLegacyOption::Csv(csv) => {
                format = CopyFormat::Csv;
                for o in csv {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = Some(one_byte(*c, "QUOTE")?),
                        CopyLegacyCsvOption::Escape(c) => escape = Some(one_byte(*c, "ESCAPE")?),
                        _ => return Err("COPY with FORCE QUOTE or FORCE NOT NULL".into()),
                    }
                }
            }
            _ => return Err("an unknown COPY option".into()),
        }
    }
    let mut out = CopyOptions::defaults(format);
    if format == CopyFormat::Binary
        && (delimiter.is_some() || null.is_some() || header || quote.is_some())
    {
        return Err("COPY BINARY with text options".into());
    }
    if format != CopyFormat::Csv && (quote.is_some() || escape.is_some()) {
        return Err("QUOTE or ESCAPE outside CSV".into());
    }
    if let Some(d) = delimiter {
        out.delimiter = d;
    }
    if let Some(n) = null {
        out.null = n;
    }
    if let Some(q) = quote {
        out.quote = q;
        out.escape = q;
    }
    if let Some(e) = escape {
        out.escape = e;
    }
    out.header = header;
    if matches!(out.delimiter, b'\n' | b'\r')
        || (format == CopyFormat::Text && out.delimiter == b'\\')
        || (format == CopyFormat::Csv && out.delimiter == out.quote)
    {
        return Err("this COPY DELIMITER".into());
    }
    Ok(out)
}

fn one_byte(c: char, what: &str) -> Result<u8, String> {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| format!("a COPY {what} that is not a single ASCII character"))
}
