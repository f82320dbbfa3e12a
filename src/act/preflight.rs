//! Preflight: the services and kernel pieces lunkeeper needs before it acts. Without them every
//! step fails with an error that names a symptom (a login timing out, a map that never forms);
//! checked first, the operator is told what is missing and the command that fixes it.
//!
//! Every check reads a file (sysfs, `/proc/net/unix`, the initiator name) and never talks to a
//! service: a listening socket in `/proc/net/unix` is what `iscsiadm` and `multipathd -k`
//! connect to, and socket activation (iscsid.socket, multipathd.socket) counts as running.
//! The caller runs [`check`] off the event loop under a deadline.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// iscsid's control socket (abstract), which `iscsiadm` connects to.
pub const ISCSID_SOCKET: &str = "@ISCSIADM_ABSTRACT_NAMESPACE";
/// multipathd's control socket (abstract), which `multipathd -k` connects to.
pub const MULTIPATHD_SOCKET: &str = "@/org/kernel/linux/storage/multipathd";
/// systemd-udevd's control socket.
pub const UDEV_SOCKET: &str = "/run/udev/control";
pub const INITIATOR_NAME_FILE: &str = "etc/iscsi/initiatorname.iscsi";

/// Something lunkeeper needs that is not there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "missing", rename_all = "snake_case")]
pub enum Missing {
    /// Neither loaded nor loadable: /sys/class/iscsi_transport/tcp is absent and the running
    /// kernel has no iscsi_tcp module.
    Transport,
    Iscsid,
    /// Only when a present volume wants multipath.
    Multipathd,
    Udevd,
    InitiatorName {
        path: PathBuf,
    },
    /// The checks did not finish within their deadline (a hung /proc or file system).
    Unanswered,
}

impl Missing {
    /// The command that fixes it.
    pub fn fix(&self) -> String {
        match self {
            Missing::Transport => {
                "modprobe iscsi_tcp (install the kernel's extra modules if it is not found)".into()
            }
            Missing::Iscsid => "systemctl start iscsid".into(),
            Missing::Multipathd => "systemctl start multipathd".into(),
            Missing::Udevd => "systemctl start systemd-udevd".into(),
            Missing::InitiatorName { path } => format!(
                "echo \"InitiatorName=$(iscsi-iname)\" > {} && systemctl restart iscsid",
                path.display()
            ),
            Missing::Unanswered => "check the system log for a hung file system".into(),
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Transport => {
                f.write_str("the iSCSI TCP transport (iscsi_tcp) is not available")
            }
            Missing::Iscsid => f.write_str("iscsid is not running"),
            Missing::Multipathd => f.write_str("multipathd is not running"),
            Missing::Udevd => f.write_str("udevd is not running"),
            Missing::InitiatorName { path } => {
                write!(f, "the initiator name is not set in {}", path.display())
            }
            Missing::Unanswered => f.write_str("the preflight checks did not finish in time"),
        }
    }
}

/// One line naming everything missing and how to fix each: `iscsid is not running (run
/// `systemctl start iscsid`); ...`.
pub fn describe(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("{m} (run `{}`)", m.fix()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The Unix sockets `/proc/net/unix` shows listening, by name (abstract ones start with `@`).
pub fn listening(proc_net_unix: &str) -> BTreeSet<String> {
    // Flags holds __SO_ACCEPTCON for a listening socket.
    const ACCEPTCON: u32 = 0x0001_0000;
    proc_net_unix
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let name = fields.get(7..).filter(|n| !n.is_empty())?.join(" ");
            (flags & ACCEPTCON != 0).then_some(name)
        })
        .collect()
}

/// Whether an initiatorname.iscsi file sets a non-empty `InitiatorName=` (comments aside).
pub fn initiator_name_set(text: &str) -> bool {
    text.lines().any(|line| {
        line.trim()
            .strip_prefix("InitiatorName=")
            .is_some_and(|v| !v.trim().is_empty())
    })
}

/// Whether the iSCSI TCP transport is loaded, or the running kernel can load it (iscsid loads
/// it on the first login).
pub fn transport_available(root: &Path) -> bool {
    if root.join("sys/class/iscsi_transport/tcp").exists()
        || root.join("sys/module/iscsi_tcp").exists()
    {
        return true;
    }
    let Ok(release) = std::fs::read_to_string(root.join("proc/sys/kernel/osrelease")) else {
        // Cannot tell which kernel runs: do not claim it is missing.
        return true;
    };
    let release = release.trim();
    ["lib/modules", "usr/lib/modules"].iter().any(|base| {
        let dir = root.join(base).join(release);
        ["modules.dep", "modules.builtin"].iter().any(|index| {
            std::fs::read_to_string(dir.join(index)).is_ok_and(|t| {
                t.lines().filter_map(|l| l.split(':').next()).any(|m| {
                    m.rsplit('/')
                        .next()
                        .is_some_and(|f| f.starts_with("iscsi_tcp.ko"))
                })
            })
        })
    })
}

