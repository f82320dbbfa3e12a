use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use super::Wwid;

/// One consistent-enough snapshot of the iSCSI, SCSI and device-mapper state of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub sessions: Vec<Session>,
    pub maps: Vec<Map>,
    /// Node records in open-iscsi's database (`/etc/iscsi/nodes`, `/var/lib/iscsi/nodes`).
    pub node_records: Vec<NodeRecord>,
    /// WWIDs listed in `/etc/multipath/wwids`.
    pub registered_wwids: BTreeSet<Wwid>,
    /// Block devices that carry a mounted file system (from `/proc/self/mountinfo`).
    pub mounted: BTreeSet<DevNum>,
    /// Where each of those is mounted (the first mount point mountinfo lists, as it escapes
    /// it), to name it when the device cannot be taken away.
    pub mount_points: BTreeMap<DevNum, String>,
    /// Portal host names resolved to addresses, keyed by the portal as written (`host:port`).
    /// Filled by the caller that does DNS; sysfs knows only addresses.
    pub resolved: BTreeMap<String, SocketAddr>,
    /// lunkeeper's udev name mappings, key (`mpath-<wwid>`, `sd-<wwid>`) → volume name.
    pub names: BTreeMap<String, String>,
    /// `/dev/lunkeeper/<name>` as udev made them: volume name → kernel name of the device the
    /// link points at (`dm-3`, `sdc`). None when lunkeeper's udev rule is not installed (no
    /// link will come, so nothing waits for one).
    pub links: Option<BTreeMap<String, String>>,
    /// Sizes in bytes of the disks (`sdX`) of the file's volumes' LUNs, by kernel name: a
    /// single-path volume's size, and each path's size for a multipath one (a path that
    /// reports more than its map is how a grown LUN shows, see `plan::resize`). Read by the
    /// caller that knows which disks those are: a host with thousands of paths does not read
    /// every disk's `size` on every look. (A map's size is in [`Map::size_bytes`].)
    pub disk_sizes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// N of `sessionN`.
    pub id: u32,
    pub target: String,
    pub tpgt: Option<u32>,
    /// The portal logged in to (`persistent_address`:`persistent_port`); None when unreadable.
    pub portal: Option<SocketAddr>,
    pub state: SessionState,
    /// H of the SCSI host iscsi_tcp made for this session.
    pub host: Option<u32>,
    pub devices: Vec<LunDevice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    LoggedIn,
    Failed,
    Free,
    Unknown,
}

impl SessionState {
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "LOGGED_IN" => SessionState::LoggedIn,
            "FAILED" => SessionState::Failed,
            "FREE" => SessionState::Free,
            _ => SessionState::Unknown,
        }
    }
}

/// A SCSI device (one path to one LUN) and its disk, if the disk has appeared yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunDevice {
    pub hctl: Hctl,
    /// `running`, `blocked`, `offline`, `transport-offline`, ...
    pub state: String,
    pub wwid: Option<Wwid>,
    /// The whole-disk block device (`sdX`); None until sd has bound it.
    pub disk: Option<BlockDev>,
}

impl LunDevice {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hctl {
    pub host: u32,
    pub channel: u32,
    pub target: u32,
    pub lun: u64,
}

impl fmt::Display for Hctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.host, self.channel, self.target, self.lun
        )
    }
}

impl Serialize for Hctl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Hctl {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut it = s.split(':');
        let mut next = || it.next().ok_or(());
        let hctl = Hctl {
            host: next()?.parse().map_err(|_| ())?,
            channel: next()?.parse().map_err(|_| ())?,
            target: next()?.parse().map_err(|_| ())?,
            lun: next()?.parse().map_err(|_| ())?,
        };
        if it.next().is_some() {
            return Err(());
        }
        Ok(hctl)
    }
}

/// A block device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name: `sdc`, `dm-3`.
    pub name: String,
    pub devnum: DevNum,
    /// Names in `holders/` (a dm map, an md array, ...).
    pub holders: Vec<String>,
    /// Partitions of this disk, with their own holders.
    pub partitions: Vec<BlockDev>,
    /// Whether the device node exists under `/dev` (udev has caught up).
    pub node_present: bool,
    /// Whether udev has processed the device (its database entry exists). multipathd learns of
    /// a path only from udev, so asking it about a path before that fails.
    pub udev_initialized: bool,
}

impl BlockDev {
    /// Every device number of the disk and its partitions.
    pub fn devnums(&self) -> impl Iterator<Item = DevNum> + '_ {
        std::iter::once(self.devnum).chain(self.partitions.iter().map(|p| p.devnum))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl std::str::FromStr for DevNum {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, b) = s.trim().split_once(':').ok_or(())?;
        Ok(DevNum {
            major: a.parse().map_err(|_| ())?,
            minor: b.parse().map_err(|_| ())?,
        })
    }
}

/// A device-mapper multipath map (uuid `mpath-<wwid>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// The map's name in `/dev/mapper`.
    pub name: String,
    pub wwid: Wwid,
    /// The dm block device (`dm-N`).
    pub dev: BlockDev,
    /// Path devices (`sdX`) under `slaves/`.
    pub slaves: Vec<String>,
    pub suspended: bool,
    /// The map's size in bytes (`size` in 512-byte sectors); None when unreadable.
    pub size_bytes: Option<u64>,
    /// The kpartx partition maps stacked on this map, by partition number. They hold the map
    /// (they are in `dev.holders`), so they must go before the map can be flushed.
    pub parts: Vec<PartMap>,
}

/// A partition of a multipath map: the linear dm device multipath-tools' udev rule makes with
/// kpartx, uuid `part<N>-mpath-<wwid>`, named `<map>-part<N>` (Debian: `kpartx -p -part`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartMap {
    /// N of `part<N>`.
    pub number: u32,
    /// The map's name in `/dev/mapper`.
    pub name: String,
    /// The dm block device (`dm-N`) with its own holders (LVM, md, ...).
    pub dev: BlockDev,
}

/// One node record of open-iscsi's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub target: String,
    pub portal: SocketAddr,
    /// -1 when created without a TPGT.
    pub tpgt: i32,
    /// The record file itself (`.../<iqn>/<addr>,<port>,<tpgt>/<iface>`).
    pub path: PathBuf,
}
