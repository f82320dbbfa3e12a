//! Reads one [`Observed`] snapshot from sysfs, open-iscsi's node database, multipath's wwids
//! file and mountinfo, every path below a root (`/` in production, a fixture tree in tests).
//!
//! The kernel changes these trees while they are read (a session logs out, a disk goes away),
//! so an entry that vanishes or cannot be read part-way is left out of the snapshot or its
//! field is None; the next resync sees the settled state. Only the top-level sources are
//! strict, because an unreadable source read as "nothing there" would make the planner act
//! on a world that does not exist (log in again, recreate records). See [`ObserveError`].
//!
//! Cost: a host may have ten thousand paths, and each file read is three syscalls plus a walk
//! of its path. So the block layer is indexed once from `sys/dev/block` ([`BlockIndex`]: one
//! `readlink` per device gives its number, its directory, its SCSI device and whether it is a
//! partition) instead of reading `dev` and listing `block/`, `holders/` and the disk directory
//! per device, and nothing is read that nothing uses (a disk's `size`). What is left per path
//! is its `state` and `wwid`, and per map its `slaves/` and three `dm/` attributes; those are
//! opened relative to their directory's handle ([`dirfd`](super::dirfd)), so the kernel walks
//! two components instead of a dozen.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use nix::sys::stat::SFlag;

use super::dirfd::{self, DType, DirFd, ATTR_MAX, AT_FDCWD, DT_DIR, DT_REG};
use super::{
    BlockDev, DevNum, Hctl, LunDevice, Map, NodeRecord, Observed, PartMap, Session, SessionState,
    Wwid,
};

/// Why no snapshot could be taken at all.
///
/// - `root/sys/class` missing (or not a directory): this is not a mounted Linux sysfs, so
///   "no sessions" would be a guess, not an observation.
/// - A top-level source that exists but cannot be read (permissions, I/O error):
///   `sys/class`, `sys/class/iscsi_session`, `sys/dev/block`, `dev`, `dev/mapper`, the two
///   node directories, `etc/multipath/wwids`, `proc/self/mountinfo`. A top-level source that
///   does not exist is normal (module not loaded, open-iscsi or multipath not installed, a
///   minimal container) and reads as empty.
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

/// Where the links of `sys/dev/block` and `sys/class/iscsi_session` lie, below the root.
const SYS_DEV_BLOCK: &str = "sys/dev/block";
const ISCSI_SESSIONS: &str = "sys/class/iscsi_session";

/// Takes one snapshot of the host below `root`. Reads only. Links whose target path carries
/// meaning (which host a session is on, where a device lives) are resolved by hand and kept
/// below `root` ([`resolve_target`]); other links are left to the kernel to follow, which
/// keeps a fixture or a copied tree self-contained as long as its links are relative, as
/// the kernel's are.
pub fn observe(root: &Path) -> Result<Observed, ObserveError> {
    let class = root.join("sys/class");
    match fs::metadata(&class) {
        Ok(m) if m.is_dir() => {}
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            return Err(ObserveError::Unreadable {
                path: class,
                source,
            })
        }
        _ => {
            return Err(ObserveError::NotSysfs {
                root: root.to_path_buf(),
            })
        }
    }
    let blocks = BlockIndex::read(root)?;
    let sessions = sessions(root, &blocks)?;
    let mount_points = mounted(root)?;
    Ok(Observed {
        sessions,
        maps: blocks.into_maps(),
        node_records: node_records(root)?,
        registered_wwids: registered_wwids(root)?,
        mounted: mount_points.keys().copied().collect(),
        mount_points,
        names: super::names::read_names(root),
        links: super::names::read_links(root),
        ..Observed::default()
    })
}

/// The block layer, indexed once per snapshot from `sys/dev/block`, `dev`, `dev/mapper` and
/// `run/udev/data`, with the `slaves/` and `dm/` attributes of the virtual devices.
#[derive(Debug, Default)]
struct BlockIndex {
    /// Every block device, whole disks and partitions, by kernel name; and names seen only as
    /// a partition's disk or as a slave (a device that came or went while the index was read).
    entries: HashMap<String, BlockEntry>,
    /// The disk sd made for each SCSI device (its directory is `.../H:C:T:L/block/sdX`).
    by_hctl: HashMap<Hctl, String>,
    /// The dm devices whose uuid is `mpath-<wwid>`, sorted by map name, each with whether
    /// `dev/mapper/<name>` exists.
    mpaths: Vec<(MpathDm, bool)>,
    /// The dm devices whose uuid is `part<N>-mpath-<wwid>` (kpartx partitions of a map).
    parts: Vec<PartDm>,
    /// Names in `dev` that are no indexed device.
    other_dev_nodes: HashSet<String>,
    /// Entries of `run/udev/data` (`b8:16`): block devices udev has processed.
    udev_data: HashSet<DevNum>,
}

#[derive(Debug, Default)]
struct BlockEntry {
    /// None for a name the index has only seen in another device's path or `slaves/`.
    devnum: Option<DevNum>,
    /// Devices whose directory is inside this one's.
    partitions: Vec<String>,
    /// `slaves/` of a virtual (stacking) device, sorted.
    slaves: Vec<String>,
    /// The inverse of `slaves`, which is exactly `holders/`: the kernel makes both links of a
    /// pair together (`bd_link_disk_holder`), and only dm and md, both virtual, make them.
    /// Sorted.
    holders: Vec<String>,
    /// Whether `dev/<name>` exists.
    node_present: bool,
}

/// What `dm/` says of a multipath map.
#[derive(Debug)]
struct MpathDm {
    /// `dm-N`.
    kernel_name: String,
    wwid: Wwid,
    name: String,
    suspended: bool,
    size_bytes: Option<u64>,
}

/// What `dm/` says of a kpartx partition map.
#[derive(Debug)]
struct PartDm {
    /// `dm-N`.
    kernel_name: String,
    number: u32,
    wwid: Wwid,
    name: String,
    /// `slaves/`: the map it is a partition of (normally exactly one).
    slaves: Vec<String>,
}

/// What `dm/uuid` makes of a device-mapper device.
enum DmKind {
    Mpath(MpathDm),
    Part(PartDm),
}

/// What is read below a virtual device's directory.
struct Stacked {
    name: String,
    slaves: Vec<String>,
    dm: Option<DmKind>,
}

