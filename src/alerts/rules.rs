//! The `[[alert]]` rules over the stream of record summaries, in log order. Pure: time is
//! the records' own, so the same records always raise the same alerts.
//!
//! Per rule and per user (the end user, or the login when no end user is set) a rule keeps
//! what falls in its sliding window. Once it fires for a user it stays quiet for that user
//! for one window (deduplication), then may fire again.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration as TimeDelta, Utc};

use super::summary::RecordSummary;
use crate::config::{AlertRule, AlertRuleKind};

/// Audit sequence numbers listed in an alert, at most.
pub const MAX_LISTED_SEQS: usize = 100;

/// An alert: who, which rule, which audit records. No data values, no subject ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The `[[alert]]` name.
    pub name: String,
    /// The rule kind (`subjects_per_user`, …).
    pub rule: &'static str,
    pub login: String,
    pub end_user: Option<String>,
    /// Time of the record that raised it.
    pub time: DateTime<Utc>,
    pub window_secs: u64,
    pub threshold: Option<u64>,
    /// Distinct subjects, refusals, or 1.
    pub count: u64,
    /// The records in the window that raised it, oldest first (the most recent
    /// [`MAX_LISTED_SEQS`] when there are more).
    pub seqs: Vec<u64>,
    pub first_seq: u64,
    pub last_seq: u64,
    /// One line for people, without values.
    pub summary: String,
}

/// Whose activity a rule counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum UserKey {
    EndUser(String),
    Login(String),
}

impl UserKey {
    fn of(summary: &RecordSummary) -> Self {
        match &summary.end_user {
            Some(user) => Self::EndUser(user.clone()),
            None => Self::Login(summary.login.clone()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::EndUser(u) => format!("end user {u}"),
            Self::Login(l) => format!("login {l} (no end user set)"),
        }
    }
}

/// One user's events in one rule's window.
#[derive(Debug, Default)]
struct UserWindow {
    /// (time, seq, subject tag) in arrival order.
    events: VecDeque<(DateTime<Utc>, u64, u64)>,
    /// Subject tag → the time it was last seen in the window.
    subjects: HashMap<u64, DateTime<Utc>>,
    /// Quiet until this time after firing.
    quiet_until: Option<DateTime<Utc>>,
    newest: Option<DateTime<Utc>>,
}

impl UserWindow {
    fn expire(&mut self, horizon: DateTime<Utc>) {
        while let Some(&(time, _, tag)) = self.events.front() {
            if time > horizon {
                break;
            }
            self.events.pop_front();
            if self.subjects.get(&tag) == Some(&time) {
                self.subjects.remove(&tag);
            }
        }
    }

    /// Keeps at most `cap` events, dropping the oldest: only ever lowers a count that
    /// already reached its threshold.
    fn bound(&mut self, cap: usize) {
        while self.events.len() > cap {
            if let Some((time, _, tag)) = self.events.pop_front() {
                if self.subjects.get(&tag) == Some(&time) {
                    self.subjects.remove(&tag);
                }
            }
        }
    }

    fn seqs(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.events.iter().map(|e| e.1).collect();
        seqs.dedup();
        seqs
    }
}

struct RuleState {
    rule: AlertRule,
    window: TimeDelta,
    users: HashMap<UserKey, UserWindow>,
}

/// Evaluates every configured rule over record summaries.
pub struct Evaluator {
    rules: Vec<RuleState>,
    seen: u64,
}

/// Summaries between two sweeps of idle users.
const SWEEP_EVERY: u64 = 4096;

impl Evaluator {
    pub fn new(rules: &[AlertRule]) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|rule| RuleState {
                    window: TimeDelta::from_std(rule.window)
                        .unwrap_or_else(|_| TimeDelta::seconds(3600)),
                    rule: rule.clone(),
                    users: HashMap::new(),
                })
                .collect(),
            seen: 0,
        }
    }

    /// Whether a rule counts data subjects (the writer then tags them).
    pub fn counts_subjects(rules: &[AlertRule]) -> bool {
        rules
            .iter()
            .any(|r| matches!(r.kind, AlertRuleKind::SubjectsPerUser { .. }))
    }

    /// The alerts this record raises.
    pub fn observe(&mut self, summary: &RecordSummary) -> Vec<Alert> {
        self.seen += 1;
        let sweep = self.seen.is_multiple_of(SWEEP_EVERY);
        let mut alerts = Vec::new();
        for state in &mut self.rules {
            if let Some(alert) = state.observe(summary) {
                alerts.push(alert);
            }
            if sweep {
                state.sweep(summary.time);
            }
        }
        alerts
    }
}

