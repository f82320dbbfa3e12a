//! Reads one [`Observed`] snapshot from sysfs, open-iscsi's node database, multipath's wwids
//! file and mountinfo, every path below a root (`/` in production, a fixture tree in tests).
//!
//! The kernel changes these trees while they are read (a session logs out, a disk goes away),
//! so an entry that vanishes or cannot be read part-way is left out of the snapshot or its
//! field is None; the next resync sees the settled state. Only the top-level sources are
//! strict, because an unreadable source read as "nothing there" would make the planner act
//! on a world that does not exist (log in again, recreate records). See [`ObserveError`].

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::{BlockDev, DevNum, Hctl, LunDevice, Map, NodeRecord, Observed, Session, SessionState, Wwid};

/// Why no snapshot could be taken at all.
///
/// - `root/sys/class` missing (or not a directory): this is not a mounted Linux sysfs, so
///   "no sessions" would be a guess, not an observation.
/// - A top-level source that exists but cannot be read (permissions, I/O error):
///   `sys/class`, `sys/class/iscsi_session`, `sys/block`, the two node directories,
///   `etc/multipath/wwids`, `proc/self/mountinfo`. A top-level source that does not exist is
///   normal (module not loaded, open-iscsi or multipath not installed) and reads as empty.
///
/// Anything below the top level that vanishes or fails to read is a race with the kernel or
/// a tool, and is skipped rather than reported.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("{}: not a Linux sysfs (no sys/class below it; is /sys mounted?)", .root.display())]
    NotSysfs { root: PathBuf },
    #[error("{}: cannot read: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Takes one snapshot of the host below `root`. Reads only; never follows a symlink out of
/// `root` on its own account (see [`resolve_in_root`]).
pub fn observe(root: &Path) -> Result<Observed, ObserveError> {
    let class = root.join("sys/class");
    match fs::metadata(&class) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ObserveError::NotSysfs { root: root.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ObserveError::NotSysfs { root: root.to_path_buf() })
        }
        Err(source) => return Err(ObserveError::Unreadable { path: class, source }),
    }
    Ok(Observed {
        sessions: sessions(root)?,
        maps: maps(root)?,
        node_records: node_records(root)?,
        registered_wwids: registered_wwids(root)?,
        mounted: mounted(root)?,
        ..Observed::default()
    })
}

fn sessions(root: &Path) -> Result<Vec<Session>, ObserveError> {
    let class = root.join("sys/class/iscsi_session");
    let mut out: Vec<Session> = top_level_names(&class)?
        .into_iter()
        .filter_map(|name| {
            let id = name.strip_prefix("session")?.parse().ok()?;
            session(root, &class.join(&name), &name, id)
        })
        .collect();
    out.sort_by_key(|s| s.id);
    Ok(out)
}

/// `link` is `sys/class/iscsi_session/sessionN`. None when the session has gone.
fn session(root: &Path, link: &Path, name: &str, id: u32) -> Option<Session> {
    // The symlink is resolved by hand, not by the OS, because its target's path is what
    // names the SCSI host (`.../hostH/sessionN/iscsi_session/sessionN`).
    let class_dir = resolve_in_root(root, link).unwrap_or_else(|| link.to_path_buf());
    let target = read_attr(&class_dir.join("targetname")).ok()?;
    // username/password live here too: they are never read (CAP_SYS_ADMIN, and secrets).
    let tpgt = read_attr(&class_dir.join("tpgt")).ok().and_then(|t| t.parse().ok());
    let state = read_attr(&class_dir.join("state"))
        .map(|s| SessionState::parse(&s))
        .unwrap_or(SessionState::Unknown);
    let device_dir = session_device_dir(root, &class_dir, name);
    let host = device_dir.as_deref().and_then(host_of);
    let devices = device_dir.map(|d| lun_devices(root, &d)).unwrap_or_default();
    Some(Session {
        id,
        target,
        tpgt,
        portal: portal(root, id),
        state,
        host,
        devices,
    })
}

/// `.../sessionN` from `.../sessionN/iscsi_session/sessionN`; through the class directory's
/// `device` link when the class directory is not where sysfs normally puts it.
fn session_device_dir(root: &Path, class_dir: &Path, name: &str) -> Option<PathBuf> {
    let parent = class_dir.parent()?;
    let device_dir = parent.parent()?;
    if parent.file_name() == Some(OsStr::new("iscsi_session"))
        && device_dir.file_name() == Some(OsStr::new(name))
    {
        return Some(device_dir.to_path_buf());
    }
    resolve_in_root(root, &class_dir.join("device"))
}

