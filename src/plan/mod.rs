//! The planner: a pure function of (desired, observed, owned) that returns what to do next.
//!
//! It is level-triggered: it is never told why it runs, it only compares. Each call plans the
//! steps that can run now; `apply` runs them, observes again and plans again, so steps that
//! depend on the outcome of earlier ones (a scan needs the session's SCSI host, a map needs the
//! LUN's WWID) are planned once their inputs exist.

mod action;
mod attach;
mod detach;
pub mod mass_detach;
pub mod ownership;
pub mod resize;
mod verdict;

#[cfg(test)]
mod safety_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use serde::Serialize;

pub use action::{Action, ChapSettings, NodeSettings};
pub use verdict::Verdict;

use crate::desired::{Desired, Portal, PortalHost, Volume, VolumeState};
use crate::observe::{BlockDev, DevNum, Hctl, LunDevice, Map, Observed, Session, Wwid};
use crate::owned::{Owned, SessionKey};

/// What to do now, and how each volume stands before doing it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Lanes run concurrently; the actions of one lane run in order, and a failure ends its lane.
    pub lanes: Vec<Lane>,
    pub volumes: BTreeMap<String, Verdict>,
    /// Things lunkeeper noticed and deliberately leaves alone.
    pub notes: Vec<String>,
    /// How each usable multipath volume's map compares with the size its live paths report,
    /// for `lunkeeper resize` (the verdicts carry the same in words).
    #[serde(skip)]
    pub capacity: BTreeMap<String, resize::Capacity>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.actions.is_empty())
    }

    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.lanes.iter().flat_map(|l| l.actions.iter())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lane {
    pub subject: Subject,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Subject {
    Volume(String),
    Session(SessionKey),
}

pub fn plan(desired: &Desired, observed: &Observed, owned: &Owned) -> Plan {
    plan_with(desired, observed, owned, &Memory::default())
}

/// What the engine knows beyond one look at the host.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Volumes whose attach met an error retrying cannot fix (a CHAP secret the target
    /// refuses). One that has never been usable is rolled back: planned as absent, which takes
    /// down only what lunkeeper created for it. One that has been usable, or that lunkeeper
    /// found attached, is planned as usual: an error never detaches it (the engine retries its
    /// failing step with backoff and never lists it here).
    pub failed: BTreeSet<String>,
    /// Devices on sessions that came back after a failure: the LUN behind them may have been
    /// swapped on the array meanwhile, and the kernel keeps reporting the identity it read
    /// before, so it is made to read it again.
    pub recovered: BTreeSet<Hctl>,
    /// Paths whose capacity the array reported changed (a unit attention the kernel passes on
    /// as a uevent but does not act on), or that `lunkeeper resize` asked about: every live
    /// path of their volume is rescanned, and a grown LUN then shows as paths larger than
    /// the map (see [`resize`]).
    pub capacity_changed: BTreeSet<Hctl>,
}

/// Plans with what the engine remembers (see [`Memory`]).
pub fn plan_with(desired: &Desired, observed: &Observed, owned: &Owned, memory: &Memory) -> Plan {
    let mut rolled_back = Vec::new();
    for name in &memory.failed {
        let Some(v) = desired.volume(name) else {
            continue;
        };
        if v.state != VolumeState::Present {
            continue;
        }
        let was_usable = owned
            .volumes
            .get(name)
            .is_some_and(|r| r.attached || r.adopted);
        if !was_usable {
            rolled_back.push(name.as_str());
        }
    }
    let effective;
    let desired = if rolled_back.is_empty() {
        desired
    } else {
        let mut d = desired.clone();
        for v in d.volumes.iter_mut() {
            if rolled_back.contains(&v.name.as_str()) {
                v.state = VolumeState::Absent;
            }
        }
        effective = d;
        &effective
    };

    let mut by_key: HashMap<(&str, SocketAddr), Vec<&Session>> = HashMap::new();
    let mut by_target: HashMap<&str, Vec<&Session>> = HashMap::new();
    for s in &observed.sessions {
        if let Some(p) = s.portal {
            by_key.entry((s.target.as_str(), p)).or_default().push(s);
        }
        by_target.entry(s.target.as_str()).or_default().push(s);
    }
    let mut maps_by_wwid: HashMap<&Wwid, &Map> = HashMap::new();
    for m in &observed.maps {
        maps_by_wwid.entry(&m.wwid).or_insert(m);
    }
    let mut planner = Planner {
        observed,
        owned,
        plan: Plan::default(),
        named: BTreeSet::new(),
        by_key,
        by_target,
        maps_by_wwid,
        recovered: &memory.recovered,
        capacity_changed: &memory.capacity_changed,
        held: BTreeMap::new(),
        present_keys: BTreeSet::new(),
        unresolved_targets: BTreeSet::new(),
        unidentified_targets: observed
            .sessions
            .iter()
            .filter(|s| s.portal.is_none())
            .map(|s| s.target.clone())
            .collect(),
    };
    let mut wanted = attach::wanted_sessions(&mut planner, desired);
    attach::hold_identities(&mut planner, desired, &mut wanted);
    attach::plan_sessions(&mut planner, &wanted);
    for volume in desired
        .volumes
        .iter()
        .filter(|v| v.state == VolumeState::Present)
    {
        let name = volume.name.as_str();
        if wanted.blocked.contains_key(name) {
            continue;
        }
        attach::plan_volume(&mut planner, volume);
    }
    for (name, reason) in &wanted.blocked {
        planner.verdict(name, Verdict::Blocked(reason.clone()));
    }
    detach::plan_volumes(&mut planner, desired);
    detach::plan_sessions(&mut planner, &wanted);
    detach::plan_wwids(&mut planner);
    detach::plan_names(&mut planner);
    planner.plan.lanes.retain(|l| !l.actions.is_empty());
    planner.plan
}

