//! Masks applied to a protected value when a role's access is `mask:KIND`.

use crate::schema::LogicalType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskKind {
    Null,
    Redact,
    Last4,
    Year,
    Zip3,
}

impl MaskKind {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "null" => Self::Null,
            "redact" => Self::Redact,
            "last4" => Self::Last4,
            "year" => Self::Year,
            "zip3" => Self::Zip3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Redact => "redact",
            Self::Last4 => "last4",
            Self::Year => "year",
            Self::Zip3 => "zip3",
        }
    }

    pub fn applies_to(self, ty: LogicalType) -> bool {
        use LogicalType::*;
        match self {
            Self::Null => true,
            Self::Redact | Self::Last4 | Self::Zip3 => matches!(ty, Text | Varchar),
            Self::Year => matches!(ty, Date | Timestamp | Timestamptz),
        }
    }
}