/// H of the `hostH` directory that holds a session's device directory. Hardware-offload
/// transports put `hostH` under a PCI device instead of `platform`; only the parent counts.
fn host_of(session_device_dir: &Path) -> Option<u32> {
    session_device_dir
        .parent()?
        .file_name()?
        .to_str()?
        .strip_prefix("host")?
        .parse()
        .ok()
}

fn portal(root: &Path, id: u32) -> Option<SocketAddr> {
    let conn = root.join(format!("sys/class/iscsi_connection/connection{id}:0"));
    let addr = read_attr(&conn.join("persistent_address")).ok()?;
    let port = read_attr(&conn.join("persistent_port")).ok()?.parse().ok()?;
    Some(SocketAddr::new(parse_ip(&addr)?, port))
}

/// An address as sysfs and open-iscsi print it: bare, IPv6 without brackets. A link-local
/// zone (`%eth0`) cannot be carried by `SocketAddr` without the interface index, so such an
/// address reads as unknown rather than as a different address.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    s.parse().ok()
}

/// Every `targetH:C:T/H:C:T:L` below a session's device directory, sorted by H:C:T:L.
fn lun_devices(root: &Path, session_device_dir: &Path) -> Vec<LunDevice> {
    let mut out = Vec::new();
    for target in names(session_device_dir).unwrap_or_default() {
        if !target.starts_with("target") {
            continue;
        }
        let target_dir = session_device_dir.join(&target);
        for name in names(&target_dir).unwrap_or_default() {
            let Ok(hctl) = name.parse::<Hctl>() else {
                continue;
            };
            if let Some(dev) = lun_device(root, &target_dir.join(&name), hctl) {
                out.push(dev);
            }
        }
    }
    out.sort_by_key(|d| d.hctl);
    out
}

fn lun_device(root: &Path, dir: &Path, hctl: Hctl) -> Option<LunDevice> {
    let state = match read_attr(&dir.join("state")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        // Present but unreadable: keep the path, but never call it running.
        Err(_) => "unknown".to_string(),
    };
    // LIO answers ENXIO here until the backstore has a unit serial.
    let wwid = read_attr(&dir.join("wwid"))
        .ok()
        .and_then(|w| Wwid::from_sysfs(&w).ok());
    Some(LunDevice {
        hctl,
        state,
        wwid,
        disk: whole_disk(root, &dir.join("block")),
    })
}

/// The disk below `H:C:T:L/block/`. The directory normally holds exactly that one entry; with
/// more, the first name (sorted) that is not a partition wins.
fn whole_disk(root: &Path, block_dir: &Path) -> Option<BlockDev> {
    let mut candidates = names(block_dir).ok()?;
    candidates.sort();
    let name = if candidates.len() == 1 {
        candidates.pop()?
    } else {
        candidates
            .into_iter()
            .find(|n| !exists(&block_dir.join(n).join("partition")))?
    };
    let dir = block_dir.join(&name);
    let node = root.join("dev").join(&name);
    block_dev(root, &dir, name, &node)
}

/// A block device from its sysfs directory (the one `sys/block/<name>` points to). None when
/// it has gone (its `dev` or `size` no longer reads).
fn block_dev(root: &Path, dir: &Path, name: String, node: &Path) -> Option<BlockDev> {
    let devnum = read_attr(&dir.join("dev")).ok()?.parse().ok()?;
    let size_sectors = read_attr(&dir.join("size")).ok()?.parse().ok()?;
    let partitions = partitions(root, dir, &name);
    Some(BlockDev {
        holders: sorted_names(&dir.join("holders")),
        partitions,
        node_present: exists(node),
        devnum,
        size_sectors,
        name,
    })
}

/// Subdirectories of a disk's directory that hold a `partition` attribute. The kernel names a
/// partition after its disk (`sda1`, `nvme0n1p1`), so only such names are checked: the other
/// dozen subdirectories (queue, power, mq, ...) cost no lookup.
fn partitions(root: &Path, disk_dir: &Path, disk: &str) -> Vec<BlockDev> {
    let Ok(entries) = fs::read_dir(disk_dir) else {
        return Vec::new();
    };
    let mut out: Vec<BlockDev> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            if name.len() <= disk.len() || !name.starts_with(disk) || !e.file_type().ok()?.is_dir() {
                return None;
            }
            let dir = e.path();
            if !exists(&dir.join("partition")) {
                return None;
            }
            let node = root.join("dev").join(&name);
            let mut part = block_dev(root, &dir, name, &node)?;
            // A partition has no partitions; the recursive look found only its own subdirs.
            part.partitions.clear();
            Some(part)
        })
        .collect();
    // Names share the disk's prefix, so shorter-then-lexical is numeric: sda2 before sda10.
    out.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
    out
}

