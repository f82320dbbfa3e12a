//! The engine both `apply` and the daemon drive: observe, plan, start every runnable lane as its
//! own task, and record outcomes as lanes finish. A lane that waits on a slow command never
//! holds up another volume's lanes; a subject never has two lanes running at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use super::holds::{Holds, RetryPolicy};
use super::stats::{ActionResult, ActionStats};
use super::{ApplyError, Executed, VolumeResult};
use crate::act::{ActError, Host, Outcome};
use crate::desired::Desired;
use crate::observe::{Hctl, Observed, SessionState, Wwid};
use crate::owned::{Owned, OwnedStore};
use crate::plan::{self, ownership, Action, Lane, Memory, Plan, Subject, Verdict};

/// One look at the world and what was started because of it.
#[derive(Debug)]
pub struct Pass {
    /// The plan after held and running lanes were taken out; its verdicts cover every volume.
    pub plan: Plan,
    pub observed: Observed,
    pub started: usize,
    /// Lanes held back until a failed step of theirs may be tried again: the host is not as
    /// the plan wants it yet, whatever the verdicts say (a logout refused while the session
    /// reconnects leaves a session behind an "absent" volume).
    pub retrying: usize,
}

impl Pass {
    /// Whether some volume is still on its way, so looking again may show progress.
    pub fn waiting(&self, engine_failed: &BTreeSet<String>) -> bool {
        self.plan.volumes.iter().any(|(name, v)| {
            !v.is_settled() && !matches!(v, Verdict::Blocked(_)) && !engine_failed.contains(name)
        })
    }
}

/// How a session looked: healthy now (logged in, every device running), and ever.
#[derive(Debug, Clone, Copy)]
struct Health {
    now: bool,
    ever: bool,
}

struct LaneDone {
    lane: Lane,
    done: Vec<(Action, Outcome)>,
    failed: Option<(Action, ActError)>,
    /// The volumes the lane worked for, fixed when it started.
    users: Vec<String>,
    /// Every action run: its kind, how it ended and how long it took (for metrics).
    timings: Vec<(&'static str, ActionResult, std::time::Duration)>,
}

pub struct Engine<H: Host + 'static> {
    host: Rc<H>,
    store: OwnedStore,
    /// What lunkeeper owns, as last written to the store.
    owned: Owned,
    /// Releases recorded since the last successful save: written before anything else is done.
    unsaved: bool,
    holds: Holds,
    policy: RetryPolicy,
    errors: BTreeMap<String, String>,
    /// Failed volumes and devices to re-read, for the planner.
    memory: Memory,
    /// Whether each session (by id) was healthy at the last look: logged in with every device
    /// running. One that turns healthy again has recovered.
    healthy: HashMap<u32, Health>,
    running: BTreeSet<Subject>,
    tasks: JoinSet<LaneDone>,
    /// Every action done, in order: kept for `apply`, which reports them; the daemon runs for
    /// months and keeps only the counters.
    executed: Option<Vec<Executed>>,
    /// Every action by kind and result, with durations, for the daemon's metrics.
    stats: ActionStats,
}

