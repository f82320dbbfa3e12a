use super::*;
use crate::act::sim::SimHost;
use crate::desired::Lun;
use crate::observe::{DevNum, Observed};
use crate::owned::{Owned, OwnedVolume};
use crate::testkit::*;

pub(super) fn key(target: &str, portal: &str) -> SessionKey {
    SessionKey {
        target: target.to_string(),
        portal: addr(portal),
    }
}

fn actions(plan: &Plan) -> Vec<String> {
    plan.actions().map(|a| a.to_string()).collect()
}

/// Runs planned rounds against the simulation until nothing is left to do, keeping ownership
/// as `apply` does. Returns the ownership records and the number of rounds.
pub(super) fn converge(sim: &SimHost, desired: &Desired, owned: &mut Owned) -> usize {
    for round in 1..=20 {
        let observed = sim.snapshot();
        let plan = plan(desired, &observed, owned);
        if plan.is_empty() {
            return round;
        }
        for lane in &plan.lanes {
            for a in &lane.actions {
                ownership::claim(owned, a);
                match futures::executor::block_on(crate::act::Host::execute(sim, a)) {
                    Ok(_) => {
                        ownership::release(owned, a);
                    }
                    Err(e) => panic!("{a}: {e}"),
                }
            }
        }
    }
    panic!("did not converge in 20 rounds");
}

#[test]
fn a_fresh_host_gets_node_records_and_parallel_logins_first() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let p = plan(&d, &sim.snapshot(), &Owned::default());
    assert_eq!(p.lanes.len(), 3, "{p:#?}");
    let session_lanes: Vec<&Lane> = p
        .lanes
        .iter()
        .filter(|l| matches!(l.subject, Subject::Session(_)))
        .collect();
    assert_eq!(
        session_lanes.len(),
        2,
        "one lane per portal, so logins run in parallel"
    );
    for lane in session_lanes {
        assert!(matches!(lane.actions[0], Action::EnsureNode { .. }));
        assert!(matches!(lane.actions[1], Action::Login { .. }));
    }
    assert!(matches!(p.volumes["db"], Verdict::Pending(_)));
}

#[test]
fn a_logged_in_session_gets_a_scan_of_exactly_the_wanted_lun() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1], 300)]);
    let host = {
        let mut w = sim.lock();
        w.login_by_hand(TARGET_A, addr(P1), &[]);
        w.observed.sessions[0].host.unwrap()
    };
    let mut owned = Owned::default();
    owned.sessions.insert(key(TARGET_A, P1));
    let p = plan(&d, &sim.snapshot(), &owned);
    let scans: Vec<&Action> = p
        .actions()
        .filter(|a| matches!(a, Action::Scan { .. }))
        .collect();
    assert_eq!(
        scans,
        vec![&Action::Scan {
            session: key(TARGET_A, P1),
            host,
            lun: Lun(300)
        }]
    );
}

#[test]
fn attach_converges_to_a_map_with_every_path_and_then_plans_nothing() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    let rounds = converge(&sim, &d, &mut owned);
    assert!(rounds <= 5, "took {rounds} rounds");
    let o = sim.snapshot();
    assert_eq!(o.maps.len(), 1);
    assert_eq!(o.maps[0].slaves.len(), 2);
    assert_eq!(o.sessions.len(), 2);
    assert!(o
        .sessions
        .iter()
        .all(|s| s.devices.len() == 1 && s.devices[0].hctl.lun == 0));
    let p = plan(&d, &o, &owned);
    assert!(p.is_empty(), "{p:#?}");
    assert_eq!(p.volumes["db"], Verdict::Ready);
    assert_eq!(
        owned.volumes["db"].wwid,
        Some(wwid("36001405aaaa000000000000000000000"))
    );
    assert_eq!(
        o.names
            .get("mpath-36001405aaaa000000000000000000000")
            .map(String::as_str),
        Some("db"),
        "the udev name mapping points at the volume"
    );
    assert!(owned
        .wwids
        .contains(&wwid("36001405aaaa000000000000000000000")));
}

