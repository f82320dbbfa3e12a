//! `lunkeeper doctor`: checks what the host needs for lunkeeper to work, at boot too, and says
//! for each problem the command that fixes it.
//!
//! Files are read below a root (`/` in production, a fake tree in tests) on a blocking thread
//! under a deadline; the few questions only a program can answer (`multipathd show config`,
//! `systemctl is-enabled/is-active`) run through [`crate::act::command`] with a deadline too.
//! What overlaps with what acting needs is [`crate::act::preflight`]'s checks, reused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::act::command;
use crate::act::preflight::{self, Missing};
use crate::desired::Desired;

pub use crate::observe::names::RULE_PLACES;
/// open-iscsi's node databases, below the root.
const NODE_DIRS: [&str; 2] = ["etc/iscsi/nodes", "var/lib/iscsi/nodes"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    /// Worth knowing; lunkeeper works.
    Note,
    /// lunkeeper will not work (or not at boot) until it is fixed.
    Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    /// The command that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Ok,
            what: what.into(),
            fix: None,
        }
    }
    fn note(what: impl Into<String>, fix: Option<String>) -> Finding {
        Finding {
            severity: Severity::Note,
            what: what.into(),
            fix,
        }
    }
    fn problem(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Problem,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Ok => "ok     ",
            Severity::Note => "note   ",
            Severity::Problem => "PROBLEM",
        };
        write!(f, "{tag} {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n        fix: {fix}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct DoctorConfig {
    pub root: PathBuf,
    /// Each file check and each program call.
    pub timeout: Duration,
    pub systemctl: String,
    pub multipathd: String,
    /// The unit to ask systemd about.
    pub unit: String,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            root: PathBuf::from("/"),
            timeout: Duration::from_secs(3),
            systemctl: "systemctl".into(),
            multipathd: "multipathd".into(),
            unit: "lunkeeper".into(),
        }
    }
}

/// What the desired-state file says that the checks need.
#[derive(Debug, Clone, Default)]
pub struct Wants {
    pub multipath: bool,
    pub single_path: bool,
    /// Targets of present volumes.
    pub targets: Vec<String>,
}

impl Wants {
    pub fn of(desired: &Desired) -> Wants {
        let present = || {
            desired
                .volumes
                .iter()
                .filter(|v| v.state == crate::desired::VolumeState::Present)
        };
        let mut targets: Vec<String> = present().map(|v| v.target.to_string()).collect();
        targets.sort();
        targets.dedup();
        Wants {
            multipath: present().any(|v| v.multipath),
            single_path: present().any(|v| !v.multipath),
            targets,
        }
    }
}

/// Every check; `wants` None when the file could not be read (then multipath is checked as if
/// wanted, and node records are not).
pub async fn run(cfg: &DoctorConfig, wants: Option<&Wants>) -> Vec<Finding> {
    let root = cfg.root.clone();
    let owned_wants = wants.cloned();
    let files = tokio::task::spawn_blocking(move || file_checks(&root, owned_wants.as_ref()));
    let mut findings = match tokio::time::timeout(cfg.timeout, files).await {
        Ok(Ok(f)) => f,
        _ => vec![Finding::problem(
            format!(
                "the checks of files below {} did not finish within {}s",
                cfg.root.display(),
                cfg.timeout.as_secs()
            ),
            "look in the kernel log (`journalctl -k`) for a hung file system or device",
        )],
    };
    if !matches!(wants, Some(w) if !w.multipath) {
        findings.push(find_multipaths(cfg, wants).await);
    }
    findings.extend(unit_state(cfg).await);
    findings
}

