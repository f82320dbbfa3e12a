//! `lunkeeper status` for a person: a header, one row per volume, its paths indented below it,
//! and why it is not ready in one line. Columns are as wide as their widest cell, so long
//! volume names and IPv6 portals never push a row out of line.

use std::fmt::Write;

use super::VolumeStatus;

/// How long the reason line may be without `--wide` (characters, after its indent).
pub const REASON_WIDTH: usize = 100;

const HEADER: [&str; 5] = ["VOLUME", "STATE", "SIZE", "STABLE NAME", "DEVICE"];

/// The table for `volumes`; `wide` prints reasons whole.
pub fn render(volumes: &[VolumeStatus], wide: bool) -> String {
    let rows: Vec<[String; 5]> = volumes
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                v.state.clone(),
                v.size_bytes.map(human_size).unwrap_or_else(dash),
                v.stable_name.clone().unwrap_or_else(dash),
                v.device.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = HEADER.map(width);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    // Paths are aligned across the whole table, not per volume.
    let paths: Vec<Vec<[String; 4]>> = volumes
        .iter()
        .map(|v| {
            v.paths
                .iter()
                .map(|p| {
                    [
                        p.portal.clone(),
                        p.session
                            .map(|s| format!("session{s}"))
                            .unwrap_or_else(dash),
                        p.device.clone().unwrap_or_else(dash),
                        p.state.clone(),
                    ]
                })
                .collect()
        })
        .collect();
    let mut path_widths = [0usize; 4];
    for row in paths.iter().flatten() {
        for (w, cell) in path_widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }

    let mut out = String::new();
    line(&mut out, "", &HEADER.map(String::from), &widths);
    for ((row, v), paths) in rows.iter().zip(volumes).zip(&paths) {
        line(&mut out, "", row, &widths);
        for p in paths {
            line(&mut out, "  ", p, &path_widths);
        }
        if let Some(reason) = &v.reason {
            let reason = if wide {
                reason.clone()
            } else {
                truncate(reason, REASON_WIDTH)
            };
            let _ = writeln!(out, "  reason: {reason}");
        }
    }
    out
}

fn line<const N: usize>(out: &mut String, indent: &str, cells: &[String; N], widths: &[usize; N]) {
    out.push_str(indent);
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        out.push_str(cell);
        if i + 1 < N {
            let pad = w.saturating_sub(width(cell)) + 2;
            out.push_str(&" ".repeat(pad));
        }
    }
    out.push('\n');
}

fn dash() -> String {
    "-".to_string()
}

/// Display width: characters (names are ASCII; reasons may quote anything).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// The first `max` characters of a one-line `text`, with "…" when cut; a line break ends it.
pub fn truncate(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or_default();
    let cut = first.chars().count() > max || first.len() < text.trim_end().len();
    if !cut {
        return first.to_string();
    }
    let mut s: String = first.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Bytes in binary units, as `lsblk` shows them: `512 B`, `1 GiB`, `1.5 TiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        return format!("{bytes} {name}");
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PathStatus;

    fn volume(name: &str, state: &str, reason: Option<&str>) -> VolumeStatus {
        VolumeStatus {
            name: name.into(),
            state: state.into(),
            stable_name: Some(format!("/dev/lunkeeper/{name}")),
            size_bytes: Some(10 << 30),
            device: Some("/dev/mapper/36001405abc".into()),
            wwid: None,
            paths: vec![
                PathStatus {
                    portal: "192.0.2.10:3260".into(),
                    session: Some(3),
                    device: Some("sdb".into()),
                    state: "active".into(),
                },
                PathStatus {
                    portal: "[2001:db8::1]:3260".into(),
                    session: None,
                    device: None,
                    state: "missing".into(),
                },
            ],
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn sizes_are_in_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }

    #[test]
    fn columns_line_up_under_a_long_name() {
        let long = "a-very-long-volume-name-that-breaks-fixed-columns.backup-01";
        let text = render(
            &[volume("db", "ready", None), volume(long, "degraded", None)],
            false,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("VOLUME "), "{text}");
        let rows: Vec<&&str> = lines.iter().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(rows.len(), 3, "{text}");
        // STATE starts in the same column on the header and on every row.
        let col = |l: &str, word: &str| l.find(word).unwrap();
        let state_col = col(lines[0], "STATE");
        assert_eq!(col(rows[1], "ready"), state_col, "{text}");
        assert_eq!(col(rows[2], "degraded"), state_col, "{text}");
        assert!(state_col > long.len(), "{text}");
        let size_col = col(lines[0], "SIZE");
        assert_eq!(col(rows[1], "10 GiB"), size_col, "{text}");
        assert!(text.contains("/dev/lunkeeper/db"), "{text}");
        // Paths indented, their columns aligned with each other.
        let paths: Vec<&&str> = lines.iter().filter(|l| l.starts_with("  ")).collect();
        assert_eq!(paths.len(), 4);
        assert_eq!(col(paths[0], "active"), col(paths[1], "missing"), "{text}");
    }

    #[test]
    fn the_reason_is_one_short_line_unless_wide() {
        let reason = format!("1 of 2 paths down: {}", "x".repeat(300));
        let v = [volume("db", "degraded", Some(&reason))];
        let short = render(&v, false);
        let line = short.lines().find(|l| l.contains("reason:")).unwrap();
        assert!(
            line.chars().count() <= REASON_WIDTH + "  reason: ".len(),
            "{line}"
        );
        assert!(line.ends_with('…'));
        let wide = render(&v, true);
        assert!(wide.contains(&reason));
        assert_eq!(truncate("first\nsecond", 100), "first…");
        assert_eq!(truncate("short", 100), "short");
    }

    #[test]
    fn what_is_not_there_is_a_dash() {
        let mut v = volume("db", "pending", Some("logging in"));
        v.stable_name = None;
        v.size_bytes = None;
        v.device = None;
        let text = render(&[v], false);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["db", "pending", "-", "-", "-"]
        );
    }
}