impl BlockIndex {
    fn read(root: &Path) -> Result<BlockIndex, ObserveError> {
        let mut ix = BlockIndex::default();
        // (name, devnum, the link's target) of every device; one that vanished is skipped.
        let links: Vec<(String, DevNum, PathBuf)> = match top_level_dir(&root.join(SYS_DEV_BLOCK))?
        {
            None => Vec::new(),
            Some((dir, entries)) => parallel_filter_map(&entries, |entry| {
                let devnum = entry.parse().ok()?;
                let target = dirfd::read_link_at(dir.fd(), entry.as_str()).ok()?;
                let name = target.file_name()?.to_str()?.to_string();
                Some((name, devnum, target))
            }),
        };
        ix.entries.reserve(links.len());
        for (name, devnum, _) in &links {
            ix.update(name, |e| e.devnum = Some(*devnum));
        }
        let mut virtual_dirs = Vec::new();
        for (name, _, target) in &links {
            // .../<parent>/<grandparent>/<name>, read from the end.
            let mut up = target
                .components()
                .rev()
                .skip(1)
                .map(|c| c.as_os_str().to_str().unwrap_or_default());
            let parent = up.next().unwrap_or_default();
            let grandparent = up.next().unwrap_or_default();
            // A partition's directory is inside its disk's: `.../block/sda/sda1`, or
            // `.../nvme0/nvme0n1/nvme0n1p1` where disks have no `block` directory.
            let parent_is_device = ix.entries.get(parent).is_some_and(|e| e.devnum.is_some());
            if parent_is_device || grandparent == "block" {
                ix.update(parent, |e| e.partitions.push(name.clone()));
            } else if parent == "block" {
                if let Ok(hctl) = grandparent.parse::<Hctl>() {
                    ix.by_hctl.insert(hctl, name.clone());
                }
            }
            if parent == "block" && grandparent == "virtual" {
                virtual_dirs.push(resolve_from(root, Path::new(SYS_DEV_BLOCK), target));
            }
        }
        drop(links);
        // Sorted, so that each thread opens the directory holding them (normally one,
        // `sys/devices/virtual/block`) once.
        virtual_dirs.sort();
        let stacked = parallel_chunks(&virtual_dirs, |chunk, out| {
            let mut parents = DirCache::default();
            let mut scratch = String::new();
            let mut buf = [0u8; ATTR_MAX];
            for dir in chunk {
                let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
                    continue;
                };
                let Some(name) = name.to_str() else { continue };
                let base = parents.get(parent).ok();
                out.push(stacked(base, name, &mut scratch, &mut buf));
            }
        });
        for s in stacked {
            for slave in &s.slaves {
                ix.update(slave, |e| e.holders.push(s.name.clone()));
            }
            match s.dm {
                Some(DmKind::Mpath(m)) => ix.mpaths.push((m, false)),
                Some(DmKind::Part(mut p)) => {
                    p.slaves = s.slaves.clone();
                    ix.parts.push(p);
                }
                None => {}
            }
            ix.update(&s.name, |e| e.slaves = s.slaves);
        }
        for e in ix.entries.values_mut() {
            e.holders.sort();
        }
        if let Some((_, others)) = top_level_scan(&root.join("dev"), |name| {
            let name = std::str::from_utf8(name).ok()?;
            match ix.entries.get_mut(name) {
                Some(e) => {
                    e.node_present = true;
                    None
                }
                None => Some(name.to_string()),
            }
        })? {
            ix.other_dev_nodes = others.into_iter().collect();
        }
        ix.udev_data = top_level_scan(&root.join("run/udev/data"), |name| {
            std::str::from_utf8(name.strip_prefix(b"b")?)
                .ok()?
                .parse()
                .ok()
        })?
        .map(|(_, devnums)| devnums.into_iter().collect())
        .unwrap_or_default();
        ix.mpaths.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let mpaths = &mut ix.mpaths;
        top_level_scan(&root.join("dev/mapper"), |name| {
            let name = std::str::from_utf8(name).ok()?;
            if let Ok(i) = mpaths.binary_search_by(|(m, _)| m.name.as_str().cmp(name)) {
                if let Some((_, present)) = mpaths.get_mut(i) {
                    *present = true;
                }
            }
            None::<()>
        })?;
        Ok(ix)
    }

    /// Changes the entry of `name`, made if there is none; a name already there costs no
    /// allocation.
    fn update(&mut self, name: &str, f: impl FnOnce(&mut BlockEntry)) {
        match self.entries.get_mut(name) {
            Some(e) => f(e),
            None => {
                let mut e = BlockEntry::default();
                f(&mut e);
                self.entries.insert(name.to_string(), e);
            }
        }
    }

    /// A block device with its partitions; `devnum` None takes the index's.
    fn block_dev(&self, name: &str, devnum: Option<DevNum>) -> Option<BlockDev> {
        let entry = self.entries.get(name);
        let devnum = match devnum {
            Some(d) => d,
            None => entry?.devnum?,
        };
        let mut partitions: Vec<BlockDev> = entry
            .into_iter()
            .flat_map(|e| &e.partitions)
            .filter_map(|part| {
                let e = self.entries.get(part)?;
                Some(self.leaf(part, e.devnum?, Some(e)))
            })
            .collect();
        // Names share the disk's prefix, so shorter-then-lexical is numeric: sda2 before sda10.
        partitions.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
        Some(BlockDev {
            partitions,
            ..self.leaf(name, devnum, entry)
        })
    }

    /// A block device without its partitions.
    fn leaf(&self, name: &str, devnum: DevNum, entry: Option<&BlockEntry>) -> BlockDev {
        BlockDev {
            name: name.to_string(),
            devnum,
            holders: entry.map(|e| e.holders.clone()).unwrap_or_default(),
            partitions: Vec::new(),
            node_present: entry.is_some_and(|e| e.node_present)
                || self.other_dev_nodes.contains(name),
            udev_initialized: self.udev_data.contains(&devnum),
        }
    }

    /// Every `dm-N` whose uuid is `mpath-<wwid>`, sorted by map name. kpartx partitions
    /// (`partN-mpath-…`), LVM and other dm devices are not multipath maps.
    fn into_maps(mut self) -> Vec<Map> {
        let mpaths = std::mem::take(&mut self.mpaths);
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.number);
        mpaths
            .into_iter()
            .filter_map(|(m, present)| {
                let mut dev = self.block_dev(&m.kernel_name, None)?;
                dev.node_present = present;
                let slaves = self
                    .entries
                    .get_mut(&m.kernel_name)
                    .map(|e| std::mem::take(&mut e.slaves))
                    .unwrap_or_default();
                // A partition of this map: its uuid names the map's WWID and it sits on the
                // map itself. Both, so a stray device with a copied uuid is nobody's partition.
                let parts = parts
                    .iter()
                    .filter(|p| p.wwid == m.wwid && p.slaves.contains(&m.kernel_name))
                    .filter_map(|p| {
                        Some(PartMap {
                            number: p.number,
                            name: p.name.clone(),
                            dev: self.block_dev(&p.kernel_name, None)?,
                        })
                    })
                    .collect();
                Some(Map {
                    dev,
                    slaves,
                    name: m.name,
                    wwid: m.wwid,
                    suspended: m.suspended,
                    size_bytes: m.size_bytes,
                    parts,
                })
            })
            .collect()
    }
}

