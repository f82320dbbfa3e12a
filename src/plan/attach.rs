//! Planning for volumes that should be present, and for the sessions they need.

use std::collections::{BTreeMap, BTreeSet};

use super::resize::{self, Capacity};
use super::{
    in_use, path_is_live, portal_addr, session_key, Action, ChapSettings, NodeSettings, Planner,
    Subject, Verdict,
};
use crate::desired::{Desired, Volume, VolumeState};
use crate::observe::{LunDevice, Map, Session, Wwid};
use crate::owned::{OwnedVolume, SessionKey};

/// The sessions present volumes need, with the node settings each must have.
pub(super) struct Wanted {
    pub sessions: BTreeMap<SessionKey, SessionWant>,
    /// Volumes refused before any per-volume planning, with the reason.
    pub blocked: BTreeMap<String, String>,
}

pub(super) struct SessionWant {
    pub settings: NodeSettings,
    pub login_timeout_secs: u32,
    pub volumes: Vec<String>,
}

impl Wanted {
    pub fn contains(&self, key: &SessionKey) -> bool {
        self.sessions.contains_key(key)
    }
}

fn node_settings(volume: &Volume) -> NodeSettings {
    NodeSettings {
        replacement_timeout: volume.replacement_timeout,
        chap: volume.chap.as_ref().map(|c| ChapSettings {
            username: c.username.clone(),
            password_file: c.password_file.clone(),
            username_in: c.username_in.clone(),
            password_in_file: c.password_in_file.clone(),
        }),
    }
}

/// Volumes that share a target and portal share one session, so they must agree on how it is
/// set up; a disagreement blocks all of them rather than letting file order pick a winner.
/// Every session a present volume asks for, blocked or not, is recorded as never to be logged
/// out, and so is every session of a target one of whose portal names does not resolve now.
pub(super) fn wanted_sessions(planner: &mut Planner<'_>, desired: &Desired) -> Wanted {
    let observed = planner.observed;
    let mut wanted = Wanted {
        sessions: BTreeMap::new(),
        blocked: BTreeMap::new(),
    };
    let mut conflicts: BTreeSet<SessionKey> = BTreeSet::new();
    for volume in desired
        .volumes
        .iter()
        .filter(|v| v.state == VolumeState::Present)
    {
        let settings = node_settings(volume);
        for portal in &volume.portals {
            let Some(addr) = portal_addr(observed, portal) else {
                planner
                    .unresolved_targets
                    .insert(volume.target.as_str().to_string());
                continue;
            };
            let key = session_key(volume, addr);
            planner.present_keys.insert(key.clone());
            let timeout = volume
                .login_timeout
                .as_secs()
                .try_into()
                .unwrap_or(u32::MAX);
            match wanted.sessions.get_mut(&key) {
                Some(want) => {
                    if want.settings != settings {
                        conflicts.insert(key.clone());
                    }
                    want.login_timeout_secs = want.login_timeout_secs.max(timeout);
                    want.volumes.push(volume.name.to_string());
                }
                None => {
                    wanted.sessions.insert(
                        key,
                        SessionWant {
                            settings: settings.clone(),
                            login_timeout_secs: timeout,
                            volumes: vec![volume.name.to_string()],
                        },
                    );
                }
            }
        }
    }
    for key in conflicts {
        if let Some(want) = wanted.sessions.remove(&key) {
            let names = want.volumes.join(", ");
            for name in &want.volumes {
                wanted.blocked.insert(
                    name.clone(),
                    format!("volumes {names} share the session {key} but disagree on CHAP or replacement_timeout"),
                );
            }
        }
    }
    drop_blocked(&mut wanted);
    wanted
}

/// A blocked volume must not get sessions logged in on its behalf (the ones it has stay).
fn drop_blocked(wanted: &mut Wanted) {
    let blocked: BTreeSet<String> = wanted.blocked.keys().cloned().collect();
    wanted.sessions.retain(|_, want| {
        want.volumes.retain(|v| !blocked.contains(v));
        !want.volumes.is_empty()
    });
}

