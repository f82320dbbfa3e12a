//! lunkeeper's own udev name mappings: `/run/lunkeeper/udev/<key>` holding
//! `LUNKEEPER_VOLUME=<name>`, which `rules/90-lunkeeper.rules` turns into
//! `/dev/lunkeeper/<name>`. Keys are `mpath-<wwid>` (a map's DM_UUID) or `sd-<wwid>` (a disk's
//! ID_SERIAL). And the links themselves, as udev made them ([`read_links`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use super::dirfd::{self, DirFd, AT_FDCWD};

/// Where the mappings live below the root.
pub const NAMES_DIR: &str = "run/lunkeeper/udev";
/// Where udev makes the links, below the root.
pub const LINKS_DIR: &str = "dev/lunkeeper";
/// Where the udev rule that makes /dev/lunkeeper/<name> may be installed, below the root.
pub const RULE_PLACES: [&str; 3] = [
    "etc/udev/rules.d/90-lunkeeper.rules",
    "usr/lib/udev/rules.d/90-lunkeeper.rules",
    "lib/udev/rules.d/90-lunkeeper.rules",
];

/// The installed udev rule below `root`, if any (the first of [`RULE_PLACES`] that is a file).
pub fn installed_rule(root: &Path) -> Option<&'static str> {
    RULE_PLACES.iter().copied().find(|p| root.join(p).is_file())
}

/// `/dev/lunkeeper/<name>` → the kernel name of the device each link points at (`dm-3`,
/// `sdc`), or None when lunkeeper's udev rule is not installed: then no link is coming, and
/// nothing should wait for one. A missing directory (no link yet) is an empty map; an entry
/// that is not a symlink is left out.
///
/// A link counts once udev's database for its device agrees: it lists the link (`S:`) and
/// does not say `SYSTEMD_READY=0`. systemd's device unit for the link becomes active on that
/// same udev event, and a `_netdev` mount waits for the unit, not the file: the link alone can
/// be there while the map's events still say "not ready" (a map made with one path, reloaded
/// with the next), as tests/boot saw, with the device unit active half a second later.
pub fn read_links(root: &Path) -> Option<BTreeMap<String, String>> {
    installed_rule(root)?;
    let Ok(entries) = std::fs::read_dir(root.join(LINKS_DIR)) else {
        return Some(BTreeMap::new());
    };
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                // udev links relatively (`../dm-3`); the device is the last component.
                let target = std::fs::read_link(e.path()).ok()?;
                let device = target.file_name()?.to_str()?.to_string();
                udev_agrees(root, &name, &device).then_some((name, device))
            })
            .collect(),
    )
}

/// Whether udev's database entry of `device` lists `lunkeeper/<name>` and does not mark the
/// device not ready for systemd.
fn udev_agrees(root: &Path, name: &str, device: &str) -> bool {
    let Ok(devnum) = std::fs::read_to_string(root.join("sys/class/block").join(device).join("dev"))
    else {
        return false;
    };
    let db = root.join(format!("run/udev/data/b{}", devnum.trim()));
    let Ok(text) = std::fs::read_to_string(db) else {
        return false;
    };
    let link = format!("lunkeeper/{name}");
    let mut listed = false;
    for line in text.lines() {
        if line == "E:SYSTEMD_READY=0" {
            return false;
        }
        listed |= line.strip_prefix("S:") == Some(link.as_str());
    }
    listed
}

/// Key → volume name. A missing directory is an empty map; an unreadable file is skipped (it
/// will be rewritten). A host has one file per volume, so each is read by its name in the
/// open directory, in one `read` when it fits a page (lunkeeper writes one short line).
pub fn read_names(root: &Path) -> BTreeMap<String, String> {
    let dir = root.join(NAMES_DIR);
    let Ok(fd) = DirFd::open(AT_FDCWD, &dir) else {
        return BTreeMap::new();
    };
    let mut buf = [0u8; 4096];
    fd.names()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|key| {
            if key.starts_with('.') {
                return None;
            }
            let len = dirfd::read_small_at(fd.fd(), key.as_str(), &mut buf).ok()?;
            let text = if len < buf.len() {
                Cow::Borrowed(std::str::from_utf8(buf.get(..len)?).ok()?)
            } else {
                Cow::Owned(std::fs::read_to_string(dir.join(&key)).ok()?)
            };
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("LUNKEEPER_VOLUME="))?;
            Some((key, name.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mappings_and_skips_junk() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(NAMES_DIR);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("mpath-36001405aa"), "LUNKEEPER_VOLUME=db\n").unwrap();
        std::fs::write(d.join("sd-36001405bb"), "LUNKEEPER_VOLUME=logs\n").unwrap();
        std::fs::write(d.join("junk"), "nothing here\n").unwrap();
        std::fs::write(d.join(".mpath-x.tmp.1"), "LUNKEEPER_VOLUME=half\n").unwrap();
        let names = read_names(dir.path());
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec![
                ("mpath-36001405aa".into(), "db".into()),
                ("sd-36001405bb".into(), "logs".into())
            ]
        );
        assert!(read_names(&dir.path().join("nowhere")).is_empty());
    }

    #[test]
    fn links_are_read_only_where_the_rule_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let links = root.join(LINKS_DIR);
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink("../dm-3", links.join("db")).unwrap();
        assert_eq!(read_links(root), None, "no rule: no link is coming");

        let rule = root.join(RULE_PLACES[1]);
        std::fs::create_dir_all(rule.parent().unwrap()).unwrap();
        std::fs::write(&rule, "# rule\n").unwrap();
        assert_eq!(installed_rule(root), Some(RULE_PLACES[1]));
        std::os::unix::fs::symlink("/dev/sdc", links.join("logs")).unwrap();
        std::fs::write(links.join("junk"), "").unwrap();
        assert_eq!(
            read_links(root),
            Some(BTreeMap::new()),
            "udev's database does not list them yet"
        );

        let dev = |device: &str, devnum: &str, db: &str| {
            let sys = root.join("sys/class/block").join(device);
            std::fs::create_dir_all(&sys).unwrap();
            std::fs::write(sys.join("dev"), format!("{devnum}\n")).unwrap();
            let data = root.join("run/udev/data");
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join(format!("b{devnum}")), db).unwrap();
        };
        dev(
            "dm-3",
            "253:3",
            "S:disk/by-id/dm-uuid-mpath-36001405aa\nS:lunkeeper/db\nE:SYSTEMD_READY=1\nG:systemd\n",
        );
        dev("sdc", "8:32", "S:lunkeeper/logs\nE:SYSTEMD_READY=0\n");
        assert_eq!(
            read_links(root).unwrap().into_iter().collect::<Vec<_>>(),
            vec![("db".into(), "dm-3".into())],
            "logs: udev says its device is not ready for systemd"
        );
        dev("sdc", "8:32", "S:lunkeeper/logs\nG:systemd\n");
        assert_eq!(
            read_links(root).unwrap().into_iter().collect::<Vec<_>>(),
            vec![("db".into(), "dm-3".into()), ("logs".into(), "sdc".into())]
        );
        dev("sdc", "8:32", "S:lunkeeper/other\n");
        assert_eq!(
            read_links(root).unwrap().len(),
            1,
            "the entry names another link"
        );
        std::fs::remove_dir_all(&links).unwrap();
        assert_eq!(read_links(root), Some(BTreeMap::new()), "rule, no link yet");
    }
}