#[test]
fn no_map_is_requested_before_udev_has_processed_a_path() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
    sim.lock().login_by_hand(TARGET_A, addr(P1), &[0]);
    let mut owned = Owned::default();
    owned.sessions.insert(key(TARGET_A, P1));
    let mut o = sim.snapshot();
    o.registered_wwids
        .insert(wwid("36001405aaaa000000000000000000000"));
    o.sessions[0].devices[0]
        .disk
        .as_mut()
        .unwrap()
        .udev_initialized = false;
    let p = plan(&d, &o, &owned);
    assert!(
        !p.actions().any(|a| matches!(a, Action::AddMap { .. })),
        "{:?}",
        actions(&p)
    );
    assert!(matches!(&p.volumes["db"], Verdict::Pending(r) if r.contains("udev")));
    // The name mapping goes ahead of the map, so the map's own uevents carry the link.
    assert!(
        p.actions().any(|a| *a
            == Action::NameDevice {
                key: "mpath-36001405aaaa000000000000000000000".into(),
                volume: "db".into(),
                device: None,
            }),
        "{:?}",
        actions(&p)
    );
    o.sessions[0].devices[0]
        .disk
        .as_mut()
        .unwrap()
        .udev_initialized = true;
    let p = plan(&d, &o, &owned);
    assert!(
        p.actions().any(|a| matches!(a, Action::AddMap { .. })),
        "{:?}",
        actions(&p)
    );
}

#[test]
fn single_path_without_multipath_is_ready_without_a_map() {
    let sim = network();
    let mut v = volume("logs", TARGET_A, &[P1], 1);
    v.multipath = false;
    let d = desired(vec![v]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert!(o.maps.is_empty());
    assert!(o.registered_wwids.is_empty());
    assert_eq!(
        o.names
            .get("sd-36001405aaaa000000000000000000001")
            .map(String::as_str),
        Some("logs")
    );
    assert_eq!(plan(&d, &o, &owned).volumes["logs"], Verdict::Ready);
}

#[test]
fn absent_volume_is_taken_down_completely_and_others_are_untouched() {
    let sim = network();
    // A session nobody listed (think: an iSCSI boot disk).
    let foreign = sim.lock().login_by_hand(TARGET_B, addr(P1), &[0]);
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);

    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert_eq!(o.sessions.len(), 1, "{:#?}", o.sessions);
    assert_eq!(o.sessions[0].id, foreign);
    assert_eq!(o.sessions[0].devices.len(), 1, "the foreign LUN stays");
    assert!(o.maps.is_empty());
    assert!(o.node_records.is_empty());
    assert!(o.names.is_empty(), "name mappings left: {:?}", o.names);
    assert!(o.registered_wwids.is_empty());
    assert!(owned.is_empty(), "{owned:#?}");
    assert_eq!(plan(&d, &o, &owned).volumes["db"], Verdict::Absent);
}

#[test]
fn a_volume_dropped_from_the_file_is_detached_because_lunkeeper_owns_it() {
    let sim = network();
    let d = desired(vec![
        volume("db", TARGET_A, &[P1], 0),
        volume("web", TARGET_A, &[P1], 1),
    ]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    let d = desired(vec![volume("web", TARGET_A, &[P1], 1)]);
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert_eq!(o.sessions.len(), 1, "the shared session stays for web");
    assert_eq!(o.sessions[0].devices.len(), 1);
    assert_eq!(o.sessions[0].devices[0].hctl.lun, 1);
    assert_eq!(o.maps.len(), 1);
    assert!(!owned.volumes.contains_key("db"));
}

#[test]
fn an_unowned_absent_volume_is_never_touched() {
    let sim = network();
    sim.lock().login_by_hand(TARGET_A, addr(P1), &[0]);
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1], 0))]);
    let p = plan(&d, &sim.snapshot(), &Owned::default());
    assert!(p.is_empty(), "{p:#?}");
    assert!(matches!(&p.volumes["db"], Verdict::Blocked(r) if r.contains("not by lunkeeper")));
    let p = plan(&d, &Observed::default(), &Owned::default());
    assert_eq!(p.volumes["db"], Verdict::Absent);
}

#[test]
fn a_mounted_map_is_not_detached() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    let devnum = sim.snapshot().maps[0].dev.devnum;
    sim.lock().observed.mounted.insert(devnum);
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(
        !p.actions().any(|a| !a.is_bookkeeping()),
        "{:?}",
        actions(&p)
    );
    assert!(
        matches!(&p.volumes["db"], Verdict::Blocked(r) if r.contains("mounted")),
        "{:?}",
        p.volumes
    );
}

