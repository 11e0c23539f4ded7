//! `[context]`: how sessions may declare who and why (DESIGN.md "Session context").

use std::path::PathBuf;
use std::time::Duration;

use super::{Section, Walker};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextConfig {
    /// Ed25519 public key (base64 of its 32 bytes, or a PEM `PUBLIC KEY`). When set, the
    /// context can only be set by a token it signed (`SET pgveil.context = '<JWT>'`).
    pub token_public_key_file: Option<PathBuf>,
    /// The furthest ahead a token's `exp` may be.
    pub max_token_lifetime: Duration,
}

pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            token_public_key_file: None,
            max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }
}

impl Walker<'_> {
    pub(super) fn context(&mut self, s: &mut Section<'_>) -> ContextConfig {
        let token_public_key_file = self
            .opt_str(s, "token_public_key_file")
            .map(|p| self.path(&p));
        let max_token_lifetime = self
            .opt_int(s, "max_token_lifetime_secs", 1, 86_400)
            .map_or(DEFAULT_MAX_TOKEN_LIFETIME, |v| {
                Duration::from_secs(v as u64)
            });
        ContextConfig {
            token_public_key_file,
            max_token_lifetime,
        }
    }

    /// A list of strings (`break_glass_roles = ["clinician"]`).
    pub(super) fn opt_str_list(&mut self, s: &mut Section<'_>, key: &'static str) -> Vec<String> {
        let Some(value) = self.value(s, key) else {
            return Vec::new();
        };
        let Some(array) = value.as_array() else {
            self.problem(
                value.span(),
                format!("{} {key}: expected a list of strings", s.name),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in array.iter() {
            match item.as_str() {
                Some(text) if !text.is_empty() => out.push(text.to_string()),
                _ => self.problem(
                    item.span(),
                    format!("{} {key}: every entry must be a non-empty string", s.name),
                ),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn context_and_policy_keys() {
        let text = "[context]\ntoken_public_key_file = \"keys/app-context.pub\"\nmax_token_lifetime_secs = 300\n\
[policy]\nrequire_purpose = true\nbreak_glass_roles = [\"clinician\", \"er_staff\"]\n";
        let config = Config::parse(text, "t.toml", Path::new("/etc/pgveil")).unwrap();
        assert_eq!(
            config.context.token_public_key_file,
            Some(PathBuf::from("/etc/pgveil/keys/app-context.pub"))
        );
        assert_eq!(config.context.max_token_lifetime, Duration::from_secs(300));
        assert!(config.policy.require_purpose);
        assert_eq!(config.policy.break_glass_roles, ["clinician", "er_staff"]);
    }

    #[test]
    fn defaults_and_errors() {
        let config = Config::parse("[server]\n", "t.toml", Path::new(".")).unwrap();
        assert_eq!(config.context, ContextConfig::default());
        assert!(!config.policy.require_purpose);
        assert!(config.policy.break_glass_roles.is_empty());
        let err = Config::parse(
            "[context]\nmax_token_lifetime_secs = 0\nbogus = 1\n[policy]\nbreak_glass_roles = \"clinician\"\nrequire_purpose = \"yes\"\n",
            "t.toml",
            Path::new("."),
        )
        .err()
        .unwrap();
        let lines = err.lines();
        for (at, what) in [
            ("t.toml:2:", "max_token_lifetime_secs: 0 is outside"),
            ("t.toml:3:", "unknown key \"bogus\""),
            ("t.toml:5:", "break_glass_roles: expected a list of strings"),
            ("t.toml:6:", "require_purpose: expected true or false"),
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(at) && l.contains(what)),
                "{at} {what}: {lines:#?}"
            );
        }
        let err = Config::parse(
            "[policy]\nbreak_glass_roles = [\"a\", 3]\n",
            "t.toml",
            Path::new("."),
        )
        .err()
        .unwrap();
        assert!(
            err.lines()[0].contains("non-empty string"),
            "{:?}",
            err.lines()
        );
    }
}
