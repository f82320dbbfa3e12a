//! Driving the engine: `lunkeeper apply` runs passes until the host converges, nothing more can
//! be done without an operator, or the timeout passes. The daemon drives the same engine from
//! events. Neither owns a decision: they run what `plan` returns.

mod engine;
#[cfg(test)]
mod fault_tests;
mod holds;
pub mod resize;
mod stats;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

pub use engine::{Engine, Pass};
pub use holds::RetryPolicy;
pub use stats::{ActionResult, ActionStats, Histogram, DURATION_BUCKETS};

use crate::act::{preflight, Host, Missing, ObserveFailure};
use crate::desired::Desired;
use crate::observe::Observed;
use crate::owned::{OwnedError, OwnedStore};
use crate::plan::mass_detach::{self, MassDetach};
use crate::plan::{Action, Subject, Verdict};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Give up (and report why) after this long.
    pub timeout: Duration,
    /// How often to look again while waiting on the kernel, udev or multipathd when nothing
    /// wakes `apply` earlier (a lane finishing, an event from [`Wake`], a hold ending).
    pub poll: Duration,
    pub retry: RetryPolicy,
    /// Lets this one run detach most of the attached volumes because the file no longer names
    /// them (`--allow-mass-detach`); see [`crate::plan::mass_detach`].
    pub allow_mass_detach: bool,
    /// How long a missing service may take to appear (one started just before `apply`) before
    /// `apply` gives up and names it. With the checks' own deadline this stays under 5 s.
    pub preflight_wait: Duration,
}

/// How often a failed preflight is repeated within `preflight_wait`.
const PREFLIGHT_RETRY: Duration = Duration::from_millis(500);

/// Tells [`apply`] that the world may have changed (udev processed a device event), so it
/// looks again before the poll interval is up.
pub trait Wake {
    fn changed(&mut self) -> impl std::future::Future<Output = ()>;
}

/// No event source: [`apply`] relies on lanes finishing and on its poll interval.
pub struct NoWake;

impl Wake for NoWake {
    async fn changed(&mut self) {
        std::future::pending::<()>().await
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            timeout: Duration::from_secs(120),
            poll: Duration::from_millis(50),
            retry: RetryPolicy {
                first: Duration::from_millis(100),
                cap: Duration::from_secs(5),
                settle: Duration::from_secs(3),
                grace: Duration::from_secs(1),
            },
            allow_mass_detach: false,
            preflight_wait: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Observe(#[from] ObserveFailure),
    #[error(transparent)]
    Owned(#[from] OwnedError),
    /// The file would detach most attached volumes by leaving them out; nothing was done.
    #[error(
        "{0}. If that is what you want, mark them state = \"absent\" in the file, remove them a few \
         at a time, or run `lunkeeper apply --allow-mass-detach` once"
    )]
    MassDetach(MassDetach),
    /// Something acting needs is not there; nothing was done.
    #[error("cannot act: {}", preflight::describe(.0))]
    Preflight(Vec<Missing>),
}

/// How one volume ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeResult {
    pub verdict: Verdict,
    /// The last error an action for this volume met, while it is not settled.
    pub error: Option<String>,
    /// An error retrying cannot fix (bad CHAP secret, target refused the initiator).
    pub failed: bool,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub converged: bool,
    pub volumes: BTreeMap<String, VolumeResult>,
    pub notes: Vec<String>,
    /// What was done, in the order it finished.
    pub executed: Vec<Executed>,
    /// The last snapshot the verdicts were judged on.
    pub observed: Observed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Executed {
    pub subject: Subject,
    pub action: Action,
    pub changed: bool,
}

/// Runs passes until every volume is where the file says, nothing more can be done without an
/// operator, or the timeout passes. Must run inside a `LocalSet`.
pub async fn apply<H: Host + 'static>(
    host: Rc<H>,
    desired: &Desired,
    store: &OwnedStore,
    opts: &ApplyOptions,
    wake: &mut impl Wake,
) -> Result<Report, ApplyError> {
    let probe = Rc::clone(&host);
    let entered = Instant::now();
    let mut engine = Engine::new(host, store.clone(), opts.retry)?;
    if !opts.allow_mass_detach {
        if let Some(refused) = mass_detach::check(desired, engine.owned()) {
            return Err(ApplyError::MassDetach(refused));
        }
    }
    preflight_ok(probe.as_ref(), desired, opts.preflight_wait).await?;
    let preflight_ms = entered.elapsed().as_millis() as u64;
    let deadline = Instant::now() + opts.timeout;
    let began = Instant::now();
    let (mut looks, mut looking) = (0u32, Duration::ZERO);
    loop {
        let started = Instant::now();
        let pass = engine.pass(desired).await?;
        looks += 1;
        looking += started.elapsed();
        // A look costs CPU the kernel, udev and multipathd need to make progress (observing
        // sysfs is mostly system time): waiting at least as long as the look took keeps
        // lunkeeper at half a CPU at most while it waits on them.
        let earliest = Instant::now() + started.elapsed();
        let waiting = pass.waiting(engine.failed());
        let timed_out = Instant::now() >= deadline;
        let settled = pass.started == 0 && !engine.is_running() && !waiting && pass.retrying == 0;
        // Where lunkeeper's udev rule is installed, done also means udev has made every usable
        // volume's /dev/lunkeeper link (what a mount after `apply` opens): it comes a moment
        // after the device.
        let linking = (settled || timed_out)
            && !crate::status::Status::build(desired, &pass.observed, &engine.results(&pass.plan))
                .awaiting_link
                .is_empty();
        if (settled && !linking) || timed_out {
            if timed_out {
                // Killing the children of unfinished lanes; what they did is re-planned next time.
                engine.abandon().await;
            }
            tracing::info!(
                preflight_ms,
                looks,
                looking_ms = looking.as_millis() as u64,
                total_ms = began.elapsed().as_millis() as u64,
                "apply finished"
            );
            let volumes = engine.results(&pass.plan);
            let converged = !linking
                && pass.retrying == 0
                && volumes
                    .values()
                    .all(|v| v.verdict.is_settled() && !v.failed);
            return Ok(Report {
                converged,
                volumes,
                notes: pass.plan.notes,
                executed: engine.executed().to_vec(),
                observed: pass.observed,
            });
        }
        // Look again when a lane finishes, udev reports a change, a held action may run again
        // or the poll interval passes, whichever is first: the kernel, udev and multipathd
        // move on their own too.
        let mut next = Instant::now() + opts.poll;
        if let Some(release) = engine.next_release() {
            next = next.min(release.max(Instant::now()));
        }
        tokio::select! {
            finished = engine.finish_one(), if engine.is_running() => { finished?; }
            () = wake.changed() => {}
            () = tokio::time::sleep_until(next.min(deadline)) => {}
        }
        tokio::time::sleep_until(earliest).await;
        // Lanes that ended meanwhile are recorded before the next look, not one per look.
        while engine.finish_ready()? {}
    }
}