/// A 2-portal volume with a partition table (parts 1 and 2) written on its map.
fn partitioned(sim: &SimHost) -> (Desired, Owned, Wwid) {
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(sim, &d, &mut owned);
    let w = sim.snapshot().maps[0].wwid.clone();
    sim.lock().partition(&w, 1).unwrap();
    sim.lock().partition(&w, 2).unwrap();
    (d, owned, w)
}

#[test]
fn a_partitioned_volume_that_is_present_is_left_alone() {
    let sim = network();
    let (d, owned, _) = partitioned(&sim);
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(p.is_empty(), "{:?}", actions(&p));
    assert!(p.volumes["db"].is_settled(), "{:?}", p.volumes);
}

#[test]
fn unused_partitions_are_removed_before_the_map_is_flushed() {
    let sim = network();
    let (_, mut owned, w) = partitioned(&sim);
    let map = sim.snapshot().maps[0].name.clone();
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(
        matches!(&p.volumes["db"], Verdict::Pending(r) if r == "detaching"),
        "{:?}",
        p.volumes
    );
    let lane: Vec<String> = p.lanes[0].actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        lane[..3],
        [
            format!("remove partition map {map}-part2 of {map}"),
            format!("remove partition map {map}-part1 of {map}"),
            format!("flush multipath map {map}"),
        ],
        "{lane:?}"
    );
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert!(o.maps.is_empty(), "{:?}", o.maps);
    assert!(o.sessions.is_empty());
    assert!(!o.registered_wwids.contains(&w));
    assert!(owned.volumes.is_empty());
}

#[test]
fn a_mounted_partition_blocks_the_detach_naming_it_and_its_mount_point() {
    let sim = network();
    let (_, owned, _) = partitioned(&sim);
    let part = sim.snapshot().maps[0].parts[0].clone();
    {
        let mut world = sim.lock();
        world.observed.mounted.insert(part.dev.devnum);
        world
            .observed
            .mount_points
            .insert(part.dev.devnum, "/srv/db".into());
    }
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(
        !p.actions().any(|a| !a.is_bookkeeping()),
        "{:?}",
        actions(&p)
    );
    let Verdict::Blocked(reason) = &p.volumes["db"] else {
        panic!("{:?}", p.volumes);
    };
    assert_eq!(
        reason,
        "in use, not detaching: /dev/lunkeeper/db-part1 (partition 1) is mounted on /srv/db"
    );
}

#[test]
fn a_held_partition_blocks_the_detach() {
    let sim = network();
    let (_, owned, _) = partitioned(&sim);
    // LVM on partition 2: its logical volume holds the partition map.
    sim.lock().observed.maps[0].parts[1]
        .dev
        .holders
        .push("dm-9".into());
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(
        !p.actions().any(|a| !a.is_bookkeeping()),
        "{:?}",
        actions(&p)
    );
    assert!(
        matches!(&p.volumes["db"], Verdict::Blocked(r)
            if r == "in use, not detaching: /dev/lunkeeper/db-part2 (partition 2) is held by dm-9"),
        "{:?}",
        p.volumes
    );
}

#[test]
fn a_partition_opened_after_the_plan_makes_the_lane_stop_before_the_flush() {
    let sim = network();
    let (_, owned, _) = partitioned(&sim);
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    let p = plan(&d, &sim.snapshot(), &owned);
    // Mounted between the look and the removal: the kernel refuses, nothing else runs.
    let part1 = sim.snapshot().maps[0].parts[0].dev.devnum;
    sim.lock().observed.mounted.insert(part1);
    let mut refused = false;
    for a in &p.lanes[0].actions {
        if let Err(e) = futures::executor::block_on(crate::act::Host::execute(&sim, a)) {
            assert!(e.to_string().contains("in use"), "{e}");
            refused = true;
            break;
        }
    }
    assert!(refused);
    let o = sim.snapshot();
    assert_eq!(o.maps.len(), 1);
    assert_eq!(o.maps[0].parts.len(), 1, "partition 1 stays");
    assert_eq!(o.sessions.iter().map(|s| s.devices.len()).sum::<usize>(), 2);
}

