//! Who may see what: role resolution, access decisions and masks.

pub mod break_glass;
pub mod mask;
