//! The safety invariants (README, "Safety"), case by case against the simulated host. The
//! randomized versions, with injected failures and crashes, are in `apply::fault_tests`.

use super::tests::{converge, key};
use super::*;
use crate::act::sim::{SimHost, SimTarget};
use crate::owned::Owned;
use crate::testkit::*;

const SAN_A: &str = "san-a.test";
const TARGET_C: &str = "iqn.2026-11.test.lunkeeper:c";

fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.actions().map(Action::kind).collect()
}

const TEARDOWN: [&str; 7] = [
    "del_path",
    "delete_device",
    "flush_map",
    "logout",
    "delete_node",
    "unregister_wwid",
    "unname_device",
];

fn tears_down(plan: &Plan) -> Vec<String> {
    plan.actions()
        .filter(|a| TEARDOWN.contains(&a.kind()))
        .map(ToString::to_string)
        .collect()
}

/// Live slaves of the map of this WWID.
fn live_slaves(o: &Observed, w: &Wwid) -> usize {
    let Some(map) = o.maps.iter().find(|m| &m.wwid == w) else {
        return 0;
    };
    o.sessions
        .iter()
        .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
        .filter(|(s, d)| {
            path_is_live(s, d)
                && d.disk
                    .as_ref()
                    .is_some_and(|k| map.slaves.contains(&k.name))
        })
        .count()
}

/// Converges like `apply` (claims before acting, releases after), calling `check` on the host
/// after every single action.
fn converge_checking(
    sim: &SimHost,
    desired: &Desired,
    owned: &mut Owned,
    check: &dyn Fn(&Observed, &Action),
) {
    for _ in 0..30 {
        let plan = plan(desired, &sim.snapshot(), owned);
        if plan.is_empty() {
            return;
        }
        for a in plan.actions() {
            ownership::claim(owned, a);
        }
        for lane in &plan.lanes {
            for a in &lane.actions {
                futures::executor::block_on(crate::act::Host::execute(sim, a))
                    .unwrap_or_else(|e| panic!("{a}: {e}"));
                ownership::release(owned, a);
                check(&sim.snapshot(), a);
            }
        }
    }
    panic!("did not converge in 30 rounds");
}

const DB_WWID: &str = "36001405aaaa000000000000000000000";

/// `db` on TARGET_A LUN 0 through P1 written as the name `san-a.test`, and P2.
fn db_by_name() -> Volume {
    named_portal(volume("db", TARGET_A, &[P1, P2], 0), 0, SAN_A)
}

fn resolve(sim: &SimHost, up: bool) {
    let mut w = sim.lock();
    w.observed
        .resolved
        .insert(format!("{SAN_A}:3260"), addr(P1));
    w.faults.dns_down = !up;
}

