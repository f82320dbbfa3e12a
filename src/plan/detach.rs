//! Planning for volumes that should be gone, and for sessions and WWIDs nothing needs any more.
//! Only what lunkeeper owns is ever taken down.

use std::collections::BTreeSet;

use super::attach::Wanted;
use super::{in_use, mounted_at, path_is_live, Action, Planner, Subject, Verdict};
use crate::desired::{Desired, Lun, VolumeState};
use crate::observe::{LunDevice, Wwid};
use crate::owned::{OwnedVolume, SessionKey};

/// A volume to take down: listed as absent, or owned but no longer listed at all.
struct Leaving {
    name: String,
    target: String,
    lun: Lun,
}

pub(super) fn plan_volumes(planner: &mut Planner<'_>, desired: &Desired) {
    let present: BTreeSet<(&str, Lun)> = desired
        .volumes
        .iter()
        .filter(|v| v.state == VolumeState::Present)
        .map(|v| (v.target.as_str(), v.lun))
        .collect();
    let mut leaving: Vec<Leaving> = desired
        .volumes
        .iter()
        .filter(|v| v.state == VolumeState::Absent)
        .map(|v| Leaving {
            name: v.name.to_string(),
            target: v.target.as_str().to_string(),
            lun: v.lun,
        })
        .collect();
    let listed: BTreeSet<&str> = desired.volumes.iter().map(|v| v.name.as_str()).collect();
    for (name, record) in &planner.owned.volumes {
        if listed.contains(name.as_str()) {
            continue;
        }
        if present.contains(&(record.target.as_str(), record.lun)) || record.adopted {
            // Renamed in the file: the new name takes it over, nothing is detached. Or it was
            // attached before lunkeeper took it on: it is left as found (only an explicit
            // `state = "absent"` takes such a volume down).
            if record.adopted {
                planner.plan.notes.push(format!(
                    "{name} left the file; it was attached before lunkeeper took it on, so it is \
                     left attached as found"
                ));
            }
            planner.lane(
                Subject::Volume(name.clone()),
                vec![Action::DisownVolume {
                    volume: name.clone(),
                }],
            );
            continue;
        }
        leaving.push(Leaving {
            name: name.clone(),
            target: record.target.clone(),
            lun: record.lun,
        });
    }
    for volume in &leaving {
        plan_volume(planner, volume);
    }
}

fn plan_volume(planner: &mut Planner<'_>, volume: &Leaving) {
    let observed = planner.observed;
    let Some(record) = planner.owned.volumes.get(&volume.name) else {
        let visible = observed
            .sessions
            .iter()
            .filter(|s| s.target == volume.target)
            .any(|s| s.devices.iter().any(|d| volume.lun.matches(d.hctl.lun)));
        let verdict = if visible {
            Verdict::Blocked(format!(
                "{} LUN {} is attached, but not by lunkeeper; it is left alone",
                volume.target, volume.lun
            ))
        } else {
            Verdict::Absent
        };
        planner.verdict(&volume.name, verdict);
        return;
    };

    if planner.unidentified_targets.contains(&record.target) {
        if let Some(w) = &record.wwid {
            planner.named.insert(format!("mpath-{w}"));
            planner.named.insert(format!("sd-{w}"));
        }
        planner.verdict(
            &volume.name,
            Verdict::Pending(format!(
                "a session of {} shows no portal yet (iscsid catching up?); taking nothing \
                 down until it does",
                record.target
            )),
        );
        return;
    }
    let paths: Vec<&LunDevice> = observed
        .sessions
        .iter()
        .filter(|s| s.target == record.target)
        .filter(|s| {
            s.portal
                .is_some_and(|p| planner.uses_session(&SessionKey::new(&record.target, p)))
        })
        .flat_map(|s| s.devices.iter().filter(|d| record.lun.matches(d.hctl.lun)))
        .collect();
    let wwid = record
        .wwid
        .clone()
        .or_else(|| paths.iter().find_map(|d| d.wwid.clone()));
    let map = wwid
        .as_ref()
        .and_then(|w| observed.maps.iter().find(|m| &m.wwid == w));
    if let (Some(w), true) = (&wwid, map.is_some() || !paths.is_empty()) {
        // While the device is still there (in use, or going), so is its name.
        planner.named.insert(format!("mpath-{w}"));
        planner.named.insert(format!("sd-{w}"));
    }

    if let Some(w) = &wwid {
        let holders = planner.holders(w);
        if !holders.is_empty() {
            let holders = holders.join(", ");
            leave_shared(planner, volume, &paths, map, &holders);
            return;
        }
    }

    if let Some(reason) = busy(planner, &volume.name, &paths, map) {
        planner.verdict(
            &volume.name,
            Verdict::Blocked(format!("in use, not detaching: {reason}")),
        );
        return;
    }

    let mut actions = Vec::new();
    if let Some(map) = map {
        // Partitions first, highest number first: a logical partition before the extended
        // one it lies in. None of them is mounted or held (`busy` said so); one opened in the
        // meantime makes the kernel refuse its removal, and the lane ends there.
        for part in map.parts.iter().rev() {
            actions.push(Action::RemovePartitionMap {
                part: part.name.clone(),
                map: map.name.clone(),
            });
        }
        let any_live = observed.sessions.iter().any(|s| {
            s.devices.iter().any(|d| {
                path_is_live(s, d)
                    && d.disk
                        .as_ref()
                        .is_some_and(|k| map.slaves.contains(&k.name))
            })
        });
        if !any_live {
            actions.push(Action::DisableQueueing {
                map: map.name.clone(),
            });
        }
        actions.push(Action::FlushMap {
            map: map.name.clone(),
        });
    }
    for device in &paths {
        actions.push(Action::DeleteDevice {
            hctl: device.hctl,
            disk: device.disk.as_ref().map(|d| d.name.clone()),
        });
    }
    let registered = wwid
        .as_ref()
        .filter(|w| planner.owned.wwids.contains(*w) && observed.registered_wwids.contains(*w));
    if let Some(w) = registered {
        actions.push(Action::UnregisterWwid { wwid: w.clone() });
    }
    let verdict = if actions.is_empty() {
        actions.push(Action::DisownVolume {
            volume: volume.name.clone(),
        });
        Verdict::Absent
    } else if paths.is_empty() && map.is_none() {
        Verdict::Absent
    } else {
        Verdict::Pending("detaching".to_string())
    };
    planner.verdict(&volume.name, verdict);
    planner.lane(Subject::Volume(volume.name.clone()), actions);
}

