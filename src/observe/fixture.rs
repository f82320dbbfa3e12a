//! A fake host for tests and benchmarks: writes `sys/`, `dev/`, `etc/`, `var/` and `proc/`
//! below a directory, laid out as Debian 12 (kernel 6.1, open-iscsi 2.1.8, multipath-tools 0.9.4)
//! lays them out for iscsi_tcp sessions, with the kernel's relative symlinks, so that
//! [`observe`](super::observe) can be pointed at it. Link targets, attribute values and the
//! node record layout match what the VM smoke test captured (`tests/vm/smoke.sh`,
//! `capture_sysfs`); the `matches_the_vm_capture` test below holds them to it.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use lunkeeper::observe::fixture::FixtureTree;
//! let dir = std::path::Path::new("/tmp/fake-host");
//! let mut t = FixtureTree::new(dir)?;
//! let portal = "127.0.0.1:3260".parse().map_err(std::io::Error::other)?;
//! t.session(1, "iqn.2026-11.test:a", portal, "LOGGED_IN")?;
//! t.lun(1, 0, Some("sda"), Some("naa.6001405aaaaaaaaaaaaaaaaaaaaaaaaa"), "running")?;
//! t.map("36001405aaaaaaaaaaaaaaaaaaaaaaaaa", "dm-0", &["sda"])?;
//! t.node_record("iqn.2026-11.test:a", portal, 1)?;
//! # Ok(()) }
//! ```
//!
//! Layout written (H = SCSI host, N = session id, L = LUN):
//! - `sys/devices/platform/hostH/sessionN/iscsi_session/sessionN/` (targetname, tpgt, state,
//!   username, password, ...), linked from `sys/class/iscsi_session/sessionN`;
//! - `.../sessionN/connectionN:0/iscsi_connection/connectionN:0/` (persistent_address, ...),
//!   linked from `sys/class/iscsi_connection/connectionN:0`;
//! - `.../sessionN/targetH:0:0/H:0:0:L/` (state, wwid, ...) linked from
//!   `sys/class/scsi_device/H:0:0:L` (through its `scsi_device/H:0:0:L` class directory);
//! - `.../H:0:0:L/block/sdX/` (dev, size, holders/, slaves/, partitions) linked from
//!   `sys/block/sdX`, `sys/class/block/sdX` and `sys/dev/block/<maj>:<min>` (partitions from
//!   the last two only, as in the kernel);
//! - `sys/devices/virtual/block/dm-N/` (dm/{name,uuid,suspended}, slaves/, holders/) linked
//!   from `sys/block/dm-N`; slave and holder links point both ways as the kernel's do;
//! - `dev/<name>` for every block device (empty regular files), `dev/mapper/<name> -> ../dm-N`
//!   beside `dev/mapper/control`;
//! - `etc/iscsi/nodes/<target>/<addr>,<port>,<tpgt>/default`, or the plain file
//!   `<addr>,<port>` that iscsiadm 2.1.8 writes for a record made without a TPGT.
//!
//! Device numbers are synthetic: the k-th disk (from 0) is `8:16k`, its partition n is
//! `8:16k+n`, `dm-N` is `254:N` (dm's major in the VM). Sizes are 131072 sectors (64 MiB, what the VM recipe's LUNs
//! have) unless changed with [`FixtureTree::set_size`].
//!
//! Every method returns `io::Result` so that this module needs no panics; tests use `?`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use super::Hctl;

/// 64 MiB in 512-byte sectors.
const DEFAULT_SIZE: u64 = 131_072;

/// Builds a fake host below a directory. See the module documentation for the layout.
#[derive(Debug)]
pub struct FixtureTree {
    root: PathBuf,
    /// Session id → SCSI host number.
    hosts: BTreeMap<u32, u32>,
    next_host: u32,
    /// Kernel name → where the device's sysfs directory is, relative to `root`.
    blocks: BTreeMap<String, BlockInfo>,
    next_disk: u32,
    next_mount_id: u32,
}

#[derive(Debug, Clone)]
struct BlockInfo {
    dir: PathBuf,
    major: u32,
    minor: u32,
    size: u64,
}

