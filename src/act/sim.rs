//! A simulated host: an in-memory storage network that answers actions the way the kernel,
//! iscsid and multipathd do, closely enough to test planning and the apply loop without them.
//! Modelled on stratisd's simulated engine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::iscsiadm::{Failure, IscsiadmError};
use super::sysfs::SysfsError;
use super::{ActError, Host, ObserveFailure, Outcome};
use crate::desired::Desired;
use crate::observe::{
    BlockDev, DevNum, Hctl, LunDevice, Map, NodeRecord, Observed, PartMap, Session, SessionState,
    Wwid,
};
use crate::plan::Action;

/// A target the simulated network offers.
#[derive(Debug, Clone)]
pub struct SimTarget {
    pub portals: Vec<SocketAddr>,
    /// LUN number → WWID.
    pub luns: BTreeMap<u64, Wwid>,
    /// The CHAP user the target wants, if any (secrets are not simulated: a wrong user fails).
    pub chap_user: Option<String>,
}

#[derive(Debug, Default)]
pub struct SimWorld {
    pub targets: BTreeMap<String, SimTarget>,
    pub observed: Observed,
    /// CHAP user configured on each node record.
    pub node_users: BTreeMap<(String, SocketAddr), Option<String>>,
    /// Every action executed, in order.
    pub log: Vec<Action>,
    /// Like multipathd with a map udev has not finished with: `add path` is accepted at once
    /// but lands only after this many more observations.
    pub add_path_lag: u32,
    /// Like multipathd under `find_multipaths strict` when the WWID is registered before udev
    /// has passed the paths' uevents on: the map forms without anyone asking.
    pub maps_from_uevents: bool,
    /// Failures to inject.
    pub faults: SimFaults,
    /// What preflight reports missing (multipathd only while a present volume wants it).
    pub missing: Vec<super::Missing>,
    /// How many times preflight was asked.
    pub preflights: u32,
    /// udev with lunkeeper's rule installed: None, no rule (observations carry no links);
    /// Some(n), each /dev/lunkeeper/<name> appears n observations after its mapping and its
    /// device are there, as udev's "change" event for the mapping lags behind the device's.
    pub udev_rule: Option<u32>,
    /// The links udev has made: volume name → kernel name of its device.
    pub links: BTreeMap<String, String>,
    /// Links on their way: (volume, device) → observations left.
    link_lag: BTreeMap<(String, String), u32>,
    /// The size the array reports for an LU now; SIM_SIZE_BYTES when not listed. Changing it
    /// is growing (or shrinking) the LUN on the array: the kernel sees it after a rescan.
    pub lun_sizes: BTreeMap<Wwid, u64>,
    /// The size the kernel holds for each disk, read when it was scanned or last rescanned.
    pub disk_sizes: BTreeMap<String, u64>,
    /// Disks whose rescan still reads the size they had (an array port that lags behind).
    pub stale_rescan: BTreeSet<String>,
    /// `resize map` is refused this many more times, as multipathd does while busy.
    pub resize_busy: u32,
    deferred_paths: Vec<(String, u32)>,
    next_session: u32,
    next_host: u32,
    next_disk: u32,
    next_dm: u32,
}

/// What can go wrong on a host, on demand.
#[derive(Debug, Default, Clone)]
pub struct SimFaults {
    /// Host names do not resolve: observations carry no resolved portal names.
    pub dns_down: bool,
    /// iscsid does not answer: every iscsiadm action fails with exit 20.
    pub iscsid_down: bool,
    /// CHAP secret files cannot be read.
    pub secret_unreadable: bool,
    /// The process dies after this many more actions: the last one is carried out, but its
    /// caller never hears back, and no later action runs.
    pub crash_after: Option<usize>,
    /// Set once the crash has happened.
    pub crashed: bool,
    /// WWIDs whose map must keep a live path: every action that leaves one without is noted
    /// in `violations`.
    pub watch_wwids: BTreeSet<Wwid>,
    /// Path devices that must stay in their map: every action that takes one out is noted.
    pub watch_disks: BTreeSet<String>,
    pub violations: Vec<String>,
}