/// The checks that only read files. Blocking.
pub fn file_checks(root: &Path, wants: Option<&Wants>) -> Vec<Finding> {
    let mut out = Vec::new();
    let multipath = !matches!(wants, Some(w) if !w.multipath);
    out.push(if preflight::transport_available(root) {
        Finding::ok("kernel module iscsi_tcp is loaded or loadable")
    } else {
        Finding::problem(
            "kernel module iscsi_tcp is neither loaded nor available",
            Missing::Transport.fix(),
        )
    });
    if multipath {
        out.push(if module_available(root, "dm_multipath") {
            Finding::ok("kernel module dm_multipath is loaded or loadable")
        } else {
            Finding::problem(
                "kernel module dm_multipath is neither loaded nor available",
                "modprobe dm_multipath (install the kernel's modules package if it is not found)",
            )
        });
    }
    match std::fs::read_to_string(root.join("proc/net/unix")) {
        Ok(text) => {
            let up = preflight::listening(&text);
            let mut service = |socket: &str, name: &str, missing: Missing| {
                out.push(if up.contains(socket) {
                    Finding::ok(format!("{name} is running"))
                } else {
                    Finding::problem(
                        format!("{name} is not running"),
                        format!("{} (and enable it at boot)", missing.fix()),
                    )
                });
            };
            service(preflight::ISCSID_SOCKET, "iscsid", Missing::Iscsid);
            if multipath {
                service(
                    preflight::MULTIPATHD_SOCKET,
                    "multipathd",
                    Missing::Multipathd,
                );
            }
            service(preflight::UDEV_SOCKET, "udevd", Missing::Udevd);
        }
        Err(e) => out.push(Finding::note(
            format!("cannot read /proc/net/unix ({e}); iscsid, multipathd and udevd not checked"),
            None,
        )),
    }
    out.push(initiator_name(root));
    out.push(match crate::observe::names::installed_rule(root) {
        Some(p) => Finding::ok(format!("udev rule /{p} is installed")),
        None => Finding::problem(
            "the udev rule 90-lunkeeper.rules is not installed: /dev/lunkeeper/<name> will \
                 not appear",
            "install -m 0644 rules/90-lunkeeper.rules /etc/udev/rules.d/ && udevadm control \
                 --reload",
        ),
    });
    if let Some(w) = wants {
        out.extend(automatic_records(root, &w.targets));
    }
    out
}

/// Whether a kernel module is loaded (`sys/module/<name>`) or the running kernel has it.
pub fn module_available(root: &Path, name: &str) -> bool {
    if root.join("sys/module").join(name).exists() {
        return true;
    }
    let Ok(release) = std::fs::read_to_string(root.join("proc/sys/kernel/osrelease")) else {
        // Which kernel runs is unknown: do not claim it is missing.
        return true;
    };
    let wanted = |file: &str| {
        let stem = file.split(".ko").next().unwrap_or_default();
        stem.replace('-', "_") == name
    };
    ["lib/modules", "usr/lib/modules"].iter().any(|base| {
        let dir = root.join(base).join(release.trim());
        ["modules.dep", "modules.builtin"].iter().any(|index| {
            std::fs::read_to_string(dir.join(index)).is_ok_and(|t| {
                t.lines()
                    .filter_map(|l| l.split(':').next())
                    .filter_map(|m| m.rsplit('/').next())
                    .any(wanted)
            })
        })
    })
}

/// The initiator name must be set and not a placeholder left for the package to fill in.
fn initiator_name(root: &Path) -> Finding {
    let path = Path::new("/").join(preflight::INITIATOR_NAME_FILE);
    let fix = Missing::InitiatorName { path: path.clone() }.fix();
    let text = match std::fs::read_to_string(root.join(preflight::INITIATOR_NAME_FILE)) {
        Ok(t) => t,
        Err(e) => {
            return Finding::problem(format!("cannot read {}: {e}", path.display()), fix);
        }
    };
    match initiator_name_value(&text) {
        Some(name) if !is_placeholder(name) => Finding::ok(format!(
            "initiator name is {name} (register it on the array)"
        )),
        Some(name) => Finding::problem(
            format!(
                "the initiator name in {} is a placeholder ({name})",
                path.display()
            ),
            fix,
        ),
        None => Finding::problem(
            format!(
                "no initiator name is set in {} (empty, commented out, or only GenerateName=yes)",
                path.display()
            ),
            fix,
        ),
    }
}

