//! A session's context (end user, purpose of use, break-glass reason) and the rules that
//! decide what it may be and what it changes. The session's `SET` handling calls these; the
//! values themselves travel into every audit record.

use super::{ContextError, TokenClaims};
use crate::audit::RecordContext;
use crate::config::PolicyConfig;
use crate::policy::Access;

/// The `pgveil.*` settings a session can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    EndUser,
    Purpose,
    BreakGlass,
    /// A signed token that sets the other three at once.
    Context,
}

/// Prefix of pgveil's settings.
pub const PREFIX: &str = "pgveil.";

/// Longest end user, purpose or reason accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 256;

impl Setting {
    pub const ALL: [Setting; 4] = [
        Setting::EndUser,
        Setting::Purpose,
        Setting::BreakGlass,
        Setting::Context,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::EndUser => "pgveil.end_user",
            Self::Purpose => "pgveil.purpose",
            Self::BreakGlass => "pgveil.break_glass",
            Self::Context => "pgveil.context",
        }
    }

    /// The setting a parameter name means: `Ok(None)` for a name outside `pgveil.`, an error
    /// for an unknown `pgveil.` name (as PostgreSQL refuses an unknown parameter). Names
    /// compare case-insensitively, as PostgreSQL's parameter names do.
    pub fn parse(name: &str) -> Result<Option<Setting>, ContextError> {
        let is_ours = name
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX));
        if !is_ours {
            return Ok(None);
        }
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
            .map(Some)
            .ok_or_else(|| ContextError::UnknownSetting(name.to_string()))
    }
}

/// Checks a value for `setting` (not the token): non-empty, at most [`MAX_VALUE_LEN`] bytes,
/// no control characters (it is written into audit records and alert labels).
pub fn check_value(setting: Setting, value: &str) -> Result<(), ContextError> {
    let why = if value.trim().is_empty() {
        "must not be empty"
    } else if value.len() > MAX_VALUE_LEN {
        "is longer than 256 bytes"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(ContextError::BadValue {
        setting: setting.name(),
        why,
    })
}

/// Who is reading and why, for one session (or one transaction, with `SET LOCAL`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    pub end_user: Option<String>,
    pub purpose: Option<String>,
    /// The break-glass reason; `Some` while break-glass is on.
    pub break_glass: Option<String>,
}