/// The WWIDs present volumes hold: recorded for them, or shown by their LUN on any session of
/// their target. Such a WWID is never flushed, unregistered or unnamed. Two present volumes on
/// one WWID (one LU reached through two target names) would fight over its map and name: the
/// newcomer is blocked, naming the volume that has it; when neither had it, both are.
pub(super) fn hold_identities(planner: &mut Planner<'_>, desired: &Desired, wanted: &mut Wanted) {
    let mut holders: BTreeMap<Wwid, Vec<(String, bool)>> = BTreeMap::new();
    for volume in desired
        .volumes
        .iter()
        .filter(|v| v.state == VolumeState::Present)
    {
        let name = volume.name.to_string();
        let recorded = planner
            .owned
            .volumes
            .get(&name)
            .and_then(|o| o.wwid.clone());
        let mut wwids: BTreeSet<Wwid> = recorded.iter().cloned().collect();
        for session in planner.sessions_of(volume.target.as_str()) {
            wwids.extend(
                session
                    .devices
                    .iter()
                    .filter(|d| volume.lun.matches(d.hctl.lun))
                    .filter_map(|d| d.wwid.clone()),
            );
        }
        for wwid in wwids {
            let had = recorded.as_ref() == Some(&wwid);
            holders.entry(wwid).or_default().push((name.clone(), had));
        }
    }
    for (wwid, names) in holders {
        planner.named.insert(format!("mpath-{wwid}"));
        planner.named.insert(format!("sd-{wwid}"));
        if names.len() > 1 {
            let all: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
            let owners: Vec<&str> = names
                .iter()
                .filter(|(_, had)| *had)
                .map(|(n, _)| n.as_str())
                .collect();
            for (name, had) in &names {
                if owners.len() == 1 && *had {
                    continue;
                }
                wanted.blocked.entry(name.clone()).or_insert_with(|| {
                    format!(
                        "volumes {} reach the same LU (WWID {wwid}); only one volume may hold it: \
                         remove the others from the file",
                        all.join(" and ")
                    )
                });
            }
        }
        planner
            .held
            .insert(wwid, names.into_iter().map(|(n, _)| n).collect());
    }
    drop_blocked(wanted);
}

pub(super) fn plan_sessions(planner: &mut Planner<'_>, wanted: &Wanted) {
    for (key, want) in &wanted.sessions {
        let exists = planner.sessions(key).next().is_some();
        let actions = if !exists {
            let login = Action::Login {
                session: key.clone(),
                timeout_secs: want.login_timeout_secs,
            };
            if planner.has_node_record(key) && !planner.owned.nodes.contains(key) {
                planner.plan.notes.push(format!(
                    "the node record for {key} existed before lunkeeper: logging in with it as \
                     found (its settings are not changed, and it is not deleted later)"
                ));
                vec![login]
            } else {
                vec![
                    Action::EnsureNode {
                        session: key.clone(),
                        settings: want.settings.clone(),
                        login_timeout_secs: want.login_timeout_secs,
                    },
                    login,
                ]
            }
        } else if !planner.owned.sessions.contains(key)
            && !planner.owned.adopted_sessions.contains(key)
        {
            vec![Action::AdoptSession {
                session: key.clone(),
            }]
        } else {
            Vec::new()
        };
        planner.lane(Subject::Session(key.clone()), actions);
    }
}

/// One path of a volume as the kernel shows it.
struct Path<'a> {
    session: &'a Session,
    device: &'a LunDevice,
}