/// `slaves/` of the virtual device `name` in the directory `base`, and, for a `dm-N`, its
/// `dm/` attributes when it is a multipath map. `base` None (the directory could not be
/// opened) reads as nothing there.
fn stacked(
    base: Option<BorrowedFd<'_>>,
    name: &str,
    scratch: &mut String,
    buf: &mut [u8; ATTR_MAX],
) -> Stacked {
    let mut slaves = base
        .and_then(|b| DirFd::open(b, join_in(scratch, name, "slaves")).ok())
        .and_then(|d| d.names().ok())
        .unwrap_or_default();
    slaves.sort();
    let dm = match base {
        Some(b) if name.starts_with("dm-") => dm_kind(b, name, scratch, buf),
        _ => None,
    };
    Stacked {
        name: name.to_string(),
        slaves,
        dm,
    }
}

/// A multipath map (uuid `mpath-<wwid>`) or one of its kpartx partitions
/// (`part<N>-mpath-<wwid>`); any other dm device is None.
fn dm_kind(
    base: BorrowedFd<'_>,
    name: &str,
    scratch: &mut String,
    buf: &mut [u8; ATTR_MAX],
) -> Option<DmKind> {
    let uuid = dirfd::read_attr_at(base, join_in(scratch, name, "dm/uuid"), buf)
        .ok()?
        .into_owned();
    let (part, wwid) = match uuid.strip_prefix("mpath-") {
        Some(w) => (None, w),
        None => {
            let (number, w) = uuid.strip_prefix("part")?.split_once("-mpath-")?;
            (Some(number.parse::<u32>().ok()?), w)
        }
    };
    let wwid = Wwid::from_str(wwid).ok()?;
    let map_name = dirfd::read_attr_at(base, join_in(scratch, name, "dm/name"), buf)
        .ok()?
        .into_owned();
    if map_name.is_empty() {
        return None;
    }
    if let Some(number) = part {
        return Some(DmKind::Part(PartDm {
            kernel_name: name.to_string(),
            number,
            wwid,
            name: map_name,
            slaves: Vec::new(),
        }));
    }
    let suspended = dirfd::read_attr_at(base, join_in(scratch, name, "dm/suspended"), buf)
        .is_ok_and(|s| s == "1");
    let size_bytes = dirfd::read_attr_at(base, join_in(scratch, name, "size"), buf)
        .ok()
        .and_then(|s| sectors_to_bytes(&s));
    Some(DmKind::Mpath(MpathDm {
        kernel_name: name.to_string(),
        wwid,
        name: map_name,
        suspended,
        size_bytes,
    }))
}

/// The sizes in bytes of the disks of `volumes` (target, LUN), by kernel name; a disk whose
/// `size` cannot be read is left out. One read per disk, so only the disks asked for.
pub fn read_disk_sizes(
    root: &Path,
    observed: &Observed,
    volumes: &[(String, crate::desired::Lun)],
) -> std::collections::BTreeMap<String, u64> {
    observed
        .sessions
        .iter()
        .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
        .filter(|(s, d)| {
            volumes
                .iter()
                .any(|(t, lun)| *t == s.target && lun.matches(d.hctl.lun))
        })
        .filter_map(|(_, d)| d.disk.as_ref())
        .filter_map(|disk| {
            let path = root.join("sys/class/block").join(&disk.name).join("size");
            let text = fs::read_to_string(path).ok()?;
            Some((disk.name.clone(), sectors_to_bytes(&text)?))
        })
        .collect()
}

/// A block device's `size` attribute (512-byte sectors, whatever the logical block size) in
/// bytes.
pub fn sectors_to_bytes(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// `dir/file` in a reused buffer: the reads made for every path build their relative paths
/// without allocating.
fn join_in<'s>(scratch: &'s mut String, dir: &str, file: &str) -> &'s str {
    scratch.clear();
    scratch.push_str(dir);
    scratch.push('/');
    scratch.push_str(file);
    scratch
}

/// The directory a run of items lies in, opened once for the run (items come grouped by
/// directory). One handle at a time, so that a host with thousands of sessions never holds
/// thousands of descriptors.
#[derive(Default)]
struct DirCache<'p> {
    open: Option<(&'p Path, Result<DirFd, io::ErrorKind>)>,
}

