//! The engine both `apply` and the daemon drive: observe, plan, start every runnable lane as its
//! own task, and record outcomes as lanes finish. A lane that waits on a slow command never
//! holds up another volume's lanes; a subject never has two lanes running at once.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use super::holds::{Holds, RetryPolicy};
use super::{ApplyError, Executed, VolumeResult};
use crate::act::{ActError, Host, Outcome};
use crate::desired::{Desired, VolumeState};
use crate::observe::Observed;
use crate::owned::{Owned, OwnedStore};
use crate::plan::{self, ownership, Action, Lane, Plan, Subject, Verdict};

/// One look at the world and what was started because of it.
#[derive(Debug)]
pub struct Pass {
    /// The plan after held and running lanes were taken out; its verdicts cover every volume.
    pub plan: Plan,
    pub observed: Observed,
    pub started: usize,
}

impl Pass {
    /// Whether some volume is still on its way, so looking again may show progress.
    pub fn waiting(&self, engine_failed: &BTreeSet<String>) -> bool {
        self.plan.volumes.iter().any(|(name, v)| {
            !v.is_settled() && !matches!(v, Verdict::Blocked(_)) && !engine_failed.contains(name)
        })
    }
}

struct LaneDone {
    lane: Lane,
    done: Vec<(Action, Outcome)>,
    failed: Option<(Action, ActError)>,
    /// The volumes the lane worked for, fixed when it started.
    users: Vec<String>,
}

pub struct Engine<H: Host + 'static> {
    host: Rc<H>,
    store: OwnedStore,
    owned: Owned,
    /// Volumes lunkeeper owned before this engine started: their state is not rolled back.
    owned_at_start: BTreeSet<String>,
    holds: Holds,
    policy: RetryPolicy,
    errors: BTreeMap<String, String>,
    failed: BTreeSet<String>,
    running: BTreeSet<Subject>,
    tasks: JoinSet<LaneDone>,
    executed: Vec<Executed>,
}

