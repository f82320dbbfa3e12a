//! The daemon's metrics for node_exporter's textfile collector: a `.prom` file in Prometheus'
//! text exposition format, replaced atomically (node_exporter never reads half a file).
//!
//! Where: `[daemon] metrics_file` in the desired-state file, default
//! [`DEFAULT_METRICS_FILE`] (the directory Debian's prometheus-node-exporter reads); `""`
//! turns it off. The file is written only when its directory exists: lunkeeper does not create
//! node_exporter's directory on a host that has none.
//!
//! When: after a pass or a reload, only when a value changed. The time of the last successful
//! pass changes on every pass, so on its own it is written at most every [`PASS_TIME_REFRESH`]:
//! alert on `time() - lunkeeper_last_successful_pass_timestamp_seconds` above a few minutes
//! more than the resync interval.
//!
//! How: on a blocking thread, never on the event loop; one write at a time, so a stalled file
//! system holds one thread, and the values are written again once it answers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::apply::{ActionStats, DURATION_BUCKETS};
use crate::files::write_atomic;
use crate::status::VolumeStatus;

pub const DEFAULT_METRICS_FILE: &str = "/var/lib/prometheus/node-exporter/lunkeeper.prom";

/// How stale the pass time in the file may get while nothing else changes.
pub const PASS_TIME_REFRESH: Duration = Duration::from_secs(60);

const VOLUME_STATES: [&str; 6] = [
    "ready", "degraded", "pending", "failed", "blocked", "absent",
];
const PATH_STATES: [&str; 3] = ["active", "down", "missing"];

/// Everything the file shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub volumes: Vec<VolumeStatus>,
    pub actions: ActionStats,
    /// Whether the file's current content is in force.
    pub config_ok: bool,
    pub reloads_accepted: u64,
    pub reloads_rejected: u64,
    pub last_reload: Option<SystemTime>,
    pub last_pass: Option<SystemTime>,
}