impl FixtureTree {
    /// Creates the skeleton every Linux host with iscsi_tcp and dm-multipath loaded has: the
    /// class directories, `sys/block`, `sys/dev/block`, `dev/mapper` and a
    /// `proc/self/mountinfo` holding `/sys`, `/proc` and the root file system, on `259:1`, a
    /// number no device of the fixture gets.
    pub fn new(root: &Path) -> io::Result<FixtureTree> {
        for dir in [
            "sys/block",
            "sys/dev/block",
            "sys/dev/char",
            "sys/class/block",
            "sys/class/iscsi_session",
            "sys/class/iscsi_connection",
            "sys/class/iscsi_host",
            "sys/class/scsi_host",
            "sys/class/scsi_device",
            "sys/class/scsi_disk",
            "sys/devices/platform",
            "sys/devices/virtual/block",
            "dev/mapper",
            "proc/self",
            "run/udev/data",
        ] {
            fs::create_dir_all(root.join(dir))?;
        }
        fs::write(root.join("dev/mapper/control"), "")?;
        fs::write(
            root.join("proc/self/mountinfo"),
            "26 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,errors=remount-ro\n\
             21 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n\
             22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n",
        )?;
        Ok(FixtureTree {
            root: root.to_path_buf(),
            hosts: BTreeMap::new(),
            // host0..host5 are the VM's own ata hosts.
            next_host: 6,
            blocks: BTreeMap::new(),
            next_disk: 0,
            next_mount_id: 100,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A session on a new SCSI host (numbers from 6 up); returns the host number.
    /// `tpgt` is written as 1.
    pub fn session(
        &mut self,
        id: u32,
        target: &str,
        portal: SocketAddr,
        state: &str,
    ) -> io::Result<u32> {
        let host = self.next_host;
        self.session_on_host(id, host, target, portal, state)?;
        Ok(host)
    }

    /// A session on the given SCSI host number.
    pub fn session_on_host(
        &mut self,
        id: u32,
        host: u32,
        target: &str,
        portal: SocketAddr,
        state: &str,
    ) -> io::Result<()> {
        if self.hosts.contains_key(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("session{id} exists in the fixture"),
            ));
        }
        self.hosts.insert(id, host);
        self.next_host = self.next_host.max(host.saturating_add(1));

        let host_dir = PathBuf::from(format!("sys/devices/platform/host{host}"));
        for (class, sub) in [("scsi_host", "scsi_host"), ("iscsi_host", "iscsi_host")] {
            let dir = host_dir.join(sub).join(format!("host{host}"));
            if !self.root.join(&dir).exists() {
                self.mkdir(&dir)?;
                self.link_at(&dir.join("device"), &host_dir)?;
                self.link(&format!("sys/class/{class}/host{host}"), &dir)?;
            }
        }
        self.attr(&host_dir.join(format!("scsi_host/host{host}/scan")), "")?;

        let sess_dev = host_dir.join(format!("session{id}"));
        let sess = sess_dev.join(format!("iscsi_session/session{id}"));
        self.mkdir(&sess)?;
        self.attr(&sess.join("targetname"), target)?;
        self.attr(&sess.join("tpgt"), "1")?;
        self.attr(&sess.join("state"), state)?;
        self.attr(&sess.join("recovery_tmo"), "120")?;
        self.attr(&sess.join("ifacename"), "default")?;
        self.attr(&sess.join("initiatorname"), "iqn.2026-11.test:initiator")?;
        // Real sysfs refuses these to anyone without CAP_SYS_ADMIN; the sentinel lets a test
        // prove that observe never reads them.
        for secret in ["username", "password", "username_in", "password_in"] {
            self.attr(&sess.join(secret), CHAP_SENTINEL)?;
        }
        self.link_at(&sess.join("device"), &sess_dev)?;
        self.link(&format!("sys/class/iscsi_session/session{id}"), &sess)?;

        let conn_dev = sess_dev.join(format!("connection{id}:0"));
        let conn = conn_dev.join(format!("iscsi_connection/connection{id}:0"));
        self.mkdir(&conn)?;
        let addr = portal.ip().to_string();
        let port = portal.port().to_string();
        for (name, value) in [
            ("persistent_address", addr.as_str()),
            ("persistent_port", port.as_str()),
            ("address", addr.as_str()),
            ("port", port.as_str()),
            ("state", "up"),
        ] {
            self.attr(&conn.join(name), value)?;
        }
        self.link_at(&conn.join("device"), &conn_dev)?;
        self.link(
            &format!("sys/class/iscsi_connection/connection{id}:0"),
            &conn,
        )?;
        Ok(())
    }

    /// The session's device directory, `sys/devices/platform/hostH/sessionN` (absolute).
    pub fn session_device_dir(&self, id: u32) -> Option<PathBuf> {
        let host = self.hosts.get(&id)?;
        Some(
            self.root
                .join(format!("sys/devices/platform/host{host}/session{id}")),
        )
    }

    /// A SCSI device `H:0:0:L` on the session's host, optionally with its disk and its `wwid`
    /// attribute (the kernel's form, `naa.…`; None = no file, as LIO without a unit serial).
    pub fn lun(
        &mut self,
        session: u32,
        lun: u64,
        disk: Option<&str>,
        wwid_sysfs: Option<&str>,
        state: &str,
    ) -> io::Result<Hctl> {
        let host = *self.hosts.get(&session).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("session{session} is not in the fixture"),
            )
        })?;
        let hctl = Hctl {
            host,
            channel: 0,
            target: 0,
            lun,
        };
        let target_dir = PathBuf::from(format!(
            "sys/devices/platform/host{host}/session{session}/target{host}:0:0"
        ));
        if !self.root.join(&target_dir).exists() {
            self.mkdir(&target_dir.join("power"))?;
            self.attr(&target_dir.join("uevent"), "DEVTYPE=scsi_target")?;
        }
        let dev = target_dir.join(hctl.to_string());
        self.mkdir(&dev.join("power"))?;
        self.attr(&dev.join("state"), state)?;
        self.attr(&dev.join("vendor"), "LIO-ORG ")?;
        self.attr(&dev.join("model"), "FILEIO          ")?;
        self.attr(&dev.join("type"), "0")?;
        self.attr(&dev.join("timeout"), "30")?;
        for write_only in ["rescan", "delete"] {
            self.attr(&dev.join(write_only), "")?;
        }
        if let Some(w) = wwid_sysfs {
            self.attr(&dev.join("wwid"), w)?;
        }
        let class_dev = dev.join(format!("scsi_device/{hctl}"));
        self.mkdir(&class_dev)?;
        self.link_at(&class_dev.join("device"), &dev)?;
        self.link(&format!("sys/class/scsi_device/{hctl}"), &class_dev)?;

        if let Some(name) = disk {
            let scsi_disk = dev.join(format!("scsi_disk/{hctl}"));
            self.mkdir(&scsi_disk)?;
            self.link(&format!("sys/class/scsi_disk/{hctl}"), &scsi_disk)?;

            // Like the kernel's 20-bit minor numbers, this runs out at 65536 disks.
            let minor = self
                .next_disk
                .checked_mul(16)
                .filter(|m| *m < 1 << 20)
                .ok_or_else(|| invalid("the fixture has no disk numbers left".to_string()))?;
            self.next_disk += 1;
            let dir = dev.join("block").join(name);
            self.block_dir(name, &dir, 8, minor, DEFAULT_SIZE, true)?;
            self.link_at(&dir.join("device"), &dev)?;
            self.link(&format!("sys/block/{name}"), &dir)?;
        }
        Ok(hctl)
    }

    /// The sysfs directory of the LUN device `H:0:0:L` of a session (absolute).
    pub fn lun_dir(&self, session: u32, lun: u64) -> Option<PathBuf> {
        let host = self.hosts.get(&session)?;
        Some(self.root.join(format!(
            "sys/devices/platform/host{host}/session{session}/target{host}:0:0/{host}:0:0:{lun}"
        )))
    }

    /// The real sysfs directory of a block device made by this fixture (absolute).
    pub fn block_path(&self, name: &str) -> Option<PathBuf> {
        Some(self.root.join(&self.blocks.get(name)?.dir))
    }

    /// Partition `part` of a disk: `sda1`, or `<disk>p1` when the disk name ends in a digit.
    /// Its number (the trailing digits, 1 to 15: the minors sd reserves per disk) makes its
    /// device number.
    pub fn partition(&mut self, disk: &str, part: &str) -> io::Result<()> {
        let parent = self.block(disk)?.clone();
        let stem = part.trim_end_matches(|c: char| c.is_ascii_digit());
        let number: u32 = part
            .strip_prefix(stem)
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..16).contains(n))
            .ok_or_else(|| invalid(format!("{part}: a partition name ends in 1 to 15")))?;
        let dir = parent.dir.join(part);
        self.block_dir(
            part,
            &dir,
            parent.major,
            parent.minor + number,
            parent.size / 2,
            false,
        )?;
        self.attr(&dir.join("partition"), &number.to_string())?;
        self.attr(&dir.join("start"), "2048")?;
        Ok(())
    }

    /// A multipath map as multipathd makes it with `user_friendly_names no`: named after its
    /// WWID, uuid `mpath-<wwid>`.
    pub fn map(&mut self, wwid: &str, dm: &str, slaves: &[&str]) -> io::Result<()> {
        self.dm_device(dm, wwid, &format!("mpath-{wwid}"), slaves)
    }

    /// Any device-mapper device: a kpartx partition (`part1-mpath-<wwid>` over `dm-0`), an LVM
    /// volume (`LVM-…`), ... `slaves` may name disks, partitions or other dm devices.
    pub fn dm_device(
        &mut self,
        dm: &str,
        name: &str,
        uuid: &str,
        slaves: &[&str],
    ) -> io::Result<()> {
        let minor: u32 = dm
            .strip_prefix("dm-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| invalid(format!("{dm}: a dm device is named dm-N")))?;
        let size = match slaves.first() {
            Some(s) => self.block(s)?.size,
            None => DEFAULT_SIZE,
        };
        let dir = PathBuf::from("sys/devices/virtual/block").join(dm);
        self.block_dir(dm, &dir, 254, minor, size, true)?;
        self.attr(&dir.join("dm/name"), name)?;
        self.attr(&dir.join("dm/uuid"), uuid)?;
        self.attr(&dir.join("dm/suspended"), "0")?;
        self.attr(&dir.join("dm/use_blk_mq"), "1")?;
        self.link(&format!("sys/block/{dm}"), &dir)?;
        for slave in slaves {
            let slave_dir = self.block(slave)?.dir.clone();
            self.link_at(&dir.join("slaves").join(slave), &slave_dir)?;
            self.link_at(&slave_dir.join("holders").join(dm), &dir)?;
        }
        self.link_at(
            Path::new("dev/mapper").join(name).as_path(),
            Path::new(&format!("dev/{dm}")),
        )?;
        Ok(())
    }

    /// Overwrites a block device's `size` (sectors).
    pub fn set_size(&mut self, name: &str, sectors: u64) -> io::Result<()> {
        let info = self
            .blocks
            .get_mut(name)
            .ok_or_else(|| invalid(format!("{name} is not in the fixture")))?;
        info.size = sectors;
        let path = info.dir.join("size");
        self.attr(&path, &sectors.to_string())
    }

    /// Adds a mountinfo line for a file system on `devnum` (`"8:1"`).
    pub fn mount(&mut self, devnum: &str) -> io::Result<()> {
        let id = self.next_mount_id;
        self.next_mount_id = self.next_mount_id.saturating_add(1);
        let source = self
            .blocks
            .iter()
            .find(|(_, b)| format!("{}:{}", b.major, b.minor) == devnum)
            .map_or_else(|| "/dev/unknown".to_string(), |(n, _)| format!("/dev/{n}"));
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.root.join("proc/self/mountinfo"))?;
        writeln!(
            f,
            "{id} 26 {devnum} / /mnt/lk{id} rw,relatime shared:{id} - ext4 {source} rw"
        )
    }

    /// A node record as iscsiadm 2.1.8 writes it on Debian: with a TPGT (`-p ADDR:PORT,TPGT`,
    /// or from discovery) `etc/iscsi/nodes/<target>/<addr>,<port>,<tpgt>/default`; without
    /// one (`tpgt` < 0) the plain file `etc/iscsi/nodes/<target>/<addr>,<port>`, as the VM
    /// showed. Returns the record's path.
    pub fn node_record(
        &mut self,
        target: &str,
        portal: SocketAddr,
        tpgt: i32,
    ) -> io::Result<PathBuf> {
        if tpgt >= 0 {
            return self.node_record_in("etc/iscsi/nodes", target, portal, tpgt, "default");
        }
        let dir = Path::new("etc/iscsi/nodes").join(target);
        let path = dir.join(format!("{},{}", portal.ip(), portal.port()));
        self.mkdir(&dir)?;
        fs::write(
            self.root.join(&path),
            record_text(target, portal, tpgt, "default"),
        )?;
        Ok(self.root.join(path))
    }

    /// A node record in the directory layout below any nodes directory (`var/lib/iscsi/nodes`
    /// is upstream's), for any iface and any TPGT, -1 included.
    pub fn node_record_in(
        &mut self,
        nodes_dir: &str,
        target: &str,
        portal: SocketAddr,
        tpgt: i32,
        iface: &str,
    ) -> io::Result<PathBuf> {
        let dir = Path::new(nodes_dir).join(target).join(format!(
            "{},{},{tpgt}",
            portal.ip(),
            portal.port()
        ));
        let path = dir.join(iface);
        self.mkdir(&dir)?;
        fs::write(
            self.root.join(&path),
            record_text(target, portal, tpgt, iface),
        )?;
        Ok(self.root.join(path))
    }

    /// Appends `/<wwid>/` to `etc/multipath/wwids`, creating it with multipath's header.
    pub fn registered_wwid(&mut self, wwid: &str) -> io::Result<()> {
        let path = self.root.join("etc/multipath/wwids");
        if !path.exists() {
            self.mkdir(Path::new("etc/multipath"))?;
            fs::write(&path, WWIDS_HEADER)?;
        }
        let mut f = fs::OpenOptions::new().append(true).open(&path)?;
        writeln!(f, "/{wwid}/")
    }

    fn block(&self, name: &str) -> io::Result<&BlockInfo> {
        self.blocks
            .get(name)
            .ok_or_else(|| invalid(format!("{name} is not in the fixture")))
    }

    /// The parts every block device directory has (a partition has no `slaves/` or
    /// `queue/`), plus its `/dev` node and its links in `sys/class/block` and `sys/dev/block`.
    fn block_dir(
        &mut self,
        name: &str,
        dir: &Path,
        major: u32,
        minor: u32,
        size: u64,
        whole_disk: bool,
    ) -> io::Result<()> {
        if self.blocks.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists in the fixture"),
            ));
        }
        self.mkdir(&dir.join("holders"))?;
        self.mkdir(&dir.join("power"))?;
        if whole_disk {
            self.mkdir(&dir.join("slaves"))?;
            self.attr(&dir.join("queue/logical_block_size"), "512")?;
            self.attr(&dir.join("removable"), "0")?;
        }
        self.attr(&dir.join("dev"), &format!("{major}:{minor}"))?;
        self.attr(&dir.join("size"), &size.to_string())?;
        self.attr(&dir.join("ro"), "0")?;
        self.link(&format!("sys/class/block/{name}"), dir)?;
        self.link(&format!("sys/dev/block/{major}:{minor}"), dir)?;
        fs::write(self.root.join("dev").join(name), "")?;
        // udev's database entry: the device has been processed.
        fs::write(
            self.root.join(format!("run/udev/data/b{major}:{minor}")),
            "",
        )?;
        self.blocks.insert(
            name.to_string(),
            BlockInfo {
                dir: dir.to_path_buf(),
                major,
                minor,
                size,
            },
        );
        Ok(())
    }

    fn mkdir(&self, rel: &Path) -> io::Result<()> {
        fs::create_dir_all(self.root.join(rel))
    }

    /// Writes a sysfs attribute as the kernel shows it: the value and a newline.
    fn attr(&self, rel: &Path, value: &str) -> io::Result<()> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, format!("{value}\n"))
    }

    fn link(&self, at: &str, to: &Path) -> io::Result<()> {
        self.link_at(Path::new(at), to)
    }

    /// A symlink at `at` pointing to `to` (both relative to root) by a relative path, as the
    /// kernel makes them, so the tree stays valid wherever it is moved or mounted.
    fn link_at(&self, at: &Path, to: &Path) -> io::Result<()> {
        let path = self.root.join(at);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink(
            relative_path(at.parent().unwrap_or(Path::new("")), to),
            path,
        )
    }
}