#[test]
fn a_partition_of_a_single_path_disk_blocks_naming_it() {
    let sim = network();
    let mut v = volume("db", TARGET_A, &[P1], 0);
    v.multipath = false;
    let d = desired(vec![v.clone()]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    let devnum = DevNum { major: 8, minor: 1 };
    {
        let mut world = sim.lock();
        let disk = world.observed.sessions[0].devices[0].disk.as_mut().unwrap();
        let mut part = disk.clone();
        part.name = format!("{}1", disk.name);
        part.devnum = devnum;
        disk.partitions.push(part);
        world.observed.mounted.insert(devnum);
        world.observed.mount_points.insert(devnum, "/srv/x".into());
    }
    let p = plan(&desired(vec![absent(v)]), &sim.snapshot(), &owned);
    assert!(
        matches!(&p.volumes["db"], Verdict::Blocked(r) if r.ends_with("partition sda1 is mounted on /srv/x")),
        "{:?}",
        p.volumes
    );
    assert!(p.is_empty());
}

#[test]
fn a_held_path_device_is_not_detached() {
    let sim = network();
    let mut v = volume("db", TARGET_A, &[P1], 0);
    v.multipath = false;
    let d = desired(vec![v.clone()]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    sim.lock().observed.sessions[0].devices[0]
        .disk
        .as_mut()
        .unwrap()
        .holders
        .push("md0".into());
    let p = plan(&desired(vec![absent(v)]), &sim.snapshot(), &owned);
    assert!(
        matches!(&p.volumes["db"], Verdict::Blocked(r) if r.contains("held by md0")),
        "{:?}",
        p.volumes
    );
    assert!(p.is_empty());
}

#[test]
fn a_map_without_live_paths_gets_queueing_disabled_before_the_flush() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    for s in sim.lock().observed.sessions.iter_mut() {
        s.state = crate::observe::SessionState::Failed;
        s.devices[0].state = "blocked".into();
    }
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    let p = plan(&d, &sim.snapshot(), &owned);
    let a = actions(&p);
    let dq = a
        .iter()
        .position(|s| s.starts_with("disable queueing"))
        .expect("disable queueing planned");
    let flush = a
        .iter()
        .position(|s| s.starts_with("flush"))
        .expect("flush planned");
    assert!(dq < flush, "{a:?}");
}

#[test]
fn live_paths_do_not_get_queueing_disabled() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
    let a = actions(&plan(&d, &sim.snapshot(), &owned));
    assert!(
        !a.iter().any(|s| s.starts_with("disable queueing")),
        "{a:?}"
    );
}

#[test]
fn a_session_matching_a_present_volume_is_adopted_without_logging_in_again() {
    let sim = network();
    let id = sim.lock().login_by_hand(TARGET_A, addr(P1), &[0]);
    let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
    let mut owned = Owned::default();
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(p
        .actions()
        .any(|a| matches!(a, Action::AdoptSession { .. })));
    assert!(!p.actions().any(|a| matches!(a, Action::Login { .. })));
    converge(&sim, &d, &mut owned);
    assert_eq!(sim.snapshot().sessions[0].id, id);
    assert!(
        owned.adopted_sessions.contains(&key(TARGET_A, P1))
            && !owned.sessions.contains(&key(TARGET_A, P1))
    );
}

#[test]
fn an_unexpected_identity_is_refused() {
    let sim = network();
    let mut v = volume("db", TARGET_A, &[P1], 0);
    v.expect_wwid = Some(wwid("36001405ffff000000000000000000000"));
    let d = desired(vec![v]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert!(
        o.maps.is_empty(),
        "no map for a LUN with the wrong identity"
    );
    assert!(o.registered_wwids.is_empty());
    assert!(
        matches!(&plan(&d, &o, &owned).volumes["db"], Verdict::Blocked(r) if r.contains("expected"))
    );
}

#[test]
fn a_reused_lun_number_is_refused() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    owned.volumes.insert(
        "db".into(),
        OwnedVolume {
            target: TARGET_A.into(),
            lun: Lun(0),
            wwid: Some(wwid("36001405dead000000000000000000000")),
            ..Default::default()
        },
    );
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(
        matches!(&p.volumes["db"], Verdict::Blocked(r) if r.contains("reused")),
        "{:?}",
        p.volumes
    );
}