impl<H: Host + 'static> Engine<H> {
    pub fn new(host: Rc<H>, store: OwnedStore, policy: RetryPolicy) -> Result<Self, ApplyError> {
        let owned = store.load()?;
        Ok(Engine {
            host,
            store,
            owned,
            unsaved: false,
            holds: Holds::default(),
            policy,
            errors: BTreeMap::new(),
            memory: Memory::default(),
            healthy: HashMap::new(),
            running: BTreeSet::new(),
            tasks: JoinSet::new(),
            executed: Some(Vec::new()),
            stats: ActionStats::default(),
        })
    }

    /// Keeps counters only, not the list of every action done (for a long-running daemon).
    pub fn without_log(mut self) -> Self {
        self.executed = None;
        self
    }

    /// Every action run since the engine started, by kind and result, with durations.
    pub fn action_stats(&self) -> &ActionStats {
        &self.stats
    }

    pub fn is_running(&self) -> bool {
        !self.tasks.is_empty()
    }

    pub fn failed(&self) -> &BTreeSet<String> {
        &self.memory.failed
    }

    pub fn executed(&self) -> &[Executed] {
        self.executed.as_deref().unwrap_or_default()
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
            self.memory.failed.remove(name);
        }
        self.holds = Holds::default();
    }

    /// The array reported that the capacity of the LUN behind these SCSI devices changed:
    /// the next pass has every live path of their volumes re-read it, and grows the map once
    /// they agree (see [`crate::plan::resize`]). Devices of no volume in the file are
    /// forgotten at that pass.
    pub fn capacity_changed(&mut self, devices: impl IntoIterator<Item = Hctl>) {
        self.memory.capacity_changed.extend(devices);
    }

    /// Sessions that turned healthy again since the last look, after having been healthy
    /// before (a login in progress is not a recovery): their devices' identity is read again
    /// before it is trusted.
    fn note_recoveries(&mut self, observed: &Observed) {
        let mut now = HashMap::new();
        for s in &observed.sessions {
            let healthy =
                s.state == SessionState::LoggedIn && s.devices.iter().all(|d| d.is_running());
            let before = self.healthy.get(&s.id).copied();
            let recovered = healthy && before.is_some_and(|b| b.ever && !b.now);
            if recovered {
                info!(session = s.id, target = %s.target, "session recovered; re-reading its devices' identity");
                self.memory
                    .recovered
                    .extend(s.devices.iter().map(|d| d.hctl));
            }
            let ever = healthy || before.is_some_and(|b| b.ever);
            now.insert(s.id, Health { now: healthy, ever });
        }
        self.healthy = now;
    }

    /// Writes what lunkeeper owns; on failure the records in memory stay as they were, so
    /// nothing is acted on that the store does not know.
    async fn save(&mut self, owned: Owned) -> Result<(), ApplyError> {
        // Off the event loop on the real host; a write that does not finish in time is an
        // error like any other, and nothing the claims cover runs.
        self.host.save_owned(&self.store, &owned).await?;
        self.owned = owned;
        self.unsaved = false;
        Ok(())
    }

    /// Writes releases recorded since the last save. A failure only leaves a record of
    /// something already gone; it is written again before the next pass plans anything.
    pub async fn flush(&mut self) {
        if !self.unsaved {
            return;
        }
        if let Err(e) = self.save(self.owned.clone()).await {
            warn!(error = %e, "cannot write ownership records; trying again before the next step");
        }
    }

    /// Observes, plans and starts every runnable lane that is not running already.
    /// Must run inside a `LocalSet`.
    pub async fn pass(&mut self, desired: &Desired) -> Result<Pass, ApplyError> {
        if self.unsaved {
            // A release that could not be written is retried before anything is planned.
            self.save(self.owned.clone()).await?;
        }
        let observed = self.host.observe(desired).await?;
        self.note_recoveries(&observed);
        let mut plan = plan::plan_with(desired, &observed, &self.owned, &self.memory);
        // Devices no volume asked to re-read are nobody's concern.
        let asked: BTreeSet<Hctl> = plan
            .actions()
            .filter_map(|a| match a {
                Action::RescanDevice { hctl } => Some(*hctl),
                _ => None,
            })
            .collect();
        self.memory.recovered.retain(|h| asked.contains(h));
        self.memory.capacity_changed.retain(|h| asked.contains(h));
        self.holds.retain_planned(&plan);
        let retrying = self.holds.apply(&mut plan, &self.policy);
        plan.lanes.retain(|l| !self.running.contains(&l.subject));

        // Claims are written before any action runs: after a crash lunkeeper still knows what
        // it may have created. If they cannot be written, nothing runs.
        let mut claims = self.owned.clone();
        let mut claimed = false;
        for action in plan.actions() {
            claimed |= ownership::claim(&mut claims, action);
        }
        if claimed {
            self.save(claims).await?;
        }
        let started = plan.lanes.len();
        for lane in &plan.lanes {
            self.running.insert(lane.subject.clone());
            let users = volumes_of(&lane.subject, desired, &observed);
            let host = Rc::clone(&self.host);
            let lane = lane.clone();
            self.tasks.spawn_local(run_lane(host, lane, users));
        }
        Ok(Pass {
            plan,
            observed,
            started,
            retrying,
        })
    }

    /// Waits for one running lane to finish and records its outcome. Returns false when none runs.
    pub async fn finish_one(&mut self) -> Result<bool, ApplyError> {
        let Some(joined) = self.tasks.join_next().await else {
            return Ok(false);
        };
        let recorded = self.record(joined);
        self.flush().await;
        recorded
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
        for (kind, result, took) in &done.timings {
            self.stats.record(kind, *result, *took);
        }
        let mut dirty = false;
        for (action, outcome) in &done.done {
            dirty |= ownership::release(&mut self.owned, action);
            if let Action::RescanDevice { hctl } = action {
                self.memory.recovered.remove(hctl);
                self.memory.capacity_changed.remove(hctl);
            }
            self.holds.succeeded(action, &self.policy);
            let changed = *outcome == Outcome::Changed;
            if let Some(executed) = &mut self.executed {
                executed.push(Executed {
                    subject: done.lane.subject.clone(),
                    action: action.clone(),
                    changed,
                });
            }
        }
        if let Some((action, error)) = &done.failed {
            self.holds.failed(action, &self.policy);
            for volume in &done.users {
                self.errors
                    .insert(volume.clone(), format!("{action}: {error}"));
                // A volume that was ever usable (or was found attached) is never given up on:
                // its failing step is retried with backoff like a transient one, so a CHAP
                // change on the array that is put right heals without a command.
                let was_usable = self
                    .owned
                    .volumes
                    .get(volume)
                    .is_some_and(|r| r.attached || r.adopted);
                if error.is_permanent() && !was_usable {
                    self.memory.failed.insert(volume.clone());
                }
            }
        }
        // Written by `flush` (after `finish_one`) or first thing in the next pass, off the
        // event loop either way.
        self.unsaved |= dirty;
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
                let failed = self.memory.failed.contains(name);
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
}