/// Shared state of one planning pass.
struct Planner<'a> {
    observed: &'a Observed,
    owned: &'a Owned,
    plan: Plan,
    /// Name mapping keys present volumes hold.
    named: BTreeSet<String>,
    by_key: HashMap<(&'a str, SocketAddr), Vec<&'a Session>>,
    by_target: HashMap<&'a str, Vec<&'a Session>>,
    maps_by_wwid: HashMap<&'a Wwid, &'a Map>,
    /// Devices whose identity must be read again before it is trusted.
    recovered: &'a BTreeSet<Hctl>,
    /// Paths whose volume's paths must re-read their capacity.
    capacity_changed: &'a BTreeSet<Hctl>,
    /// WWIDs that present volumes hold (seen on their paths or recorded), and by whom: never
    /// flushed, unregistered or unnamed.
    held: BTreeMap<Wwid, Vec<String>>,
    /// Every session a present volume asks for, blocked or not: never logged out.
    present_keys: BTreeSet<SessionKey>,
    /// Targets of present volumes with a portal name that does not resolve now: which of the
    /// target's sessions that portal stood for is unknown, so none of them is taken down.
    unresolved_targets: BTreeSet<String>,
    /// Targets with a session whose portal sysfs does not show (iscsid restarting and not yet
    /// caught up with the kernel's sessions, or an address lunkeeper cannot read): which key
    /// that session stands for is unknown, so nothing of the target is taken down meanwhile:
    /// its node record deleted under a live session would leave a session nobody can log out.
    unidentified_targets: BTreeSet<String>,
}

impl<'a> Planner<'a> {
    fn lane(&mut self, subject: Subject, actions: Vec<Action>) {
        if !actions.is_empty() {
            self.plan.lanes.push(Lane { subject, actions });
        }
    }

    fn verdict(&mut self, volume: &str, verdict: Verdict) {
        self.plan.volumes.insert(volume.to_string(), verdict);
    }

    /// Sessions to this target through this portal (normally one).
    fn sessions(&self, key: &SessionKey) -> impl Iterator<Item = &'a Session> + 'a {
        self.by_key
            .get(&(key.target.as_str(), key.portal))
            .cloned()
            .unwrap_or_default()
            .into_iter()
    }

    fn sessions_of(&self, target: &str) -> Vec<&'a Session> {
        self.by_target.get(target).cloned().unwrap_or_default()
    }

    fn map_of(&self, wwid: &Wwid) -> Option<&'a Map> {
        self.maps_by_wwid.get(wwid).copied()
    }

    /// Whether lunkeeper logged in this session itself or adopted it.
    fn uses_session(&self, key: &SessionKey) -> bool {
        self.owned.sessions.contains(key) || self.owned.adopted_sessions.contains(key)
    }

    /// The present volumes that hold this WWID, if any.
    fn holders(&self, wwid: &Wwid) -> &[String] {
        self.held.get(wwid).map(Vec::as_slice).unwrap_or_default()
    }

    fn has_node_record(&self, key: &SessionKey) -> bool {
        self.observed
            .node_records
            .iter()
            .any(|n| n.target == key.target && n.portal == key.portal)
    }
}

/// The address a portal stands for now: literal addresses as written, names as resolved.
pub fn portal_addr(observed: &Observed, portal: &Portal) -> Option<SocketAddr> {
    match &portal.host {
        PortalHost::Ip(ip) => Some(SocketAddr::new(*ip, portal.port)),
        PortalHost::Name(_) => observed.resolved.get(&portal.to_string()).copied(),
    }
}

fn session_key(volume: &Volume, addr: SocketAddr) -> SessionKey {
    SessionKey::new(volume.target.as_str(), addr)
}

/// Why a block device cannot be taken away, if it cannot. `ignore_holder` is the map that is
/// expected to hold a path device. A mounted partition is named with where it is mounted.
fn in_use(dev: &BlockDev, observed: &Observed, ignore_holder: Option<&str>) -> Option<String> {
    if let Some(reason) = mounted_at(observed, &dev.name, dev.devnum) {
        return Some(reason);
    }
    for part in &dev.partitions {
        if let Some(reason) = mounted_at(observed, &format!("partition {}", part.name), part.devnum)
        {
            return Some(reason);
        }
    }
    if let Some(h) = dev
        .holders
        .iter()
        .find(|h| Some(h.as_str()) != ignore_holder)
    {
        return Some(format!("{} is held by {h}", dev.name));
    }
    for part in &dev.partitions {
        if let Some(h) = part.holders.first() {
            return Some(format!("partition {} is held by {h}", part.name));
        }
    }
    None
}

/// "`what` is mounted on /x" when `devnum` carries a mounted file system. The mount point is
/// only what mountinfo said; the set of mounted devices alone decides.
fn mounted_at(observed: &Observed, what: &str, devnum: DevNum) -> Option<String> {
    if !observed.mounted.contains(&devnum) {
        return None;
    }
    Some(match observed.mount_points.get(&devnum) {
        Some(point) => format!("{what} is mounted on {point}"),
        None => format!("{what} is mounted"),
    })
}

/// A path device can carry I/O: its session is logged in, the SCSI device runs, the disk exists.
fn path_is_live(session: &Session, dev: &LunDevice) -> bool {
    session.state == crate::observe::SessionState::LoggedIn
        && dev.is_running()
        && dev.disk.is_some()
}