/// A leaving volume whose LU a present volume still holds (one LU reached through two target
/// names): the map, its WWID registration and its name stay. Only this volume's own paths go,
/// each once the map keeps a live path that is not one of them.
fn leave_shared(
    planner: &mut Planner<'_>,
    volume: &Leaving,
    paths: &[&LunDevice],
    map: Option<&crate::observe::Map>,
    holders: &str,
) {
    let observed = planner.observed;
    let ours: BTreeSet<&str> = paths
        .iter()
        .filter_map(|d| d.disk.as_ref().map(|k| k.name.as_str()))
        .collect();
    let other_live = map.is_some_and(|map| {
        observed.sessions.iter().any(|s| {
            s.devices.iter().any(|d| {
                path_is_live(s, d)
                    && d.disk.as_ref().is_some_and(|k| {
                        map.slaves.contains(&k.name) && !ours.contains(k.name.as_str())
                    })
            })
        })
    });
    let mut actions = Vec::new();
    let mut kept = Vec::new();
    for device in paths {
        let in_map = device
            .disk
            .as_ref()
            .zip(map)
            .filter(|(k, m)| m.slaves.contains(&k.name));
        if let Some(reason) = device
            .disk
            .as_ref()
            .and_then(|k| in_use(k, observed, map.map(|m| m.dev.name.as_str())))
        {
            kept.push(reason);
            continue;
        }
        match in_map {
            Some(_) if !other_live => {
                kept.push(format!("{} is the map's only live path", device.hctl));
                continue;
            }
            Some((disk, _)) => actions.push(Action::DelPath {
                disk: disk.name.clone(),
            }),
            None => {}
        }
        actions.push(Action::DeleteDevice {
            hctl: device.hctl,
            disk: device.disk.as_ref().map(|d| d.name.clone()),
        });
    }
    let verdict = if paths.is_empty() {
        actions.push(Action::DisownVolume {
            volume: volume.name.clone(),
        });
        Verdict::Absent
    } else if !kept.is_empty() {
        Verdict::Blocked(format!(
            "its LU is also volume {holders}'s, which keeps the map; not removing: {}",
            kept.join("; ")
        ))
    } else {
        Verdict::Pending(format!(
            "detaching its own paths; the map stays for volume {holders}"
        ))
    };
    planner.verdict(&volume.name, verdict);
    planner.lane(Subject::Volume(volume.name.clone()), actions);
}

/// Why the volume's map, one of its partitions or any of its path devices cannot be taken
/// away now.
fn busy(
    planner: &Planner<'_>,
    volume: &str,
    paths: &[&LunDevice],
    map: Option<&crate::observe::Map>,
) -> Option<String> {
    let observed = planner.observed;
    if let Some(map) = map {
        if let Some(reason) = map_in_use(observed, volume, map) {
            return Some(reason);
        }
    }
    let map_name = map.map(|m| m.dev.name.as_str());
    paths
        .iter()
        .filter_map(|d| d.disk.as_ref())
        .find_map(|disk| in_use(disk, observed, map_name))
}