/// Runs every check below `root` (`/` in production). Blocking: reads files.
pub fn check(root: &Path, want_multipath: bool) -> Vec<Missing> {
    let mut missing = Vec::new();
    if !transport_available(root) {
        missing.push(Missing::Transport);
    }
    match std::fs::read_to_string(root.join("proc/net/unix")) {
        Ok(text) => {
            let up = listening(&text);
            if !up.contains(ISCSID_SOCKET) {
                missing.push(Missing::Iscsid);
            }
            if want_multipath && !up.contains(MULTIPATHD_SOCKET) {
                missing.push(Missing::Multipathd);
            }
            if !up.contains(UDEV_SOCKET) || !root.join(&UDEV_SOCKET[1..]).exists() {
                missing.push(Missing::Udevd);
            }
        }
        Err(error) => {
            // Without /proc/net/unix nothing can be said of the services; the steps themselves
            // will report what fails.
            tracing::debug!(%error, "cannot read /proc/net/unix; services not checked");
        }
    }
    let path = root.join(INITIATOR_NAME_FILE);
    let named = std::fs::read_to_string(&path).is_ok_and(|t| initiator_name_set(&t));
    if !named {
        missing.push(Missing::InitiatorName {
            path: Path::new("/").join(INITIATOR_NAME_FILE),
        });
    }
    missing
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
0000000000000000: 00000003 00000000 00000000 0001 03 33333 @/org/kernel/linux/storage/multipathd
0000000000000000: 00000003 00000000 00000000 0001 03 44444
";

    /// A root with everything in place.
    fn host() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("sys/class/iscsi_transport/tcp")).unwrap();
        fs::create_dir_all(r.join("proc/net")).unwrap();
        fs::write(r.join("proc/net/unix"), UNIX).unwrap();
        fs::create_dir_all(r.join("run/udev")).unwrap();
        fs::write(r.join("run/udev/control"), "").unwrap();
        fs::create_dir_all(r.join("etc/iscsi")).unwrap();
        fs::write(
            r.join(INITIATOR_NAME_FILE),
            "## generated\nInitiatorName=iqn.2026-11.test:host\n",
        )
        .unwrap();
        root
    }

    fn without(unix: &str, socket: &str) -> String {
        unix.lines()
            .filter(|l| !(l.ends_with(socket) && l.contains(" 00010000 ")))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn listening_sockets_are_told_from_connected_ones() {
        let up = listening(UNIX);
        assert!(up.contains(ISCSID_SOCKET));
        assert!(up.contains(MULTIPATHD_SOCKET));
        assert!(up.contains(UDEV_SOCKET));
        assert_eq!(up.len(), 3, "{up:?}");
        // A multipathd client still connected does not make multipathd run.
        let down = listening(&without(UNIX, MULTIPATHD_SOCKET));
        assert!(!down.contains(MULTIPATHD_SOCKET));
    }

    #[test]
    fn a_complete_host_misses_nothing() {
        let root = host();
        assert_eq!(check(root.path(), true), vec![]);
    }

    #[test]
    fn each_missing_service_is_named_with_its_fix() {
        let root = host();
        let unix = root.path().join("proc/net/unix");
        fs::write(&unix, without(UNIX, ISCSID_SOCKET)).unwrap();
        let m = check(root.path(), true);
        assert_eq!(m, vec![Missing::Iscsid]);
        assert_eq!(
            describe(&m),
            "iscsid is not running (run `systemctl start iscsid`)"
        );
        fs::write(&unix, without(UNIX, MULTIPATHD_SOCKET)).unwrap();
        assert_eq!(check(root.path(), true), vec![Missing::Multipathd]);
        assert_eq!(
            check(root.path(), false),
            vec![],
            "no volume wants multipath"
        );
        fs::write(&unix, without(UNIX, UDEV_SOCKET)).unwrap();
        assert_eq!(check(root.path(), true), vec![Missing::Udevd]);
    }

    #[test]
    fn the_initiator_name_must_be_set() {
        let root = host();
        let path = root.path().join(INITIATOR_NAME_FILE);
        for text in ["", "#InitiatorName=iqn.x\n", "InitiatorName=\n"] {
            fs::write(&path, text).unwrap();
            let m = check(root.path(), false);
            assert!(
                matches!(m.as_slice(), [Missing::InitiatorName { .. }]),
                "{text:?}: {m:?}"
            );
            assert!(m[0].fix().contains("iscsi-iname"));
        }
        fs::remove_file(&path).unwrap();
        assert_eq!(check(root.path(), false).len(), 1);
    }

    #[test]
    fn a_transport_that_can_be_loaded_counts() {
        let root = host();
        let r = root.path();
        fs::remove_dir_all(r.join("sys/class/iscsi_transport/tcp")).unwrap();
        fs::create_dir_all(r.join("proc/sys/kernel")).unwrap();
        fs::write(r.join("proc/sys/kernel/osrelease"), "6.8.0-test\n").unwrap();
        assert_eq!(check(r, false), vec![Missing::Transport]);
        let modules = r.join("lib/modules/6.8.0-test");
        fs::create_dir_all(&modules).unwrap();
        fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/scsi/iscsi_tcp.ko.zst: kernel/drivers/scsi/libiscsi_tcp.ko.zst\n",
        )
        .unwrap();
        assert_eq!(check(r, false), vec![]);
    }
}
