//! `[alerts]` (where alerts go) and `[[alert]]` (the rules), DESIGN.md "Alerts".

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveTime;

use super::{Section, Walker};

/// Where alerts are delivered besides the `pgveil_alerts_total` metric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertsConfig {
    pub alertmanager_url: Option<AlertmanagerUrl>,
    /// One JSON line per alert.
    pub file: Option<PathBuf>,
}

/// `http://host[:port][/prefix]` of a Prometheus Alertmanager; alerts are posted to
/// `{prefix}/api/v2/alerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerUrl {
    /// Host name or address, without IPv6 brackets (for connecting).
    pub host: String,
    pub port: u16,
    /// `host:port` as written in the `Host` header.
    pub authority: String,
    /// Path before `/api/v2/alerts`, without a trailing slash (often empty).
    pub prefix: String,
}

impl AlertmanagerUrl {
    /// Parses an `http://` URL without credentials, query or fragment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|_| format!("\"{text}\" is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "\"{text}\": https is not supported yet; reach Alertmanager over http on a trusted network or a local TLS sidecar"
                ))
            }
            _ => return Err(format!("\"{text}\" is not an http:// URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("\"{text}\" has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "\"{text}\": credentials in the URL are not supported"
            ));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(format!("\"{text}\": a query or fragment is not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("\"{text}\" has no host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            host,
            port,
            authority: authority.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The path alerts are posted to.
    pub fn alerts_path(&self) -> String {
        format!("{}/api/v2/alerts", self.prefix)
    }
}

impl fmt::Display for AlertmanagerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// One `[[alert]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRule {
    /// The rule's name: the `alertname` label and the metric's `rule` label.
    pub name: String,
    pub kind: AlertRuleKind,
    /// The sliding window of the counting rules, and for every rule the period in which a
    /// second alert for the same user is not raised again.
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertRuleKind {
    /// Distinct data subjects read by one end user (or login) within the window reach
    /// `threshold`.
    SubjectsPerUser { threshold: u64 },
    /// Refused statements of one end user (or login) within the window reach `threshold`.
    RefusalsPerUser { threshold: u64 },
    /// Any statement run under break-glass.
    BreakGlass,
    /// A read of protected data outside `hours` in `time_zone`.
    OutsideHours {
        hours: HoursRange,
        time_zone: chrono_tz::Tz,
    },
}

impl AlertRuleKind {
    pub const NAMES: [&'static str; 4] = [
        "subjects_per_user",
        "refusals_per_user",
        "break_glass",
        "outside_hours",
    ];

    /// The `rule = "…"` spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SubjectsPerUser { .. } => "subjects_per_user",
            Self::RefusalsPerUser { .. } => "refusals_per_user",
            Self::BreakGlass => "break_glass",
            Self::OutsideHours { .. } => "outside_hours",
        }
    }
}

/// Working hours `HH:MM-HH:MM` in local time; the start is inside, the end is not. A range
/// whose end is before its start spans midnight (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoursRange {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl HoursRange {
    pub fn parse(text: &str) -> Option<Self> {
        let (start, end) = text.trim().split_once('-')?;
        let time = |t: &str| {
            let t = t.trim();
            // `24:00` as an end means midnight.
            if t == "24:00" {
                return NaiveTime::from_hms_opt(0, 0, 0);
            }
            let (h, m) = t.split_once(':')?;
            if h.is_empty() || h.len() > 2 || m.len() != 2 {
                return None;
            }
            NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
        };
        let range = Self {
            start: time(start)?,
            end: time(end)?,
        };
        (range.start != range.end).then_some(range)
    }

    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

impl fmt::Display for HoursRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

/// Default of `window_secs`.
pub const DEFAULT_ALERT_WINDOW: Duration = Duration::from_secs(3600);

/// A rule name is a label value and a file field: plain characters only.
fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