/// Every `sys/block/dm-N` whose uuid is `mpath-<wwid>`, sorted by map name. kpartx partitions
/// (`partN-mpath-…`), LVM and other dm devices are not multipath maps.
fn maps(root: &Path) -> Result<Vec<Map>, ObserveError> {
    let block = root.join("sys/block");
    let mut out: Vec<Map> = top_level_names(&block)?
        .into_iter()
        .filter(|n| n.starts_with("dm-"))
        .filter_map(|n| map(root, &block.join(&n), n))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn map(root: &Path, dir: &Path, kernel_name: String) -> Option<Map> {
    let uuid = read_attr(&dir.join("dm/uuid")).ok()?;
    let wwid = Wwid::from_str(uuid.strip_prefix("mpath-")?).ok()?;
    let name = read_attr(&dir.join("dm/name")).ok()?;
    // An empty or path-like name would make the /dev/mapper check look at the wrong file.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let suspended = read_attr(&dir.join("dm/suspended")).is_ok_and(|s| s == "1");
    let slaves = sorted_names(&dir.join("slaves"));
    let node = root.join("dev/mapper").join(&name);
    let dev = block_dev(root, dir, kernel_name, &node)?;
    Some(Map {
        name,
        wwid,
        dev,
        slaves,
        suspended,
    })
}

/// Records in `etc/iscsi/nodes` (Debian) and `var/lib/iscsi/nodes` (upstream), sorted by
/// target, portal, TPGT and path. When one directory is a link to the other it is read once.
fn node_records(root: &Path) -> Result<Vec<NodeRecord>, ObserveError> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for rel in ["etc/iscsi/nodes", "var/lib/iscsi/nodes"] {
        let dir = root.join(rel);
        let targets = top_level_names(&dir)?;
        if let Ok(m) = fs::metadata(&dir) {
            if seen.contains(&(m.dev(), m.ino())) {
                continue;
            }
            seen.push((m.dev(), m.ino()));
        }
        for target in targets {
            let target_dir = dir.join(&target);
            for portal in names(&target_dir).unwrap_or_default() {
                let Some((addr, tpgt)) = parse_portal_name(&portal) else {
                    tracing::debug!(path = %target_dir.join(&portal).display(), "not a node record portal; skipped");
                    continue;
                };
                let path = target_dir.join(&portal);
                let record = |path: PathBuf| NodeRecord {
                    target: target.clone(),
                    portal: addr,
                    tpgt,
                    path,
                };
                match fs::metadata(&path) {
                    // open-iscsi before svn r780 kept the record as the portal file itself.
                    Ok(m) if m.is_file() => out.push(record(path)),
                    Ok(m) if m.is_dir() => {
                        for iface in names(&path).unwrap_or_default() {
                            let file = path.join(&iface);
                            if fs::metadata(&file).is_ok_and(|m| m.is_file()) {
                                out.push(record(file));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.target, a.portal, a.tpgt, &a.path).cmp(&(&b.target, b.portal, b.tpgt, &b.path)));
    Ok(out)
}

/// `<addr>,<port>,<tpgt>` or the old `<addr>,<port>` (TPGT -1). Split from the right so that
/// nothing in the address part is ever taken for a separator.
fn parse_portal_name(name: &str) -> Option<(SocketAddr, i32)> {
    let mut fields = name.rsplitn(3, ',');
    let last = fields.next()?;
    let middle = fields.next()?;
    let (addr, port, tpgt) = match fields.next() {
        Some(addr) => (addr, middle, last.parse().ok()?),
        None => (middle, last, -1),
    };
    Some((SocketAddr::new(parse_ip(addr)?, port.parse().ok()?), tpgt))
}

/// `/<wwid>/` lines of `etc/multipath/wwids`; comments and anything malformed are skipped, as
/// multipath itself skips them.
fn registered_wwids(root: &Path) -> Result<BTreeSet<Wwid>, ObserveError> {
    let Some(text) = top_level_file(&root.join("etc/multipath/wwids"))? else {
        return Ok(BTreeSet::new());
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let inner = line.trim().strip_prefix('/')?.strip_suffix('/')?;
            Wwid::from_str(inner).ok()
        })
        .collect())
}

/// The `maj:min` (third) field of every mountinfo line.
fn mounted(root: &Path) -> Result<BTreeSet<DevNum>, ObserveError> {
    let Some(text) = top_level_file(&root.join("proc/self/mountinfo"))? else {
        return Ok(BTreeSet::new());
    };
    Ok(text
        .lines()
        .filter_map(|line| line.split_ascii_whitespace().nth(2)?.parse().ok())
        .collect())
}

/// Resolves the symlink `link` (which lies below `root`) one level, lexically, and keeps the
/// result below `root`: a relative target is taken from the link's directory, an absolute one
/// from `root`, and `..` never climbs above `root`. Lexical `..` is right here because the
/// directories holding sysfs class links are not themselves symlinks. None when `link` is not
/// a symlink or is not below `root`.
fn resolve_in_root(root: &Path, link: &Path) -> Option<PathBuf> {
    let target = fs::read_link(link).ok()?;
    let link_dir = link.strip_prefix(root).ok()?.parent()?;
    let mut parts: Vec<&OsStr> = Vec::new();
    if target.is_relative() {
        parts.extend(link_dir.components().filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        }));
    }
    for c in target.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    let mut out = root.to_path_buf();
    out.extend(parts);
    Some(out)
}

/// A sysfs attribute, trailing newline and surrounding blanks removed. Attributes are at most
/// a page, so one `read` into a page-sized buffer replaces `read_to_string`'s stat and
/// second read: this runs several times for each of thousands of paths.
fn read_attr(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // A short read is the end: sysfs gives the whole attribute at once, and a small regular
    // file (a fixture) is read whole too; the loop only covers reads interrupted early.
    loop {
        let want = buf.len() - len;
        let n = match file.read(buf.get_mut(len..).unwrap_or_default()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n;
        if n == 0 || n < want {
            break;
        }
    }
    let text = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
    Ok(text.trim().to_string())
}

fn exists(path: &Path) -> bool {
    fs::metadata(path).is_ok()
}

/// Entry names of a directory; names that are not UTF-8 (never the case in sysfs) and entries
/// that fail mid-listing are skipped.
fn names(dir: &Path) -> io::Result<Vec<String>> {
    Ok(fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect())
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v = names(dir).unwrap_or_default();
    v.sort();
    v
}

/// Names in a top-level directory: absent is empty, unreadable is an error.
fn top_level_names(dir: &Path) -> Result<Vec<String>, ObserveError> {
    match names(dir) {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ObserveError::Unreadable {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// A top-level file: absent is None, unreadable is an error. Read to the end, because
/// mountinfo comes a page at a time.
fn top_level_file(path: &Path) -> Result<Option<String>, ObserveError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ObserveError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::os::unix::fs::symlink;
    use std::sync::mpsc;
    use std::time::Duration;

    use proptest::prelude::*;
    use tempfile::TempDir;

    use super::*;
    use crate::observe::fixture::FixtureTree;

    type TestResult = Result<(), Box<dyn Error>>;

    const IQN: &str = "iqn.2026-11.test:a";
    const NAA: &str = "naa.60014053f8c2a1b2c3d4e5f6a7b8c9d0";
    const WWID: &str = "360014053f8c2a1b2c3d4e5f6a7b8c9d0";
    const NAA_B: &str = "naa.6001405bbbbbbbbbbbbbbbbbbbbbbbbb";
    const WWID_B: &str = "36001405bbbbbbbbbbbbbbbbbbbbbbbbb";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn wwid(s: &str) -> Wwid {
        s.parse().unwrap()
    }

    fn hctl(host: u32, lun: u64) -> Hctl {
        Hctl {
            host,
            channel: 0,
            target: 0,
            lun,
        }
    }

    fn devnum(major: u32, minor: u32) -> DevNum {
        DevNum { major, minor }
    }

    fn disk(name: &str, minor: u32, holders: &[&str]) -> BlockDev {
        BlockDev {
            name: name.to_string(),
            devnum: devnum(8, minor),
            size_sectors: 131_072,
            holders: holders.iter().map(|h| h.to_string()).collect(),
            partitions: Vec::new(),
            node_present: true,
        }
    }

    fn fixture() -> Result<(TempDir, FixtureTree), Box<dyn Error>> {
        let dir = TempDir::new()?;
        let t = FixtureTree::new(dir.path())?;
        Ok((dir, t))
    }

    /// The fixture's own mountinfo lines: `/`, `/sys`, `/proc`.
    fn base_mounts() -> BTreeSet<DevNum> {
        [devnum(254, 1), devnum(0, 20), devnum(0, 21)].into()
    }

    #[test]
    fn two_portals_one_target_and_their_map() -> TestResult {
        let (dir, mut t) = fixture()?;
        let h1 = t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        let h2 = t.session(2, IQN, addr("[::1]:3260"), "LOGGED_IN")?;
        assert_eq!((h1, h2), (3, 4));
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        t.lun(2, 0, Some("sdb"), Some(NAA), "running")?;
        t.map(WWID, "dm-0", &["sda", "sdb"])?;

        let o = observe(dir.path())?;
        let path = |host, name, minor| LunDevice {
            hctl: hctl(host, 0),
            state: "running".to_string(),
            wwid: Some(wwid(WWID)),
            disk: Some(disk(name, minor, &["dm-0"])),
        };
        let expected = Observed {
            sessions: vec![
                Session {
                    id: 1,
                    target: IQN.to_string(),
                    tpgt: Some(1),
                    portal: Some(addr("127.0.0.1:3260")),
                    state: SessionState::LoggedIn,
                    host: Some(3),
                    devices: vec![path(3, "sda", 0)],
                },
                Session {
                    id: 2,
                    target: IQN.to_string(),
                    tpgt: Some(1),
                    portal: Some(addr("[::1]:3260")),
                    state: SessionState::LoggedIn,
                    host: Some(4),
                    devices: vec![path(4, "sdb", 16)],
                },
            ],
            maps: vec![Map {
                name: WWID.to_string(),
                wwid: wwid(WWID),
                dev: BlockDev {
                    name: "dm-0".to_string(),
                    devnum: devnum(253, 0),
                    size_sectors: 131_072,
                    holders: Vec::new(),
                    partitions: Vec::new(),
                    node_present: true,
                },
                slaves: vec!["sda".to_string(), "sdb".to_string()],
                suspended: false,
            }],
            mounted: base_mounts(),
            ..Observed::default()
        };
        assert_eq!(o, expected);
        Ok(())
    }

    #[test]
    fn session_states_and_odd_tpgt() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "FAILED")?;
        t.session(2, IQN, addr("127.0.0.2:3260"), "FREE")?;
        t.session(3, IQN, addr("127.0.0.3:3260"), "SOMETHING_NEW")?;
        fs::write(dir.path().join("sys/class/iscsi_session/session3/tpgt"), "-1\n")?;
        let o = observe(dir.path())?;
        let states: Vec<_> = o.sessions.iter().map(|s| (s.state, s.tpgt)).collect();
        assert_eq!(
            states,
            [
                (SessionState::Failed, Some(1)),
                (SessionState::Free, Some(1)),
                (SessionState::Unknown, None)
            ]
        );
        Ok(())
    }

    #[test]
    fn lun_300_by_targeted_scan_and_flat_addressed_16640() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 16640, Some("sda"), Some(NAA), "running")?;
        t.lun(1, 300, Some("sdb"), Some(NAA_B), "running")?;
        let o = observe(dir.path())?;
        let devices = &o.sessions[0].devices;
        let seen: Vec<_> = devices
            .iter()
            .map(|d| (d.hctl.to_string(), d.disk.as_ref().map(|b| b.name.clone())))
            .collect();
        assert_eq!(
            seen,
            [
                ("3:0:0:300".to_string(), Some("sdb".to_string())),
                ("3:0:0:16640".to_string(), Some("sda".to_string()))
            ]
        );
        assert_eq!(devices[0].wwid, Some(wwid(WWID_B)));
        assert_eq!(devices[1].wwid, Some(wwid(WWID)));
        Ok(())
    }

    #[test]
    fn unreadable_wwid_is_none_and_a_lun_may_have_no_disk_yet() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        // LIO without a unit serial: no identity; sd has not bound the device yet either.
        t.lun(1, 1, None, None, "running")?;
        // The attribute is there but reading it fails (ENXIO in the VM; EISDIR here).
        t.lun(1, 2, Some("sda"), None, "blocked")?;
        let lun2 = t.lun_dir(1, 2).ok_or("no lun dir")?;
        fs::create_dir(lun2.join("wwid"))?;
        // A wwid that is empty after trimming is no identity either.
        t.lun(1, 3, Some("sdb"), Some(""), "running")?;

        let o = observe(dir.path())?;
        let d = &o.sessions[0].devices;
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].hctl, d[0].wwid.as_ref(), d[0].disk.as_ref()), (hctl(3, 1), None, None));
        assert!(d[0].is_running());
        assert_eq!((d[1].wwid.as_ref(), d[1].state.as_str()), (None, "blocked"));
        assert!(!d[1].is_running());
        assert_eq!(d[1].disk, Some(disk("sda", 0, &[])));
        assert_eq!(d[2].wwid, None);
        Ok(())
    }

    #[test]
    fn a_missing_connection_leaves_the_portal_unknown() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        let sess = t.session_device_dir(1).ok_or("no session")?;
        fs::remove_dir_all(sess.join("connection1:0"))?;
        let o = observe(dir.path())?;
        assert_eq!(o.sessions.len(), 1);
        assert_eq!(o.sessions[0].portal, None);
        assert_eq!(o.sessions[0].host, Some(3));
        assert_eq!(o.sessions[0].target, IQN);

        fs::remove_file(dir.path().join("sys/class/iscsi_connection/connection1:0"))?;
        assert_eq!(observe(dir.path())?.sessions[0].portal, None);
        Ok(())
    }

    #[test]
    fn a_dangling_session_link_is_skipped() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.session(2, IQN, addr("127.0.0.2:3260"), "LOGGED_IN")?;
        t.lun(2, 0, Some("sda"), Some(NAA), "running")?;
        // Session 2 logged out between the class listing and the read.
        fs::remove_dir_all(t.session_device_dir(2).ok_or("no session")?)?;
        symlink(
            "../../devices/platform/host9/session7/iscsi_session/session7",
            dir.path().join("sys/class/iscsi_session/session7"),
        )?;
        // Not a session at all.
        fs::create_dir(dir.path().join("sys/class/iscsi_session/power"))?;
        let o = observe(dir.path())?;
        let ids: Vec<_> = o.sessions.iter().map(|s| s.id).collect();
        assert_eq!(ids, [1]);
        Ok(())
    }

    #[test]
    fn an_absolute_session_link_is_resolved_inside_root() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        let link = dir.path().join("sys/class/iscsi_session/session1");
        fs::remove_file(&link)?;
        symlink("/sys/devices/platform/host3/session1/iscsi_session/session1", &link)?;
        let o = observe(dir.path())?;
        assert_eq!(o.sessions[0].host, Some(3));
        assert_eq!(o.sessions[0].devices.len(), 1);
        Ok(())
    }

    #[test]
    fn a_session_class_directory_that_is_no_link_finds_its_device_through_device() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        let class = dir.path().join("sys/class/iscsi_session/session1");
        fs::remove_file(&class)?;
        fs::create_dir(&class)?;
        fs::write(class.join("targetname"), format!("{IQN}\n"))?;
        fs::write(class.join("state"), "LOGGED_IN\n")?;
        symlink("../../../devices/platform/host3/session1", class.join("device"))?;
        let o = observe(dir.path())?;
        assert_eq!(o.sessions[0].host, Some(3));
        assert_eq!(o.sessions[0].devices[0].hctl, hctl(3, 0));
        Ok(())
    }

    #[test]
    fn resolving_never_climbs_above_root() -> TestResult {
        let dir = TempDir::new()?;
        fs::create_dir_all(dir.path().join("sys/class/x"))?;
        let link = dir.path().join("sys/class/x/l");
        symlink("../../../../../../../etc/passwd", &link)?;
        assert_eq!(resolve_in_root(dir.path(), &link), Some(dir.path().join("etc/passwd")));
        assert_eq!(resolve_in_root(dir.path(), &dir.path().join("sys/class/x")), None);
        Ok(())
    }

    /// The CHAP attributes are FIFOs here: opening one would block, so a test that finishes
    /// proves they were never opened.
    #[test]
    fn chap_attributes_are_never_opened() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        let sess = dir.path().join("sys/class/iscsi_session/session1");
        for name in ["username", "password", "username_in", "password_in"] {
            fs::remove_file(sess.join(name))?;
            nix::unistd::mkfifo(&sess.join(name), nix::sys::stat::Mode::S_IRUSR)?;
        }
        let root = dir.path().to_path_buf();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(observe(&root).map(|o| o.sessions.len()).map_err(|e| e.to_string()));
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10))?, Ok(1));
        Ok(())
    }

    #[test]
    fn kpartx_partitions_and_other_dm_devices_are_not_maps() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        t.lun(1, 1, Some("sdb"), Some(NAA_B), "running")?;
        t.map(WWID, "dm-0", &["sda"])?;
        t.dm_device("dm-1", &format!("{WWID}-part1"), &format!("part1-mpath-{WWID}"), &["dm-0"])?;
        t.dm_device("dm-2", "vg0-lv0", "LVM-k3W8aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &["sdb"])?;
        // A dm device mid-creation has no uuid yet.
        t.dm_device("dm-3", "pending", "", &[])?;
        fs::remove_file(dir.path().join("sys/devices/virtual/block/dm-3/dm/uuid"))?;

        let o = observe(dir.path())?;
        assert_eq!(o.maps.len(), 1);
        let m = &o.maps[0];
        assert_eq!((m.name.as_str(), m.dev.name.as_str()), (WWID, "dm-0"));
        assert_eq!(m.dev.holders, ["dm-1"]);
        assert_eq!(m.slaves, ["sda"]);
        assert_eq!(o.sessions[0].devices[1].disk.as_ref().map(|d| d.holders.clone()), Some(vec!["dm-2".to_string()]));
        Ok(())
    }

    #[test]
    fn a_suspended_map_without_its_mapper_node() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        t.map(WWID, "dm-0", &["sda"])?;
        fs::write(dir.path().join("sys/block/dm-0/dm/suspended"), "1\n")?;
        fs::remove_file(dir.path().join("dev/mapper").join(WWID))?;
        let o = observe(dir.path())?;
        assert!(o.maps[0].suspended);
        assert!(!o.maps[0].dev.node_present);
        // udev has not made /dev/sda yet either.
        fs::remove_file(dir.path().join("dev/sda"))?;
        let o = observe(dir.path())?;
        assert_eq!(o.sessions[0].devices[0].disk.as_ref().map(|d| d.node_present), Some(false));
        Ok(())
    }

    #[test]
    fn a_disk_going_away_mid_read_leaves_the_device_without_disk() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        fs::remove_file(t.block_path("sda").ok_or("no sda")?.join("dev"))?;
        let o = observe(dir.path())?;
        assert_eq!(o.sessions[0].devices[0].disk, None);
        assert_eq!(o.sessions[0].devices[0].wwid, Some(wwid(WWID)));
        Ok(())
    }

    #[test]
    fn partitions_with_their_holders_in_numeric_order() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        for p in ["sda10", "sda2", "sda1"] {
            t.partition("sda", p)?;
        }
        t.dm_device("dm-4", "vg0-lv0", "LVM-xyz", &["sda2"])?;
        fs::remove_file(dir.path().join("dev/sda10"))?;

        let o = observe(dir.path())?;
        let sda = o.sessions[0].devices[0].disk.clone().ok_or("no disk")?;
        let part = |name: &str, minor, holders: &[&str], node_present| BlockDev {
            size_sectors: 65_536,
            node_present,
            ..disk(name, minor, holders)
        };
        assert_eq!(
            sda.partitions,
            [
                part("sda1", 1, &[], true),
                part("sda2", 2, &["dm-4"], true),
                part("sda10", 10, &[], false)
            ]
        );
        assert_eq!(sda.holders, Vec::<String>::new());
        let nums: Vec<String> = sda.devnums().map(|d| d.to_string()).collect();
        assert_eq!(nums, ["8:0", "8:1", "8:2", "8:10"]);
        Ok(())
    }

    #[test]
    fn node_records_in_every_layout() -> TestResult {
        let (dir, mut t) = fixture()?;
        let v4 = t.node_record(IQN, addr("127.0.0.1:3260"), 1)?;
        let v6 = t.node_record(IQN, addr("[::1]:3260"), 1)?;
        let no_tpgt = t.node_record("iqn.2026-11.test:b", addr("10.0.0.1:3260"), -1)?;
        let upstream = t.node_record_in(
            "var/lib/iscsi/nodes",
            "iqn.2026-11.test:c",
            addr("10.0.0.2:3261"),
            2,
            "iface0",
        )?;
        let legacy = t.legacy_node_record("iqn.2026-11.test:d", addr("10.0.0.3:3260"))?;
        let flat = dir.path().join("etc/iscsi/nodes/iqn.2026-11.test:e/10.0.0.4,3260,5");
        fs::create_dir_all(flat.parent().ok_or("no parent")?)?;
        fs::write(&flat, "node.name = iqn.2026-11.test:e\n")?;
        // Not records: a name that is no portal, a directory where an iface file belongs.
        fs::create_dir_all(dir.path().join("etc/iscsi/nodes/iqn.2026-11.test:e/garbage"))?;
        fs::create_dir_all(dir.path().join("etc/iscsi/nodes/iqn.2026-11.test:e/10.0.0.5,3260,1/sub"))?;

        let o = observe(dir.path())?;
        let rec = |target: &str, portal: &str, tpgt, path: &PathBuf| NodeRecord {
            target: target.to_string(),
            portal: addr(portal),
            tpgt,
            path: path.clone(),
        };
        assert_eq!(
            o.node_records,
            [
                rec(IQN, "127.0.0.1:3260", 1, &v4),
                rec(IQN, "[::1]:3260", 1, &v6),
                rec("iqn.2026-11.test:b", "10.0.0.1:3260", -1, &no_tpgt),
                rec("iqn.2026-11.test:c", "10.0.0.2:3261", 2, &upstream),
                rec("iqn.2026-11.test:d", "10.0.0.3:3260", -1, &legacy),
                rec("iqn.2026-11.test:e", "10.0.0.4:3260", 5, &flat),
            ]
        );
        assert!(v6.ends_with("::1,3260,1/default"));
        assert!(legacy.ends_with("iqn.2026-11.test:d/10.0.0.3,3260"));
        Ok(())
    }

    #[test]
    fn node_directories_that_are_one_are_read_once() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.node_record(IQN, addr("127.0.0.1:3260"), 1)?;
        fs::create_dir_all(dir.path().join("var/lib"))?;
        symlink("../../etc/iscsi", dir.path().join("var/lib/iscsi"))?;
        assert_eq!(observe(dir.path())?.node_records.len(), 1);
        Ok(())
    }

    #[test]
    fn portal_names() {
        assert_eq!(parse_portal_name("::1,3260,1"), Some((addr("[::1]:3260"), 1)));
        assert_eq!(parse_portal_name("fd00::a:b,3260,-1"), Some((addr("[fd00::a:b]:3260"), -1)));
        assert_eq!(parse_portal_name("10.0.0.1,3260"), Some((addr("10.0.0.1:3260"), -1)));
        assert_eq!(parse_portal_name("10.0.0.1"), None);
        assert_eq!(parse_portal_name("10.0.0.1,99999,1"), None);
        assert_eq!(parse_portal_name("10.0.0.1,3260,x"), None);
        assert_eq!(parse_portal_name("host.example,3260,1"), None);
        assert_eq!(parse_portal_name("fe80::1%eth0,3260,1"), None);
    }

    #[test]
    fn wwids_file_skips_comments_and_junk() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.registered_wwid(WWID)?;
        let path = dir.path().join("etc/multipath/wwids");
        let mut text = fs::read_to_string(&path)?;
        assert!(text.starts_with("# Multipath wwids"));
        text.push_str(&format!("  /{WWID_B}/  \n# /3600140ccc/\n/3600140 dd/\njunk\n//\n/3/\n/3600140ee\n"));
        fs::write(&path, text)?;
        let o = observe(dir.path())?;
        assert_eq!(o.registered_wwids, [wwid(WWID), wwid(WWID_B)].into());
        Ok(())
    }

    #[test]
    fn mountinfo_third_field() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.mount("8:1")?;
        t.mount("253:0")?;
        let path = dir.path().join("proc/self/mountinfo");
        let mut text = fs::read_to_string(&path)?;
        text.push_str("garbage\n40 26 not:a:num / /x rw - tmpfs tmpfs rw\n\n");
        fs::write(&path, text)?;
        let mut expected = base_mounts();
        expected.extend([devnum(8, 1), devnum(253, 0)]);
        assert_eq!(observe(dir.path())?.mounted, expected);

        fs::remove_file(&path)?;
        assert_eq!(observe(dir.path())?.mounted, BTreeSet::new());
        Ok(())
    }

    #[test]
    fn an_empty_root_is_not_a_sysfs() -> TestResult {
        let dir = TempDir::new()?;
        let err = observe(dir.path()).err().ok_or("observed an empty root")?;
        assert!(matches!(err, ObserveError::NotSysfs { .. }), "{err}");
        assert!(err.to_string().contains("not a Linux sysfs"));

        // sys/class alone is a sysfs with no iSCSI, dm or open-iscsi: all empty.
        fs::create_dir_all(dir.path().join("sys/class"))?;
        assert_eq!(observe(dir.path())?, Observed::default());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever a racing kernel or a broken tool leaves in these files, observing neither
        /// panics nor fails.
        #[test]
        fn junk_in_any_attribute_is_tolerated(
            junk in proptest::collection::vec("\\PC{0,40}|[0-9:,./-]{0,12}", 12),
        ) {
            let dir = TempDir::new().unwrap();
            let mut t = FixtureTree::new(dir.path()).unwrap();
            t.session(1, IQN, addr("[::1]:3260"), "LOGGED_IN").unwrap();
            t.lun(1, 0, Some("sda"), Some(NAA), "running").unwrap();
            t.partition("sda", "sda1").unwrap();
            t.map(WWID, "dm-0", &["sda"]).unwrap();
            t.registered_wwid(WWID).unwrap();
            let p = |rel: &str| dir.path().join(rel);
            let targets = [
                p("sys/class/iscsi_session/session1/targetname"),
                p("sys/class/iscsi_session/session1/tpgt"),
                p("sys/class/iscsi_session/session1/state"),
                p("sys/class/iscsi_connection/connection1:0/persistent_address"),
                p("sys/class/iscsi_connection/connection1:0/persistent_port"),
                p("sys/block/sda/device/state"),
                p("sys/block/sda/device/wwid"),
                p("sys/block/sda/dev"),
                p("sys/block/sda/sda1/size"),
                p("sys/block/dm-0/dm/uuid"),
                p("sys/block/dm-0/dm/name"),
                p("etc/multipath/wwids"),
            ];
            for (path, text) in targets.iter().zip(&junk) {
                fs::write(path, text).unwrap();
            }
            fs::write(p("proc/self/mountinfo"), junk.concat()).unwrap();
            prop_assert!(observe(dir.path()).is_ok());
        }
    }
}