pub(super) fn plan_volume(planner: &mut Planner<'_>, volume: &Volume) {
    let observed = planner.observed;
    let name = volume.name.to_string();
    let mut actions = Vec::new();
    let mut waiting: Vec<String> = Vec::new();
    let mut keys = Vec::new();
    let mut unresolved = false;
    for portal in &volume.portals {
        match portal_addr(observed, portal) {
            Some(addr) => keys.push(session_key(volume, addr)),
            None => {
                unresolved = true;
                waiting.push(format!("portal {portal} does not resolve"));
            }
        }
    }

    let mut paths: Vec<Path<'_>> = Vec::new();
    for key in &keys {
        let mut sessions = planner.sessions(key).peekable();
        if sessions.peek().is_none() {
            waiting.push(format!("no session to {}", key.portal));
        }
        for session in sessions {
            let found: Vec<&LunDevice> = session
                .devices
                .iter()
                .filter(|d| volume.lun.matches(d.hctl.lun))
                .collect();
            match (found.is_empty(), session.host, session.state) {
                (true, Some(host), crate::observe::SessionState::LoggedIn) => {
                    actions.push(Action::Scan {
                        session: key.clone(),
                        host,
                        lun: volume.lun,
                    })
                }
                (true, _, _) => waiting.push(format!(
                    "session {} to {} is {:?}",
                    session.id, key.portal, session.state
                )),
                (false, _, _) => {
                    paths.extend(found.into_iter().map(|device| Path { session, device }))
                }
            }
        }
    }
    if unresolved {
        // The sessions lunkeeper has to this target through addresses it cannot place now are
        // most likely the unresolved portal's: they stay paths of the volume.
        paths.extend(other_paths(planner, volume, &keys));
    }

    // After a session came back, the identity the kernel shows may be stale: read it again
    // before anything else is decided on it.
    let rescans: Vec<Action> = paths
        .iter()
        .filter(|p| planner.recovered.contains(&p.device.hctl))
        .map(|p| Action::RescanDevice {
            hctl: p.device.hctl,
        })
        .collect();
    if !rescans.is_empty() {
        planner.verdict(
            &name,
            Verdict::Pending("re-reading the identity of paths that came back".to_string()),
        );
        planner.lane(Subject::Volume(name), rescans);
        return;
    }

    // The array said the LUN's capacity changed (on one path; the others hear of it only on
    // their next command): every live path re-reads it, and the next look compares sizes.
    if paths
        .iter()
        .any(|p| planner.capacity_changed.contains(&p.device.hctl))
    {
        actions.extend(
            paths
                .iter()
                .filter(|p| path_is_live(p.session, p.device))
                .map(|p| Action::RescanDevice {
                    hctl: p.device.hctl,
                }),
        );
    }

    let recorded = planner.owned.volumes.get(&name);
    let identity = match identity(volume, &paths, recorded) {
        Ok(w) => w,
        Err(reason) => {
            planner.verdict(&name, Verdict::Blocked(reason));
            return;
        }
    };
    let strangers = strangers(volume, &paths, recorded);
    if !strangers.is_empty() {
        refuse_strangers(planner, volume, &strangers);
        return;
    }

    let stale = if unresolved {
        Ok(Vec::new())
    } else {
        stale_paths(planner, volume, &keys)
    };
    let map = identity.as_ref().and_then(|w| planner.map_of(w));
    let verdict = if volume.multipath {
        plan_multipath(
            planner,
            volume,
            &paths,
            identity.as_ref(),
            map,
            &mut actions,
            &mut waiting,
        )
    } else {
        single_path_verdict(&paths, &mut waiting)
    };
    let verdict = match stale {
        Ok(stale) => {
            let stays_reachable = match (volume.multipath, map) {
                (true, Some(map)) => live_in_map(&paths, map),
                (true, None) => false,
                (false, _) => matches!(verdict, Verdict::Ready),
            };
            if stale.is_empty() || stays_reachable {
                actions.extend(stale);
            } else {
                planner.plan.notes.push(format!(
                    "{name}: keeping its paths through portals no longer listed until a path \
                     through a listed portal is live"
                ));
            }
            verdict
        }
        Err(reason) => Verdict::Blocked(reason),
    };

    let record = claim(planner, volume, identity.as_ref(), &paths, &verdict);
    if recorded != Some(&record) {
        actions.insert(
            0,
            Action::OwnVolume {
                volume: name.clone(),
                target: record.target.clone(),
                lun: record.lun,
                wwid: record.wwid.clone(),
                adopted: record.adopted,
                attached: record.attached,
            },
        );
    }
    if let Some(wwid) = &identity {
        name_device(planner, volume, wwid, map, &paths, &verdict, &mut actions);
    }
    planner.verdict(&name, verdict);
    planner.lane(Subject::Volume(name), actions);
}