/// The value of an uncommented `InitiatorName=` line.
pub fn initiator_name_value(text: &str) -> Option<&str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("InitiatorName="))
        .map(str::trim)
        .find(|v| !v.is_empty())
}

/// A name that only looks set: no iqn./eui./naa. form, or a distribution's prefix with nothing
/// of its own after it (Debian's `iqn.1993-08.org.debian:01:` wants a random tail).
pub fn is_placeholder(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let formed = ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| lower.starts_with(p));
    !formed || lower.ends_with(':') || lower.contains("example") || lower.contains("<")
}

/// Node records of targets lunkeeper manages that open-iscsi logs in to by itself at boot,
/// racing lunkeeper (and logging in to portals the file does not name).
pub fn automatic_records(root: &Path, targets: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen_any = false;
    for base in NODE_DIRS {
        for target in targets {
            let dir = root.join(base).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let portal_dir = entry.path();
                // `<addr>,<port>,<tpgt>` is a directory of iface records, or (old layout) the
                // record itself.
                let records: Vec<PathBuf> = if portal_dir.is_dir() {
                    std::fs::read_dir(&portal_dir)
                        .map(|d| d.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default()
                } else {
                    vec![portal_dir.clone()]
                };
                for record in records {
                    seen_any = true;
                    let Ok(text) = std::fs::read_to_string(&record) else {
                        continue;
                    };
                    if startup_automatic(&text) {
                        let portal = portal_of(&entry.file_name().to_string_lossy());
                        out.push(Finding::problem(
                            format!(
                                "open-iscsi logs in to {target} at {portal} by itself at boot \
                                 (node.startup = automatic in {}), racing lunkeeper",
                                Path::new("/")
                                    .join(record.strip_prefix(root).unwrap_or(&record))
                                    .display()
                            ),
                            format!(
                                "iscsiadm -m node -T {target} -p {portal} -o update -n \
                                 node.startup -v manual"
                            ),
                        ));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        let what = if seen_any {
            "no node record of a managed target starts automatically"
        } else {
            "no node records of managed targets yet"
        };
        out.push(Finding::ok(what));
    }
    out
}

/// Whether a node record has `node.startup = automatic` (or `onboot`, which also logs in
/// without lunkeeper).
pub fn startup_automatic(text: &str) -> bool {
    text.lines().any(|l| {
        l.split_once('=').is_some_and(|(k, v)| {
            k.trim() == "node.startup" && matches!(v.trim(), "automatic" | "onboot")
        })
    })
}

/// `192.0.2.1,3260,1` → `192.0.2.1:3260`; `2001:db8::1,3260,1` → `[2001:db8::1]:3260`.
fn portal_of(entry: &str) -> String {
    let mut parts = entry.rsplitn(3, ',');
    let _tpgt = parts.next();
    let port = parts.next().unwrap_or("3260");
    let addr = parts.next().unwrap_or(entry);
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// multipathd's `find_multipaths`, as it runs (`multipathd show config`) or, failing that, as
/// /etc/multipath.conf sets it.
async fn find_multipaths(cfg: &DoctorConfig, wants: Option<&Wants>) -> Finding {
    let shown = command::run(&cfg.multipathd, &["show", "config"], cfg.timeout).await;
    let (value, source) = match shown {
        Ok(f) if f.success() => (find_multipaths_value(&f.stdout), "multipathd show config"),
        _ => {
            let text =
                std::fs::read_to_string(cfg.root.join("etc/multipath.conf")).unwrap_or_default();
            match find_multipaths_value(&text) {
                Some(v) => (Some(v), "/etc/multipath.conf; multipathd did not answer"),
                None => (
                    None,
                    "multipathd did not answer and /etc/multipath.conf does not set it",
                ),
            }
        }
    };
    judge_find_multipaths(
        value.as_deref(),
        source,
        wants.is_some_and(|w| w.single_path),
    )
}

/// The value of the first `find_multipaths` setting in multipath.conf syntax.
pub fn find_multipaths_value(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.split('#').next().unwrap_or_default().trim();
        let rest = l.strip_prefix("find_multipaths")?;
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        Some(rest.trim().trim_matches('"').to_string())
    })
}

/// strict, yes, on and smart make maps only for registered WWIDs (or after a wait); lunkeeper
/// registers its own. no, off and greedy make a map of every disk, including the disk of a
/// `multipath = false` volume, which then is held by a map lunkeeper did not ask for.
pub fn judge_find_multipaths(value: Option<&str>, source: &str, single_path: bool) -> Finding {
    let fix = "set `find_multipaths strict` in the defaults section of /etc/multipath.conf and \
               run `systemctl reload multipathd`";
    match value {
        None => Finding::ok(format!(
            "find_multipaths is multipathd's default, strict ({source})"
        )),
        Some(v @ ("strict" | "yes" | "on" | "smart")) => {
            Finding::ok(format!("multipathd's find_multipaths is {v} ({source})"))
        }
        Some(v @ ("no" | "off" | "greedy")) if single_path => Finding::problem(
            format!(
                "multipathd's find_multipaths is {v} ({source}): it makes maps of the disks of \
                 volumes with multipath = false"
            ),
            fix,
        ),
        Some(v) => Finding::note(
            format!(
                "multipathd's find_multipaths is {v} ({source}): it makes maps of every disk, \
                 not only lunkeeper's"
            ),
            Some(fix.to_string()),
        ),
    }
}

/// `systemctl is-enabled` and `is-active` for the unit; nothing on a host without systemd.
async fn unit_state(cfg: &DoctorConfig) -> Vec<Finding> {
    if !cfg.root.join("run/systemd/system").is_dir() {
        return vec![Finding::note(
            "systemd is not running here; the unit's state is not checked",
            None,
        )];
    }
    let unit = &cfg.unit;
    let ask = |verb: &'static str| async move {
        match command::run(&cfg.systemctl, &[verb, unit.as_str()], cfg.timeout).await {
            Ok(f) => Ok(f.stdout.trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let mut out = Vec::new();
    match ask("is-enabled").await {
        Ok(s) if s == "enabled" || s == "static" || s == "alias" => {
            out.push(Finding::ok(format!("{unit}.service is {s}")))
        }
        Ok(s) => out.push(Finding::problem(
            format!(
                "{unit}.service is not enabled ({}): volumes are not attached at boot",
                if s.is_empty() { "unknown" } else { &s }
            ),
            format!("systemctl enable --now {unit}"),
        )),
        Err(e) => out.push(Finding::note(format!("cannot ask systemd: {e}"), None)),
    }
    match ask("is-active").await {
        Ok(s) if s == "active" || s == "reloading" => {
            out.push(Finding::ok(format!("{unit}.service is {s}")))
        }
        Ok(s) if s == "failed" => out.push(Finding::problem(
            format!("{unit}.service has failed"),
            format!("journalctl -u {unit} -n 50, fix what it says, then systemctl restart {unit}"),
        )),
        Ok(s) => out.push(Finding::problem(
            format!(
                "{unit}.service is not running ({}): nothing keeps the volumes attached",
                if s.is_empty() { "unknown" } else { &s }
            ),
            format!("systemctl start {unit}"),
        )),
        Err(e) => out.push(Finding::note(format!("cannot ask systemd: {e}"), None)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const UNIX: &str = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 21839 @ISCSIADM_ABSTRACT_NAMESPACE
0000000000000000: 00000002 00000000 00010000 0001 01 20001 @/org/kernel/linux/storage/multipathd
0000000000000000: 00000002 00000000 00010000 0005 01 15337 /run/udev/control
";
    const TARGET: &str = "iqn.2026-11.test:a";

    /// A root where everything is right.
    fn healthy() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in [
            "sys/class/iscsi_transport/tcp",
            "sys/module/dm_multipath",
            "proc/net",
            "etc/iscsi",
            "etc/udev/rules.d",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("proc/net/unix"), UNIX).unwrap();
        fs::write(
            r.join(preflight::INITIATOR_NAME_FILE),
            "## DO NOT EDIT\nInitiatorName=iqn.1993-08.org.debian:01:7f3a9c2b1e4d\n",
        )
        .unwrap();
        fs::write(r.join(RULE_PLACES[0]), "# rule\n").unwrap();
        let rec = r.join(format!("etc/iscsi/nodes/{TARGET}/192.0.2.1,3260,1"));
        fs::create_dir_all(&rec).unwrap();
        fs::write(rec.join("default"), "node.startup = manual\n").unwrap();
        t
    }

    fn wants() -> Wants {
        Wants {
            multipath: true,
            single_path: false,
            targets: vec![TARGET.into()],
        }
    }

    fn problems(f: &[Finding]) -> Vec<&Finding> {
        f.iter()
            .filter(|f| f.severity == Severity::Problem)
            .collect()
    }

    #[test]
    fn a_healthy_host_has_no_problem() {
        let root = healthy();
        let f = file_checks(root.path(), Some(&wants()));
        assert!(problems(&f).is_empty(), "{f:#?}");
        assert!(
            f.iter().any(|f| f.what.contains("debian:01:7f3a")),
            "{f:#?}"
        );
    }

    #[test]
    fn each_problem_is_named_with_its_fix() {
        let root = healthy();
        let r = root.path();
        fs::remove_dir_all(r.join("sys/module/dm_multipath")).unwrap();
        fs::create_dir_all(r.join("proc/sys/kernel")).unwrap();
        fs::write(r.join("proc/sys/kernel/osrelease"), "6.1.0-test\n").unwrap();
        fs::write(
            r.join("proc/net/unix"),
            UNIX.lines()
                .filter(|l| !l.contains("multipathd"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        fs::remove_file(r.join(RULE_PLACES[0])).unwrap();
        fs::write(
            r.join(format!("etc/iscsi/nodes/{TARGET}/192.0.2.1,3260,1/default")),
            "node.name = x\nnode.startup = automatic\n",
        )
        .unwrap();
        let f = file_checks(r, Some(&wants()));
        let p = problems(&f);
        let has = |needle: &str, fix: &str| {
            assert!(
                p.iter().any(|f| f.what.contains(needle)
                    && f.fix.as_deref().is_some_and(|x| x.contains(fix))),
                "{needle}: {p:#?}"
            )
        };
        has("dm_multipath", "modprobe dm_multipath");
        has("multipathd is not running", "systemctl start multipathd");
        has("udev rule", "udevadm control --reload");
        has(
            "node.startup = automatic",
            &format!("iscsiadm -m node -T {TARGET} -p 192.0.2.1:3260 -o update -n node.startup -v manual"),
        );
        assert_eq!(p.len(), 4, "{p:#?}");
        // A module the kernel has but has not loaded is fine.
        let modules = r.join("lib/modules/6.1.0-test");
        fs::create_dir_all(&modules).unwrap();
        fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/md/dm-multipath.ko: kernel/drivers/md/dm-mod.ko\n",
        )
        .unwrap();
        assert!(module_available(r, "dm_multipath"));
        // Records of targets lunkeeper does not manage are not its business.
        let other = Wants {
            targets: vec!["iqn.2026-11.test:other".into()],
            ..wants()
        };
        assert!(!file_checks(r, Some(&other))
            .iter()
            .any(|f| f.what.contains("automatic")));
    }

    #[test]
    fn placeholders_are_not_initiator_names() {
        for (text, set) in [
            (
                "InitiatorName=iqn.1993-08.org.debian:01:7f3a9c2b1e4d\n",
                true,
            ),
            ("InitiatorName=iqn.2004-10.com.ubuntu:01:abc\n", true),
            ("GenerateName=yes\n", false),
            ("#InitiatorName=iqn.1993-08.org.debian:01:abc\n", false),
            ("InitiatorName=\n", false),
            ("InitiatorName=iqn.1993-08.org.debian:01:\n", false),
            ("InitiatorName=changeme\n", false),
            ("", false),
        ] {
            let root = healthy();
            fs::write(root.path().join(preflight::INITIATOR_NAME_FILE), text).unwrap();
            let f = initiator_name(root.path());
            assert_eq!(f.severity == Severity::Ok, set, "{text:?}: {f}");
            if !set {
                assert!(f.fix.as_deref().unwrap_or("").contains("iscsi-iname"));
            }
        }
    }

    #[test]
    fn find_multipaths_is_read_and_judged() {
        let conf = "defaults {\n\tuser_friendly_names no\n\tfind_multipaths \"greedy\" # all\n}\n";
        assert_eq!(find_multipaths_value(conf).as_deref(), Some("greedy"));
        assert_eq!(find_multipaths_value("find_multipaths_timeout -10\n"), None);
        let s = "x";
        assert_eq!(
            judge_find_multipaths(Some("strict"), s, true).severity,
            Severity::Ok
        );
        assert_eq!(
            judge_find_multipaths(Some("no"), s, true).severity,
            Severity::Problem
        );
        assert_eq!(
            judge_find_multipaths(Some("no"), s, false).severity,
            Severity::Note
        );
        assert_eq!(judge_find_multipaths(None, s, true).severity, Severity::Ok);
    }

    #[test]
    fn portals_of_record_directories() {
        assert_eq!(portal_of("192.0.2.1,3260,1"), "192.0.2.1:3260");
        assert_eq!(portal_of("2001:db8::1,3260,1"), "[2001:db8::1]:3260");
    }

    /// Programs are asked with a deadline; systemd's answers become findings.
    #[tokio::test]
    async fn the_unit_and_multipathd_are_asked() {
        let root = healthy();
        let r = root.path();
        fs::create_dir_all(r.join("run/systemd/system")).unwrap();
        let script = |name: &str, body: &str| {
            let p = r.join(name);
            fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            p.to_string_lossy().into_owned()
        };
        let cfg = DoctorConfig {
            root: r.to_path_buf(),
            timeout: Duration::from_millis(500),
            systemctl: script(
                "systemctl",
                "case $1 in is-enabled) echo disabled; exit 1;; is-active) echo failed; exit 3;; esac",
            ),
            multipathd: script("multipathd", "printf 'defaults {\\n\\tfind_multipaths \"off\"\\n}\\n'"),
            unit: "lunkeeper".into(),
        };
        let w = Wants {
            single_path: true,
            ..wants()
        };
        let f = run(&cfg, Some(&w)).await;
        let p = problems(&f);
        assert!(
            p.iter().any(|f| f.what.contains("find_multipaths is off")),
            "{f:#?}"
        );
        assert!(p
            .iter()
            .any(|f| f.fix.as_deref() == Some("systemctl enable --now lunkeeper")));
        assert!(p.iter().any(|f| f.what.contains("has failed")));
        // A program that hangs is cut off at the deadline.
        let hung = DoctorConfig {
            systemctl: script("hang", "sleep 30"),
            ..cfg.clone()
        };
        let started = std::time::Instant::now();
        let f = unit_state(&hung).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(f.iter().all(|f| f.severity == Severity::Note), "{f:#?}");
        // Without systemd the unit is not asked about.
        fs::remove_dir_all(r.join("run/systemd")).unwrap();
        let f = unit_state(&cfg).await;
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Note);
    }
}