/// The exposition text of everything but the last pass time.
pub fn render_body(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut lines: Vec<String> = Vec::new();

    let n = family_into(
        &mut out,
        "lunkeeper_volumes",
        "gauge",
        "Volumes in the desired-state file by state.",
    );
    for state in VOLUME_STATES {
        let count = s.volumes.iter().filter(|v| v.state == state).count();
        lines.push(format!("{n}{} {count}", labels(&[("state", state)])));
    }
    flush_into(&mut out, &mut lines);

    let n = family_into(
        &mut out,
        "lunkeeper_volume_state",
        "gauge",
        "1 for the state each volume is in.",
    );
    for v in &s.volumes {
        lines.push(format!(
            "{n}{} 1",
            labels(&[("volume", &v.name), ("state", &v.state)])
        ));
    }
    flush_into(&mut out, &mut lines);

    let n = family_into(
        &mut out,
        "lunkeeper_volume_paths",
        "gauge",
        "Paths of each volume by state (active, down, missing).",
    );
    for v in &s.volumes {
        for state in PATH_STATES {
            let count = v.paths.iter().filter(|p| p.state == state).count();
            lines.push(format!(
                "{n}{} {count}",
                labels(&[("volume", &v.name), ("state", state)])
            ));
        }
    }
    flush_into(&mut out, &mut lines);

    let n = family_into(
        &mut out,
        "lunkeeper_volume_size_bytes",
        "gauge",
        "Size of each usable volume's device in bytes.",
    );
    for v in &s.volumes {
        if let Some(size) = v.size_bytes {
            lines.push(format!("{n}{} {size}", labels(&[("volume", &v.name)])));
        }
    }
    flush_into(&mut out, &mut lines);

    let n = family_into(
        &mut out,
        "lunkeeper_actions_total",
        "counter",
        "Actions run since the daemon started, by kind and result (changed, already, failed).",
    );
    for ((kind, result), count) in &s.actions.counts {
        lines.push(format!(
            "{n}{} {count}",
            labels(&[("kind", kind), ("result", result.as_str())])
        ));
    }
    flush_into(&mut out, &mut lines);

    let n = family_into(
        &mut out,
        "lunkeeper_action_duration_seconds",
        "histogram",
        "How long actions took, by kind.",
    );
    for (kind, h) in &s.actions.durations {
        for (bound, count) in DURATION_BUCKETS.iter().zip(h.counts) {
            let le = bound.to_string();
            lines.push(format!(
                "{n}_bucket{} {count}",
                labels(&[("kind", kind), ("le", &le)])
            ));
        }
        lines.push(format!(
            "{n}_bucket{} {}",
            labels(&[("kind", kind), ("le", "+Inf")]),
            h.count
        ));
        lines.push(format!(
            "{n}_sum{} {}",
            labels(&[("kind", kind)]),
            h.sum_seconds
        ));
        lines.push(format!(
            "{n}_count{} {}",
            labels(&[("kind", kind)]),
            h.count
        ));
    }
    flush_into(&mut out, &mut lines);

    let n = family_into(
        &mut out,
        "lunkeeper_config_reloads_total",
        "counter",
        "Configuration reloads since the daemon started, by result (accepted, rejected).",
    );
    lines.push(format!(
        "{n}{} {}",
        labels(&[("result", "accepted")]),
        s.reloads_accepted
    ));
    lines.push(format!(
        "{n}{} {}",
        labels(&[("result", "rejected")]),
        s.reloads_rejected
    ));
    flush_into(&mut out, &mut lines);

    let n = family_into(
        &mut out,
        "lunkeeper_config_ok",
        "gauge",
        "1 when the file's current content is in force, 0 when it was rejected.",
    );
    lines.push(format!("{n} {}", u8::from(s.config_ok)));
    flush_into(&mut out, &mut lines);

    if let Some(t) = s.last_reload {
        let n = family_into(
            &mut out,
            "lunkeeper_config_last_reload_timestamp_seconds",
            "gauge",
            "When the configuration was last reloaded (accepted or rejected), Unix time.",
        );
        lines.push(format!("{n} {}", unix(t)));
        flush_into(&mut out, &mut lines);
    }
    out
}

/// The last successful pass's time, the one value that changes on every pass.
pub fn render_pass_time(last_pass: Option<SystemTime>) -> String {
    let Some(t) = last_pass else {
        return String::new();
    };
    let mut out = String::new();
    let n = family_into(
        &mut out,
        "lunkeeper_last_successful_pass_timestamp_seconds",
        "gauge",
        "When the daemon last observed the host and planned without error, Unix time.",
    );
    let _ = writeln!(out, "{n} {}", unix(t));
    out
}

/// The whole file.
pub fn render(s: &Snapshot) -> String {
    let mut out = render_body(s);
    out.push_str(&render_pass_time(s.last_pass));
    out
}

fn family_into(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    name.to_string()
}

fn flush_into(out: &mut String, lines: &mut Vec<String>) {
    for l in lines.drain(..) {
        out.push_str(&l);
        out.push('\n');
    }
}

fn unix(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    format!("{secs:.3}")
}

/// `{a="x",b="y"}` with values escaped as the exposition format wants (`\\`, `\"`, `\n`).
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Writes the file when it changed, off the event loop, one write at a time.
#[derive(Debug, Default)]
pub struct MetricsWriter {
    /// Where, and what was last handed to a write there (None: write at the next chance).
    written: Option<(PathBuf, String)>,
    /// The pass time last written.
    pass_written: Option<SystemTime>,
    in_flight: Option<JoinHandle<std::io::Result<bool>>>,
    /// The last write error, logged once until it changes.
    last_error: Option<String>,
}

