//! `lunkeeper resize NAME...`: makes the host see LUNs the array grew, for arrays that send no
//! capacity unit attention (LIO is one) and for orchestration that knows it grew a volume.
//!
//! It runs beside the daemon (and beside `apply`) without the planner lock: it only ever
//! rescans the volumes' SCSI devices and asks multipathd to `resize map`, both of which are
//! idempotent and harmless to repeat, and it changes no record lunkeeper keeps. What to do is
//! decided by the planner exactly as the daemon decides it after a unit attention (see
//! [`crate::plan::resize`]); of the plan, only those two kinds of step are run here. A daemon
//! that sees the paths grow (their disks' change events) may grow the map first; the command
//! then finds it grown and reports so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::VolumeResult;
use crate::act::{ActError, Host, ObserveFailure};
use crate::desired::{Desired, VolumeState};
use crate::observe::{Hctl, Observed};
use crate::owned::Owned;
use crate::plan::resize::Capacity;
use crate::plan::{self, Action, Memory, Plan, Subject, Verdict};
use crate::status::{human_size, Status, VolumeStatus};

#[derive(Debug, Clone)]
pub struct ResizeOptions {
    /// Give up on volumes whose paths still disagree (or whose map still refuses to grow)
    /// after this long.
    pub timeout: Duration,
    /// How often to look again while waiting.
    pub poll: Duration,
    /// While paths disagree, they are rescanned again this often (an array may take a moment
    /// to report the new size on every port).
    pub rescan_every: Duration,
}

impl Default for ResizeOptions {
    fn default() -> Self {
        ResizeOptions {
            timeout: Duration::from_secs(30),
            poll: Duration::from_millis(100),
            rescan_every: Duration::from_secs(2),
        }
    }
}

/// How one volume ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Resized {
    /// The device is larger now (by this command or by the daemon meanwhile).
    Grown { from_bytes: u64, to_bytes: u64 },
    /// The paths report the size the device already has.
    Unchanged { size_bytes: Option<u64> },
    /// Not done, and why: paths that disagree, a shrink, a volume that is not attached.
    Refused { reason: String },
}