#[derive(Debug, Default)]
pub struct SimHost {
    pub world: Mutex<SimWorld>,
}

fn disk_name(n: u32) -> String {
    let mut name = String::new();
    let mut n = n as usize;
    loop {
        name.insert(0, (b'a' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("sd{name}")
}

/// Every simulated LUN's size: 1 GiB.
pub const SIM_SIZE_BYTES: u64 = 1 << 30;

fn blockdev(name: String, devnum: DevNum) -> BlockDev {
    BlockDev {
        name,
        devnum,
        holders: Vec::new(),
        partitions: Vec::new(),
        node_present: true,
        udev_initialized: true,
    }
}

fn iscsi_failure(op: &'static str, code: i32) -> ActError {
    ActError::Iscsiadm(IscsiadmError::Failed {
        op,
        code,
        failure: Failure::from_code(code),
        stderr: String::new(),
    })
}

impl SimHost {
    pub fn new() -> Self {
        SimHost::default()
    }

    pub fn add_target(&self, iqn: &str, target: SimTarget) {
        self.lock().targets.insert(iqn.to_string(), target);
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, SimWorld> {
        // A panic while holding the lock happens only in a failing test; the world is still
        // worth inspecting.
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Observed {
        self.lock().observed.clone()
    }
}

impl SimWorld {
    /// One observation's worth of udev: the links the mappings ask for, `lag` observations
    /// after they first could be made; a link whose mapping or device went is removed.
    fn udev_links(&mut self, lag: u32) {
        let observed = &self.observed;
        let wanted: BTreeMap<String, String> = observed
            .names
            .iter()
            .filter_map(|(key, volume)| {
                let device = if let Some(w) = key.strip_prefix("mpath-") {
                    let m = observed.maps.iter().find(|m| m.wwid.as_str() == w)?;
                    m.dev.name.clone()
                } else {
                    let w = key.strip_prefix("sd-")?;
                    observed
                        .sessions
                        .iter()
                        .flat_map(|s| &s.devices)
                        .filter(|d| d.wwid.as_ref().is_some_and(|x| x.as_str() == w))
                        .find_map(|d| d.disk.as_ref())?
                        .name
                        .clone()
                };
                Some((volume.clone(), device))
            })
            .collect();
        self.links.retain(|v, d| wanted.get(v) == Some(d));
        self.link_lag.retain(|(v, d), _| wanted.get(v) == Some(d));
        for (volume, device) in wanted {
            if self.links.get(&volume) == Some(&device) {
                continue;
            }
            let key = (volume.clone(), device.clone());
            let left = self.link_lag.entry(key).or_insert(lag);
            if *left == 0 {
                self.links.insert(volume, device);
            } else {
                *left -= 1;
            }
        }
    }

    fn session_mut(&mut self, target: &str, portal: SocketAddr) -> Option<&mut Session> {
        self.observed
            .sessions
            .iter_mut()
            .find(|s| s.target == target && s.portal == Some(portal))
    }

    /// A node record made by hand (or by `iscsiadm -m discovery`), outside lunkeeper.
    pub fn node_record_by_hand(&mut self, target: &str, portal: SocketAddr) {
        self.node_users.insert((target.to_string(), portal), None);
        self.observed.node_records.push(NodeRecord {
            target: target.to_string(),
            portal,
            tpgt: 1,
            path: PathBuf::from(format!(
                "/etc/iscsi/nodes/{target}/{},{},1/default",
                portal.ip(),
                portal.port()
            )),
        });
    }

    /// Logs in by hand, as an operator or a boot script would, outside lunkeeper.
    pub fn login_by_hand(&mut self, target: &str, portal: SocketAddr, luns: &[u64]) -> u32 {
        self.next_session += 1;
        self.next_host += 1;
        let (id, host) = (self.next_session, self.next_host);
        self.observed.sessions.push(Session {
            id,
            target: target.to_string(),
            tpgt: Some(1),
            portal: Some(portal),
            state: SessionState::LoggedIn,
            host: Some(host),
            devices: Vec::new(),
        });
        for lun in luns {
            self.scan(host, *lun);
        }
        id
    }

    fn scan(&mut self, host: u32, lun: u64) {
        let Some(session) = self.observed.sessions.iter().find(|s| s.host == Some(host)) else {
            return;
        };
        if session.devices.iter().any(|d| d.hctl.lun == lun) {
            return;
        }
        let wwid = self
            .targets
            .get(&session.target)
            .and_then(|t| t.luns.get(&lun).cloned());
        let Some(wwid) = wwid else { return };
        let disk = disk_name(self.next_disk);
        let devnum = DevNum {
            major: 8,
            minor: self.next_disk * 16,
        };
        self.next_disk += 1;
        let registered = self.observed.registered_wwids.contains(&wwid);
        let size = self.lun_size(&wwid);
        self.disk_sizes.insert(disk.clone(), size);
        let Some(session) = self
            .observed
            .sessions
            .iter_mut()
            .find(|s| s.host == Some(host))
        else {
            return;
        };
        session.devices.push(LunDevice {
            hctl: Hctl {
                host,
                channel: 0,
                target: 0,
                lun,
            },
            state: "running".into(),
            wwid: Some(wwid.clone()),
            disk: Some(blockdev(disk.clone(), devnum)),
        });
        // multipathd adds a new path of a registered WWID to its map by itself, and with
        // `maps_from_uevents` it also builds a missing map from all the WWID's paths.
        if registered {
            if let Some(map) = self.observed.maps.iter_mut().find(|m| m.wwid == wwid) {
                map.slaves.push(disk);
            } else if self.maps_from_uevents {
                let slaves = self.disks_with(&wwid);
                self.create_map(&wwid, slaves);
            }
        }
    }

    fn lun_size(&self, wwid: &Wwid) -> u64 {
        self.lun_sizes.get(wwid).copied().unwrap_or(SIM_SIZE_BYTES)
    }

    fn create_map(&mut self, wwid: &Wwid, slaves: Vec<String>) {
        let size = slaves
            .first()
            .and_then(|d| self.disk_sizes.get(d).copied())
            .unwrap_or_else(|| self.lun_size(wwid));
        let n = self.next_dm;
        self.next_dm += 1;
        self.observed.maps.push(Map {
            name: wwid.to_string(),
            wwid: wwid.clone(),
            dev: blockdev(
                format!("dm-{n}"),
                DevNum {
                    major: 253,
                    minor: n,
                },
            ),
            slaves,
            suspended: false,
            size_bytes: Some(size),
            parts: Vec::new(),
        });
    }

    /// Writes a partition table with partition `number` on the WWID's map, as sfdisk would:
    /// multipath-tools' udev rule runs kpartx, which makes `<map>-part<N>` holding the map.
    /// Returns the partition map's device (for mounting it or stacking LVM on it).
    pub fn partition(&mut self, wwid: &Wwid, number: u32) -> Option<BlockDev> {
        let n = self.next_dm;
        let map = self.observed.maps.iter_mut().find(|m| &m.wwid == wwid)?;
        self.next_dm += 1;
        let dev = blockdev(
            format!("dm-{n}"),
            DevNum {
                major: 253,
                minor: n,
            },
        );
        map.dev.holders.push(dev.name.clone());
        map.parts.push(PartMap {
            number,
            name: format!("{}-part{number}", map.name),
            dev: dev.clone(),
        });
        Some(dev)
    }

    fn disks_with(&self, wwid: &Wwid) -> Vec<String> {
        self.observed
            .sessions
            .iter()
            .flat_map(|s| s.devices.iter())
            .filter(|d| d.wwid.as_ref() == Some(wwid))
            .filter_map(|d| d.disk.as_ref().map(|k| k.name.clone()))
            .collect()
    }

    fn set_holders(&mut self) {
        let holders: BTreeMap<String, String> = self
            .observed
            .maps
            .iter()
            .flat_map(|m| {
                m.slaves
                    .iter()
                    .map(move |s| (s.clone(), m.dev.name.clone()))
            })
            .collect();
        for s in self.observed.sessions.iter_mut() {
            for d in s.devices.iter_mut() {
                if let Some(disk) = d.disk.as_mut() {
                    disk.holders = holders.get(&disk.name).cloned().into_iter().collect();
                }
            }
        }
    }

    fn execute(&mut self, action: &Action) -> Result<Outcome, ActError> {
        self.log.push(action.clone());
        if let Some(e) = self.injected_failure(action) {
            return Err(e);
        }
        let r = self.apply(action);
        self.set_holders();
        self.check_watched(action);
        r
    }

    fn check_watched(&mut self, action: &Action) {
        for disk in &self.faults.watch_disks {
            if !self.observed.maps.iter().any(|m| m.slaves.contains(disk)) {
                self.faults
                    .violations
                    .push(format!("after {action}: {disk} is no longer in its map"));
            }
        }
        for wwid in &self.faults.watch_wwids {
            let Some(map) = self.observed.maps.iter().find(|m| &m.wwid == wwid) else {
                self.faults
                    .violations
                    .push(format!("after {action}: the map of {wwid} is gone"));
                continue;
            };
            let live = self.observed.sessions.iter().any(|s| {
                s.state == SessionState::LoggedIn
                    && s.devices.iter().any(|d| {
                        d.is_running()
                            && d.disk
                                .as_ref()
                                .is_some_and(|k| map.slaves.contains(&k.name))
                    })
            });
            if !live {
                self.faults
                    .violations
                    .push(format!("after {action}: {wwid} has no live path"));
            }
        }
    }

    fn injected_failure(&self, action: &Action) -> Option<ActError> {
        let op = match action {
            Action::EnsureNode { .. } => "new node",
            Action::Login { .. } => "login",
            Action::Logout { .. } => "logout",
            Action::DeleteNode { .. } => "delete node",
            _ => return None,
        };
        if self.faults.iscsid_down {
            return Some(iscsi_failure(op, 20));
        }
        if let Action::EnsureNode {
            settings: crate::plan::NodeSettings {
                chap: Some(chap), ..
            },
            ..
        } = action
        {
            if self.faults.secret_unreadable {
                return Some(ActError::Secret {
                    key: "password_file",
                    file: chap.password_file.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                });
            }
        }
        None
    }

    /// Counts an action towards an injected crash; true when the process is dead by now.
    fn crashes(&mut self) -> bool {
        if self.faults.crashed {
            return true;
        }
        if let Some(left) = &mut self.faults.crash_after {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.faults.crash_after = None;
                self.faults.crashed = true;
            }
        }
        false
    }

    fn apply(&mut self, action: &Action) -> Result<Outcome, ActError> {
        match action {
            Action::EnsureNode {
                session, settings, ..
            } => {
                let k = (session.target.clone(), session.portal);
                self.node_users
                    .insert(k, settings.chap.as_ref().map(|c| c.username.clone()));
                if self
                    .observed
                    .node_records
                    .iter()
                    .any(|n| n.target == session.target && n.portal == session.portal)
                {
                    return Ok(Outcome::AlreadySo);
                }
                self.observed.node_records.push(NodeRecord {
                    target: session.target.clone(),
                    portal: session.portal,
                    tpgt: -1,
                    path: PathBuf::from(format!(
                        "/etc/iscsi/nodes/{}/{},{},-1/default",
                        session.target,
                        session.portal.ip(),
                        session.portal.port()
                    )),
                });
                Ok(Outcome::Changed)
            }
            Action::Login { session, .. } => {
                if self.session_mut(&session.target, session.portal).is_some() {
                    return Ok(Outcome::AlreadySo);
                }
                let Some(user) = self
                    .node_users
                    .get(&(session.target.clone(), session.portal))
                    .cloned()
                else {
                    return Err(iscsi_failure("login", 21));
                };
                let Some(target) = self.targets.get(&session.target) else {
                    return Err(iscsi_failure("login", 19));
                };
                if !target.portals.contains(&session.portal) {
                    return Err(iscsi_failure("login", 8));
                }
                if target.chap_user != user {
                    return Err(iscsi_failure("login", 24));
                }
                self.login_by_hand(&session.target, session.portal, &[]);
                Ok(Outcome::Changed)
            }
            Action::Scan { host, lun, .. } => {
                self.scan(*host, u64::from(lun.0));
                Ok(Outcome::Changed)
            }
            Action::RegisterWwid { wwid } => {
                let added = self.observed.registered_wwids.insert(wwid.clone());
                // The paths' uevents are still on their way through udev: multipathd will see
                // them with the WWID registered.
                let slaves = self.disks_with(wwid);
                if self.maps_from_uevents
                    && !slaves.is_empty()
                    && !self.observed.maps.iter().any(|m| &m.wwid == wwid)
                {
                    self.create_map(wwid, slaves);
                }
                Ok(if added {
                    Outcome::Changed
                } else {
                    Outcome::AlreadySo
                })
            }
            Action::UnregisterWwid { wwid } => Ok(if self.observed.registered_wwids.remove(wwid) {
                Outcome::Changed
            } else {
                Outcome::AlreadySo
            }),
            Action::AddMap { wwid } => {
                if self.observed.maps.iter().any(|m| &m.wwid == wwid) {
                    return Ok(Outcome::AlreadySo);
                }
                let slaves = self.disks_with(wwid);
                if slaves.is_empty() {
                    return Err(ActError::MultipathdRefused {
                        command: format!("add map {wwid}"),
                        reply: String::new(),
                    });
                }
                self.create_map(wwid, slaves);
                Ok(Outcome::Changed)
            }
            Action::AddPath { disk } if self.add_path_lag > 0 => {
                self.deferred_paths.push((disk.clone(), self.add_path_lag));
                Ok(Outcome::Changed)
            }
            Action::AddPath { disk } => {
                let wwid = self
                    .observed
                    .sessions
                    .iter()
                    .flat_map(|s| s.devices.iter())
                    .find(|d| d.disk.as_ref().is_some_and(|k| &k.name == disk))
                    .and_then(|d| d.wwid.clone());
                match self
                    .observed
                    .maps
                    .iter_mut()
                    .find(|m| Some(&m.wwid) == wwid.as_ref())
                {
                    Some(m) if !m.slaves.contains(disk) => {
                        m.slaves.push(disk.clone());
                        Ok(Outcome::Changed)
                    }
                    _ => Ok(Outcome::AlreadySo),
                }
            }
            Action::DelPath { disk } => {
                for m in self.observed.maps.iter_mut() {
                    m.slaves.retain(|s| s != disk);
                }
                Ok(Outcome::Changed)
            }
            Action::DisableQueueing { .. } => Ok(Outcome::Changed),
            Action::RescanDevice { hctl } => {
                let targets = &self.targets;
                let mut rescanned = Vec::new();
                for s in self.observed.sessions.iter_mut() {
                    let now = targets.get(&s.target).and_then(|t| t.luns.get(&hctl.lun));
                    if let Some(d) = s.devices.iter_mut().find(|d| &d.hctl == hctl) {
                        d.wwid = now.cloned();
                        if let (Some(disk), Some(wwid)) = (&d.disk, now) {
                            rescanned.push((disk.name.clone(), wwid.clone()));
                        }
                    }
                }
                for (disk, wwid) in rescanned {
                    if !self.stale_rescan.contains(&disk) {
                        let size = self.lun_size(&wwid);
                        self.disk_sizes.insert(disk, size);
                    }
                }
                Ok(Outcome::Changed)
            }
            Action::ResizeMap { map, .. } => {
                let refused = || ActError::MultipathdRefused {
                    command: format!("resize map {map}"),
                    reply: String::new(),
                };
                let Some(m) = self.observed.maps.iter().find(|m| &m.name == map) else {
                    return Err(refused());
                };
                let sizes: BTreeSet<u64> = m
                    .slaves
                    .iter()
                    .filter_map(|d| self.disk_sizes.get(d).copied())
                    .collect();
                // multipathd refuses a map whose paths disagree on the size.
                let [size] = sizes.into_iter().collect::<Vec<_>>()[..] else {
                    return Err(refused());
                };
                if self.resize_busy > 0 {
                    self.resize_busy -= 1;
                    return Err(refused());
                }
                let Some(m) = self.observed.maps.iter_mut().find(|m| &m.name == map) else {
                    return Err(refused());
                };
                if m.size_bytes == Some(size) {
                    return Ok(Outcome::AlreadySo);
                }
                m.size_bytes = Some(size);
                Ok(Outcome::Changed)
            }
            Action::NameDevice { key, volume, .. } => {
                self.observed.names.insert(key.clone(), volume.clone());
                Ok(Outcome::Changed)
            }
            Action::UnnameDevice { key } => {
                self.observed.names.remove(key);
                Ok(Outcome::Changed)
            }
            Action::RemovePartitionMap { part, map } => {
                let mounted = &self.observed.mounted;
                let Some(m) = self.observed.maps.iter_mut().find(|m| &m.name == map) else {
                    return Ok(Outcome::AlreadySo);
                };
                let Some(i) = m.parts.iter().position(|p| &p.name == part) else {
                    return Ok(Outcome::AlreadySo);
                };
                let Some(p) = m.parts.get(i) else {
                    return Ok(Outcome::AlreadySo);
                };
                // The kernel refuses to remove an open dm device.
                if mounted.contains(&p.dev.devnum) || !p.dev.holders.is_empty() {
                    return Err(SysfsError::InUse {
                        device: part.clone(),
                        reason: "dmsetup: Device or resource busy".into(),
                    }
                    .into());
                }
                let gone = m.parts.remove(i);
                m.dev.holders.retain(|h| h != &gone.dev.name);
                Ok(Outcome::Changed)
            }
            Action::FlushMap { map } => {
                let mounted = &self.observed.mounted;
                if let Some(m) = self.observed.maps.iter().find(|m| &m.name == map) {
                    if mounted.contains(&m.dev.devnum) || !m.dev.holders.is_empty() {
                        return Err(SysfsError::InUse {
                            device: map.clone(),
                            reason: "multipathd: map or partition in use".into(),
                        }
                        .into());
                    }
                }
                let before = self.observed.maps.len();
                self.observed.maps.retain(|m| &m.name != map);
                Ok(if before == self.observed.maps.len() {
                    Outcome::AlreadySo
                } else {
                    Outcome::Changed
                })
            }
            Action::DeleteDevice { hctl, .. } => {
                let mut removed = None;
                for s in self.observed.sessions.iter_mut() {
                    if let Some(i) = s.devices.iter().position(|d| &d.hctl == hctl) {
                        removed = Some(s.devices.remove(i));
                    }
                }
                let Some(dev) = removed else {
                    return Ok(Outcome::AlreadySo);
                };
                if let Some(disk) = dev.disk {
                    if self.observed.mounted.contains(&disk.devnum) {
                        return Err(SysfsError::InUse {
                            device: disk.name,
                            reason: "mounted".into(),
                        }
                        .into());
                    }
                    for m in self.observed.maps.iter_mut() {
                        m.slaves.retain(|s| s != &disk.name);
                    }
                }
                Ok(Outcome::Changed)
            }
            Action::Logout { session } => {
                let before = self.observed.sessions.len();
                let gone: BTreeSet<String> = self
                    .observed
                    .sessions
                    .iter()
                    .filter(|s| s.target == session.target && s.portal == Some(session.portal))
                    .flat_map(|s| {
                        s.devices
                            .iter()
                            .filter_map(|d| d.disk.as_ref().map(|k| k.name.clone()))
                    })
                    .collect();
                self.observed
                    .sessions
                    .retain(|s| !(s.target == session.target && s.portal == Some(session.portal)));
                for m in self.observed.maps.iter_mut() {
                    m.slaves.retain(|s| !gone.contains(s));
                }
                if before == self.observed.sessions.len() {
                    return Ok(Outcome::AlreadySo);
                }
                Ok(Outcome::Changed)
            }
            Action::DeleteNode { session } => {
                if self.session_mut(&session.target, session.portal).is_some() {
                    return Err(iscsi_failure("delete node", 15));
                }
                let before = self.observed.node_records.len();
                self.observed
                    .node_records
                    .retain(|n| !(n.target == session.target && n.portal == session.portal));
                self.node_users
                    .remove(&(session.target.clone(), session.portal));
                Ok(if before == self.observed.node_records.len() {
                    Outcome::AlreadySo
                } else {
                    Outcome::Changed
                })
            }
            Action::OwnVolume { .. }
            | Action::DisownVolume { .. }
            | Action::AdoptSession { .. }
            | Action::ForgetSession { .. }
            | Action::ForgetWwid { .. } => Ok(Outcome::Changed),
        }
    }
}

impl Host for SimHost {
    async fn observe(&self, _desired: &Desired) -> Result<Observed, ObserveFailure> {
        let mut world = self.lock();
        let due: Vec<String> = world
            .deferred_paths
            .iter_mut()
            .filter_map(|(disk, left)| {
                *left = left.saturating_sub(1);
                (*left == 0).then(|| disk.clone())
            })
            .collect();
        world.deferred_paths.retain(|(_, left)| *left > 0);
        let lag = std::mem::replace(&mut world.add_path_lag, 0);
        for disk in due {
            let _ = world.apply(&Action::AddPath { disk });
        }
        world.add_path_lag = lag;
        world.set_holders();
        if let Some(lag) = world.udev_rule {
            world.udev_links(lag);
        }
        let mut observed = world.observed.clone();
        observed.links = world.udev_rule.map(|_| world.links.clone());
        let disks = observed
            .sessions
            .iter()
            .flat_map(|s| &s.devices)
            .filter_map(|d| d.disk.as_ref());
        observed.disk_sizes = disks
            .map(|d| {
                let size = world.disk_sizes.get(&d.name).copied();
                (d.name.clone(), size.unwrap_or(SIM_SIZE_BYTES))
            })
            .collect();
        if world.faults.dns_down {
            observed.resolved.clear();
        }
        Ok(observed)
    }

    async fn execute(&self, action: &Action) -> Result<Outcome, ActError> {
        let result = {
            let mut world = self.lock();
            if world.crashes() {
                None
            } else {
                let r = world.execute(action);
                (!world.faults.crashed).then_some(r)
            }
        };
        match result {
            Some(r) => r,
            // A dead process hears nothing back.
            None => std::future::pending().await,
        }
    }

    async fn preflight(&self, desired: &Desired) -> Result<(), Vec<super::Missing>> {
        let multipath = super::wants_multipath(desired);
        let mut world = self.lock();
        world.preflights += 1;
        let missing: Vec<_> = world
            .missing
            .iter()
            .filter(|m| multipath || **m != super::Missing::Multipathd)
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::disk_name;

    #[test]
    fn disk_names_follow_the_kernel() {
        assert_eq!(disk_name(0), "sda");
        assert_eq!(disk_name(25), "sdz");
        assert_eq!(disk_name(26), "sdaa");
        assert_eq!(disk_name(701), "sdzz");
        assert_eq!(disk_name(702), "sdaaa");
    }
}
