//! Who may see what: role resolution, access decisions and masks.

pub mod mask;
