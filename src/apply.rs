//! The observe → plan → act loop that `lunkeeper apply` runs until the host converges, and
//! that the daemon runs per pass. It owns no decision: it only runs what `plan` returns,
//! records ownership around it, and remembers errors to report them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::act::{ActError, Host, ObserveFailure, Outcome};
use crate::desired::{Desired, VolumeState};
use crate::observe::Observed;
use crate::owned::{OwnedError, OwnedStore};
use crate::plan::{self, ownership, Action, Lane, Plan, Subject, Verdict};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Give up (and report why) after this long.
    pub timeout: Duration,
    /// How often to look again while waiting on the kernel, udev or multipathd.
    pub poll: Duration,
    /// How long a request that takes effect later (a scan, a map, a path) is given before it is
    /// sent again.
    pub settle: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            timeout: Duration::from_secs(120),
            poll: Duration::from_millis(50),
            settle: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Observe(#[from] ObserveFailure),
    #[error(transparent)]
    Owned(#[from] OwnedError),
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

/// Runs rounds of observe → plan → act until every volume is where the file says, nothing more
/// can be done without an operator, or the timeout passes.
pub async fn apply<H: Host>(
    host: &H,
    desired: &Desired,
    store: &OwnedStore,
    opts: &ApplyOptions,
) -> Result<Report, ApplyError> {
    let mut owned = store.load()?;
    let owned_at_start: BTreeSet<String> = owned.volumes.keys().cloned().collect();
    let deadline = Instant::now() + opts.timeout;
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut executed = Vec::new();
    let mut holds = Holds::default();
    loop {
        let effective = rollback_failed(desired, &failed, &owned_at_start);
        let observed = host.observe(&effective).await?;
        let mut plan = plan::plan(&effective, &observed, &owned);
        let skipped = skip_failed(&mut plan, &effective, &observed, &failed, &owned_at_start);
        holds.apply(&mut plan);
        let nothing_to_do = plan.is_empty();
        let waiting_pays = plan.volumes.iter().any(|(name, v)| {
            !v.is_settled() && !matches!(v, Verdict::Blocked(_)) && !skipped.contains(name)
        });
        if (nothing_to_do && !waiting_pays) || Instant::now() >= deadline {
            return Ok(report(plan, observed, &errors, &failed, executed));
        }
        if nothing_to_do {
            tokio::time::sleep(opts.poll).await;
            continue;
        }

        let mut claimed = false;
        for action in plan.actions() {
            claimed |= ownership::claim(&mut owned, action);
        }
        if claimed {
            store.save(&owned)?;
        }
        let results = join_all(plan.lanes.iter().map(|lane| run_lane(host, lane))).await;
        let mut dirty = false;
        for (lane, result) in plan.lanes.iter().zip(results) {
            for (action, outcome) in result.done {
                dirty |= ownership::release(&mut owned, action);
                holds.succeeded(action, opts.settle);
                executed.push(Executed {
                    subject: lane.subject.clone(),
                    action: action.clone(),
                    changed: outcome == Outcome::Changed,
                });
            }
            if let Some((action, error)) = result.failed {
                holds.failed(action, opts.poll);
                for volume in volumes_of(&lane.subject, &effective, &observed) {
                    errors.insert(volume.clone(), format!("{action}: {error}"));
                    if error.is_permanent() {
                        failed.insert(volume);
                    }
                }
            }
        }
        if dirty {
            store.save(&owned)?;
        }
    }
}

/// When an action may run again. A request that takes effect later is given time to land
/// before it is sent again; a failed action is retried with exponential backoff (capped), so
/// one volume's trouble neither spins the loop nor delays the others.
#[derive(Default)]
struct Holds {
    until: HashMap<Action, Instant>,
    failures: HashMap<Action, u32>,
}

const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

impl Holds {
    fn succeeded(&mut self, action: &Action, settle: Duration) {
        self.failures.remove(action);
        if action.takes_effect_later() {
            self.until.insert(action.clone(), Instant::now() + settle);
        } else {
            self.until.remove(action);
        }
    }

    fn failed(&mut self, action: &Action, first_delay: Duration) {
        let n = self.failures.entry(action.clone()).or_insert(0);
        *n += 1;
        let delay = first_delay
            .saturating_mul(1 << (*n - 1).min(16))
            .min(MAX_RETRY_DELAY);
        self.until.insert(action.clone(), Instant::now() + delay);
    }

    /// Removes held actions from the plan. A lane holding a failed action waits as a whole:
    /// what precedes it was done already, and what follows depends on it. An action that is
    /// only settling is skipped alone.
    fn apply(&mut self, plan: &mut Plan) {
        let now = Instant::now();
        self.until.retain(|_, t| *t > now);
        let failed_held = |a: &Action| self.until.contains_key(a) && self.failures.contains_key(a);
        plan.lanes
            .retain(|lane| !lane.actions.iter().any(failed_held));
        for lane in plan.lanes.iter_mut() {
            lane.actions.retain(|a| !self.until.contains_key(a));
        }
        plan.lanes.retain(|l| !l.actions.is_empty());
    }
}

struct LaneResult<'a> {
    done: Vec<(&'a Action, Outcome)>,
    failed: Option<(&'a Action, ActError)>,
}

async fn run_lane<'a, H: Host>(host: &H, lane: &'a Lane) -> LaneResult<'a> {
    let span = match &lane.subject {
        Subject::Volume(v) => tracing::info_span!("lane", volume = %v),
        Subject::Session(s) => tracing::info_span!("lane", target = %s.target, portal = %s.portal),
    };
    async {
        let mut done = Vec::new();
        for action in &lane.actions {
            match host.execute(action).await {
                Ok(outcome) => {
                    info!(action = %action, changed = (outcome == Outcome::Changed), "done");
                    done.push((action, outcome));
                }
                Err(error) => {
                    warn!(action = %action, error = %error, "failed");
                    return LaneResult {
                        done,
                        failed: Some((action, error)),
                    };
                }
            }
        }
        LaneResult { done, failed: None }
    }
    .instrument(span)
    .await
}

/// A volume whose first attach failed for good is rolled back: planned as absent, so what this
/// run created for it (node records, a session) is removed again. One that was attached before
/// is left as it is.
fn rollback_failed(
    desired: &Desired,
    failed: &BTreeSet<String>,
    owned_at_start: &BTreeSet<String>,
) -> Desired {
    let mut effective = desired.clone();
    for v in effective.volumes.iter_mut() {
        let name = v.name.as_str();
        if failed.contains(name) && !owned_at_start.contains(name) {
            v.state = VolumeState::Absent;
        }
    }
    effective
}

/// Drops the lanes of failed volumes that keep their state; returns their names.
fn skip_failed(
    plan: &mut Plan,
    desired: &Desired,
    observed: &Observed,
    failed: &BTreeSet<String>,
    owned_at_start: &BTreeSet<String>,
) -> BTreeSet<String> {
    let skipped: BTreeSet<String> = failed
        .iter()
        .filter(|n| owned_at_start.contains(*n))
        .cloned()
        .collect();
    if skipped.is_empty() {
        return skipped;
    }
    plan.lanes.retain(|lane| {
        let users = volumes_of(&lane.subject, desired, observed);
        users.is_empty() || !users.iter().all(|u| skipped.contains(u))
    });
    skipped
}

/// The volumes a lane works for: its own volume, or every present volume using its session.
fn volumes_of(subject: &Subject, desired: &Desired, observed: &Observed) -> Vec<String> {
    match subject {
        Subject::Volume(v) => vec![v.clone()],
        Subject::Session(key) => desired
            .volumes
            .iter()
            .filter(|v| v.target.as_str() == key.target)
            .filter(|v| {
                v.portals.iter().any(|p| {
                    let addr = match &p.host {
                        crate::desired::PortalHost::Ip(ip) => {
                            Some(std::net::SocketAddr::new(*ip, p.port))
                        }
                        crate::desired::PortalHost::Name(_) => {
                            observed.resolved.get(&p.to_string()).copied()
                        }
                    };
                    addr == Some(key.portal)
                })
            })
            .map(|v| v.name.to_string())
            .collect(),
    }
}

fn report(
    plan: Plan,
    observed: Observed,
    errors: &BTreeMap<String, String>,
    failed: &BTreeSet<String>,
    executed: Vec<Executed>,
) -> Report {
    let volumes: BTreeMap<String, VolumeResult> = plan
        .volumes
        .into_iter()
        .map(|(name, verdict)| {
            let is_failed = failed.contains(&name);
            let error = if verdict.is_settled() && !is_failed {
                None
            } else {
                errors.get(&name).cloned()
            };
            (
                name,
                VolumeResult {
                    verdict,
                    error,
                    failed: is_failed,
                },
            )
        })
        .collect();
    let converged = volumes
        .values()
        .all(|v| v.verdict.is_settled() && !v.failed);
    Report {
        converged,
        volumes,
        notes: plan.notes,
        executed,
        observed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    fn opts() -> ApplyOptions {
        ApplyOptions {
            timeout: Duration::from_secs(5),
            poll: Duration::from_millis(1),
            settle: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn apply_converges_and_a_second_apply_does_nothing() {
        let sim = network();
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![
            volume("db", TARGET_A, &[P1, P2], 0),
            volume("big", TARGET_A, &[P1, P2], 300),
        ]);
        let r = apply(&sim, &d, &store, &opts()).await.unwrap();
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
        let r = apply(&sim, &d, &store, &opts()).await.unwrap();
        assert!(r.converged);
        assert!(r.executed.is_empty(), "{:?}", r.executed);
        assert_eq!(sim.lock().log.len(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_chap_user_fails_the_volume_and_leaves_nothing_behind() {
        let sim = network();
        sim.lock().targets.get_mut(TARGET_A).unwrap().chap_user = Some("alice".into());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![with_chap(
            volume("db", TARGET_A, &[P1, P2], 0),
            "mallory",
        )]);
        let r = apply(&sim, &d, &store, &opts()).await.unwrap();
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
        let sim = network();
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1, "127.0.0.9:3260"], 0)]);
        let r = apply(&sim, &d, &store, &opts()).await.unwrap();
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
        let sim = network();
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
        assert!(apply(&sim, &d, &store, &opts()).await.unwrap().converged);
        let disk = {
            let mut w = sim.lock();
            w.targets.get_mut(TARGET_A).unwrap().portals.push(addr(P2));
            w.observed.registered_wwids.clear();
            w.login_by_hand(TARGET_A, addr(P2), &[0]);
            w.add_path_lag = 20;
            w.observed.sessions[1].devices[0].disk.clone().unwrap().name
        };
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0)]);
        let r = apply(&sim, &d, &store, &opts()).await.unwrap();
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
    async fn ownership_is_recorded_before_acting() {
        let sim = network();
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
        apply(&sim, &d, &store, &opts()).await.unwrap();
        let owned = store.load().unwrap();
        assert!(owned.volumes.contains_key("db"));
        assert_eq!(owned.sessions.len(), 1);
        assert_eq!(owned.nodes.len(), 1);
        assert_eq!(owned.wwids.len(), 1);
    }
}