/// Why a map cannot be flushed: a partition of it is mounted or held by anything but another
/// of its partitions (a logical partition in an extended one), or the map itself is mounted or
/// held by anything but its partitions. Each partition is named as the user knows it, by its
/// link, with where it is mounted.
fn map_in_use(
    observed: &crate::observe::Observed,
    volume: &str,
    map: &crate::observe::Map,
) -> Option<String> {
    let parts: BTreeSet<&str> = map.parts.iter().map(|p| p.dev.name.as_str()).collect();
    for part in &map.parts {
        // Short, most telling first: `apply` and `status` cut reasons at 100 characters.
        let what = format!(
            "/dev/lunkeeper/{volume}-part{n} (partition {n})",
            n = part.number
        );
        if let Some(reason) = mounted_at(observed, &what, part.dev.devnum) {
            return Some(reason);
        }
        if let Some(h) = part
            .dev
            .holders
            .iter()
            .find(|h| !parts.contains(h.as_str()))
        {
            return Some(format!("{what} is held by {h}"));
        }
    }
    // The map as if its partition maps were gone: every other holder, and kernel partitions
    // of the map (none are made for a dm device, but if one was, it counts).
    let mut dev = map.dev.clone();
    dev.holders.retain(|h| !parts.contains(h.as_str()));
    in_use(&dev, observed, None)
}

/// Sessions and node records lunkeeper owns that no present volume needs: log out once no
/// device is left on them; a device nobody manages keeps the session up. A session adopted
/// from someone else is never logged out: lunkeeper only stops using it. Nothing is taken down
/// on a target whose portal names do not all resolve now, since which of its sessions they
/// stand for is unknown.
pub(super) fn plan_sessions(planner: &mut Planner<'_>, wanted: &Wanted) {
    let owned = planner.owned;
    let keys: BTreeSet<&SessionKey> = owned
        .sessions
        .iter()
        .chain(owned.nodes.iter())
        .chain(owned.adopted_sessions.iter())
        .collect();
    for key in keys {
        if wanted.contains(key)
            || planner.present_keys.contains(key)
            || planner.unresolved_targets.contains(&key.target)
            || planner.unidentified_targets.contains(&key.target)
        {
            continue;
        }
        let sessions: Vec<_> = planner.sessions(key).collect();
        let managed: BTreeSet<Lun> = owned
            .volumes
            .values()
            .filter(|v| v.target == key.target)
            .map(|v| v.lun)
            .collect();
        let carries_managed = sessions.iter().any(|s| {
            s.devices
                .iter()
                .any(|d| managed.iter().any(|l| l.matches(d.hctl.lun)))
        });
        let mut actions = Vec::new();
        if !owned.sessions.contains(key) && !owned.nodes.contains(key) {
            // Adopted only: forgotten once no volume of lunkeeper's is on it; left as found.
            if !carries_managed {
                actions.push(Action::ForgetSession {
                    session: key.clone(),
                });
            }
        } else if sessions.is_empty() {
            if planner.has_node_record(key) && owned.nodes.contains(key) {
                actions.push(Action::DeleteNode {
                    session: key.clone(),
                });
            } else {
                actions.push(Action::ForgetSession {
                    session: key.clone(),
                });
            }
        } else if sessions.iter().all(|s| s.devices.is_empty()) {
            if owned.sessions.contains(key) {
                actions.push(Action::Logout {
                    session: key.clone(),
                });
            }
            if owned.nodes.contains(key) && planner.has_node_record(key) {
                actions.push(Action::DeleteNode {
                    session: key.clone(),
                });
            }
        } else if !carries_managed {
            for s in &sessions {
                for d in &s.devices {
                    planner.plan.notes.push(format!(
                        "session {} ({key}) is no longer needed but carries {} (LUN {}), which lunkeeper does not manage; not logging out",
                        s.id, d.hctl, d.hctl.lun
                    ));
                }
            }
        }
        planner.lane(Subject::Session(key.clone()), actions);
    }
}

/// WWIDs lunkeeper registered that no owned volume and no present volume holds.
pub(super) fn plan_wwids(planner: &mut Planner<'_>) {
    let observed = planner.observed;
    // Held WWIDs cover every present volume's: recorded, or shown by its LUN.
    let in_use: BTreeSet<&Wwid> = planner
        .owned
        .volumes
        .values()
        .filter_map(|v: &OwnedVolume| v.wwid.as_ref())
        .chain(planner.held.keys())
        .collect();
    let mut actions = Vec::new();
    for w in planner.owned.wwids.iter().filter(|w| !in_use.contains(w)) {
        if observed.registered_wwids.contains(w) {
            actions.push(Action::UnregisterWwid { wwid: w.clone() });
        } else {
            actions.push(Action::ForgetWwid { wwid: w.clone() });
        }
    }
    for a in actions {
        let subject = match &a {
            Action::UnregisterWwid { wwid } | Action::ForgetWwid { wwid } => {
                Subject::Volume(format!("wwid:{wwid}"))
            }
            _ => continue,
        };
        planner.lane(subject, vec![a]);
    }
}

/// Name mappings no present volume holds: the volume left or changed identity.
pub(super) fn plan_names(planner: &mut Planner<'_>) {
    let stale: Vec<String> = planner
        .observed
        .names
        .keys()
        .filter(|k| !planner.named.contains(*k))
        .cloned()
        .collect();
    for key in stale {
        planner.lane(
            Subject::Volume(format!("name:{key}")),
            vec![Action::UnnameDevice { key }],
        );
    }
}