#[test]
fn a_rename_moves_ownership_without_detaching() {
    let sim = network();
    let mut owned = Owned::default();
    converge(
        &sim,
        &desired(vec![volume("db", TARGET_A, &[P1], 0)]),
        &mut owned,
    );
    let d = desired(vec![volume("database", TARGET_A, &[P1], 0)]);
    let p = plan(&d, &sim.snapshot(), &owned);
    let renames_only = p
        .actions()
        .all(|a| a.is_bookkeeping() || matches!(a, Action::NameDevice { .. }));
    assert!(renames_only, "{:?}", actions(&p));
    converge(&sim, &d, &mut owned);
    assert!(owned.volumes.contains_key("database") && !owned.volumes.contains_key("db"));
    assert_eq!(sim.snapshot().maps.len(), 1);
}

#[test]
fn a_portal_dropped_from_a_volume_loses_its_path_and_session() {
    let sim = network();
    let mut owned = Owned::default();
    converge(
        &sim,
        &desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]),
        &mut owned,
    );
    let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert_eq!(o.sessions.len(), 1);
    assert_eq!(o.sessions[0].portal, Some(addr(P1)));
    assert_eq!(o.maps[0].slaves.len(), 1);
    assert_eq!(plan(&d, &o, &owned).volumes["db"], Verdict::Ready);
}

#[test]
fn volumes_sharing_a_session_must_agree_on_chap() {
    let d = desired(vec![
        with_chap(volume("a", TARGET_A, &[P1], 0), "alice"),
        with_chap(volume("b", TARGET_A, &[P1], 1), "bob"),
    ]);
    let p = plan(&d, &Observed::default(), &Owned::default());
    assert!(p.is_empty());
    assert!(matches!(&p.volumes["a"], Verdict::Blocked(r) if r.contains("disagree")));
    assert!(matches!(&p.volumes["b"], Verdict::Blocked(_)));
}

#[test]
fn a_lun_above_255_matches_in_both_addressing_forms() {
    assert!(Lun(300).matches(300));
    assert!(Lun(300).matches(0x4000 | 300));
    assert!(!Lun(300).matches(44));
    assert!(
        !Lun(5).matches(0x4005),
        "flat encoding applies to LUNs >= 256 only"
    );
}

#[test]
fn a_session_carrying_a_foreign_lun_is_not_logged_out() {
    let sim = network();
    let mut owned = Owned::default();
    converge(
        &sim,
        &desired(vec![volume("db", TARGET_A, &[P1], 0)]),
        &mut owned,
    );
    // Someone scanned LUN 1 onto lunkeeper's session by hand.
    let host = sim.snapshot().sessions[0].host.unwrap();
    futures::executor::block_on(crate::act::Host::execute(
        &sim,
        &Action::Scan {
            session: key(TARGET_A, P1),
            host,
            lun: Lun(1),
        },
    ))
    .unwrap();
    let d = desired(vec![absent(volume("db", TARGET_A, &[P1], 0))]);
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert_eq!(
        o.sessions.len(),
        1,
        "the session stays for the LUN nobody manages"
    );
    assert_eq!(o.sessions[0].devices[0].hctl.lun, 1);
    let p = plan(&d, &o, &owned);
    assert!(
        p.notes.iter().any(|n| n.contains("does not manage")),
        "{:?}",
        p.notes
    );
}

#[test]
fn plan_output_carries_no_secret() {
    let d = desired(vec![with_chap(volume("a", TARGET_A, &[P1], 0), "alice")]);
    let p = plan(&d, &Observed::default(), &Owned::default());
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains("password_file"));
    assert!(!json.to_lowercase().contains("\"password\""), "{json}");
}

