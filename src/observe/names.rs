//! lunkeeper's own udev name mappings: `/run/lunkeeper/udev/<key>` holding
//! `LUNKEEPER_VOLUME=<name>`, which `rules/90-lunkeeper.rules` turns into
//! `/dev/lunkeeper/<name>`. Keys are `mpath-<wwid>` (a map's DM_UUID) or `sd-<wwid>` (a disk's
//! ID_SERIAL).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use super::dirfd::{self, DirFd, AT_FDCWD};

/// Where the mappings live below the root.
pub const NAMES_DIR: &str = "run/lunkeeper/udev";

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
}