/// What lunkeeper records of a present volume: its identity once known, whether its LUN was
/// attached already when lunkeeper took it on (then it is left as found if it leaves the file),
/// and whether it has been usable (then an error never rolls it back).
fn claim(
    planner: &Planner<'_>,
    volume: &Volume,
    identity: Option<&Wwid>,
    paths: &[Path<'_>],
    verdict: &Verdict,
) -> OwnedVolume {
    let name = volume.name.as_str();
    let usable = matches!(verdict, Verdict::Ready | Verdict::Degraded(_));
    let recorded = planner.owned.volumes.get(name).or_else(|| {
        // A volume renamed in the file inherits what lunkeeper knew under the old name.
        planner
            .owned
            .volumes
            .values()
            .find(|o| o.target == volume.target.as_str() && o.lun == volume.lun)
    });
    let (adopted, attached, known) = match recorded {
        Some(r) => (r.adopted, r.attached || usable, r.wwid.clone()),
        None => (!paths.is_empty(), usable, None),
    };
    OwnedVolume {
        target: volume.target.as_str().to_string(),
        lun: volume.lun,
        wwid: identity.cloned().or(known),
        adopted,
        attached,
        unknown: planner
            .owned
            .volumes
            .get(name)
            .map(|o| o.unknown.clone())
            .unwrap_or_default(),
    }
}

/// Paths of the volume's LUN on sessions lunkeeper uses to its target through addresses that
/// none of the resolved portals stands for.
fn other_paths<'a>(planner: &Planner<'a>, volume: &Volume, keys: &[SessionKey]) -> Vec<Path<'a>> {
    let mut paths = Vec::new();
    for session in planner.sessions_of(volume.target.as_str()) {
        let Some(portal) = session.portal else {
            continue;
        };
        let key = session_key(volume, portal);
        if keys.contains(&key) || !planner.uses_session(&key) {
            continue;
        }
        paths.extend(
            session
                .devices
                .iter()
                .filter(|d| volume.lun.matches(d.hctl.lun))
                .map(|device| Path { session, device }),
        );
    }
    paths
}