/// Written into the CHAP attribute files of every session.
pub const CHAP_SENTINEL: &str = "chap-secret-must-never-be-read";

const WWIDS_HEADER: &str = "# Multipath wwids, Version : 1.0\n\
# NOTE: This file is automatically maintained by multipath and multipathd.\n\
# You should not need to edit this file in normal circumstances.\n\
#\n\
# Valid WWIDs:\n";

/// `sda`, ..., `sdz`, `sdaa`, ... as sd names its disks (index from 0).
pub fn sd_name(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("sd{}", String::from_utf8_lossy(&letters))
}

fn record_text(target: &str, portal: SocketAddr, tpgt: i32, iface: &str) -> String {
    format!(
        "# BEGIN RECORD 2.1.8\n\
         node.name = {target}\n\
         node.tpgt = {tpgt}\n\
         node.startup = manual\n\
         node.leading_login = No\n\
         iface.iscsi_ifacename = {iface}\n\
         iface.transport_name = tcp\n\
         node.discovery_type = static\n\
         node.session.scan = manual\n\
         node.session.timeo.replacement_timeout = 120\n\
         node.session.auth.authmethod = None\n\
         node.conn[0].address = {}\n\
         node.conn[0].port = {}\n\
         node.conn[0].startup = manual\n\
         # END RECORD\n",
        portal.ip(),
        portal.port()
    )
}