/// Waits up to `wait` for everything acting needs to be there.
async fn preflight_ok<H: Host>(
    host: &H,
    desired: &Desired,
    wait: Duration,
) -> Result<(), ApplyError> {
    let give_up = Instant::now() + wait;
    loop {
        match host.preflight(desired).await {
            Ok(()) => return Ok(()),
            Err(missing) if Instant::now() + PREFLIGHT_RETRY > give_up => {
                return Err(ApplyError::Preflight(missing));
            }
            Err(missing) => {
                tracing::info!(missing = %preflight::describe(&missing), "waiting for what acting needs");
                tokio::time::sleep(PREFLIGHT_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::sim::SimHost;
    use crate::testkit::*;

    /// Quick retries and short holds, for the simulated host.
    pub(super) fn opts() -> ApplyOptions {
        ApplyOptions {
            timeout: Duration::from_secs(5),
            poll: Duration::from_millis(1),
            retry: RetryPolicy {
                first: Duration::from_millis(1),
                cap: Duration::from_millis(50),
                settle: Duration::from_millis(100),
                grace: Duration::from_millis(20),
            },
            allow_mass_detach: false,
            preflight_wait: Duration::from_secs(2),
        }
    }

    async fn run(sim: &Rc<SimHost>, d: &Desired, store: &OwnedStore) -> Report {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(apply(Rc::clone(sim), d, store, &opts(), &mut NoWake))
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn apply_converges_and_a_second_apply_does_nothing() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![
            volume("db", TARGET_A, &[P1, P2], 0),
            volume("big", TARGET_A, &[P1, P2], 300),
        ]);
        let r = run(&sim, &d, &store).await;
        assert!(r.converged, "{:?}", r.volumes);
        assert_eq!(r.volumes["db"].verdict, Verdict::Ready);
        assert_eq!(sim.snapshot().maps.len(), 2);
        let logins = sim
            .lock()
            .log
            .iter()
            .filter(|a| matches!(a, Action::Login { .. }))
            .count();
        assert_eq!(
            logins, 2,
            "two volumes on the same portals share two sessions"
        );

        let before = sim.lock().log.len();
        let r = run(&sim, &d, &store).await;
        assert!(r.converged);
        assert!(r.executed.is_empty(), "{:?}", r.executed);
        assert_eq!(sim.lock().log.len(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_chap_user_fails_the_volume_and_leaves_nothing_behind() {
        let sim = Rc::new(network());
        sim.lock().targets.get_mut(TARGET_A).unwrap().chap_user = Some("alice".into());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![with_chap(
            volume("db", TARGET_A, &[P1, P2], 0),
            "mallory",
        )]);
        let r = run(&sim, &d, &store).await;
        assert!(!r.converged);
        let db = &r.volumes["db"];
        assert!(db.failed);
        assert!(
            db.error
                .as_deref()
                .unwrap_or("")
                .contains("authentication failed"),
            "{db:?}"
        );
        let o = sim.snapshot();
        assert!(o.sessions.is_empty());
        assert!(o.node_records.is_empty(), "{:?}", o.node_records);
        assert!(store.load().unwrap().is_empty());
        let logins = sim
            .lock()
            .log
            .iter()
            .filter(|a| matches!(a, Action::Login { .. }))
            .count();
        assert_eq!(logins, 2, "an authentication failure is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_portal_leaves_the_volume_degraded_and_apply_times_out() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1, "127.0.0.9:3260"], 0)]);
        let r = run(&sim, &d, &store).await;
        assert!(!r.converged);
        let db = &r.volumes["db"];
        assert!(matches!(db.verdict, Verdict::Degraded(_)), "{db:?}");
        assert!(
            db.error
                .as_deref()
                .unwrap_or("")
                .contains("transport timeout"),
            "{db:?}"
        );
        assert_eq!(
            sim.snapshot().maps[0].slaves.len(),
            1,
            "the reachable path is in use meanwhile"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_lands_later_is_not_repeated_while_it_settles() {
        let sim = Rc::new(network());
        // The second path appears only after the map exists, so it has to be added to it.
        sim.lock()
            .targets
            .get_mut(TARGET_A)
            .unwrap()
            .portals
            .retain(|p| *p == addr(P1));
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
        assert!(run(&sim, &d, &store).await.converged);
        let disk = {
            let mut w = sim.lock();
            w.targets.get_mut(TARGET_A).unwrap().portals.push(addr(P2));
            w.observed.registered_wwids.clear();
            w.login_by_hand(TARGET_A, addr(P2), &[0]);
            w.add_path_lag = 20;
            w.observed.sessions[1].devices[0].disk.clone().unwrap().name
        };
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
        let r = run(&sim, &d, &store).await;
        assert!(r.converged, "{:?}", r.volumes);
        let adds = sim
            .lock()
            .log
            .iter()
            .filter(|a| **a == Action::AddPath { disk: disk.clone() })
            .count();
        assert!((1..=2).contains(&adds), "add path sent {adds} times");
    }

    #[tokio::test(start_paused = true)]
    async fn multipathd_is_given_time_to_build_the_map_before_lunkeeper_asks() {
        let sim = Rc::new(network());
        sim.lock().maps_from_uevents = true;
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
        let r = run(&sim, &d, &store).await;
        assert!(r.converged, "{:?}", r.volumes);
        assert_eq!(sim.snapshot().maps[0].slaves.len(), 2);
        let asked: Vec<_> = sim
            .lock()
            .log
            .iter()
            .filter(|a| a.multipathd_may_do_it())
            .cloned()
            .collect();
        assert!(asked.is_empty(), "{asked:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn ownership_is_recorded_before_acting() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
        run(&sim, &d, &store).await;
        let owned = store.load().unwrap();
        assert!(owned.volumes.contains_key("db"));
        assert_eq!(owned.sessions.len(), 1);
        assert_eq!(owned.nodes.len(), 1);
        assert_eq!(owned.wwids.len(), 1);
    }

    fn detaches(sim: &SimHost) -> Vec<Action> {
        sim.lock()
            .log
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Logout { .. }
                        | Action::DeleteDevice { .. }
                        | Action::FlushMap { .. }
                        | Action::DelPath { .. }
                        | Action::DeleteNode { .. }
                )
            })
            .cloned()
            .collect()
    }

    /// The packaged /etc/lunkeeper/volumes.toml (`volumes = "none"`): a fresh install logs in
    /// nowhere and detaches nothing, not even sessions and maps something else set up.
    #[tokio::test(start_paused = true)]
    async fn a_file_with_volumes_none_attaches_and_detaches_nothing() {
        let sim = Rc::new(network());
        let elsewhere = tempfile::tempdir().unwrap();
        let foreign = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
        assert!(
            run(&sim, &foreign, &OwnedStore::new(elsewhere.path()))
                .await
                .converged
        );
        sim.lock().log.clear();
        let before = sim.snapshot();

        let none = crate::desired::parse(
            std::path::Path::new("/etc/lunkeeper/volumes.toml"),
            "volumes = \"none\"\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let r = run(&sim, &none, &store).await;
        assert!(r.converged);
        assert!(r.volumes.is_empty());
        assert!(detaches(&sim).is_empty(), "{:?}", detaches(&sim));
        let log = sim.lock().log.clone();
        assert!(
            !log.iter().any(|a| matches!(a, Action::Login { .. })),
            "{log:?}"
        );
        let after = sim.snapshot();
        assert_eq!(after.sessions, before.sessions);
        assert_eq!(after.maps, before.maps);
        assert!(store.load().unwrap().volumes.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_drops_most_volumes_is_refused_whole() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let all = desired(vec![
            volume("db0", TARGET_A, &[P1, P2], 0),
            volume("db1", TARGET_A, &[P1, P2], 1),
            volume("big", TARGET_A, &[P1, P2], 300),
        ]);
        assert!(run(&sim, &all, &store).await.converged);
        let before = sim.snapshot();
        let pushed = desired(vec![volume("db0", TARGET_A, &[P1, P2], 0)]);

        let local = tokio::task::LocalSet::new();
        let r = local
            .run_until(apply(
                Rc::clone(&sim),
                &pushed,
                &store,
                &opts(),
                &mut NoWake,
            ))
            .await;
        let Err(e @ ApplyError::MassDetach(_)) = r else {
            panic!("not refused: {r:?}");
        };
        let text = e.to_string();
        assert!(text.contains("2 of 3"), "{text}");
        assert!(text.contains("--allow-mass-detach"), "{text}");
        assert!(detaches(&sim).is_empty(), "{:?}", detaches(&sim));
        assert_eq!(sim.snapshot(), before);
        assert_eq!(store.load().unwrap().volumes.len(), 3);

        // The same change said explicitly goes through.
        let explicit = desired(vec![
            volume("db0", TARGET_A, &[P1, P2], 0),
            absent(volume("db1", TARGET_A, &[P1, P2], 1)),
            absent(volume("big", TARGET_A, &[P1, P2], 300)),
        ]);
        let r = run(&sim, &explicit, &store).await;
        assert!(r.converged, "{:?}", r.volumes);
        assert_eq!(sim.snapshot().maps.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn allow_mass_detach_overrides_the_guard() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let all = desired(vec![
            volume("db0", TARGET_A, &[P1, P2], 0),
            volume("db1", TARGET_A, &[P1, P2], 1),
            volume("big", TARGET_A, &[P1, P2], 300),
        ]);
        assert!(run(&sim, &all, &store).await.converged);
        let pushed = desired(vec![volume("db0", TARGET_A, &[P1, P2], 0)]);
        let o = ApplyOptions {
            allow_mass_detach: true,
            ..opts()
        };
        let local = tokio::task::LocalSet::new();
        let r = local
            .run_until(apply(Rc::clone(&sim), &pushed, &store, &o, &mut NoWake))
            .await
            .unwrap();
        assert!(r.converged, "{:?}", r.volumes);
        assert_eq!(sim.snapshot().maps.len(), 1);
        assert!(!detaches(&sim).is_empty());
        assert_eq!(store.load().unwrap().volumes.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn apply_names_what_is_missing_and_does_nothing() {
        let sim = Rc::new(network());
        sim.lock().missing = vec![Missing::Iscsid, Missing::Multipathd];
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
        let started = Instant::now();
        let local = tokio::task::LocalSet::new();
        let r = local
            .run_until(apply(Rc::clone(&sim), &d, &store, &opts(), &mut NoWake))
            .await;
        let Err(e @ ApplyError::Preflight(_)) = r else {
            panic!("not refused: {r:?}");
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = e.to_string();
        assert!(text.contains("iscsid is not running"), "{text}");
        assert!(text.contains("systemctl start iscsid"), "{text}");
        assert!(text.contains("systemctl start multipathd"), "{text}");
        assert!(sim.lock().log.is_empty(), "{:?}", sim.lock().log);
        assert!(sim.lock().preflights > 1, "looked again before giving up");

        // multipathd is not needed without multipath; iscsid still is.
        let mut single = volume("db", TARGET_A, &[P1], 0);
        single.multipath = false;
        let r = local
            .run_until(apply(
                Rc::clone(&sim),
                &desired(vec![single]),
                &store,
                &opts(),
                &mut NoWake,
            ))
            .await;
        let Err(ApplyError::Preflight(m)) = r else {
            panic!("{r:?}");
        };
        assert_eq!(m, vec![Missing::Iscsid]);
    }

    /// A service that comes up within the wait (started just before apply) is waited for.
    #[tokio::test(start_paused = true)]
    async fn a_service_that_appears_within_the_wait_lets_apply_go_on() {
        let sim = Rc::new(network());
        sim.lock().missing = vec![Missing::Iscsid];
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
        let local = tokio::task::LocalSet::new();
        let starter = {
            let sim = Rc::clone(&sim);
            local.spawn_local(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                sim.lock().missing.clear();
            })
        };
        let r = local
            .run_until(apply(Rc::clone(&sim), &d, &store, &opts(), &mut NoWake))
            .await
            .unwrap();
        starter.await.unwrap();
        assert!(r.converged, "{:?}", r.volumes);
    }
}