impl MetricsWriter {
    /// Starts a write of `s` to `path` if something changed and no write is under way.
    /// Returns whether one was started. Must run inside a tokio runtime.
    pub fn update(&mut self, path: Option<&Path>, s: &Snapshot) -> bool {
        if let Some(h) = &self.in_flight {
            if !h.is_finished() {
                return false;
            }
        }
        if let Some(h) = self.in_flight.take() {
            self.finished(h);
        }
        let Some(path) = path else {
            self.written = None;
            return false;
        };
        let body = render_body(s);
        let same_body = self
            .written
            .as_ref()
            .is_some_and(|(p, b)| p == path && *b == body);
        let pass_fresh = match (self.pass_written, s.last_pass) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(w), Some(now)) => now.duration_since(w).unwrap_or_default() < PASS_TIME_REFRESH,
        };
        if same_body && pass_fresh {
            return false;
        }
        let text = format!("{body}{}", render_pass_time(s.last_pass));
        self.written = Some((path.to_path_buf(), body));
        self.pass_written = s.last_pass;
        let path = path.to_path_buf();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            write_if_dir_exists(&path, text.as_bytes())
        }));
        true
    }

    /// Waits for the write under way (tests and shutdown).
    pub async fn flush(&mut self) {
        if let Some(h) = self.in_flight.take() {
            let result = h.await;
            self.finished_result(result);
        }
    }

    fn finished(&mut self, h: JoinHandle<std::io::Result<bool>>) {
        // Finished: polling it once is immediate.
        let result = futures::FutureExt::now_or_never(h);
        if let Some(r) = result {
            self.finished_result(r);
        }
    }

    fn finished_result(&mut self, r: Result<std::io::Result<bool>, tokio::task::JoinError>) {
        let error = match r {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = &error {
            // Written again at the next chance.
            self.written = None;
            if self.last_error.as_ref() != Some(e) {
                tracing::warn!(error = %e, "cannot write the metrics file");
            }
        }
        self.last_error = error;
    }
}

