//! How break-glass changes an access (DESIGN.md "Session context"): every column the
//! session may read at all, masked or in plaintext, is shown in plaintext; a denied column
//! stays denied. Applied after the policy resolved the session's access.

use crate::policy::Access;

/// The access under break-glass.
pub fn raise(access: Access) -> Access {
    match access {
        Access::Deny => Access::Deny,
        Access::Mask(_) | Access::Plaintext => Access::Plaintext,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mask::MaskKind;

    #[test]
    fn masks_open_and_deny_stays() {
        for kind in MaskKind::ALL {
            assert_eq!(raise(Access::Mask(kind)), Access::Plaintext);
        }
        assert_eq!(raise(Access::Plaintext), Access::Plaintext);
        assert_eq!(raise(Access::Deny), Access::Deny);
    }
}
