//! Who may see a protected column: the access a role has ([`Access`]), the rules of the
//! configuration ([`Policy`]), and what they resolve to for one session ([`AccessMap`]).
//!
//! Every decision about a session's access to a column is read from its [`AccessMap`]; the
//! relay asks it, never the rules.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::audit;
use crate::policy::mask::MaskKind;
use crate::sql::{ColumnRef, Protection};

/// What a role may do with a protected column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Deny,
    Mask(MaskKind),
    Plaintext,
}

impl Access {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "plaintext" => Some(Self::Plaintext),
            "deny" => Some(Self::Deny),
            _ => text
                .strip_prefix("mask:")
                .and_then(MaskKind::parse)
                .map(Self::Mask),
        }
    }

    /// Ordering for "the most permissive of a session's rules wins".
    fn permissiveness(self) -> u8 {
        match self {
            Self::Deny => 0,
            Self::Mask(_) => 1,
            Self::Plaintext => 2,
        }
    }

    /// Between two masks of one column, the one that shows more wins (`null` < `redact` <
    /// the others, which keep part of the value), so the choice never depends on the order
    /// in which the database lists a session's roles. Two partial masks never meet on one
    /// type except `last4` and `zip3` on text: `last4` wins.
    fn mask_rank(self) -> u8 {
        match self {
            Self::Mask(MaskKind::Null) => 0,
            Self::Mask(MaskKind::Redact) => 1,
            Self::Mask(MaskKind::Zip3) => 2,
            Self::Mask(_) => 3,
            Self::Deny | Self::Plaintext => 0,
        }
    }

    /// How the audit log names this access to a column that was read.
    pub fn audited(self) -> audit::Access {
        match self {
            Self::Plaintext => audit::Access::Plaintext,
            Self::Mask(_) => audit::Access::Masked,
            Self::Deny => audit::Access::Denied,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deny => f.write_str("deny"),
            Self::Plaintext => f.write_str("plaintext"),
            Self::Mask(kind) => write!(f, "mask:{}", kind.name()),
        }
    }
}

/// Who may see what: the part of the configuration that a reload changes in open sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `schema.table.column` → role → access.
    rules: HashMap<String, BTreeMap<String, Access>>,
    default_access: Access,
    /// `[policy] require_purpose`.
    require_purpose: bool,
    /// `[policy] break_glass_roles`.
    break_glass_roles: Vec<String>,
}

impl Policy {
    pub fn new(rules: HashMap<String, BTreeMap<String, Access>>, default_access: Access) -> Self {
        Self {
            rules,
            default_access,
            require_purpose: false,
            break_glass_roles: Vec::new(),
        }
    }

    /// With `[policy]`'s session-context rules (`require_purpose`, `break_glass_roles`).
    pub fn with_context_rules(
        mut self,
        require_purpose: bool,
        break_glass_roles: &[String],
    ) -> Self {
        self.require_purpose = require_purpose;
        self.break_glass_roles = break_glass_roles.to_vec();
        self
    }

    /// Reads of protected columns need a declared purpose of use.
    pub fn require_purpose(&self) -> bool {
        self.require_purpose
    }

    /// The roles that may use break-glass.
    pub fn break_glass_roles(&self) -> &[String] {
        &self.break_glass_roles
    }

    /// The access a session with `roles` has to each column of `protection`: the most
    /// permissive rule among the roles the column names; `default_access` when it names none
    /// of them. (The login's own role is rarely named: counting it as `default_access` would
    /// let a permissive default override every mask and deny.)
    pub fn access_for(&self, protection: &Protection, roles: &[String]) -> AccessMap {
        let columns = protection
            .columns()
            .iter()
            .map(|column| {
                let rules = self.rules.get(&column.qualified_name());
                most_permissive(
                    roles
                        .iter()
                        .filter_map(|role| rules.and_then(|r| r.get(role)).copied()),
                )
                .unwrap_or(self.default_access)
            })
            .collect();
        AccessMap { columns }
    }
}

/// The access a session holding all of `accesses` gets: the most permissive wins; `None`
/// when no rule applies.
pub fn most_permissive(accesses: impl IntoIterator<Item = Access>) -> Option<Access> {
    accesses
        .into_iter()
        .max_by_key(|a| (a.permissiveness(), a.mask_rank()))
}

/// One session's access to every protected column, as its policy resolved it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessMap {
    /// By [`ColumnRef`], one entry per column of the protection it was resolved for.
    columns: Vec<Access>,
}

impl AccessMap {
    /// The session's access to `column`; a column the policy was not resolved for is denied.
    pub fn get(&self, column: ColumnRef) -> Access {
        self.columns.get(column.0).copied().unwrap_or(Access::Deny)
    }

    pub fn is_denied(&self, column: ColumnRef) -> bool {
        self.get(column) == Access::Deny
    }

    /// The access under break-glass: every column readable at all becomes plaintext, a
    /// denied one stays denied ([`crate::policy::break_glass::raise`]).
    pub fn raised(&self) -> AccessMap {
        AccessMap {
            columns: self
                .columns
                .iter()
                .map(|&a| crate::policy::break_glass::raise(a))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy(default: &str) -> (Policy, Protection) {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nport = 5432\n[keys]\nmaster_key_file = \"master.key\"\n\
[policy]\ndefault_access = \"{default}\"\n\
[[column]]\ntable = \"p\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\n\
access = {{ clinician = \"plaintext\", billing = \"mask:redact\", research = \"mask:last4\", audit = \"deny\" }}\n"
        );
        let config = Config::parse(&toml, "t.toml", std::path::Path::new(".")).unwrap();
        (
            config.access_policy(),
            Protection::new(config.protected_columns(), config.subjects()),
        )
    }

    fn access(default: &str, roles: &[&str]) -> String {
        let (policy, protection) = policy(default);
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        policy
            .access_for(&protection, &roles)
            .get(ColumnRef(0))
            .to_string()
    }

    #[test]
    fn default_access_only_when_no_session_role_is_named() {
        assert_eq!(access("plaintext", &["bob", "billing"]), "mask:redact");
        assert_eq!(access("plaintext", &["bob", "audit"]), "deny");
        assert_eq!(access("plaintext", &["bob"]), "plaintext");
        assert_eq!(access("deny", &["bob"]), "deny");
        assert_eq!(access("mask:null", &["bob", "clerk"]), "mask:null");
    }

    #[test]
    fn most_permissive_wins_in_any_role_order() {
        for roles in [
            ["billing", "research", "audit"],
            ["audit", "research", "billing"],
        ] {
            assert_eq!(access("deny", &roles), "mask:last4");
        }
        assert_eq!(
            access("deny", &["audit", "clinician", "billing"]),
            "plaintext"
        );
    }

    #[test]
    fn access_precedence() {
        assert!(Access::Plaintext.permissiveness() > Access::Mask(MaskKind::Year).permissiveness());
        assert!(Access::Mask(MaskKind::Null).permissiveness() > Access::Deny.permissiveness());
        assert_eq!(
            Access::parse("mask:zip3"),
            Some(Access::Mask(MaskKind::Zip3))
        );
        assert_eq!(Access::parse("mask:"), None);
    }

    #[test]
    fn unresolved_columns_are_denied() {
        let (policy, protection) = policy("plaintext");
        let map = policy.access_for(&protection, &["bob".to_string()]);
        assert!(!map.is_denied(ColumnRef(0)));
        assert!(map.is_denied(ColumnRef(7)));
    }
}