impl<'p> DirCache<'p> {
    fn get(&mut self, path: &'p Path) -> Result<BorrowedFd<'_>, io::ErrorKind> {
        if self.open.as_ref().map(|(p, _)| *p) != Some(path) {
            let dir = DirFd::open_base(AT_FDCWD, path).map_err(|e| e.kind());
            self.open = Some((path, dir));
        }
        match &self.open {
            Some((_, Ok(dir))) => Ok(dir.fd()),
            Some((_, Err(kind))) => Err(*kind),
            None => Err(io::ErrorKind::NotFound),
        }
    }
}

/// A session read so far, and the SCSI devices still to read.
struct SessionHead {
    session: Session,
    targets: Vec<LunTarget>,
}

/// A `targetH:C:T` directory and the `H:C:T:L` devices in it.
struct LunTarget {
    dir: PathBuf,
    luns: Vec<(Hctl, String)>,
}

fn sessions(root: &Path, blocks: &BlockIndex) -> Result<Vec<Session>, ObserveError> {
    let class = root.join(ISCSI_SESSIONS);
    let Some((class_dir, names)) = top_level_dir(&class)? else {
        return Ok(Vec::new());
    };
    let connections = DirFd::open_base(AT_FDCWD, &root.join("sys/class/iscsi_connection")).ok();
    let heads = parallel_filter_map(&names, |name| {
        let id = name.strip_prefix("session")?.parse().ok()?;
        session_head(root, &class_dir, connections.as_ref(), name, id)
    });
    // Devices are read as one flat list, so that the threads share the work evenly however
    // the paths are spread over sessions.
    let luns: Vec<(usize, &Path, Hctl, &str)> = heads
        .iter()
        .enumerate()
        .flat_map(|(i, h)| {
            h.targets.iter().flat_map(move |t| {
                t.luns
                    .iter()
                    .map(move |(hctl, name)| (i, t.dir.as_path(), *hctl, name.as_str()))
            })
        })
        .collect();
    let devices = parallel_chunks(&luns, |chunk, out| {
        let mut targets = DirCache::default();
        let mut scratch = String::new();
        let mut buf = [0u8; ATTR_MAX];
        for &(i, target_dir, hctl, name) in chunk {
            let base = targets.get(target_dir);
            if let Some(dev) = lun_device(blocks, base, name, hctl, &mut scratch, &mut buf) {
                out.push((i, dev));
            }
        }
    });
    let mut sessions: Vec<Session> = heads.into_iter().map(|h| h.session).collect();
    for (i, dev) in devices {
        if let Some(s) = sessions.get_mut(i) {
            s.devices.push(dev);
        }
    }
    for s in &mut sessions {
        s.devices.sort_by_key(|d| d.hctl);
    }
    sessions.sort_by_key(|s| s.id);
    Ok(sessions)
}

/// The session `name` of the class directory `class`. None when the session has gone.
fn session_head(
    root: &Path,
    class: &DirFd,
    connections: Option<&DirFd>,
    name: &str,
    id: u32,
) -> Option<SessionHead> {
    // The symlink is resolved by hand, not by the OS, because its target's path is what
    // names the SCSI host (`.../hostH/sessionN/iscsi_session/sessionN`).
    let class_dir = match dirfd::read_link_at(class.fd(), name) {
        Ok(target) => resolve_from(root, Path::new(ISCSI_SESSIONS), &target),
        Err(_) => root.join(ISCSI_SESSIONS).join(name),
    };
    let device_dir = session_device_dir(root, &class_dir, name);
    let device = device_dir
        .as_deref()
        .and_then(|d| DirFd::open(AT_FDCWD, d).ok());
    // The attributes by the short path from the device directory when the class directory
    // is inside it, as the kernel puts it.
    let inside = device_dir
        .as_deref()
        .and_then(|d| class_dir.strip_prefix(d).ok());
    let (base, attrs) = match (&device, inside) {
        (Some(dev), Some(rel)) => (dev.fd(), rel),
        _ => (AT_FDCWD, class_dir.as_path()),
    };
    let mut buf = [0u8; ATTR_MAX];
    let target = dirfd::read_attr_at(base, &attrs.join("targetname"), &mut buf)
        .ok()?
        .into_owned();
    // username/password live here too: they are never read (CAP_SYS_ADMIN, and secrets).
    let tpgt = dirfd::read_attr_at(base, &attrs.join("tpgt"), &mut buf)
        .ok()
        .and_then(|t| t.parse().ok());
    let state = dirfd::read_attr_at(base, &attrs.join("state"), &mut buf)
        .map(|s| SessionState::parse(&s))
        .unwrap_or(SessionState::Unknown);
    let host = device_dir.as_deref().and_then(host_of);
    let targets = match (&device, &device_dir) {
        (Some(dev), Some(dir)) => lun_targets(dev, dir),
        _ => Vec::new(),
    };
    Some(SessionHead {
        session: Session {
            id,
            target,
            tpgt,
            portal: connections.and_then(|c| portal(c, id, &mut buf)),
            state,
            host,
            devices: Vec::new(),
        },
        targets,
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

/// `persistent_address`:`persistent_port` of `connectionN:0` in `sys/class/iscsi_connection`.
fn portal(connections: &DirFd, id: u32, buf: &mut [u8; ATTR_MAX]) -> Option<SocketAddr> {
    let conn = format!("connection{id}:0");
    let mut scratch = String::new();
    let addr = dirfd::read_attr_at(
        connections.fd(),
        join_in(&mut scratch, &conn, "persistent_address"),
        buf,
    )
    .ok()
    .and_then(|a| parse_ip(&a))?;
    let port = dirfd::read_attr_at(
        connections.fd(),
        join_in(&mut scratch, &conn, "persistent_port"),
        buf,
    )
    .ok()?
    .parse()
    .ok()?;
    Some(SocketAddr::new(addr, port))
}

/// An address as sysfs and open-iscsi print it: bare, IPv6 without brackets. A link-local
/// zone (`%eth0`) cannot be carried by `SocketAddr` without the interface index, so such an
/// address reads as unknown rather than as a different address.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

/// Every `targetH:C:T/H:C:T:L` directory below a session's device directory `dir`, open as
/// `device`.
fn lun_targets(device: &DirFd, dir: &Path) -> Vec<LunTarget> {
    let mut out = Vec::new();
    for target in device.names().unwrap_or_default() {
        if !target.starts_with("target") {
            continue;
        }
        let Ok(target_dir) = DirFd::open(device.fd(), target.as_str()) else {
            continue;
        };
        let luns: Vec<(Hctl, String)> = target_dir
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| Some((name.parse().ok()?, name)))
            .collect();
        if !luns.is_empty() {
            out.push(LunTarget {
                dir: dir.join(&target),
                luns,
            });
        }
    }
    out
}

/// The SCSI device `name` in its target directory `base` (Err: the directory could not be
/// opened, which reads as each of its files would have).
fn lun_device(
    blocks: &BlockIndex,
    base: Result<BorrowedFd<'_>, io::ErrorKind>,
    name: &str,
    hctl: Hctl,
    scratch: &mut String,
    buf: &mut [u8; ATTR_MAX],
) -> Option<LunDevice> {
    let state = base.and_then(|b| {
        dirfd::read_attr_at(b, join_in(scratch, name, "state"), buf)
            .map(Cow::into_owned)
            .map_err(|e| e.kind())
    });
    let state = match state {
        Ok(s) => s,
        Err(io::ErrorKind::NotFound) => return None,
        // Present but unreadable: keep the path, but never call it running.
        Err(_) => "unknown".to_string(),
    };
    // LIO answers ENXIO here until the backstore has a unit serial.
    let wwid = base
        .ok()
        .and_then(|b| dirfd::read_attr_at(b, join_in(scratch, name, "wwid"), buf).ok())
        .and_then(|w| Wwid::from_sysfs(&w).ok());
    Some(LunDevice {
        hctl,
        state,
        wwid,
        disk: whole_disk(blocks, base.ok(), name, hctl, buf),
    })
}

/// The disk of a SCSI device: the one the index found below it, or else (the disk came after
/// the index was read) the first name in `H:C:T:L/block/` that is not a partition.
fn whole_disk(
    blocks: &BlockIndex,
    base: Option<BorrowedFd<'_>>,
    dev_name: &str,
    hctl: Hctl,
    buf: &mut [u8; ATTR_MAX],
) -> Option<BlockDev> {
    if let Some(disk) = blocks
        .by_hctl
        .get(&hctl)
        .and_then(|n| blocks.block_dev(n, None))
    {
        return Some(disk);
    }
    let base = base?;
    let block_dir = format!("{dev_name}/block");
    let mut candidates = DirFd::open(base, block_dir.as_str()).ok()?.names().ok()?;
    candidates.sort();
    let name = candidates
        .into_iter()
        .find(|n| dirfd::kind_at(base, format!("{block_dir}/{n}/partition").as_str()).is_none())?;
    let devnum = dirfd::read_attr_at(base, format!("{block_dir}/{name}/dev").as_str(), buf)
        .ok()?
        .parse()
        .ok()?;
    blocks.block_dev(&name, Some(devnum))
}

/// Below this many items the reads run on the calling thread: starting threads costs more.
const PARALLEL_MIN: usize = 256;
const MAX_THREADS: usize = 8;

/// `items.iter().filter_map(f)` on up to [`MAX_THREADS`] threads, in `items`' order.
fn parallel_filter_map<T: Sync, U: Send>(
    items: &[T],
    f: impl Fn(&T) -> Option<U> + Sync,
) -> Vec<U> {
    parallel_chunks(items, |chunk, out| out.extend(chunk.iter().filter_map(&f)))
}

/// `f` over consecutive chunks of `items`, one chunk per thread on up to [`MAX_THREADS`]
/// threads, each pushing its results to its own vector; the results in `items`' order.
/// Reading sysfs is syscall-bound, so a few threads divide the wall time of a large host. A
/// thread that cannot be started (or, impossibly, panics) has its share done here instead.
fn parallel_chunks<T: Sync, U: Send>(items: &[T], f: impl Fn(&[T], &mut Vec<U>) + Sync) -> Vec<U> {
    let mut out = Vec::with_capacity(items.len());
    let threads = if items.len() < PARALLEL_MIN {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS)
    };
    if threads < 2 {
        f(items, &mut out);
        return out;
    }
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|chunk| {
                let worker = std::thread::Builder::new()
                    .name("lk-observe".to_string())
                    .spawn_scoped(scope, move || {
                        let mut part = Vec::with_capacity(chunk.len());
                        f(chunk, &mut part);
                        part
                    });
                (chunk, worker)
            })
            .collect();
        for (chunk, worker) in workers {
            match worker.ok().and_then(|w| w.join().ok()) {
                Some(part) => out.extend(part),
                None => f(chunk, &mut out),
            }
        }
    });
    out
}

