//! What an alert looks like where it goes: one JSON line in `[alerts] file`, one entry of
//! Alertmanager's `POST /api/v2/alerts`. Both carry the rule, the login, the end user and
//! the audit sequence numbers, never a data value or a subject id.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use chrono::{DateTime, Duration as TimeDelta, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::rules::Alert;

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The line written to `[alerts] file` (without newline).
pub fn file_line(alert: &Alert, raised_at: DateTime<Utc>) -> String {
    json!({
        "raised_at": time(raised_at),
        "time": time(alert.time),
        "alert": alert.name,
        "rule": alert.rule,
        "login": alert.login,
        "end_user": alert.end_user,
        "count": alert.count,
        "threshold": alert.threshold,
        "window_secs": alert.window_secs,
        "first_seq": alert.first_seq,
        "last_seq": alert.last_seq,
        "seqs": alert.seqs,
        "summary": alert.summary,
    })
    .to_string()
}

/// Appends one alert to the file (created owner-only; alerts name people).
pub fn append_to_file(path: &Path, alert: &Alert, raised_at: DateTime<Utc>) -> std::io::Result<()> {
    let mut line = file_line(alert, raised_at);
    line.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // One write of one line: concurrent readers never see half an alert.
    file.write_all(line.as_bytes())
}

/// Shortest time an alert stays active in Alertmanager after it is raised.
const MIN_ACTIVE: TimeDelta = TimeDelta::minutes(5);

/// When the alert stops being active: one window after the record that raised it (the
/// rule is quiet for that user until then), and never sooner than five minutes from now.
pub fn ends_at(alert: &Alert, now: DateTime<Utc>) -> DateTime<Utc> {
    let window = TimeDelta::seconds(i64::try_from(alert.window_secs).unwrap_or(i64::MAX / 2_000));
    (alert.time + window).max(now + MIN_ACTIVE)
}

/// One element of the Alertmanager API v2 `postableAlerts` array.
pub fn alertmanager_entry(alert: &Alert, now: DateTime<Utc>) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), json!(alert.name));
    labels.insert("rule".into(), json!(alert.rule));
    labels.insert("login".into(), json!(alert.login));
    if let Some(user) = &alert.end_user {
        labels.insert("end_user".into(), json!(user));
    }
    let seqs: Vec<String> = alert.seqs.iter().map(u64::to_string).collect();
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), json!(alert.summary));
    annotations.insert("audit_seqs".into(), json!(seqs.join(",")));
    annotations.insert("audit_seq_first".into(), json!(alert.first_seq.to_string()));
    annotations.insert("audit_seq_last".into(), json!(alert.last_seq.to_string()));
    annotations.insert("count".into(), json!(alert.count.to_string()));
    annotations.insert("window_secs".into(), json!(alert.window_secs.to_string()));
    if let Some(threshold) = alert.threshold {
        annotations.insert("threshold".into(), json!(threshold.to_string()));
    }
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": time(alert.time),
        "endsAt": time(ends_at(alert, now)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn alert() -> Alert {
        Alert {
            name: "bulk-read".into(),
            rule: "subjects_per_user",
            login: "app".into(),
            end_user: Some("dr.alice".into()),
            time: Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
            window_secs: 3600,
            threshold: Some(200),
            count: 201,
            seqs: vec![7, 9],
            first_seq: 7,
            last_seq: 9,
            summary: "end user dr.alice read protected data of 201 distinct data subjects".into(),
        }
    }

    #[test]
    fn file_lines_and_alertmanager_entries() {
        let raised = Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 1).unwrap();
        let line: Value = serde_json::from_str(&file_line(&alert(), raised)).unwrap();
        assert_eq!(line["alert"], "bulk-read");
        assert_eq!(line["seqs"], json!([7, 9]));
        assert_eq!(line["end_user"], "dr.alice");
        assert_eq!(line["raised_at"], "2026-01-05T10:00:01.000Z");
        let entry = alertmanager_entry(&alert(), raised);
        assert_eq!(entry["labels"]["alertname"], "bulk-read");
        assert_eq!(entry["labels"]["rule"], "subjects_per_user");
        assert_eq!(entry["labels"]["login"], "app");
        assert_eq!(entry["labels"]["end_user"], "dr.alice");
        assert_eq!(entry["annotations"]["audit_seqs"], "7,9");
        assert_eq!(entry["startsAt"], "2026-01-05T10:00:00.000Z");
        assert_eq!(entry["endsAt"], "2026-01-05T11:00:00.000Z");
        // Raised late: active for five more minutes at least.
        let late = Utc.with_ymd_and_hms(2026, 1, 5, 12, 0, 0).unwrap();
        assert_eq!(
            alertmanager_entry(&alert(), late)["endsAt"],
            "2026-01-05T12:05:00.000Z"
        );
        let mut login_only = alert();
        login_only.end_user = None;
        let entry = alertmanager_entry(&login_only, raised);
        assert!(entry["labels"].get("end_user").is_none());
    }

    #[test]
    fn the_file_is_appended_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let now = Utc::now();
        append_to_file(&path, &alert(), now).unwrap();
        append_to_file(&path, &alert(), now).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