impl<H: Host + 'static> Engine<H> {
    pub fn new(host: Rc<H>, store: OwnedStore, policy: RetryPolicy) -> Result<Self, ApplyError> {
        let owned = store.load()?;
        Ok(Engine {
            host,
            store,
            owned_at_start: owned.volumes.keys().cloned().collect(),
            owned,
            holds: Holds::default(),
            policy,
            errors: BTreeMap::new(),
            failed: BTreeSet::new(),
            running: BTreeSet::new(),
            tasks: JoinSet::new(),
            executed: Vec::new(),
        })
    }

    pub fn is_running(&self) -> bool {
        !self.tasks.is_empty()
    }

    pub fn failed(&self) -> &BTreeSet<String> {
        &self.failed
    }

    pub fn executed(&self) -> &[Executed] {
        &self.executed
    }

    /// What lunkeeper owns now, as last recorded.
    pub fn owned(&self) -> &Owned {
        &self.owned
    }

    pub fn next_release(&self) -> Option<tokio::time::Instant> {
        self.holds.next_release()
    }

    /// Forgets errors of volumes the file no longer lists or has changed, so an edit gets a
    /// fresh start (a corrected CHAP secret is tried at once).
    pub fn reset_volumes(&mut self, names: &BTreeSet<String>) {
        for name in names {
            self.errors.remove(name);
            self.failed.remove(name);
        }
        self.holds = Holds::default();
    }

    /// Observes, plans and starts every runnable lane that is not running already.
    /// Must run inside a `LocalSet`.
    pub async fn pass(&mut self, desired: &Desired) -> Result<Pass, ApplyError> {
        let effective = self.rollback_failed(desired);
        let observed = self.host.observe(&effective).await?;
        let mut plan = plan::plan(&effective, &observed, &self.owned);
        self.skip_failed(&mut plan, &effective, &observed);
        self.holds.apply(&mut plan, &self.policy);
        plan.lanes.retain(|l| !self.running.contains(&l.subject));

        let mut claimed = false;
        for action in plan.actions() {
            claimed |= ownership::claim(&mut self.owned, action);
        }
        if claimed {
            self.store.save(&self.owned)?;
        }
        let started = plan.lanes.len();
        for lane in &plan.lanes {
            self.running.insert(lane.subject.clone());
            let users = volumes_of(&lane.subject, &effective, &observed);
            let host = Rc::clone(&self.host);
            let lane = lane.clone();
            self.tasks.spawn_local(run_lane(host, lane, users));
        }
        Ok(Pass {
            plan,
            observed,
            started,
        })
    }

    /// Waits for one running lane to finish and records its outcome. Returns false when none runs.
    pub async fn finish_one(&mut self) -> Result<bool, ApplyError> {
        let Some(joined) = self.tasks.join_next().await else {
            return Ok(false);
        };
        self.record(joined)
    }

    /// Records a lane that has already finished, without waiting; false when none has.
    pub fn finish_ready(&mut self) -> Result<bool, ApplyError> {
        match self.tasks.try_join_next() {
            Some(joined) => self.record(joined),
            None => Ok(false),
        }
    }

    fn record(
        &mut self,
        joined: Result<LaneDone, tokio::task::JoinError>,
    ) -> Result<bool, ApplyError> {
        let done = match joined {
            Ok(done) => done,
            // A lane task only ends abnormally when aborted at shutdown.
            Err(e) => {
                warn!(error = %e, "lane task ended abnormally");
                return Ok(true);
            }
        };
        self.running.remove(&done.lane.subject);
        let mut dirty = false;
        for (action, outcome) in &done.done {
            dirty |= ownership::release(&mut self.owned, action);
            self.holds.succeeded(action, &self.policy);
            self.executed.push(Executed {
                subject: done.lane.subject.clone(),
                action: action.clone(),
                changed: *outcome == Outcome::Changed,
            });
        }
        if let Some((action, error)) = &done.failed {
            self.holds.failed(action, &self.policy);
            for volume in &done.users {
                self.errors
                    .insert(volume.clone(), format!("{action}: {error}"));
                if error.is_permanent() {
                    self.failed.insert(volume.clone());
                }
            }
        }
        if dirty {
            self.store.save(&self.owned)?;
        }
        Ok(true)
    }

    /// Stops every running lane (their child processes are killed) and records nothing more.
    pub async fn abandon(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.running.clear();
    }

    /// The verdicts of a pass with what the engine knows about errors.
    pub fn results(&self, plan: &Plan) -> BTreeMap<String, VolumeResult> {
        plan.volumes
            .iter()
            .map(|(name, verdict)| {
                let failed = self.failed.contains(name);
                let error = if verdict.is_settled() && !failed {
                    None
                } else {
                    self.errors.get(name).cloned()
                };
                (
                    name.clone(),
                    VolumeResult {
                        verdict: verdict.clone(),
                        error,
                        failed,
                    },
                )
            })
            .collect()
    }

    /// A volume whose first attach failed for good is rolled back: planned as absent, so what
    /// was created for it (node records, a session) is removed again. One that was attached
    /// before is left as it is.
    fn rollback_failed(&self, desired: &Desired) -> Desired {
        let mut effective = desired.clone();
        for v in effective.volumes.iter_mut() {
            let name = v.name.as_str();
            if self.failed.contains(name) && !self.owned_at_start.contains(name) {
                v.state = VolumeState::Absent;
            }
        }
        effective
    }

    /// Drops the lanes of failed volumes that keep their state.
    fn skip_failed(&self, plan: &mut Plan, desired: &Desired, observed: &Observed) {
        let kept: BTreeSet<&String> = self
            .failed
            .iter()
            .filter(|n| self.owned_at_start.contains(*n))
            .collect();
        if kept.is_empty() {
            return;
        }
        plan.lanes.retain(|lane| {
            let users = volumes_of(&lane.subject, desired, observed);
            users.is_empty() || !users.iter().all(|u| kept.contains(u))
        });
    }
}

async fn run_lane<H: Host>(host: Rc<H>, lane: Lane, users: Vec<String>) -> LaneDone {
    let span = match &lane.subject {
        Subject::Volume(v) => tracing::info_span!("lane", volume = %v),
        Subject::Session(s) => tracing::info_span!("lane", target = %s.target, portal = %s.portal),
    };
    async move {
        let mut done = Vec::new();
        for action in &lane.actions {
            match host.execute(action).await {
                Ok(outcome) => {
                    info!(action = %action, changed = (outcome == Outcome::Changed), "done");
                    done.push((action.clone(), outcome));
                }
                Err(error) => {
                    warn!(action = %action, error = %error, "failed");
                    let failed = Some((action.clone(), error));
                    return LaneDone {
                        lane,
                        done,
                        failed,
                        users,
                    };
                }
            }
        }
        LaneDone {
            lane,
            done,
            failed: None,
            users,
        }
    }
    .instrument(span)
    .await
}

/// The volumes a lane works for: its own volume, or every present volume using its session.
pub(super) fn volumes_of(subject: &Subject, desired: &Desired, observed: &Observed) -> Vec<String> {
    match subject {
        Subject::Volume(v) => vec![v.clone()],
        Subject::Session(key) => desired
            .volumes
            .iter()
            .filter(|v| v.target.as_str() == key.target)
            .filter(|v| {
                v.portals
                    .iter()
                    .any(|p| plan::portal_addr(observed, p) == Some(key.portal))
            })
            .map(|v| v.name.to_string())
            .collect(),
    }
}