#[test]
fn i1_a_pass_without_dns_keeps_every_path_name_and_session() {
    let sim = network();
    resolve(&sim, true);
    let d = desired(vec![db_by_name()]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    assert_eq!(live_slaves(&sim.snapshot(), &wwid(DB_WWID)), 2);

    resolve(&sim, false);
    let o = futures::executor::block_on(crate::act::Host::observe(&sim, &d)).unwrap();
    assert!(o.resolved.is_empty());
    let p = plan(&d, &o, &owned);
    assert!(tears_down(&p).is_empty(), "{:?}", tears_down(&p));
    assert!(
        matches!(&p.volumes["db"], Verdict::Degraded(r) if r.contains("does not resolve")),
        "{:?}",
        p.volumes["db"]
    );
    // Both names down at once: still nothing taken away.
    let both = named_portal(db_by_name(), 1, "san-b.test");
    let p = plan(&desired(vec![both]), &o, &owned);
    assert!(tears_down(&p).is_empty(), "{:?}", tears_down(&p));
}

#[test]
fn i1_moving_a_volume_to_other_portals_is_make_before_break() {
    let sim = network();
    let mut owned = Owned::default();
    converge(
        &sim,
        &desired(vec![volume("db", TARGET_A, &[P1], 0)]),
        &mut owned,
    );
    let w = wwid(DB_WWID);
    let moved = desired(vec![volume("db", TARGET_A, &[P2], 0)]);
    let first = plan(&moved, &sim.snapshot(), &owned);
    assert!(tears_down(&first).is_empty(), "{:?}", tears_down(&first));
    converge_checking(&sim, &moved, &mut owned, &|o, a| {
        assert!(live_slaves(o, &w) >= 1, "no live path left after {a}");
    });
    let o = sim.snapshot();
    assert_eq!(o.sessions.len(), 1);
    assert_eq!(o.sessions[0].portal, Some(addr(P2)));
    assert_eq!(live_slaves(&o, &w), 1);
}

#[test]
fn i1_a_mounted_single_path_volume_is_not_moved() {
    let sim = network();
    let mut owned = Owned::default();
    let mut v = volume("db", TARGET_A, &[P1], 0);
    v.multipath = false;
    converge(&sim, &desired(vec![v.clone()]), &mut owned);
    let devnum = sim.snapshot().sessions[0].devices[0]
        .disk
        .as_ref()
        .unwrap()
        .devnum;
    sim.lock().observed.mounted.insert(devnum);
    v.portals = volume("db", TARGET_A, &[P2], 0).portals;
    let d = desired(vec![v]);
    for _ in 0..5 {
        let p = plan(&d, &sim.snapshot(), &owned);
        assert!(!kinds(&p).contains(&"delete_device"), "{:?}", kinds(&p));
        for a in p.actions() {
            ownership::claim(&mut owned, a);
            let _ = futures::executor::block_on(crate::act::Host::execute(&sim, a));
            ownership::release(&mut owned, a);
        }
    }
    assert!(sim
        .snapshot()
        .sessions
        .iter()
        .any(|s| s.portal == Some(addr(P1))
            && s.devices
                .iter()
                .any(|d| d.disk.as_ref().is_some_and(|k| k.devnum == devnum))));
}

#[test]
fn i2_an_adopted_session_and_its_node_record_are_left_as_found() {
    let sim = network();
    let id = {
        let mut w = sim.lock();
        w.node_record_by_hand(TARGET_A, addr(P1));
        w.login_by_hand(TARGET_A, addr(P1), &[0])
    };
    let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    assert!(owned.adopted_sessions.contains(&key(TARGET_A, P1)));
    assert!(!owned.sessions.contains(&key(TARGET_A, P1)));
    assert!(!owned.nodes.contains(&key(TARGET_A, P1)));
    assert!(owned.volumes["db"].adopted);
    let records = sim.snapshot().node_records;

    // Dropped from the file: left attached as found.
    let empty = desired(vec![volume("other", TARGET_B, &[P1], 0)]);
    converge(&sim, &empty, &mut owned);
    let o = sim.snapshot();
    assert!(o
        .sessions
        .iter()
        .any(|s| s.id == id && s.devices.len() == 1));
    assert!(!owned.volumes.contains_key("db"));
    assert!(!owned.adopted_sessions.contains(&key(TARGET_A, P1)));

    // Taken on again and then marked absent: its LUN goes, the session and record stay.
    converge(&sim, &d, &mut owned);
    converge(
        &sim,
        &desired(vec![absent(volume("db", TARGET_A, &[P1], 0))]),
        &mut owned,
    );
    let o = sim.snapshot();
    let s = o
        .sessions
        .iter()
        .find(|s| s.id == id)
        .expect("adopted session logged out");
    assert!(s.devices.is_empty(), "{:?}", s.devices);
    assert_eq!(
        o.node_records
            .iter()
            .filter(|n| n.target == TARGET_A)
            .count(),
        records.iter().filter(|n| n.target == TARGET_A).count()
    );
    assert!(!sim.lock().log.iter().any(|a| matches!(a,
        Action::Logout { session } | Action::DeleteNode { session } | Action::EnsureNode { session, .. }
            if *session == key(TARGET_A, P1))));
}

#[test]
fn i2_a_node_record_that_existed_before_is_used_as_found_and_never_deleted() {
    let sim = network();
    sim.lock().node_record_by_hand(TARGET_A, addr(P1));
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(
        !p.actions().any(
            |a| matches!(a, Action::EnsureNode { session, .. } if *session == key(TARGET_A, P1))
        ),
        "{:?}",
        kinds(&p)
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("existed before lunkeeper")));
    converge(&sim, &d, &mut owned);
    assert!(!owned.nodes.contains(&key(TARGET_A, P1)));
    assert!(
        owned.sessions.contains(&key(TARGET_A, P1)),
        "lunkeeper logged in itself"
    );

    converge(
        &sim,
        &desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]),
        &mut owned,
    );
    let o = sim.snapshot();
    assert!(o.sessions.is_empty(), "its own logins are undone");
    let left: Vec<_> = o.node_records.iter().map(|n| n.portal).collect();
    assert_eq!(
        left,
        vec![addr(P1)],
        "only the record lunkeeper made is deleted"
    );
    assert!(owned.is_empty(), "{owned:?}");
}

/// TARGET_C exports TARGET_A's LUN 0 (one LU through two target names).
fn with_alias_target(sim: &SimHost) {
    sim.add_target(
        TARGET_C,
        SimTarget {
            portals: vec![addr(P2)],
            luns: std::collections::BTreeMap::from([(0, wwid(DB_WWID))]),
            chap_user: None,
        },
    );
}