/// Replaces `path` atomically, mode 0644, if its directory exists. `Ok(false)`: no directory
/// (no node_exporter textfile collector on this host), nothing written.
pub fn write_if_dir_exists(path: &Path, data: &[u8]) -> std::io::Result<bool> {
    match path.parent() {
        Some(dir) if dir.is_dir() => {
            write_atomic(path, data, 0o644)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ActionResult;
    use crate::status::PathStatus;

    fn snapshot() -> Snapshot {
        let path = |state: &str| PathStatus {
            portal: "192.0.2.1:3260".into(),
            session: Some(1),
            device: Some("sdb".into()),
            state: state.into(),
        };
        let mut actions = ActionStats::default();
        actions.record("login", ActionResult::Changed, Duration::from_millis(40));
        actions.record("login", ActionResult::Failed, Duration::from_secs(20));
        Snapshot {
            volumes: vec![
                VolumeStatus {
                    name: "db".into(),
                    state: "degraded".into(),
                    stable_name: Some("/dev/lunkeeper/db".into()),
                    size_bytes: Some(1 << 30),
                    device: Some("/dev/mapper/x".into()),
                    wwid: None,
                    paths: vec![path("active"), path("down")],
                    reason: Some("a \"quoted\" reason".into()),
                },
                VolumeStatus {
                    name: "we\"ird\\name\n".into(),
                    state: "pending".into(),
                    stable_name: None,
                    size_bytes: None,
                    device: None,
                    wwid: None,
                    paths: vec![],
                    reason: None,
                },
            ],
            actions,
            config_ok: true,
            reloads_accepted: 2,
            reloads_rejected: 1,
            last_reload: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)),
            last_pass: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100)),
        }
    }

    /// A small checker of the text format: every sample belongs to a family declared by
    /// HELP and TYPE before it, names and labels are well formed, values are numbers.
    fn check_exposition(text: &str) -> Vec<String> {
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.iter().any(|(n, _)| n == name), "{name} twice");
                declared.push((name.to_string(), String::new()));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let last = declared.last_mut().unwrap();
                assert_eq!(last.0, name, "TYPE right after its HELP");
                assert!(["gauge", "counter", "histogram"].contains(&kind), "{kind}");
                last.1 = kind.to_string();
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{name}"
            );
            let (family, kind) = declared.last().unwrap();
            let base = match kind.as_str() {
                "histogram" => name
                    .strip_suffix("_bucket")
                    .or(name.strip_suffix("_sum"))
                    .or(name.strip_suffix("_count"))
                    .unwrap(),
                _ => name,
            };
            assert_eq!(base, family, "{line} outside its family");
            if kind == "counter" {
                assert!(family.ends_with("_total"), "{family}");
            }
            if let Some(l) = series.strip_prefix(name) {
                if !l.is_empty() {
                    assert!(l.starts_with('{') && l.ends_with('}'), "{line}");
                    // Raw newlines never appear; quotes inside values are escaped.
                    let inner = &l[1..l.len() - 1];
                    let mut escaped = false;
                    let mut quotes = 0;
                    for c in inner.chars() {
                        match (escaped, c) {
                            (true, _) => escaped = false,
                            (false, '\\') => escaped = true,
                            (false, '"') => quotes += 1,
                            _ => {}
                        }
                    }
                    assert_eq!(quotes % 2, 0, "{line}");
                }
            }
            samples.push(line.to_string());
        }
        samples
    }

    #[test]
    fn the_file_is_valid_exposition_text() {
        let text = render(&snapshot());
        let samples = check_exposition(&text);
        let has = |s: &str| samples.iter().any(|l| l == s);
        assert!(has("lunkeeper_volumes{state=\"degraded\"} 1"), "{text}");
        assert!(has("lunkeeper_volumes{state=\"ready\"} 0"), "{text}");
        assert!(has(
            "lunkeeper_volume_paths{volume=\"db\",state=\"down\"} 1"
        ));
        assert!(has("lunkeeper_volume_size_bytes{volume=\"db\"} 1073741824"));
        assert!(has(
            "lunkeeper_actions_total{kind=\"login\",result=\"failed\"} 1"
        ));
        assert!(has(
            "lunkeeper_action_duration_seconds_bucket{kind=\"login\",le=\"0.05\"} 1"
        ));
        assert!(has(
            "lunkeeper_action_duration_seconds_bucket{kind=\"login\",le=\"+Inf\"} 2"
        ));
        assert!(has(
            "lunkeeper_action_duration_seconds_count{kind=\"login\"} 2"
        ));
        assert!(has("lunkeeper_config_reloads_total{result=\"rejected\"} 1"));
        assert!(has(
            "lunkeeper_config_last_reload_timestamp_seconds 1700000000.500"
        ));
        assert!(has(
            "lunkeeper_last_successful_pass_timestamp_seconds 1700000100.000"
        ));
        // The odd name is escaped, not broken across lines.
        assert!(
            has("lunkeeper_volume_state{volume=\"we\\\"ird\\\\name\\n\",state=\"pending\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\nw")]), "{a=\"x\\\"y\\\\z\\nw\"}");
    }

    #[tokio::test]
    async fn written_atomically_only_when_changed_and_only_where_the_directory_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lunkeeper.prom");
        let mut w = MetricsWriter::default();
        let mut s = snapshot();
        assert!(w.update(Some(&path), &s));
        w.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, render(&s));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "node_exporter runs as its own user");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");

        // Nothing changed but the pass time, which is recent: not written.
        s.last_pass = s.last_pass.map(|t| t + Duration::from_secs(5));
        assert!(!w.update(Some(&path), &s));
        // The pass time a minute on: written.
        s.last_pass = s.last_pass.map(|t| t + PASS_TIME_REFRESH);
        assert!(w.update(Some(&path), &s));
        w.flush().await;
        // A value changed: written.
        s.reloads_accepted += 1;
        assert!(w.update(Some(&path), &s));
        w.flush().await;
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("lunkeeper_config_reloads_total{result=\"accepted\"} 3"));

        // No textfile directory: nothing is created.
        let nowhere = dir.path().join("node-exporter/lunkeeper.prom");
        assert!(!write_if_dir_exists(&nowhere, b"x").unwrap());
        assert!(!nowhere.parent().unwrap().exists());
        // Turned off: nothing written.
        assert!(!w.update(None, &s));
    }
}