impl Walker<'_> {
    pub(super) fn alerts(&mut self, s: &mut Section<'_>) -> AlertsConfig {
        let alertmanager_url = self.opt_str(s, "alertmanager_url").and_then(|text| {
            match AlertmanagerUrl::parse(&text) {
                Ok(url) => Some(url),
                Err(why) => {
                    let span = self.span_of(s, "alertmanager_url");
                    self.problem(span, format!("[alerts] alertmanager_url: {why}"));
                    None
                }
            }
        });
        let file = self.opt_str(s, "file").map(|p| self.path(&p));
        AlertsConfig {
            alertmanager_url,
            file,
        }
    }

    pub(super) fn alert_rule(&mut self, s: &mut Section<'_>) -> Option<AlertRule> {
        let name = self.req_str(s, "name");
        let rule = self.req_str(s, "rule");
        let threshold = self.opt_int(s, "threshold", 1, 1_000_000_000);
        let window = self
            .opt_int(s, "window_secs", 1, 30 * 86_400)
            .map_or(DEFAULT_ALERT_WINDOW, |v| Duration::from_secs(v as u64));
        let hours_raw = self.opt_str(s, "hours");
        let zone_raw = self.opt_str(s, "time_zone");
        let label = match &name {
            Some(n) => format!("[[alert]] {n}"),
            None => s.name.clone(),
        };
        if let Some(n) = &name {
            if !valid_rule_name(n) {
                let span = self.span_of(s, "name");
                self.problem(
                    span,
                    format!("{label}: name must be 1 to 100 letters, digits, '_', '-', '.' or ':'"),
                );
            }
        }
        let hours = hours_raw.as_deref().and_then(|raw| {
            let parsed = HoursRange::parse(raw);
            if parsed.is_none() {
                let span = self.span_of(s, "hours");
                self.problem(
                    span,
                    format!("{label}: hours \"{raw}\" is not HH:MM-HH:MM with two different times"),
                );
            }
            parsed
        });
        let time_zone = zone_raw.as_deref().and_then(|raw| {
            let parsed = raw.parse::<chrono_tz::Tz>().ok();
            if parsed.is_none() {
                let span = self.span_of(s, "time_zone");
                self.problem(span, format!("{label}: unknown time_zone \"{raw}\" (an IANA name such as America/New_York or UTC)"));
            }
            parsed
        });
        let rule = rule?;
        let needs_threshold = matches!(rule.as_str(), "subjects_per_user" | "refusals_per_user");
        let kind = match rule.as_str() {
            "subjects_per_user" => threshold.map(|t| AlertRuleKind::SubjectsPerUser {
                threshold: t as u64,
            }),
            "refusals_per_user" => threshold.map(|t| AlertRuleKind::RefusalsPerUser {
                threshold: t as u64,
            }),
            "break_glass" => Some(AlertRuleKind::BreakGlass),
            "outside_hours" => {
                if hours_raw.is_none() {
                    self.problem(
                        s.span.clone(),
                        format!("{label}: rule outside_hours needs hours = \"HH:MM-HH:MM\""),
                    );
                }
                hours.map(|hours| AlertRuleKind::OutsideHours {
                    hours,
                    time_zone: time_zone.unwrap_or(chrono_tz::UTC),
                })
            }
            other => {
                let span = self.span_of(s, "rule");
                self.problem(
                    span,
                    format!(
                        "{label}: unknown rule \"{other}\" (expected one of {})",
                        AlertRuleKind::NAMES.join(", ")
                    ),
                );
                return None;
            }
        };
        if needs_threshold && !s.table.contains_key("threshold") {
            self.problem(
                s.span.clone(),
                format!("{label}: rule {rule} needs a threshold"),
            );
        }
        if !needs_threshold && s.table.contains_key("threshold") {
            let span = self.span_of(s, "threshold");
            self.problem(
                span,
                format!("{label}: threshold does not apply to rule {rule}"),
            );
        }
        if rule != "outside_hours" {
            for key in ["hours", "time_zone"] {
                if s.table.contains_key(key) {
                    let span = self.span_of(s, key);
                    self.problem(
                        span,
                        format!("{label}: {key} applies to rule outside_hours only"),
                    );
                }
            }
        }
        Some(AlertRule {
            name: name?,
            kind: kind?,
            window,
        })
    }

    /// Rule names are unique; rules (`entries` `[[alert]]` tables, valid or not) need the
    /// audit log they are evaluated beside.
    pub(super) fn check_alert_rules(
        &mut self,
        rules: &[AlertRule],
        entries: usize,
        has_audit: bool,
    ) {
        let mut names = HashSet::new();
        for rule in rules {
            if !names.insert(rule.name.as_str()) {
                self.problem(None, format!("[[alert]] {} is listed twice", rule.name));
            }
        }
        if entries > 0 && !has_audit {
            self.problem(
                None,
                "[[alert]] rules are evaluated as audit records are written: they need an [audit] section",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    const BASE: &str = "[audit]\nsigning_key_file = \"k\"\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, "t.toml", Path::new("/etc/pgveil")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn rules_parse() {
        let text = format!(
            "{BASE}[alerts]\nalertmanager_url = \"http://127.0.0.1:9093/\"\nfile = \"alerts.jsonl\"\n\
[[alert]]\nname = \"bulk-read\"\nrule = \"subjects_per_user\"\nthreshold = 200\nwindow_secs = 3600\n\
[[alert]]\nname = \"refusals\"\nrule = \"refusals_per_user\"\nthreshold = 5\n\
[[alert]]\nname = \"glass\"\nrule = \"break_glass\"\n\
[[alert]]\nname = \"night\"\nrule = \"outside_hours\"\nhours = \"07:00-19:00\"\ntime_zone = \"America/New_York\"\n"
        );
        let config = Config::parse(&text, "t.toml", Path::new("/etc/pgveil")).unwrap();
        let url = config.alerts.alertmanager_url.as_ref().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 9093));
        assert_eq!(url.alerts_path(), "/api/v2/alerts");
        assert_eq!(
            config.alerts.file,
            Some(PathBuf::from("/etc/pgveil/alerts.jsonl"))
        );
        assert_eq!(config.alert_rules.len(), 4);
        assert_eq!(
            config.alert_rules[0].kind,
            AlertRuleKind::SubjectsPerUser { threshold: 200 }
        );
        assert_eq!(config.alert_rules[1].window, DEFAULT_ALERT_WINDOW);
        match &config.alert_rules[3].kind {
            AlertRuleKind::OutsideHours { hours, time_zone } => {
                assert_eq!(hours.to_string(), "07:00-19:00");
                assert_eq!(*time_zone, chrono_tz::America::New_York);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_rules_are_located() {
        let text = format!(
            "{BASE}[[alert]]\nname = \"a\"\nrule = \"bulk\"\n\
[[alert]]\nname = \"b\"\nrule = \"subjects_per_user\"\n\
[[alert]]\nname = \"c\"\nrule = \"outside_hours\"\nhours = \"19:00-19:00\"\ntime_zone = \"Mars/Olympus\"\n\
[[alert]]\nname = \"d\"\nrule = \"break_glass\"\nthreshold = 3\n\
[[alert]]\nname = \"b\"\nrule = \"refusals_per_user\"\nthreshold = 0\n\
[[alert]]\nname = \"d\"\nrule = \"break_glass\"\n\
[[alert]]\nname = \"has space\"\nrule = \"break_glass\"\nhours = \"07:00-19:00\"\n"
        );
        let lines = problems(&text);
        let has = |at: &str, what: &str| {
            assert!(
                lines.iter().any(|l| l.starts_with(at) && l.contains(what)),
                "{at} {what}: {lines:#?}"
            )
        };
        has("t.toml:5:", "unknown rule \"bulk\"");
        has("t.toml:6:", "rule subjects_per_user needs a threshold");
        has("t.toml:12:", "hours \"19:00-19:00\"");
        has("t.toml:13:", "unknown time_zone \"Mars/Olympus\"");
        has("t.toml:17:", "threshold does not apply to rule break_glass");
        has("t.toml:21:", "threshold: 0 is outside");
        has("t.toml", "[[alert]] d is listed twice");
        has("t.toml:26:", "name must be");
        has("t.toml:28:", "hours applies to rule outside_hours only");
    }

    #[test]
    fn rules_need_the_audit_log_and_outside_hours_needs_hours() {
        let lines = problems("[[alert]]\nname = \"n\"\nrule = \"outside_hours\"\n");
        assert!(
            lines.iter().any(|l| l.contains("need an [audit] section")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains("needs hours")), "{lines:?}");
    }

    #[test]
    fn alertmanager_urls() {
        for bad in [
            "https://am:9093",
            "ftp://am",
            "http://user:pw@am:9093",
            "http://am:9093/?x=1",
            "am:9093",
            "not a url",
        ] {
            assert!(AlertmanagerUrl::parse(bad).is_err(), "{bad}");
        }
        let url = AlertmanagerUrl::parse("http://[::1]:9093/am/").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.authority, "[::1]:9093");
        assert_eq!(url.alerts_path(), "/am/api/v2/alerts");
        assert_eq!(AlertmanagerUrl::parse("http://am").unwrap().port, 80);
    }

    #[test]
    fn hours_ranges() {
        let day = HoursRange::parse("07:00-19:00").unwrap();
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(day.contains(t(7, 0)) && day.contains(t(18, 59)));
        assert!(!day.contains(t(19, 0)) && !day.contains(t(6, 59)));
        let night = HoursRange::parse("22:00-06:00").unwrap();
        assert!(night.contains(t(23, 0)) && night.contains(t(5, 0)));
        assert!(!night.contains(t(12, 0)));
        assert!(HoursRange::parse("8:30-24:00").unwrap().contains(t(23, 59)));
        for bad in ["07:00", "7-19", "25:00-26:00", "07:00-07:00", "07:0-19:00"] {
            assert!(HoursRange::parse(bad).is_none(), "{bad}");
        }
    }
}