impl Resized {
    pub fn is_ok(&self) -> bool {
        !matches!(self, Resized::Refused { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResizeReport {
    /// Every volume asked for, by name.
    pub volumes: BTreeMap<String, Resized>,
    /// Their status as last seen (size_bytes shows the new size).
    pub status: Vec<VolumeStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(transparent)]
    Observe(#[from] ObserveFailure),
    #[error("no volume named {0} in the file")]
    Unknown(String),
}

/// One volume while the command works on it.
struct Work {
    before: Option<u64>,
    done: Option<Resized>,
    /// The last error of a step for it, reported if it never finishes.
    error: Option<String>,
}

/// Rescans every live path of the named volumes, waits until they agree on a size, grows each
/// map that is smaller, and reports. Volumes are worked on together.
pub async fn resize<H: Host>(
    host: &H,
    desired: &Desired,
    owned: &Owned,
    names: &[String],
    opts: &ResizeOptions,
) -> Result<ResizeReport, ResizeError> {
    for name in names {
        if desired.volume(name).is_none() {
            return Err(ResizeError::Unknown(name.clone()));
        }
    }
    let names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let deadline = Instant::now() + opts.timeout;
    let mut work: BTreeMap<&str, Work> = BTreeMap::new();
    let mut next_rescan = Instant::now();
    loop {
        let looked = Instant::now();
        let observed = host.observe(desired).await?;
        tracing::debug!(
            ms = looked.elapsed().as_millis() as u64,
            "looked at the host"
        );
        let rescan = Instant::now() >= next_rescan;
        let memory = Memory {
            capacity_changed: if rescan {
                devices_of(desired, &observed, &names)
            } else {
                BTreeSet::new()
            },
            ..Memory::default()
        };
        let plan = plan::plan_with(desired, &observed, owned, &memory);
        let status = status_of(desired, &observed, &plan, &names);
        let sizes: BTreeMap<&str, Option<u64>> = status
            .iter()
            .map(|s| (s.name.as_str(), s.size_bytes))
            .collect();
        for name in &names {
            work.entry(name).or_insert_with(|| Work {
                before: sizes.get(name).copied().flatten(),
                done: None,
                error: None,
            });
        }
        if rescan {
            // Re-read first, decide on the sizes the next look shows.
            for (name, w) in work.iter_mut().filter(|(_, w)| w.done.is_none()) {
                for action in steps(&plan, name, |a| matches!(a, Action::RescanDevice { .. })) {
                    if let Err(e) = run_step(host, name, action).await {
                        w.error = Some(error_text(action, &e));
                    }
                }
            }
            next_rescan = Instant::now() + opts.rescan_every;
            continue;
        }
        let timed_out = Instant::now() >= deadline;
        for (name, w) in work.iter_mut().filter(|(_, w)| w.done.is_none()) {
            let size = sizes.get(name).copied().flatten();
            let verdict = plan.volumes.get(*name);
            match (verdict, plan.capacity.get(*name)) {
                (Some(Verdict::Ready | Verdict::Degraded(_)), Some(Capacity::Grown { .. })) => {
                    for action in steps(&plan, name, |a| matches!(a, Action::ResizeMap { .. })) {
                        if let Err(e) = run_step(host, name, action).await {
                            w.error = Some(error_text(action, &e));
                        }
                    }
                }
                (Some(Verdict::Degraded(why)), Some(Capacity::Shrunk { .. })) => {
                    w.done = Some(Resized::Refused {
                        reason: why.clone(),
                    });
                }
                (Some(Verdict::Degraded(why)), Some(Capacity::Disagree { .. })) => {
                    if timed_out {
                        w.done = Some(Resized::Refused {
                            reason: why.clone(),
                        });
                    }
                }
                (Some(Verdict::Ready | Verdict::Degraded(_)), _) => {
                    w.done = Some(match (w.before, size) {
                        (Some(from), Some(to)) if to > from => Resized::Grown {
                            from_bytes: from,
                            to_bytes: to,
                        },
                        _ => Resized::Unchanged { size_bytes: size },
                    });
                }
                (verdict, _) => {
                    let why = match verdict {
                        Some(Verdict::Absent) => "the file marks it absent",
                        Some(v) => v.reason().unwrap_or_default(),
                        None => "not planned",
                    };
                    w.done = Some(Resized::Refused {
                        reason: format!("not attached: {why}"),
                    });
                }
            }
            if timed_out && w.done.is_none() {
                let why = w.error.clone().unwrap_or_else(|| "no answer".to_string());
                w.done = Some(Resized::Refused {
                    reason: format!("gave up after {}s: {why}", opts.timeout.as_secs()),
                });
            }
        }
        if work.values().all(|w| w.done.is_some()) {
            let volumes = work
                .into_iter()
                .filter_map(|(name, w)| Some((name.to_string(), w.done?)))
                .collect();
            return Ok(ResizeReport { volumes, status });
        }
        tokio::time::sleep(opts.poll).await;
    }
}

/// Every SCSI device of the volumes' LUNs on their targets' sessions; the planner keeps those
/// that are paths of the volume.
fn devices_of(desired: &Desired, observed: &Observed, names: &BTreeSet<&str>) -> BTreeSet<Hctl> {
    desired
        .volumes
        .iter()
        .filter(|v| v.state == VolumeState::Present && names.contains(v.name.as_str()))
        .flat_map(|v| {
            observed
                .sessions
                .iter()
                .filter(move |s| s.target == v.target.as_str())
                .flat_map(|s| s.devices.iter())
                .filter(move |d| v.lun.matches(d.hctl.lun))
                .map(|d| d.hctl)
        })
        .collect()
}

/// The steps of one kind planned for the volume; everything else in the plan is the daemon's
/// (or `apply`'s) to do.
fn steps<'p>(
    plan: &'p Plan,
    volume: &str,
    kind: impl Fn(&Action) -> bool + 'p,
) -> impl Iterator<Item = &'p Action> + 'p {
    let volume = volume.to_string();
    plan.lanes
        .iter()
        .filter(move |l| l.subject == Subject::Volume(volume.clone()))
        .flat_map(|l| l.actions.iter())
        .filter(move |a| kind(a))
}

fn status_of(
    desired: &Desired,
    observed: &Observed,
    plan: &Plan,
    names: &BTreeSet<&str>,
) -> Vec<VolumeStatus> {
    let results = plan
        .volumes
        .iter()
        .map(|(name, verdict)| {
            let r = VolumeResult {
                verdict: verdict.clone(),
                error: None,
                failed: false,
            };
            (name.clone(), r)
        })
        .collect();
    Status::build(desired, observed, &results)
        .volumes
        .into_iter()
        .filter(|v| names.contains(v.name.as_str()))
        .collect()
}

/// Runs one step, logged as the engine logs its steps (every change at info).
async fn run_step<H: Host>(host: &H, volume: &str, action: &Action) -> Result<(), ActError> {
    let started = Instant::now();
    let result = host.execute(action).await;
    let ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(_) => tracing::info!(volume, action = action.kind(), ms, "{action}"),
        Err(error) => {
            tracing::warn!(volume, action = action.kind(), ms, %error, "{action}")
        }
    }
    result.map(|_| ())
}

fn error_text(action: &Action, e: &ActError) -> String {
    format!("{action}: {e}")
}

impl std::fmt::Display for Resized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resized::Grown {
                from_bytes,
                to_bytes,
            } => write!(
                f,
                "grown from {} to {}",
                human_size(*from_bytes),
                human_size(*to_bytes)
            ),
            Resized::Unchanged {
                size_bytes: Some(s),
            } => write!(f, "unchanged at {}", human_size(*s)),
            Resized::Unchanged { size_bytes: None } => f.write_str("unchanged"),
            Resized::Refused { reason } => write!(f, "not resized: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::act::sim::{SimHost, SIM_SIZE_BYTES};
    use crate::apply::{apply, Engine, NoWake};
    use crate::observe::Wwid;
    use crate::owned::OwnedStore;
    use crate::testkit::*;

    const G: u64 = SIM_SIZE_BYTES;

    fn lun0() -> Wwid {
        wwid("36001405aaaa000000000000000000000")
    }

    /// `db` attached through P1 and P2 by `apply`.
    async fn attached() -> (Rc<SimHost>, Desired, OwnedStore, tempfile::TempDir) {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
        let local = tokio::task::LocalSet::new();
        let opts = crate::apply::tests::opts();
        let report = local
            .run_until(apply(Rc::clone(&sim), &d, &store, &opts, &mut NoWake))
            .await
            .unwrap();
        assert!(report.converged, "{:?}", report.volumes);
        (sim, d, store, dir)
    }

    fn opts() -> ResizeOptions {
        ResizeOptions {
            timeout: Duration::from_secs(5),
            poll: Duration::from_millis(10),
            rescan_every: Duration::from_millis(500),
        }
    }

    fn map_size(sim: &SimHost) -> Option<u64> {
        sim.snapshot().maps[0].size_bytes
    }

    fn count(sim: &SimHost, kind: &str) -> usize {
        sim.lock().log.iter().filter(|a| a.kind() == kind).count()
    }

    async fn run(sim: &SimHost, d: &Desired, store: &OwnedStore) -> ResizeReport {
        let owned = store.load().unwrap();
        resize(sim, d, &owned, &["db".to_string()], &opts())
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_grown_lun_is_rescanned_on_every_path_then_the_map_grows() {
        let (sim, d, store, _dir) = attached().await;
        sim.lock().lun_sizes.insert(lun0(), 2 * G);
        assert_eq!(map_size(&sim), Some(G), "nothing happens before a rescan");
        let report = run(&sim, &d, &store).await;
        assert_eq!(
            report.volumes["db"],
            Resized::Grown {
                from_bytes: G,
                to_bytes: 2 * G
            }
        );
        assert_eq!(report.status[0].size_bytes, Some(2 * G));
        assert_eq!(map_size(&sim), Some(2 * G));
        assert_eq!(count(&sim, "rescan_device"), 2, "every path");
        assert_eq!(count(&sim, "resize_map"), 1);
        let log = sim.lock().log.clone();
        let last_rescan = log.iter().rposition(|a| a.kind() == "rescan_device");
        let resize = log.iter().position(|a| a.kind() == "resize_map");
        assert!(last_rescan < resize, "rescans first: {log:?}");

        // Again: the paths already report the map's size.
        let report = run(&sim, &d, &store).await;
        assert_eq!(
            report.volumes["db"],
            Resized::Unchanged {
                size_bytes: Some(2 * G)
            }
        );
        assert_eq!(count(&sim, "resize_map"), 1, "nothing to grow");
    }

    #[tokio::test(start_paused = true)]
    async fn paths_that_disagree_leave_the_map_as_it_was_and_the_volume_degraded() {
        let (sim, d, store, _dir) = attached().await;
        {
            let mut w = sim.lock();
            w.lun_sizes.insert(lun0(), 2 * G);
            let lagging = w.observed.maps[0].slaves[1].clone();
            w.stale_rescan.insert(lagging);
        }
        let report = run(&sim, &d, &store).await;
        let Resized::Refused { reason } = &report.volumes["db"] else {
            panic!("{:?}", report.volumes);
        };
        assert!(reason.contains("disagree"), "{reason}");
        assert_eq!(map_size(&sim), Some(G));
        assert_eq!(count(&sim, "resize_map"), 0);
        assert!(
            count(&sim, "rescan_device") > 2,
            "rescanned again while waiting"
        );
        assert_eq!(report.status[0].state, "degraded");
        assert!(report.status[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("2 GiB") && r.contains("1 GiB")));

        // Once the lagging port reports the new size, the volume heals and the map grows.
        sim.lock().stale_rescan.clear();
        let report = run(&sim, &d, &store).await;
        assert!(report.volumes["db"].is_ok(), "{:?}", report.volumes);
        assert_eq!(map_size(&sim), Some(2 * G));
        assert_eq!(report.status[0].state, "ready");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrunk_lun_is_refused_and_reported() {
        let (sim, d, store, _dir) = attached().await;
        sim.lock().lun_sizes.insert(lun0(), G / 2);
        let report = run(&sim, &d, &store).await;
        let Resized::Refused { reason } = &report.volumes["db"] else {
            panic!("{:?}", report.volumes);
        };
        assert!(reason.contains("never shrinks"), "{reason}");
        assert_eq!(map_size(&sim), Some(G));
        assert_eq!(count(&sim, "resize_map"), 0);
        // The daemon and apply say so too, and still leave the map alone.
        let local = tokio::task::LocalSet::new();
        let opts = crate::apply::ApplyOptions {
            timeout: Duration::from_secs(2),
            ..crate::apply::tests::opts()
        };
        let r = local
            .run_until(apply(Rc::clone(&sim), &d, &store, &opts, &mut NoWake))
            .await
            .unwrap();
        assert!(
            matches!(&r.volumes["db"].verdict, Verdict::Degraded(why) if why.contains("never shrinks")),
            "{:?}",
            r.volumes
        );
        assert_eq!(map_size(&sim), Some(G));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_multipathd_is_asked_again() {
        let (sim, d, store, _dir) = attached().await;
        {
            let mut w = sim.lock();
            w.lun_sizes.insert(lun0(), 2 * G);
            w.resize_busy = 2;
        }
        let report = run(&sim, &d, &store).await;
        assert!(
            matches!(report.volumes["db"], Resized::Grown { .. }),
            "{:?}",
            report.volumes
        );
        assert_eq!(count(&sim, "resize_map"), 3);
        assert_eq!(map_size(&sim), Some(2 * G));
    }

    #[tokio::test(start_paused = true)]
    async fn a_volume_the_file_does_not_have_is_an_error_and_an_absent_one_is_refused() {
        let (sim, d, store, _dir) = attached().await;
        let owned = store.load().unwrap();
        let err = resize(sim.as_ref(), &d, &owned, &["nope".into()], &opts())
            .await
            .unwrap_err();
        assert!(matches!(err, ResizeError::Unknown(_)), "{err}");
        let gone = desired(vec![absent(volume("db", TARGET_A, &[P1, P2], 0))]);
        let report = resize(sim.as_ref(), &gone, &owned, &["db".into()], &opts())
            .await
            .unwrap();
        assert!(!report.volumes["db"].is_ok());
        assert_eq!(count(&sim, "rescan_device"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_daemon_rescans_every_path_after_a_capacity_unit_attention_and_grows_the_map() {
        let (sim, d, store, _dir) = attached().await;
        sim.lock().lun_sizes.insert(lun0(), 2 * G);
        let one_path = sim.snapshot().sessions[0].devices[0].hctl;
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let policy = crate::apply::tests::opts().retry;
                let mut engine = Engine::new(Rc::clone(&sim), store.clone(), policy).unwrap();
                // Without the unit attention nothing is rescanned: the kernel still holds the
                // old size, and lunkeeper does not poll the array.
                let pass = engine.pass(&d).await.unwrap();
                assert_eq!(pass.started, 0, "{:?}", pass.plan);
                // As the daemon does on SDEV_UA=CAPACITY_DATA_HAS_CHANGED for one path.
                engine.capacity_changed([one_path]);
                for _ in 0..10 {
                    let pass = engine.pass(&d).await.unwrap();
                    while engine.finish_one().await.unwrap() {}
                    if pass.started == 0 {
                        break;
                    }
                }
            })
            .await;
        assert_eq!(count(&sim, "rescan_device"), 2, "both paths, once");
        assert_eq!(count(&sim, "resize_map"), 1);
        assert_eq!(map_size(&sim), Some(2 * G));
    }

    #[tokio::test(start_paused = true)]
    async fn apply_grows_a_map_whose_paths_were_rescanned_by_hand() {
        let (sim, d, store, _dir) = attached().await;
        {
            // `echo 1 > .../rescan` on both paths by an operator.
            let mut w = sim.lock();
            w.lun_sizes.insert(lun0(), 2 * G);
            let disks = w.observed.maps[0].slaves.clone();
            for disk in disks {
                w.disk_sizes.insert(disk, 2 * G);
            }
        }
        let local = tokio::task::LocalSet::new();
        let r = local
            .run_until(apply(
                Rc::clone(&sim),
                &d,
                &store,
                &crate::apply::tests::opts(),
                &mut NoWake,
            ))
            .await
            .unwrap();
        assert!(r.converged, "{:?}", r.volumes);
        assert_eq!(map_size(&sim), Some(2 * G));
        assert_eq!(count(&sim, "rescan_device"), 0);
    }
}