#[test]
fn i3_a_second_volume_on_a_held_wwid_is_blocked_and_never_takes_the_map() {
    let sim = network();
    with_alias_target(&sim);
    let mut owned = Owned::default();
    let db = volume("db", TARGET_A, &[P1], 0);
    converge(&sim, &desired(vec![db.clone()]), &mut owned);
    let w = wwid(DB_WWID);
    let alias = volume("alias", TARGET_C, &[P2], 0);
    let both = desired(vec![db.clone(), alias.clone()]);
    converge(&sim, &both, &mut owned);
    let o = sim.snapshot();
    let p = plan(&both, &o, &owned);
    assert!(
        matches!(&p.volumes["alias"], Verdict::Blocked(r) if r.contains("db") && r.contains("alias")),
        "{:?}",
        p.volumes
    );
    assert!(p.volumes["db"].is_settled(), "{:?}", p.volumes["db"]);
    assert_eq!(
        o.names.get(&format!("mpath-{w}")).map(String::as_str),
        Some("db")
    );

    // The newcomer goes: the map, its registration and its name stay with db.
    let leave = desired(vec![db, absent(alias)]);
    converge_checking(&sim, &leave, &mut owned, &|o, a| {
        assert!(
            !matches!(
                a,
                Action::FlushMap { .. }
                    | Action::UnregisterWwid { .. }
                    | Action::UnnameDevice { .. }
            ),
            "{a}"
        );
        assert!(live_slaves(o, &w) >= 1, "no live path after {a}");
    });
    let o = sim.snapshot();
    assert_eq!(o.maps.len(), 1);
    assert!(o.registered_wwids.contains(&w));
    assert_eq!(
        o.names.get(&format!("mpath-{w}")).map(String::as_str),
        Some("db")
    );
    assert!(o.sessions.iter().all(|s| s.target == TARGET_A));
}

#[test]
fn i3_two_newcomers_on_one_wwid_are_both_blocked() {
    let sim = network();
    with_alias_target(&sim);
    let d = desired(vec![
        volume("db", TARGET_A, &[P1], 0),
        volume("alias", TARGET_C, &[P2], 0),
    ]);
    let mut owned = Owned::default();
    // Both log in and scan in the same pass; then both see the one WWID.
    for _ in 0..3 {
        let p = plan(&d, &sim.snapshot(), &owned);
        for a in p.actions() {
            ownership::claim(&mut owned, a);
            futures::executor::block_on(crate::act::Host::execute(&sim, a)).unwrap();
            ownership::release(&mut owned, a);
        }
    }
    let p = plan(&d, &sim.snapshot(), &owned);
    for name in ["db", "alias"] {
        assert!(
            matches!(&p.volumes[name], Verdict::Blocked(r) if r.contains("same LU")),
            "{name}: {:?}",
            p.volumes[name]
        );
    }
    assert!(tears_down(&p).is_empty());
}

#[test]
fn i4_an_error_never_rolls_back_a_volume_that_was_ready() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    assert!(owned.volumes["db"].attached);
    let failed = Memory {
        failed: BTreeSet::from(["db".to_string()]),
        ..Default::default()
    };
    let p = plan_with(&d, &sim.snapshot(), &owned, &failed);
    assert!(p.is_empty(), "{:?}", kinds(&p));
    assert_eq!(p.volumes["db"], Verdict::Ready);
}

#[test]
fn i4_a_first_attach_that_fails_for_good_undoes_only_what_it_created() {
    let sim = network();
    sim.lock().node_record_by_hand(TARGET_A, addr(P2));
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    // One pass: records and logins.
    let p = plan(&d, &sim.snapshot(), &owned);
    for a in p.actions() {
        ownership::claim(&mut owned, a);
        futures::executor::block_on(crate::act::Host::execute(&sim, a)).unwrap();
        ownership::release(&mut owned, a);
    }
    assert!(!owned.volumes["db"].attached);
    let failed = Memory {
        failed: BTreeSet::from(["db".to_string()]),
        ..Default::default()
    };
    for _ in 0..10 {
        let p = plan_with(&d, &sim.snapshot(), &owned, &failed);
        if p.is_empty() {
            break;
        }
        for a in p.actions() {
            ownership::claim(&mut owned, a);
            futures::executor::block_on(crate::act::Host::execute(&sim, a)).unwrap();
            ownership::release(&mut owned, a);
        }
    }
    let o = sim.snapshot();
    assert!(o.sessions.is_empty());
    let left: Vec<_> = o.node_records.iter().map(|n| n.portal).collect();
    assert_eq!(left, vec![addr(P2)], "the operator's record stays");
    assert!(owned.is_empty(), "{owned:?}");
}