/// The path from directory `from` to `to`, both relative to the same root and free of `..`,
/// spelled as kernfs spells link targets: it climbs to the nearest common ancestor of `from`
/// and `to`'s parent, so a link to an ancestor names it (`device -> ../../../6:0:0:300`).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from
        .iter()
        .zip(&to)
        .take_while(|(a, b)| a == b)
        .count()
        .min(to.len().saturating_sub(1));
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The tree `tests/vm/smoke.sh` captured (Debian 12, kernel 6.1): target
/// `iqn.2026-11.test.lunkeeper:smoke`, LUN 300 through 127.0.0.1 (session1, host6, sda) and
/// 127.0.0.2 (session2, host7, sdb), map dm-0 over both, and a node record made without a
/// TPGT. Boot-specific numbers are the capture's.
#[cfg(test)]
pub(crate) fn vm_smoke_capture(root: &Path) -> io::Result<FixtureTree> {
    let mut t = FixtureTree::new(root)?;
    let p1 = SocketAddr::from(([127, 0, 0, 1], 3260));
    let p2 = SocketAddr::from(([127, 0, 0, 2], 3260));
    t.session(1, VM_TARGET, p1, "LOGGED_IN")?;
    t.session(2, VM_TARGET, p2, "LOGGED_IN")?;
    t.lun(1, 300, Some("sda"), Some(VM_NAA), "running")?;
    t.lun(2, 300, Some("sdb"), Some(VM_NAA), "running")?;
    t.map(VM_WWID, "dm-0", &["sda", "sdb"])?;
    t.node_record(VM_TARGET, p1, -1)?;
    Ok(t)
}