impl SessionContext {
    /// The context a verified token sets (all three settings at once).
    pub fn from_token(claims: TokenClaims) -> Self {
        Self {
            end_user: Some(claims.end_user),
            purpose: claims.purpose,
            break_glass: claims.break_glass,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.end_user.is_none() && self.purpose.is_none() && self.break_glass.is_none()
    }

    /// Whether a plain `SET pgveil.end_user|purpose|break_glass` may be used: not when a
    /// token key is configured (then only `pgveil.context` sets the context).
    pub fn check_plain_set(setting: Setting, tokens_required: bool) -> Result<(), ContextError> {
        if tokens_required && setting != Setting::Context {
            return Err(ContextError::TokenRequired(setting.name()));
        }
        Ok(())
    }

    /// `[policy] require_purpose`: a statement that reads a protected column needs a purpose.
    pub fn check_purpose(&self, policy: &PolicyConfig) -> Result<(), ContextError> {
        if policy.require_purpose && self.purpose.is_none() {
            return Err(ContextError::PurposeRequired);
        }
        Ok(())
    }

    /// Whether a session with `roles` (its login and every role it is a member of) may use
    /// break-glass: one of them is in `[policy] break_glass_roles`. Exact names, as
    /// PostgreSQL role names compare.
    pub fn may_break_glass(roles: &[String], break_glass_roles: &[String]) -> bool {
        roles
            .iter()
            .any(|role| break_glass_roles.iter().any(|allowed| allowed == role))
    }

    /// Refuses a context that asks for break-glass (by setting or token claim) for a
    /// session that may not use it (`break_glass_roles`: `[policy] break_glass_roles`).
    pub fn check_break_glass(
        &self,
        roles: &[String],
        break_glass_roles: &[String],
    ) -> Result<(), ContextError> {
        if self.break_glass.is_some() && !Self::may_break_glass(roles, break_glass_roles) {
            return Err(ContextError::BreakGlassNotAllowed);
        }
        Ok(())
    }

    /// The access this context gives where the policy gives `access`: raised by
    /// break-glass (see [`crate::policy::break_glass`]), unchanged otherwise.
    pub fn access(&self, access: Access) -> Access {
        if self.break_glass.is_some() {
            crate::policy::break_glass::raise(access)
        } else {
            access
        }
    }

    /// The audit record's `end_user`, `purpose` and `break_glass`.
    pub fn record_context(&self) -> RecordContext {
        RecordContext {
            end_user: self.end_user.clone(),
            purpose: self.purpose.clone(),
            break_glass: self.break_glass.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mask::MaskKind;

    fn policy(require_purpose: bool, roles: &[&str]) -> PolicyConfig {
        PolicyConfig {
            default_access: Access::Deny,
            require_purpose,
            break_glass_roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn setting_names() {
        assert_eq!(
            Setting::parse("pgveil.end_user").unwrap(),
            Some(Setting::EndUser)
        );
        assert_eq!(
            Setting::parse("PGVEIL.Purpose").unwrap(),
            Some(Setting::Purpose)
        );
        assert_eq!(
            Setting::parse("pgveil.context").unwrap(),
            Some(Setting::Context)
        );
        assert_eq!(Setting::parse("application_name").unwrap(), None);
        assert_eq!(Setting::parse("pgveilx.end_user").unwrap(), None);
        let e = Setting::parse("pgveil.enduser").unwrap_err();
        assert_eq!(e.sqlstate(), "42704");
        assert!(Setting::parse("pgveil.end_user2").is_err());
        assert!(Setting::parse("pgveil.").is_err());
    }

    #[test]
    fn values() {
        assert!(check_value(Setting::EndUser, "dr.alice@clinic").is_ok());
        for bad in ["", "  ", "a\nb", "tab\there"] {
            let e = check_value(Setting::Purpose, bad).unwrap_err();
            assert_eq!(e.sqlstate(), "22023");
        }
        assert!(check_value(Setting::BreakGlass, &"x".repeat(257)).is_err());
        assert!(check_value(Setting::BreakGlass, &"é".repeat(128)).is_ok());
    }

    #[test]
    fn purpose_rule() {
        let mut context = SessionContext::default();
        assert!(context.check_purpose(&policy(false, &[])).is_ok());
        let e = context.check_purpose(&policy(true, &[])).unwrap_err();
        assert_eq!(e.sqlstate(), "42501");
        assert!(e.to_string().contains("declare a purpose of use"), "{e}");
        context.purpose = Some("treatment".into());
        assert!(context.check_purpose(&policy(true, &[])).is_ok());
    }

    #[test]
    fn break_glass_needs_a_listed_role_and_never_lifts_deny() {
        let policy = policy(false, &["clinician"]);
        let context = SessionContext {
            end_user: Some("dr.alice".into()),
            purpose: None,
            break_glass: Some("code blue".into()),
        };
        assert!(context
            .check_break_glass(&strings(&["app", "clinician"]), &policy.break_glass_roles)
            .is_ok());
        let e = context
            .check_break_glass(
                &strings(&["app", "clinician_x", "billing"]),
                &policy.break_glass_roles,
            )
            .unwrap_err();
        assert_eq!(e.sqlstate(), "42501");
        assert!(SessionContext::default()
            .check_break_glass(&strings(&["app"]), &policy.break_glass_roles)
            .is_ok());
        assert_eq!(
            context.access(Access::Mask(MaskKind::Last4)),
            Access::Plaintext
        );
        assert_eq!(context.access(Access::Plaintext), Access::Plaintext);
        assert_eq!(context.access(Access::Deny), Access::Deny);
        let calm = SessionContext {
            break_glass: None,
            ..context.clone()
        };
        assert_eq!(
            calm.access(Access::Mask(MaskKind::Year)),
            Access::Mask(MaskKind::Year)
        );
        let record = context.record_context();
        assert_eq!(record.break_glass.as_deref(), Some("code blue"));
        assert_eq!(record.end_user.as_deref(), Some("dr.alice"));
    }

    #[test]
    fn tokens_replace_plain_settings_when_required() {
        assert!(SessionContext::check_plain_set(Setting::EndUser, false).is_ok());
        let e = SessionContext::check_plain_set(Setting::EndUser, true).unwrap_err();
        assert_eq!(e.sqlstate(), "28000");
        assert!(SessionContext::check_plain_set(Setting::Context, true).is_ok());
        let context = SessionContext::from_token(TokenClaims {
            end_user: "u".into(),
            purpose: Some("p".into()),
            break_glass: None,
            expires_at: 1,
        });
        assert_eq!(context.end_user.as_deref(), Some("u"));
        assert!(!context.is_empty());
        assert!(SessionContext::default().is_empty());
    }
}