#[test]
fn a_blocked_volume_keeps_its_sessions() {
    let sim = network();
    let mut owned = Owned::default();
    converge(
        &sim,
        &desired(vec![
            volume("a", TARGET_A, &[P1], 0),
            volume("b", TARGET_A, &[P1], 1),
        ]),
        &mut owned,
    );
    // The file now makes them disagree on CHAP: both blocked, nothing taken down.
    let d = desired(vec![
        with_chap(volume("a", TARGET_A, &[P1], 0), "alice"),
        volume("b", TARGET_A, &[P1], 1),
    ]);
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(tears_down(&p).is_empty(), "{:?}", tears_down(&p));
    assert!(matches!(&p.volumes["a"], Verdict::Blocked(_)));
}

/// Swaps the LU behind TARGET_A's LUN 0 on the array (another backstore at the same number).
fn swap_lun0(sim: &SimHost, to: &str) {
    sim.lock()
        .targets
        .get_mut(TARGET_A)
        .unwrap()
        .luns
        .insert(0, wwid(to));
}

const OTHER_WWID: &str = "36001405eeee000000000000000000000";

#[test]
fn a_lun_swapped_behind_a_recovered_session_is_read_again_and_kept_out_of_the_map() {
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    swap_lun0(&sim, OTHER_WWID);
    // The kernel still shows the old identity: nothing to see without a re-read.
    assert!(plan(&d, &sim.snapshot(), &owned).is_empty());

    let o = sim.snapshot();
    let hctl = o.sessions[0].devices[0].hctl;
    let disk = o.sessions[0].devices[0].disk.clone().unwrap().name;
    let memory = Memory {
        recovered: BTreeSet::from([hctl]),
        ..Default::default()
    };
    let p = plan_with(&d, &o, &owned, &memory);
    assert_eq!(
        p.actions().cloned().collect::<Vec<_>>(),
        vec![Action::RescanDevice { hctl }]
    );
    futures::executor::block_on(crate::act::Host::execute(
        &sim,
        &Action::RescanDevice { hctl },
    ))
    .unwrap();

    let p = plan(&d, &sim.snapshot(), &owned);
    let reason = match &p.volumes["db"] {
        Verdict::Blocked(r) => r.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        reason.contains(DB_WWID) && reason.contains(OTHER_WWID),
        "{reason}"
    );
    assert_eq!(
        p.actions().cloned().collect::<Vec<_>>(),
        vec![Action::DelPath { disk: disk.clone() }]
    );
    converge(&sim, &d, &mut owned);
    let o = sim.snapshot();
    assert!(!o.maps[0].slaves.contains(&disk), "{:?}", o.maps[0].slaves);
    assert_eq!(o.maps[0].slaves.len(), 1, "the other path stays");
    // Never added back, whatever happens later.
    for _ in 0..3 {
        let p = plan(&d, &sim.snapshot(), &owned);
        assert!(!p.actions().any(|a| matches!(a, Action::AddPath { .. })));
    }
}

#[test]
fn with_expect_wwid_a_wrong_lun_is_never_attached() {
    let sim = network();
    swap_lun0(&sim, OTHER_WWID);
    let mut v = volume("db", TARGET_A, &[P1, P2], 0);
    v.expect_wwid = Some(wwid(DB_WWID));
    let d = desired(vec![v]);
    let mut owned = Owned::default();
    converge_checking(&sim, &d, &mut owned, &|_, a| {
        assert!(
            !matches!(
                a,
                Action::RegisterWwid { .. }
                    | Action::AddMap { .. }
                    | Action::AddPath { .. }
                    | Action::NameDevice { .. }
            ),
            "{a}"
        );
    });
    let p = plan(&d, &sim.snapshot(), &owned);
    assert!(
        matches!(&p.volumes["db"], Verdict::Blocked(r) if r.contains("expected") && r.contains(OTHER_WWID)),
        "{:?}",
        p.volumes
    );
    assert!(sim.snapshot().maps.is_empty());
}

#[test]
fn i2_a_session_whose_portal_does_not_show_keeps_its_target_whole_until_it_does() {
    // iscsid killed and started again: until it has caught up with the kernel's sessions, a
    // session can show no portal. Measured in the VM: a detach then deleted the node records
    // under the live sessions and left them logged in for good.
    let sim = network();
    let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
    let mut owned = Owned::default();
    converge(&sim, &d, &mut owned);
    let mut gone = d.clone();
    gone.volumes[0].state = VolumeState::Absent;
    let mut o = sim.snapshot();
    o.sessions[0].portal = None;
    let p = plan(&gone, &o, &owned);
    assert!(tears_down(&p).is_empty(), "{:?}", tears_down(&p));
    assert!(
        matches!(&p.volumes["db"], Verdict::Pending(r) if r.contains("shows no portal")),
        "{:?}",
        p.volumes["db"]
    );
    // Shown again: the detach goes ahead and leaves nothing.
    converge(&sim, &gone, &mut owned);
    let o = sim.snapshot();
    assert!(o.sessions.is_empty() && o.maps.is_empty(), "{o:?}");
}