#[cfg(test)]
pub(crate) const VM_TARGET: &str = "iqn.2026-11.test.lunkeeper:smoke";
#[cfg(test)]
pub(crate) const VM_NAA: &str = "naa.60014058e56025504e62559c52c147ac";
#[cfg(test)]
pub(crate) const VM_WWID: &str = "360014058e56025504e62559c52c147ac";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every link target and attribute value here is copied from the VM capture
    /// (`sysfs-classes.txt`, `sysfs-path1.txt`, `sysfs-dm.txt`, `nodes.md`).
    #[test]
    fn matches_the_vm_capture() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::TempDir::new()?;
        vm_smoke_capture(dir.path())?;
        let link = |p: &str| fs::read_link(dir.path().join(p)).map(|l| l.display().to_string());
        let attr = |p: &str| fs::read_to_string(dir.path().join(p));
        for (path, target) in [
            ("sys/class/iscsi_session/session1", "../../devices/platform/host6/session1/iscsi_session/session1"),
            ("sys/class/iscsi_session/session2", "../../devices/platform/host7/session2/iscsi_session/session2"),
            ("sys/class/iscsi_connection/connection1:0", "../../devices/platform/host6/session1/connection1:0/iscsi_connection/connection1:0"),
            ("sys/class/iscsi_host/host6", "../../devices/platform/host6/iscsi_host/host6"),
            ("sys/class/scsi_host/host7", "../../devices/platform/host7/scsi_host/host7"),
            ("sys/class/scsi_device/6:0:0:300", "../../devices/platform/host6/session1/target6:0:0/6:0:0:300/scsi_device/6:0:0:300"),
            ("sys/block/sda", "../devices/platform/host6/session1/target6:0:0/6:0:0:300/block/sda"),
            ("sys/block/sdb", "../devices/platform/host7/session2/target7:0:0/7:0:0:300/block/sdb"),
            ("sys/block/dm-0", "../devices/virtual/block/dm-0"),
            ("sys/block/dm-0/slaves/sda", "../../../../platform/host6/session1/target6:0:0/6:0:0:300/block/sda"),
            ("sys/block/sda/holders/dm-0", "../../../../../../../../virtual/block/dm-0"),
            ("sys/block/sda/device", "../../../6:0:0:300"),
            ("sys/class/iscsi_session/session1/device", "../../../session1"),
            ("sys/class/iscsi_connection/connection1:0/device", "../../../connection1:0"),
            ("sys/class/iscsi_host/host6/device", "../../../host6"),
            ("sys/class/scsi_host/host6/device", "../../../host6"),
            ("sys/class/scsi_device/6:0:0:300/device", "../../../6:0:0:300"),
            ("dev/mapper/360014058e56025504e62559c52c147ac", "../dm-0"),
        ] {
            assert_eq!(link(path)?, target, "{path}");
        }
        for (path, value) in [
            (
                "sys/class/iscsi_session/session1/targetname",
                "iqn.2026-11.test.lunkeeper:smoke\n",
            ),
            ("sys/class/iscsi_session/session1/tpgt", "1\n"),
            ("sys/class/iscsi_session/session1/state", "LOGGED_IN\n"),
            (
                "sys/class/iscsi_connection/connection2:0/persistent_address",
                "127.0.0.2\n",
            ),
            (
                "sys/class/iscsi_connection/connection2:0/persistent_port",
                "3260\n",
            ),
            ("sys/block/sda/device/state", "running\n"),
            (
                "sys/block/sda/device/wwid",
                "naa.60014058e56025504e62559c52c147ac\n",
            ),
            ("sys/block/sda/dev", "8:0\n"),
            ("sys/block/sdb/dev", "8:16\n"),
            ("sys/block/sda/size", "131072\n"),
            ("sys/block/dm-0/dev", "254:0\n"),
            ("sys/block/dm-0/size", "131072\n"),
            (
                "sys/block/dm-0/dm/name",
                "360014058e56025504e62559c52c147ac\n",
            ),
            (
                "sys/block/dm-0/dm/uuid",
                "mpath-360014058e56025504e62559c52c147ac\n",
            ),
            ("sys/block/dm-0/dm/suspended", "0\n"),
        ] {
            assert_eq!(attr(path)?, value, "{path}");
        }
        let record = "etc/iscsi/nodes/iqn.2026-11.test.lunkeeper:smoke/127.0.0.1,3260";
        assert!(fs::metadata(dir.path().join(record))?.is_file());
        assert!(attr(record)?.starts_with(
            "# BEGIN RECORD 2.1.8\nnode.name = iqn.2026-11.test.lunkeeper:smoke\nnode.tpgt = -1\n"
        ));
        Ok(())
    }

    #[test]
    fn relative_paths_match_the_kernels() {
        assert_eq!(
            relative_path(
                Path::new("sys/class/iscsi_session"),
                Path::new("sys/devices/platform/host3/session1/iscsi_session/session1")
            ),
            Path::new("../../devices/platform/host3/session1/iscsi_session/session1")
        );
        assert_eq!(
            relative_path(
                Path::new(
                    "sys/devices/platform/host3/session1/target3:0:0/3:0:0:0/block/sda/holders"
                ),
                Path::new("sys/devices/virtual/block/dm-0")
            ),
            Path::new("../../../../../../../../virtual/block/dm-0")
        );
        assert_eq!(
            relative_path(Path::new("dev/mapper"), Path::new("dev/dm-0")),
            Path::new("../dm-0")
        );
        assert_eq!(
            relative_path(
                Path::new("sys/devices/platform/host6/session1/iscsi_session/session1"),
                Path::new("sys/devices/platform/host6/session1")
            ),
            Path::new("../../../session1")
        );
    }

    #[test]
    fn sd_names_roll_over_like_sd() {
        assert_eq!(sd_name(0), "sda");
        assert_eq!(sd_name(25), "sdz");
        assert_eq!(sd_name(26), "sdaa");
        assert_eq!(sd_name(701), "sdzz");
        assert_eq!(sd_name(702), "sdaaa");
    }
}