/// Records in `etc/iscsi/nodes` (Debian) and `var/lib/iscsi/nodes` (upstream), sorted by
/// target, portal, TPGT and path. When one directory is a link to the other it is read once.
fn node_records(root: &Path) -> Result<Vec<NodeRecord>, ObserveError> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for rel in ["etc/iscsi/nodes", "var/lib/iscsi/nodes"] {
        let dir = root.join(rel);
        let Some((nodes, targets)) = top_level_dir(&dir)? else {
            continue;
        };
        if let Ok(id) = nodes.identity() {
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
        }
        for target in targets {
            let Ok(target_fd) = DirFd::open(nodes.fd(), target.as_str()) else {
                continue;
            };
            let target_dir = dir.join(&target);
            for (portal, d_type) in typed_names(&target_fd) {
                let Some((addr, tpgt)) = parse_portal_name(&portal) else {
                    let path = target_dir.join(&portal);
                    tracing::debug!(path = %path.display(), "not a node record; skipped");
                    continue;
                };
                let path = target_dir.join(&portal);
                let record = |path: PathBuf| NodeRecord {
                    target: target.clone(),
                    portal: addr,
                    tpgt,
                    path,
                };
                match kind(target_fd.fd(), &portal, d_type) {
                    // open-iscsi before svn r780 kept the record as the portal file itself.
                    Some(SFlag::S_IFREG) => out.push(record(path)),
                    Some(SFlag::S_IFDIR) => {
                        let Ok(portal_fd) = DirFd::open(target_fd.fd(), portal.as_str()) else {
                            continue;
                        };
                        for (iface, d_type) in typed_names(&portal_fd) {
                            if kind(portal_fd.fd(), &iface, d_type) == Some(SFlag::S_IFREG) {
                                out.push(record(path.join(&iface)));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.target, a.portal, a.tpgt, &a.path).cmp(&(&b.target, b.portal, b.tpgt, &b.path))
    });
    Ok(out)
}

/// Entry names and types of a directory; empty when it cannot be listed.
fn typed_names(dir: &DirFd) -> Vec<(String, DType)> {
    let mut out = Vec::new();
    let listed = dir.for_each_entry(|name, d_type| {
        if let Ok(name) = std::str::from_utf8(name) {
            out.push((name.to_string(), d_type));
        }
    });
    if listed.is_err() {
        out.clear();
    }
    out
}

/// What the entry `name` of `base` is, symlinks followed (as `fs::metadata`): the type the
/// listing gave, unless that is a link or unknown.
fn kind(base: BorrowedFd<'_>, name: &str, d_type: DType) -> Option<SFlag> {
    match d_type {
        DT_REG => Some(SFlag::S_IFREG),
        DT_DIR => Some(SFlag::S_IFDIR),
        _ => dirfd::kind_at(base, name),
    }
}

/// `<addr>,<port>,<tpgt>` or the old `<addr>,<port>` (TPGT -1). Split from the right so that
/// nothing in the address part is ever taken for a separator.
pub fn parse_portal_name(name: &str) -> Option<(SocketAddr, i32)> {
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
    Ok(parse_registered_wwids(&text))
}

/// The WWIDs of the `/<wwid>/` lines of a wwids file's text (see [`registered_wwids`]).
pub fn parse_registered_wwids(text: &str) -> BTreeSet<Wwid> {
    text.lines()
        .filter_map(|line| Some(registered_in_line(line.as_bytes())?.1))
        .collect()
}

/// The WWID a line of multipath's wwids file registers, and the offset of its leading `/`:
/// `/<wwid>/` with blanks around it. Comments, entries commented out (`#<wwid>/`) and
/// anything else, a line that is not UTF-8 too, register nothing. The one reading of a line
/// for both observe and the editor ([`crate::act::wwids`]), so that what one sees registered
/// the other can find and remove.
pub fn registered_in_line(line: &[u8]) -> Option<(usize, Wwid)> {
    let line = std::str::from_utf8(line).ok()?;
    let lead = line.len() - line.trim_start().len();
    let inner = line.trim().strip_prefix('/')?.strip_suffix('/')?;
    Some((lead, Wwid::from_str(inner).ok()?))
}

/// The `maj:min` (third) field of every mountinfo line, with its first mount point.
fn mounted(root: &Path) -> Result<std::collections::BTreeMap<DevNum, String>, ObserveError> {
    let Some(text) = top_level_file(&root.join("proc/self/mountinfo"))? else {
        return Ok(std::collections::BTreeMap::new());
    };
    Ok(parse_mount_points(&text))
}

/// Device → its first mount point (the fifth field, escaped as mountinfo escapes it), for
/// every line of a mountinfo text whose third field is a `maj:min`.
pub fn parse_mount_points(text: &str) -> std::collections::BTreeMap<DevNum, String> {
    let mut points = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(devnum) = fields.nth(2).and_then(|f| f.parse().ok()) else {
            continue;
        };
        let point = fields.nth(1).unwrap_or_default().to_string();
        points.entry(devnum).or_insert(point);
    }
    points
}

/// The `maj:min` (third) field of every line of a mountinfo text.
pub fn parse_mountinfo(text: &str) -> BTreeSet<DevNum> {
    text.lines()
        .filter_map(|line| line.split_ascii_whitespace().nth(2)?.parse().ok())
        .collect()
}

/// Resolves the symlink `link` (which lies below `root`) one level, lexically, and keeps the
/// result below `root`. None when `link` is not a symlink or is not below `root`.
fn resolve_in_root(root: &Path, link: &Path) -> Option<PathBuf> {
    resolve_target(root, link, &fs::read_link(link).ok()?)
}

/// Where `link`, whose content is `target`, points: a relative target is taken from the
/// link's directory, an absolute one from `root`, and `..` never climbs above `root`.
/// Lexical `..` is right here because the directories holding sysfs links are not
/// themselves symlinks.
fn resolve_target(root: &Path, link: &Path, target: &Path) -> Option<PathBuf> {
    let link_dir = link.strip_prefix(root).ok()?.parent()?;
    Some(resolve_from(root, link_dir, target))
}

/// [`resolve_target`] for a link in `link_dir`, given relative to `root`.
fn resolve_from(root: &Path, link_dir: &Path, target: &Path) -> PathBuf {
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
    out
}

/// A top-level directory, open, and its entry names: absent is None, unreadable is an error.
fn top_level_dir(dir: &Path) -> Result<Option<(DirFd, Vec<String>)>, ObserveError> {
    top_level_scan(dir, |name| {
        Some(std::str::from_utf8(name).ok()?.to_string())
    })
}

/// A top-level directory, open, and what `f` makes of each entry name (the directories of
/// every device are read without a string per entry).
fn top_level_scan<U>(
    dir: &Path,
    mut f: impl FnMut(&[u8]) -> Option<U>,
) -> Result<Option<(DirFd, Vec<U>)>, ObserveError> {
    let unreadable = |source| ObserveError::Unreadable {
        path: dir.to_path_buf(),
        source,
    };
    let fd = match DirFd::open(AT_FDCWD, dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let mut out = Vec::new();
    fd.for_each_entry(|name, _| out.extend(f(name)))
        .map_err(unreadable)?;
    Ok(Some((fd, out)))
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
    use crate::observe::fixture::{vm_smoke_capture, FixtureTree, VM_TARGET, VM_WWID};

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

    /// The fixture's default disk size (131072 sectors), which a map over its disks takes.
    fn fixture_size_bytes() -> u64 {
        131_072 * 512
    }

    fn disk(name: &str, minor: u32, holders: &[&str]) -> BlockDev {
        BlockDev {
            name: name.to_string(),
            devnum: devnum(8, minor),
            holders: holders.iter().map(|h| h.to_string()).collect(),
            partitions: Vec::new(),
            node_present: true,
            udev_initialized: true,
        }
    }

    fn fixture() -> Result<(TempDir, FixtureTree), Box<dyn Error>> {
        let dir = TempDir::new()?;
        let t = FixtureTree::new(dir.path())?;
        Ok((dir, t))
    }

    /// The fixture's own mountinfo lines: `/`, `/sys`, `/proc`.
    fn base_mounts() -> BTreeSet<DevNum> {
        [devnum(259, 1), devnum(0, 20), devnum(0, 21)].into()
    }

    fn base_mount_points() -> std::collections::BTreeMap<DevNum, String> {
        [
            (devnum(259, 1), "/".to_string()),
            (devnum(0, 20), "/sys".to_string()),
            (devnum(0, 21), "/proc".to_string()),
        ]
        .into()
    }

    #[test]
    fn two_portals_one_target_and_their_map() -> TestResult {
        let (dir, mut t) = fixture()?;
        let h1 = t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        let h2 = t.session(2, IQN, addr("[::1]:3260"), "LOGGED_IN")?;
        assert_eq!((h1, h2), (6, 7));
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
                    host: Some(6),
                    devices: vec![path(6, "sda", 0)],
                },
                Session {
                    id: 2,
                    target: IQN.to_string(),
                    tpgt: Some(1),
                    portal: Some(addr("[::1]:3260")),
                    state: SessionState::LoggedIn,
                    host: Some(7),
                    devices: vec![path(7, "sdb", 16)],
                },
            ],
            maps: vec![Map {
                name: WWID.to_string(),
                wwid: wwid(WWID),
                dev: BlockDev {
                    name: "dm-0".to_string(),
                    devnum: devnum(254, 0),
                    holders: Vec::new(),
                    partitions: Vec::new(),
                    node_present: true,
                    udev_initialized: true,
                },
                slaves: vec!["sda".to_string(), "sdb".to_string()],
                suspended: false,
                size_bytes: Some(fixture_size_bytes()),
                parts: Vec::new(),
            }],
            mounted: base_mounts(),
            mount_points: base_mount_points(),
            ..Observed::default()
        };
        assert_eq!(o, expected);
        Ok(())
    }

    /// The tree the VM smoke test captured reads as that host was.
    #[test]
    fn the_vm_smoke_capture() -> TestResult {
        let dir = TempDir::new()?;
        vm_smoke_capture(dir.path())?;
        let o = observe(dir.path())?;
        let summary: Vec<_> = o
            .sessions
            .iter()
            .map(|s| {
                let d = &s.devices[0];
                (
                    s.id,
                    s.host,
                    s.portal,
                    d.hctl.to_string(),
                    d.wwid.clone(),
                    d.disk
                        .as_ref()
                        .map(|b| (b.name.clone(), b.devnum, b.holders.clone())),
                )
            })
            .collect();
        let disk = |name: &str, minor| {
            Some((name.to_string(), devnum(8, minor), vec!["dm-0".to_string()]))
        };
        assert_eq!(
            summary,
            [
                (
                    1,
                    Some(6),
                    Some(addr("127.0.0.1:3260")),
                    "6:0:0:300".to_string(),
                    Some(wwid(VM_WWID)),
                    disk("sda", 0)
                ),
                (
                    2,
                    Some(7),
                    Some(addr("127.0.0.2:3260")),
                    "7:0:0:300".to_string(),
                    Some(wwid(VM_WWID)),
                    disk("sdb", 16)
                ),
            ]
        );
        assert!(o
            .sessions
            .iter()
            .all(|s| s.target == VM_TARGET && s.tpgt == Some(1)));
        let m = &o.maps[0];
        assert_eq!((m.name.as_str(), m.dev.devnum), (VM_WWID, devnum(254, 0)));
        assert_eq!(m.slaves, ["sda", "sdb"]);
        assert!(m.dev.node_present);
        let r = &o.node_records[0];
        assert_eq!(
            (r.target.as_str(), r.portal, r.tpgt),
            (VM_TARGET, addr("127.0.0.1:3260"), -1)
        );
        Ok(())
    }

    #[test]
    fn session_states_and_odd_tpgt() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "FAILED")?;
        t.session(2, IQN, addr("127.0.0.2:3260"), "FREE")?;
        t.session(3, IQN, addr("127.0.0.3:3260"), "SOMETHING_NEW")?;
        fs::write(
            dir.path().join("sys/class/iscsi_session/session3/tpgt"),
            "-1\n",
        )?;
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
                ("6:0:0:300".to_string(), Some("sdb".to_string())),
                ("6:0:0:16640".to_string(), Some("sda".to_string()))
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
        assert_eq!(
            (d[0].hctl, d[0].wwid.as_ref(), d[0].disk.as_ref()),
            (hctl(6, 1), None, None)
        );
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
        assert_eq!(o.sessions[0].host, Some(6));
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
        symlink(
            "/sys/devices/platform/host6/session1/iscsi_session/session1",
            &link,
        )?;
        let o = observe(dir.path())?;
        assert_eq!(o.sessions[0].host, Some(6));
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
        symlink(
            "../../../devices/platform/host6/session1",
            class.join("device"),
        )?;
        let o = observe(dir.path())?;
        assert_eq!(o.sessions[0].host, Some(6));
        assert_eq!(o.sessions[0].devices[0].hctl, hctl(6, 0));
        Ok(())
    }

    #[test]
    fn resolving_never_climbs_above_root() -> TestResult {
        let dir = TempDir::new()?;
        fs::create_dir_all(dir.path().join("sys/class/x"))?;
        let link = dir.path().join("sys/class/x/l");
        symlink("../../../../../../../etc/passwd", &link)?;
        assert_eq!(
            resolve_in_root(dir.path(), &link),
            Some(dir.path().join("etc/passwd"))
        );
        assert_eq!(
            resolve_in_root(dir.path(), &dir.path().join("sys/class/x")),
            None
        );
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
            let _ = tx.send(
                observe(&root)
                    .map(|o| o.sessions.len())
                    .map_err(|e| e.to_string()),
            );
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
        t.dm_device(
            "dm-1",
            &format!("{WWID}-part1"),
            &format!("part1-mpath-{WWID}"),
            &["dm-0"],
        )?;
        t.dm_device(
            "dm-2",
            "vg0-lv0",
            "LVM-k3W8aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            &["sdb"],
        )?;
        // A dm device mid-creation has no uuid yet.
        t.dm_device("dm-3", "pending", "", &[])?;
        fs::remove_file(dir.path().join("sys/devices/virtual/block/dm-3/dm/uuid"))?;

        // The same WWID's partition uuid on a device that does not sit on the map.
        t.dm_device("dm-4", "stray-part2", &format!("part2-mpath-{WWID}"), &[])?;
        // An LVM volume on the partition.
        t.dm_device("dm-5", "vg1-lv0", "LVM-k3W8bbbb", &["dm-1"])?;

        let o = observe(dir.path())?;
        assert_eq!(o.maps.len(), 1);
        let m = &o.maps[0];
        assert_eq!((m.name.as_str(), m.dev.name.as_str()), (WWID, "dm-0"));
        assert_eq!(m.dev.holders, ["dm-1"]);
        assert_eq!(m.slaves, ["sda"]);
        let parts: Vec<_> = m
            .parts
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.name.as_str(),
                    p.dev.name.as_str(),
                    p.dev.holders.clone(),
                )
            })
            .collect();
        assert_eq!(
            parts,
            [(
                1,
                format!("{WWID}-part1").as_str(),
                "dm-1",
                vec!["dm-5".to_string()]
            )]
        );
        assert_eq!(
            o.sessions[0].devices[1]
                .disk
                .as_ref()
                .map(|d| d.holders.clone()),
            Some(vec!["dm-2".to_string()])
        );
        Ok(())
    }

    #[test]
    fn sizes_are_read_for_the_disks_asked_for_and_maps() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        t.lun(1, 1, Some("sdb"), Some(NAA), "running")?;
        t.set_size("sdb", 2048)?;
        t.map(WWID, "dm-0", &["sda"])?;
        t.set_size("dm-0", 4096)?;
        let o = observe(dir.path())?;
        assert_eq!(o.maps[0].size_bytes, Some(4096 * 512));
        assert!(o.disk_sizes.is_empty(), "not read unless asked");
        let sizes = read_disk_sizes(dir.path(), &o, &[(IQN.to_string(), crate::desired::Lun(1))]);
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [("sdb".to_string(), 2048 * 512)]
        );
        assert_eq!(sectors_to_bytes("x"), None);
        assert_eq!(sectors_to_bytes(&format!("{}", u64::MAX)), None, "overflow");
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
        assert_eq!(
            o.sessions[0].devices[0]
                .disk
                .as_ref()
                .map(|d| d.node_present),
            Some(false)
        );
        Ok(())
    }

    #[test]
    fn a_disk_going_away_leaves_the_device_without_disk() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        t.lun(1, 1, Some("sdb"), Some(NAA_B), "running")?;
        // sda went before the index was read; sdb after it was, while its directory was read.
        let sda = t.block_path("sda").ok_or("no sda")?;
        fs::remove_file(dir.path().join("sys/dev/block/8:0"))?;
        fs::remove_dir_all(&sda)?;
        fs::remove_file(dir.path().join("sys/dev/block/8:16"))?;
        fs::remove_file(t.block_path("sdb").ok_or("no sdb")?.join("dev"))?;
        let o = observe(dir.path())?;
        let d = &o.sessions[0].devices;
        assert_eq!((d[0].disk.as_ref(), d[1].disk.as_ref()), (None, None));
        assert_eq!(
            (d[0].wwid.as_ref(), d[1].wwid.as_ref()),
            (Some(&wwid(WWID)), Some(&wwid(WWID_B)))
        );
        Ok(())
    }

    /// A disk that appeared after `sys/dev/block` was indexed is still found below its
    /// SCSI device, its number read from `dev`.
    #[test]
    fn a_disk_missing_from_the_index_is_found_below_its_device() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sdb"), Some(NAA), "running")?;
        t.partition("sdb", "sdb1")?;
        fs::remove_file(dir.path().join("sys/dev/block/8:0"))?;
        let o = observe(dir.path())?;
        let sdb = o.sessions[0].devices[0].disk.clone().ok_or("no disk")?;
        assert_eq!((sdb.name.as_str(), sdb.devnum), ("sdb", devnum(8, 0)));
        let parts: Vec<_> = sdb
            .partitions
            .iter()
            .map(|p| (p.name.as_str(), p.devnum))
            .collect();
        assert_eq!(parts, [("sdb1", devnum(8, 1))]);
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
        // iscsiadm 2.1.8 without a TPGT: the plain file `<addr>,<port>`.
        let no_tpgt = t.node_record("iqn.2026-11.test:b", addr("10.0.0.1:3260"), -1)?;
        let upstream = t.node_record_in(
            "var/lib/iscsi/nodes",
            "iqn.2026-11.test:c",
            addr("10.0.0.2:3261"),
            2,
            "iface0",
        )?;
        let minus_one = t.node_record_in(
            "etc/iscsi/nodes",
            "iqn.2026-11.test:d",
            addr("[fd00::3]:3260"),
            -1,
            "default",
        )?;
        let flat = dir
            .path()
            .join("etc/iscsi/nodes/iqn.2026-11.test:e/10.0.0.4,3260,5");
        fs::create_dir_all(flat.parent().ok_or("no parent")?)?;
        fs::write(&flat, "node.name = iqn.2026-11.test:e\n")?;
        // Not records: a name that is no portal, a directory where an iface file belongs.
        fs::create_dir_all(
            dir.path()
                .join("etc/iscsi/nodes/iqn.2026-11.test:e/garbage"),
        )?;
        fs::create_dir_all(
            dir.path()
                .join("etc/iscsi/nodes/iqn.2026-11.test:e/10.0.0.5,3260,1/sub"),
        )?;

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
                rec("iqn.2026-11.test:d", "[fd00::3]:3260", -1, &minus_one),
                rec("iqn.2026-11.test:e", "10.0.0.4:3260", 5, &flat),
            ]
        );
        assert!(v6.ends_with("::1,3260,1/default"));
        assert!(no_tpgt.ends_with("iqn.2026-11.test:b/10.0.0.1,3260"));
        assert!(minus_one.ends_with("fd00::3,3260,-1/default"));
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
    fn parallel_reading_keeps_order() {
        let items: Vec<u32> = (0..1000).collect();
        let f = |x: &u32| (x % 3 != 0).then_some(x * 2);
        let expected: Vec<u32> = items.iter().filter_map(f).collect();
        assert_eq!(parallel_filter_map(&items, f), expected);
    }

    /// Enough paths that the devices are read on several threads.
    #[test]
    fn a_host_with_hundreds_of_paths() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.session(2, IQN, addr("127.0.0.2:3260"), "LOGGED_IN")?;
        // Two paths per LUN: exactly enough devices for the threaded reading.
        let luns = (PARALLEL_MIN / 2) as u64;
        for lun in 0..luns {
            for session in [1, 2] {
                let k = (2 * lun + u64::from(session) - 1) as usize;
                let name = crate::observe::fixture::sd_name(k);
                t.lun(session, lun, Some(&name), Some(NAA), "running")?;
            }
        }
        let o = observe(dir.path())?;
        for (s, host) in o.sessions.iter().zip([6, 7]) {
            let hctls: Vec<Hctl> = s.devices.iter().map(|d| d.hctl).collect();
            let expected: Vec<Hctl> = (0..luns).map(|l| hctl(host, l)).collect();
            assert_eq!(hctls, expected);
            assert!(s.devices.iter().all(|d| d.disk.is_some()));
        }
        let sd = |s: usize, l: usize| {
            o.sessions[s].devices[l]
                .disk
                .as_ref()
                .map(|d| d.name.clone())
        };
        // sd names the 256th disk sdiv; it is session 2's path to the last LUN.
        assert_eq!(
            (sd(0, 0), sd(1, 0), sd(1, 127)),
            (Some("sda".into()), Some("sdb".into()), Some("sdiv".into()))
        );
        Ok(())
    }

    #[test]
    fn portal_names() {
        assert_eq!(
            parse_portal_name("::1,3260,1"),
            Some((addr("[::1]:3260"), 1))
        );
        assert_eq!(
            parse_portal_name("fd00::a:b,3260,-1"),
            Some((addr("[fd00::a:b]:3260"), -1))
        );
        assert_eq!(
            parse_portal_name("10.0.0.1,3260"),
            Some((addr("10.0.0.1:3260"), -1))
        );
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
        text.push_str(&format!(
            "  /{WWID_B}/  \n# /3600140ccc/\n/3600140 dd/\njunk\n//\n/3/\n/3600140ee\n"
        ));
        fs::write(&path, text)?;
        let o = observe(dir.path())?;
        assert_eq!(o.registered_wwids, [wwid(WWID), wwid(WWID_B)].into());
        Ok(())
    }

    #[test]
    fn mountinfo_third_field() -> TestResult {
        let (dir, mut t) = fixture()?;
        t.mount("8:1")?;
        t.mount("254:0")?;
        let path = dir.path().join("proc/self/mountinfo");
        let mut text = fs::read_to_string(&path)?;
        text.push_str("garbage\n40 26 not:a:num / /x rw - tmpfs tmpfs rw\n\n");
        fs::write(&path, text)?;
        let mut expected = base_mounts();
        expected.extend([devnum(8, 1), devnum(254, 0)]);
        let o = observe(dir.path())?;
        assert_eq!(o.mounted, expected);
        assert_eq!(o.mount_points.len(), expected.len());
        assert_eq!(o.mount_points[&devnum(254, 0)], "/mnt/lk101");
        assert_eq!(o.mount_points[&devnum(259, 1)], "/");

        fs::remove_file(&path)?;
        assert_eq!(observe(dir.path())?.mounted, BTreeSet::new());
        Ok(())
    }

    #[test]
    fn a_disk_udev_has_not_processed_is_not_initialized() -> TestResult {
        let dir = TempDir::new()?;
        let mut t = FixtureTree::new(dir.path())?;
        t.session(1, IQN, addr("127.0.0.1:3260"), "LOGGED_IN")?;
        t.lun(1, 0, Some("sda"), Some(NAA), "running")?;
        t.lun(1, 1, Some("sdb"), Some(NAA_B), "running")?;
        let sdb = observe(dir.path())?.sessions[0].devices[1]
            .disk
            .clone()
            .ok_or("no sdb")?;
        fs::remove_file(dir.path().join(format!("run/udev/data/b{}", sdb.devnum)))?;
        let o = observe(dir.path())?;
        let disks: Vec<(String, bool)> = o.sessions[0]
            .devices
            .iter()
            .filter_map(|d| {
                d.disk
                    .as_ref()
                    .map(|k| (k.name.clone(), k.udev_initialized))
            })
            .collect();
        assert_eq!(
            disks,
            vec![("sda".to_string(), true), ("sdb".to_string(), false)]
        );
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
        #![proptest_config(ProptestConfig::with_cases(16))]

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
                p("sys/block/sda/size"),
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
