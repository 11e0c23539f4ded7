//! The protocol's format code of a parameter or result column: which of a type's two wire
//! forms (text or binary) a value travels in.

/// Format code of a parameter or result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    Text,
    Binary,
}

impl WireFormat {
    /// From a protocol format code: 0 text, 1 binary.
    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Self::Text),
            1 => Some(Self::Binary),
            _ => None,
        }
    }

    pub fn code(self) -> i16 {
        match self {
            Self::Text => 0,
            Self::Binary => 1,
        }
    }
}