#[test]
fn a_mount_of_a_partition_counts_as_in_use() {
    let mut dev = crate::observe::BlockDev {
        name: "dm-0".into(),
        devnum: DevNum {
            major: 253,
            minor: 0,
        },
        holders: vec![],
        partitions: vec![],
        node_present: true,
        udev_initialized: true,
    };
    let part = crate::observe::BlockDev {
        name: "dm-1".into(),
        devnum: DevNum {
            major: 253,
            minor: 1,
        },
        ..dev.clone()
    };
    dev.partitions.push(part);
    let mut observed = Observed::default();
    let devnum = DevNum {
        major: 253,
        minor: 1,
    };
    observed.mounted.insert(devnum);
    assert_eq!(
        in_use(&dev, &observed, None).as_deref(),
        Some("partition dm-1 is mounted")
    );
    observed.mount_points.insert(devnum, "/srv/x".into());
    assert_eq!(
        in_use(&dev, &observed, None).as_deref(),
        Some("partition dm-1 is mounted on /srv/x")
    );
    assert!(in_use(&dev, &Observed::default(), None).is_none());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Any mix of volumes present and absent, reached from any earlier mix: converging leaves
    /// nothing to plan, and the foreign session is never touched.
    fn arb_state() -> impl Strategy<Value = Vec<(u32, bool, bool, u8)>> {
        // (lun, present, multipath, portals bitmask 1..=3)
        proptest::collection::vec(
            (
                prop_oneof![Just(0u32), Just(1), Just(300)],
                any::<bool>(),
                any::<bool>(),
                1u8..=3,
            ),
            0..4,
        )
    }

    fn to_desired(spec: &[(u32, bool, bool, u8)]) -> Desired {
        let mut seen = std::collections::BTreeSet::new();
        let vols = spec
            .iter()
            .filter(|(lun, ..)| seen.insert(*lun))
            .map(|&(lun, present, multipath, mask)| {
                let portals: Vec<&str> = match (multipath, mask) {
                    (false, _) | (true, 1) => vec![P1],
                    (true, 2) => vec![P2],
                    _ => vec![P1, P2],
                };
                let mut v = volume(&format!("v{lun}"), TARGET_A, &portals, lun);
                v.multipath = multipath;
                if !present {
                    v = absent(v);
                }
                v
            })
            .collect();
        desired(vols)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn converging_is_idempotent_and_spares_foreign_sessions(first in arb_state(), second in arb_state()) {
            let sim = network();
            let foreign = sim.lock().login_by_hand(TARGET_B, addr(P1), &[0]);
            let mut owned = Owned::default();
            for spec in [&first, &second] {
                let d = to_desired(spec);
                converge(&sim, &d, &mut owned);
                let o = sim.snapshot();
                let p = plan(&d, &o, &owned);
                prop_assert!(p.is_empty(), "re-planning after converging gave {:?}", actions(&p));
                for v in &d.volumes {
                    let want = if v.state == crate::desired::VolumeState::Present { Verdict::Ready } else { Verdict::Absent };
                    prop_assert_eq!(&p.volumes[v.name.as_str()], &want, "{}", v.name);
                }
                let f = o.sessions.iter().find(|s| s.id == foreign);
                prop_assert!(f.is_some_and(|s| s.devices.len() == 1), "foreign session touched");
            }
            // And everything marked absent leaves nothing of lunkeeper's behind.
            let mut all_absent = to_desired(&second);
            for v in all_absent.volumes.iter_mut() { v.state = crate::desired::VolumeState::Absent; }
            for (name, rec) in owned.volumes.clone() {
                if all_absent.volume(&name).is_none() {
                    all_absent.volumes.push(absent(volume(&name, &rec.target, &[P1], rec.lun.0)));
                }
            }
            converge(&sim, &all_absent, &mut owned);
            let o = sim.snapshot();
            prop_assert_eq!(o.sessions.len(), 1);
            prop_assert!(o.maps.is_empty());
            prop_assert!(o.node_records.is_empty());
            prop_assert!(owned.is_empty(), "{:?}", owned);
        }
    }
}

#[test]
fn a_path_is_added_to_a_map_only_once_udev_has_processed_both() {
    let sim = network();
    let mut owned = Owned::default();
    converge(
        &sim,
        &desired(vec![volume("db", TARGET_A, &[P1], 0)]),
        &mut owned,
    );
    // A second path multipathd has not picked up (its WWID was not registered when it came).
    let disk = {
        let mut w = sim.lock();
        let registered = std::mem::take(&mut w.observed.registered_wwids);
        w.login_by_hand(TARGET_A, addr(P2), &[0]);
        w.observed.registered_wwids = registered;
        w.observed.sessions[1].devices[0].disk.clone().unwrap().name
    };
    owned.sessions.insert(key(TARGET_A, P2));
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let add = Action::AddPath { disk };
    let mut o = sim.snapshot();
    assert!(plan(&d, &o, &owned).actions().any(|a| *a == add));
    o.maps[0].dev.udev_initialized = false;
    let p = plan(&d, &o, &owned);
    assert!(!p.actions().any(|a| *a == add), "{:?}", actions(&p));
}