async fn run_lane<H: Host>(host: Rc<H>, lane: Lane, users: Vec<String>) -> LaneDone {
    // Field names are the journal's (src/journal.rs): every entry of the lane carries VOLUME
    // for each volume it works for (a session's lane serves several), TARGET and PORTAL for a
    // session; each step adds ACTION (its kind), WWID when it has one, and RESULT.
    let span = match &lane.subject {
        Subject::Volume(v) => tracing::info_span!("lane", volume = %v),
        Subject::Session(s) => tracing::info_span!(
            "lane",
            target = %s.target,
            portal = %s.portal,
            volumes = %users.join(",")
        ),
    };
    async move {
        let mut done = Vec::new();
        let mut timings = Vec::new();
        for action in &lane.actions {
            let step = tracing::info_span!(
                "step",
                action = %action.kind(),
                wwid = tracing::field::Empty
            );
            if let Some(w) = wwid_of(action) {
                step.record("wwid", tracing::field::display(w));
            }
            let started = tokio::time::Instant::now();
            let result = host.execute(action).instrument(step.clone()).await;
            let took = started.elapsed();
            let _in_step = step.enter();
            match result {
                Ok(outcome) => {
                    let result = match outcome {
                        Outcome::Changed => ActionResult::Changed,
                        Outcome::AlreadySo => ActionResult::Already,
                    };
                    // Every change to the host at info; bookkeeping and no-ops below it.
                    if result == ActionResult::Changed && !action.is_bookkeeping() {
                        info!(result = %result, ms = took.as_millis() as u64, "{action}");
                    } else {
                        debug!(result = %result, ms = took.as_millis() as u64, "{action}");
                    }
                    timings.push((action.kind(), result, took));
                    done.push((action.clone(), outcome));
                }
                Err(error) => {
                    let result = ActionResult::Failed;
                    warn!(result = %result, ms = took.as_millis() as u64, error = %error, "{action}");
                    timings.push((action.kind(), result, took));
                    let failed = Some((action.clone(), error));
                    return LaneDone {
                        lane,
                        done,
                        failed,
                        users,
                        timings,
                    };
                }
            }
        }
        LaneDone {
            lane,
            done,
            failed: None,
            users,
            timings,
        }
    }
    .instrument(span)
    .await
}

/// The WWID an action is about, for the journal's WWID field.
fn wwid_of(action: &Action) -> Option<&Wwid> {
    match action {
        Action::OwnVolume { wwid, .. } => wwid.as_ref(),
        Action::ForgetWwid { wwid }
        | Action::RegisterWwid { wwid }
        | Action::AddMap { wwid }
        | Action::UnregisterWwid { wwid } => Some(wwid),
        _ => None,
    }
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