impl RuleState {
    fn observe(&mut self, s: &RecordSummary) -> Option<Alert> {
        let relevant = match &self.rule.kind {
            AlertRuleKind::SubjectsPerUser { .. } => !s.subjects.is_empty(),
            AlertRuleKind::RefusalsPerUser { .. } => s.refused,
            AlertRuleKind::BreakGlass => s.break_glass,
            AlertRuleKind::OutsideHours { hours, time_zone } => {
                s.read_protected && !hours.contains(s.time.with_timezone(time_zone).time())
            }
        };
        if !relevant {
            return None;
        }
        let key = UserKey::of(s);
        let window = self.window;
        let user = self.users.entry(key.clone()).or_default();
        user.newest = Some(user.newest.map_or(s.time, |n| n.max(s.time)));
        let horizon = user.newest.unwrap_or(s.time) - window;
        user.expire(horizon);
        let (count, threshold) = match &self.rule.kind {
            AlertRuleKind::SubjectsPerUser { threshold } => {
                for &tag in &s.subjects {
                    user.events.push_back((s.time, s.seq, tag));
                    user.subjects.insert(tag, s.time);
                }
                let distinct = user.subjects.len() as u64;
                let cap = usize::try_from(threshold.saturating_mul(4))
                    .unwrap_or(usize::MAX)
                    .max(1024);
                user.bound(cap);
                (distinct, Some(*threshold))
            }
            AlertRuleKind::RefusalsPerUser { threshold } => {
                user.events.push_back((s.time, s.seq, 0));
                let cap = usize::try_from(*threshold).unwrap_or(usize::MAX).max(1024);
                user.bound(cap);
                (user.events.len() as u64, Some(*threshold))
            }
            AlertRuleKind::BreakGlass | AlertRuleKind::OutsideHours { .. } => {
                user.events.clear();
                user.events.push_back((s.time, s.seq, 0));
                (1, None)
            }
        };
        if threshold.is_some_and(|t| count < t) {
            return None;
        }
        if user.quiet_until.is_some_and(|until| s.time < until) {
            return None;
        }
        user.quiet_until = Some(s.time + window);
        let all = user.seqs();
        let first_seq = all.first().copied().unwrap_or(s.seq);
        let last_seq = all.last().copied().unwrap_or(s.seq);
        let seqs = all[all.len().saturating_sub(MAX_LISTED_SEQS)..].to_vec();
        let window_secs = window.num_seconds().max(0) as u64;
        let who = key.describe();
        let summary = match &self.rule.kind {
            AlertRuleKind::SubjectsPerUser { threshold } => format!(
                "{who} read protected data of {count} distinct data subjects within {window_secs} s (threshold {threshold})"
            ),
            AlertRuleKind::RefusalsPerUser { threshold } => format!(
                "{who} had {count} statements refused within {window_secs} s (threshold {threshold})"
            ),
            AlertRuleKind::BreakGlass => {
                format!("{who} read under break-glass (the reason is in the audit record)")
            }
            AlertRuleKind::OutsideHours { hours, time_zone } => format!(
                "{who} read protected data outside {hours} {}",
                time_zone.name()
            ),
        };
        Some(Alert {
            name: self.rule.name.clone(),
            rule: self.rule.kind.name(),
            login: s.login.clone(),
            end_user: s.end_user.clone(),
            time: s.time,
            window_secs,
            threshold,
            count,
            seqs,
            first_seq,
            last_seq,
            summary,
        })
    }

