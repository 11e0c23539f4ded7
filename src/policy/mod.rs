//! Who may see what: role resolution, access decisions and masks.

pub mod access;
pub mod break_glass;
pub mod mask;

pub use access::{most_permissive, Access, AccessMap, Policy};
