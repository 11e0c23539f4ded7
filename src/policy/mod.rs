//! See the module's files.
pub mod mask;