    /// Forgets users with nothing left in the window and no quiet period running.
    fn sweep(&mut self, now: DateTime<Utc>) {
        let horizon = now - self.window;
        self.users.retain(|_, user| {
            user.expire(horizon);
            !user.events.is_empty() || user.quiet_until.is_some_and(|until| until > now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HoursRange;
    use chrono::TimeZone;
    use std::time::Duration;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 5, 15, 0, 0).unwrap() + TimeDelta::seconds(secs)
    }

    fn read(seq: u64, secs: i64, end_user: Option<&str>, subjects: &[u64]) -> RecordSummary {
        RecordSummary {
            seq,
            time: at(secs),
            login: "app".into(),
            end_user: end_user.map(str::to_string),
            refused: false,
            read_protected: true,
            break_glass: false,
            subjects: subjects.to_vec(),
        }
    }

    fn rule(name: &str, kind: AlertRuleKind, window: u64) -> AlertRule {
        AlertRule {
            name: name.into(),
            kind,
            window: Duration::from_secs(window),
        }
    }

    #[test]
    fn distinct_subjects_in_a_sliding_window() {
        let mut e = Evaluator::new(&[rule(
            "bulk",
            AlertRuleKind::SubjectsPerUser { threshold: 3 },
            60,
        )]);
        assert!(e.observe(&read(1, 0, Some("alice"), &[10, 11])).is_empty());
        // The same subjects again, and another user's: no alert.
        assert!(e.observe(&read(2, 10, Some("alice"), &[10, 11])).is_empty());
        assert!(e.observe(&read(3, 11, Some("bob"), &[12, 13])).is_empty());
        // Subject 10 and 11 read at 0 and 10 are still in the window at 50.
        let alerts = e.observe(&read(4, 50, Some("alice"), &[12]));
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!((a.name.as_str(), a.rule), ("bulk", "subjects_per_user"));
        assert_eq!(a.count, 3);
        assert_eq!(a.end_user.as_deref(), Some("alice"));
        assert_eq!(a.seqs, vec![1, 2, 4]);
        assert_eq!((a.first_seq, a.last_seq), (1, 4));
        // Deduplicated for one window, then again.
        assert!(e.observe(&read(5, 60, Some("alice"), &[13, 14])).is_empty());
        assert_eq!(
            e.observe(&read(6, 111, Some("alice"), &[15, 16, 17])).len(),
            1
        );
    }

    #[test]
    fn old_reads_leave_the_window() {
        let mut e = Evaluator::new(&[rule(
            "bulk",
            AlertRuleKind::SubjectsPerUser { threshold: 3 },
            60,
        )]);
        assert!(e.observe(&read(1, 0, None, &[1, 2])).is_empty());
        // At 61 the reads at 0 are out of the window: two distinct, not three.
        assert!(e.observe(&read(2, 61, None, &[3, 4])).is_empty());
        let alerts = e.observe(&read(3, 62, None, &[5]));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].seqs, vec![2, 3]);
        assert!(alerts[0].summary.contains("login app (no end user set)"));
    }

    #[test]
    fn refusals_break_glass_and_hours() {
        let mut e = Evaluator::new(&[
            rule(
                "refused",
                AlertRuleKind::RefusalsPerUser { threshold: 2 },
                300,
            ),
            rule("glass", AlertRuleKind::BreakGlass, 300),
            rule(
                "night",
                AlertRuleKind::OutsideHours {
                    hours: HoursRange::parse("07:00-19:00").unwrap(),
                    time_zone: chrono_tz::America::New_York,
                },
                300,
            ),
        ]);
        let mut refused = read(1, 0, Some("eve"), &[]);
        refused.refused = true;
        refused.read_protected = false;
        assert!(e.observe(&refused).is_empty());
        refused.seq = 2;
        let alerts = e.observe(&refused);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule, "refusals_per_user");
        assert_eq!(alerts[0].seqs, vec![1, 2]);
        // 15:00 UTC is 10:00 in New York: inside hours, and no break-glass.
        let mut day = read(3, 0, Some("eve"), &[]);
        assert!(e.observe(&day).is_empty());
        // 03:00 UTC is 22:00 in New York the day before.
        day.time = Utc.with_ymd_and_hms(2026, 1, 6, 3, 0, 0).unwrap();
        day.seq = 4;
        let alerts = e.observe(&day);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule, "outside_hours");
        assert!(alerts[0].summary.contains("07:00-19:00 America/New_York"));
        let mut glass = read(5, 10, Some("dr.who"), &[]);
        glass.break_glass = true;
        let alerts = e.observe(&glass);
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].rule, alerts[0].first_seq), ("break_glass", 5));
        glass.seq = 6;
        assert!(
            e.observe(&glass).is_empty(),
            "deduplicated within the window"
        );
        // A refused statement outside hours is not a read.
        let mut night_refusal = refused.clone();
        night_refusal.time = day.time;
        night_refusal.end_user = Some("zed".into());
        assert!(e.observe(&night_refusal).is_empty());
    }

    #[test]
    fn windows_stay_bounded() {
        let mut e = Evaluator::new(&[rule(
            "bulk",
            AlertRuleKind::SubjectsPerUser { threshold: 10 },
            3600,
        )]);
        let many: Vec<u64> = (0..5000).collect();
        let alerts = e.observe(&read(1, 0, None, &many));
        assert_eq!(alerts.len(), 1);
        let user = e.rules[0].users.values().next().unwrap();
        assert!(user.events.len() <= 1024);
        assert_eq!(alerts[0].count, 5000);
        assert_eq!(alerts[0].seqs, vec![1]);
    }
}