/// Whether at least one live path of the volume is a slave of its map.
fn live_in_map(paths: &[Path<'_>], map: &Map) -> bool {
    paths.iter().any(|p| {
        path_is_live(p.session, p.device)
            && p.device
                .disk
                .as_ref()
                .is_some_and(|d| map.slaves.contains(&d.name))
    })
}

/// Keeps the udev name mapping of a usable volume pointing at it. The mapping stays while the
/// volume is degraded or pending, so the link comes back by itself with the device.
fn name_device(
    planner: &mut Planner<'_>,
    volume: &Volume,
    wwid: &Wwid,
    map: Option<&Map>,
    paths: &[Path<'_>],
    verdict: &Verdict,
    actions: &mut Vec<Action>,
) {
    let (key, device) = if volume.multipath {
        (format!("mpath-{wwid}"), map.map(|m| m.dev.name.clone()))
    } else {
        let disk = paths
            .iter()
            .find(|p| path_is_live(p.session, p.device))
            .and_then(|p| p.device.disk.as_ref().map(|d| d.name.clone()));
        (format!("sd-{wwid}"), disk)
    };
    let name = volume.name.as_str();
    // A map is named from the moment its WWID is known: the name is there when the map's
    // first uevent is, so udev needs no extra event for it.
    let nameable = if volume.multipath {
        !matches!(verdict, Verdict::Blocked(_))
    } else {
        matches!(verdict, Verdict::Ready | Verdict::Degraded(_)) && device.is_some()
    };
    if nameable && planner.observed.names.get(&key).map(String::as_str) != Some(name) {
        actions.push(Action::NameDevice {
            key: key.clone(),
            volume: name.to_string(),
            device,
        });
    }
    planner.named.insert(key);
}

/// The identity the volume must have: the one recorded when it was attached, else the one the
/// file expects. Paths that show another are not paths of this volume (see [`strangers`]).
fn known_identity<'v>(volume: &'v Volume, owned: Option<&'v OwnedVolume>) -> Option<&'v Wwid> {
    owned
        .and_then(|o| o.wwid.as_ref())
        .or(volume.expect_wwid.as_ref())
}

/// The volume's WWID, once a path shows it. With no identity known yet, paths that disagree
/// are refused: which one is the volume cannot be told.
fn identity(
    volume: &Volume,
    paths: &[Path<'_>],
    owned: Option<&OwnedVolume>,
) -> Result<Option<Wwid>, String> {
    if let Some(known) = known_identity(volume, owned) {
        let seen = paths.iter().any(|p| p.device.wwid.as_ref() == Some(known));
        return Ok(seen.then(|| known.clone()));
    }
    let seen: BTreeSet<&Wwid> = paths
        .iter()
        .filter_map(|p| p.device.wwid.as_ref())
        .collect();
    let mut seen = seen.into_iter();
    let Some(wwid) = seen.next() else {
        return Ok(None);
    };
    if let Some(other) = seen.next() {
        return Err(format!(
            "paths to {} LUN {} disagree on its identity ({wwid} and {other}); refusing to combine them",
            volume.target, volume.lun
        ));
    }
    Ok(Some(wwid.clone()))
}

/// Paths of the volume's LUN that show another identity than the volume's: the LUN number was
/// reused, or the LUN behind a session was swapped on the array.
fn strangers<'p, 'a>(
    volume: &Volume,
    paths: &'p [Path<'a>],
    owned: Option<&OwnedVolume>,
) -> Vec<&'p Path<'a>> {
    let Some(known) = known_identity(volume, owned) else {
        return Vec::new();
    };
    paths
        .iter()
        .filter(|p| p.device.wwid.as_ref().is_some_and(|w| w != known))
        .collect()
}

/// Blocks a volume some of whose paths lead to another LU, and takes those paths out of any
/// map: I/O through them would read and write someone else's data. They are never added back
/// (only paths showing the volume's identity are), nor deleted: what the LU is now is for an
/// operator to decide.
fn refuse_strangers(planner: &mut Planner<'_>, volume: &Volume, strangers: &[&Path<'_>]) {
    let name = volume.name.to_string();
    let recorded = planner
        .owned
        .volumes
        .get(&name)
        .and_then(|o| o.wwid.as_ref());
    let mut actions = Vec::new();
    let mut found = Vec::new();
    for p in strangers {
        let shows = p
            .device
            .wwid
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let portal = p.session.portal.map(|a| a.to_string()).unwrap_or_default();
        found.push(format!("{} via {portal} shows WWID {shows}", p.device.hctl));
        let Some(disk) = &p.device.disk else {
            continue;
        };
        if planner
            .observed
            .maps
            .iter()
            .any(|m| m.slaves.contains(&disk.name))
        {
            actions.push(Action::DelPath {
                disk: disk.name.clone(),
            });
        }
    }
    let reason = match (recorded, &volume.expect_wwid) {
        (Some(known), _) => format!(
            "{} LUN {}: {}, but {name} was attached as {known}: the LUN was reused or swapped on \
             the array; those paths are kept out of its map. Restore the array's mapping, or \
             detach the volume (state = \"absent\") and attach it again if this is intended",
            volume.target,
            volume.lun,
            found.join("; ")
        ),
        (None, Some(expect)) => format!(
            "{} LUN {}: {}, expected {expect}; refusing to use it",
            volume.target,
            volume.lun,
            found.join("; ")
        ),
        (None, None) => found.join("; "),
    };
    planner.verdict(&name, Verdict::Blocked(reason));
    planner.lane(Subject::Volume(name), actions);
}

fn plan_multipath(
    planner: &mut Planner<'_>,
    volume: &Volume,
    paths: &[Path<'_>],
    wwid: Option<&Wwid>,
    map: Option<&Map>,
    actions: &mut Vec<Action>,
    waiting: &mut Vec<String>,
) -> Verdict {
    let Some(wwid) = wwid else {
        if paths.is_empty() {
            waiting.push(format!("LUN {} not visible yet", volume.lun));
        } else {
            waiting.push(format!(
                "LUN {} shows no WWID yet (does the target export a unit serial?)",
                volume.lun
            ));
        }
        return Verdict::Pending(waiting.join("; "));
    };
    if !planner.observed.registered_wwids.contains(wwid) {
        actions.push(Action::RegisterWwid { wwid: wwid.clone() });
    }
    let Some(map) = map else {
        // multipathd hears of a path only from udev: asking for the map earlier fails.
        let known = paths
            .iter()
            .any(|p| p.device.disk.as_ref().is_some_and(|d| d.udev_initialized));
        if known {
            actions.push(Action::AddMap { wwid: wwid.clone() });
            waiting.push(format!("multipath map {wwid} not formed yet"));
        } else {
            waiting.push(format!("udev has not processed the paths of {wwid} yet"));
        }
        return Verdict::Pending(waiting.join("; "));
    };
    for path in paths {
        let Some(disk) = &path.device.disk else {
            continue;
        };
        let free = in_use(disk, planner.observed, None).is_none();
        let wanted = path_is_live(path.session, path.device) && !map.slaves.contains(&disk.name);
        // Until udev has processed both the path and the map, multipathd defers (and later
        // makes by itself) the addition: asking then only repeats what it will do anyway.
        if wanted && free && disk.udev_initialized && map.dev.udev_initialized {
            actions.push(Action::AddPath {
                disk: disk.name.clone(),
            });
        }
    }
    if !map.dev.node_present {
        waiting.push(format!("/dev/mapper/{} not created yet", map.name));
        return Verdict::Pending(waiting.join("; "));
    }
    let live: Vec<&Path<'_>> = paths
        .iter()
        .filter(|p| path_is_live(p.session, p.device))
        .filter(|p| {
            p.device
                .disk
                .as_ref()
                .is_some_and(|d| map.slaves.contains(&d.name))
        })
        .collect();
    for p in paths.iter().filter(|p| !path_is_live(p.session, p.device)) {
        waiting.push(format!(
            "path {} via {} is down (session {:?}, device {})",
            p.device.hctl,
            p.session.portal.map(|a| a.to_string()).unwrap_or_default(),
            p.session.state,
            p.device.state
        ));
    }
    if map.suspended {
        waiting.push(format!("map {} is suspended", map.name));
    }
    // Every live path counts, in the map or about to be added: multipathd refuses a path
    // whose size differs from its map's.
    let live_disks = paths
        .iter()
        .filter(|p| path_is_live(p.session, p.device))
        .filter_map(|p| p.device.disk.as_ref().map(|d| d.name.as_str()));
    let capacity = resize::capacity(planner.observed, map, live_disks);
    if let Capacity::Grown { from, to } = capacity {
        if !map.suspended {
            actions.push(Action::ResizeMap {
                map: map.name.clone(),
                from_bytes: from,
                to_bytes: to,
            });
        }
    }
    let size_problem = resize::problem(volume.name.as_str(), map, &capacity);
    planner
        .plan
        .capacity
        .insert(volume.name.to_string(), capacity);
    let verdict = if live.len() >= volume.portals.len() && waiting.is_empty() {
        Verdict::Ready
    } else if live.is_empty() {
        Verdict::Degraded(format!("no live path: {}", waiting.join("; ")))
    } else {
        Verdict::Degraded(format!(
            "{} of {} paths live: {}",
            live.len(),
            volume.portals.len(),
            waiting.join("; ")
        ))
    };
    match (verdict, size_problem) {
        (Verdict::Ready, Some(why)) => Verdict::Degraded(why),
        (Verdict::Degraded(reason), Some(why)) => Verdict::Degraded(format!("{reason}; {why}")),
        (verdict, _) => verdict,
    }
}

fn single_path_verdict(paths: &[Path<'_>], waiting: &mut Vec<String>) -> Verdict {
    match paths.first() {
        Some(p)
            if path_is_live(p.session, p.device)
                && p.device.disk.as_ref().is_some_and(|d| d.node_present) =>
        {
            Verdict::Ready
        }
        Some(p) => {
            waiting.push(format!(
                "device {} is {} and not usable yet",
                p.device.hctl, p.device.state
            ));
            Verdict::Pending(waiting.join("; "))
        }
        None => Verdict::Pending(waiting.join("; ")),
    }
}

/// Paths of this volume's LUN on lunkeeper's sessions through portals the volume no longer
/// lists: take them out of the map, then delete them.
fn stale_paths(
    planner: &Planner<'_>,
    volume: &Volume,
    keys: &[SessionKey],
) -> Result<Vec<Action>, String> {
    let observed = planner.observed;
    let mut actions = Vec::new();
    for session in planner.sessions_of(volume.target.as_str()) {
        let Some(portal) = session.portal else {
            continue;
        };
        let key = session_key(volume, portal);
        if keys.contains(&key) || !planner.owned.sessions.contains(&key) {
            continue;
        }
        for device in session
            .devices
            .iter()
            .filter(|d| volume.lun.matches(d.hctl.lun))
        {
            if let Some(disk) = &device.disk {
                let map = observed.maps.iter().find(|m| m.slaves.contains(&disk.name));
                if let Some(reason) = in_use(disk, observed, map.map(|m| m.dev.name.as_str())) {
                    return Err(format!("cannot remove the path through {portal}: {reason}"));
                }
                if map.is_some() {
                    actions.push(Action::DelPath {
                        disk: disk.name.clone(),
                    });
                }
            }
            actions.push(Action::DeleteDevice {
                hctl: device.hctl,
                disk: device.disk.as_ref().map(|d| d.name.clone()),
            });
        }
    }
    Ok(actions)
}
