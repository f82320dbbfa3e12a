//! When an action may run again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::plan::{Action, Plan};

/// A request that takes effect later is given time to land before it is sent again; a failed
/// action is retried with exponential backoff (capped), so one volume's trouble neither spins
/// the loop nor delays the others. Success resets the backoff.
#[derive(Debug, Default)]
pub(super) struct Holds {
    until: HashMap<Action, Instant>,
    failures: HashMap<Action, u32>,
    /// When a request multipathd usually carries out by itself was first planned.
    first_planned: HashMap<Action, Instant>,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first: Duration,
    pub cap: Duration,
    /// How long a request that takes effect later (a scan, a map, a path) is given.
    pub settle: Duration,
    /// How long multipathd is given to build a map or add a path from the path's own uevent
    /// before lunkeeper asks: asking earlier only gets refused while multipathd is still
    /// catching up with udev.
    pub grace: Duration,
}

impl Holds {
    pub fn succeeded(&mut self, action: &Action, policy: &RetryPolicy) {
        self.failures.remove(action);
        if action.takes_effect_later() {
            self.until
                .insert(action.clone(), Instant::now() + policy.settle);
        } else {
            self.until.remove(action);
        }
    }

    pub fn failed(&mut self, action: &Action, policy: &RetryPolicy) {
        let n = self.failures.entry(action.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let delay = policy
            .first
            .saturating_mul(1 << (*n - 1).min(16))
            .min(policy.cap);
        self.until.insert(action.clone(), Instant::now() + delay);
    }

    /// Forgets actions the plan no longer has (a failed login the file no longer asks for):
    /// holds are only for what is still wanted, and they must not pile up over a long run.
    pub fn retain_planned(&mut self, plan: &Plan) {
        let planned: HashSet<&Action> = plan.actions().collect();
        self.until.retain(|a, _| planned.contains(a));
        self.failures.retain(|a, _| planned.contains(a));
    }

    /// The earliest moment a held action becomes runnable again.
    pub fn next_release(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }

    /// Holds back requests multipathd may still do by itself until they have been planned for
    /// the grace period. Forgets those no longer planned, so a later need starts a new grace.
    fn hold_for_multipathd(&mut self, plan: &Plan, policy: &RetryPolicy, now: Instant) {
        let planned: HashSet<&Action> = plan
            .lanes
            .iter()
            .flat_map(|l| l.actions.iter())
            .filter(|a| a.multipathd_may_do_it())
            .collect();
        self.first_planned.retain(|a, _| planned.contains(a));
        for action in planned {
            let since = *self.first_planned.entry(action.clone()).or_insert(now);
            let until = since + policy.grace;
            if until > now && !self.until.contains_key(action) {
                self.until.insert(action.clone(), until);
            }
        }
    }

    /// Removes held actions from the plan. A lane holding a failed action waits as a whole:
    /// what precedes it was done already, and what follows depends on it. An action that is
    /// only settling is skipped alone.
    /// Returns how many lanes wait for a failed action's retry.
    pub fn apply(&mut self, plan: &mut Plan, policy: &RetryPolicy) -> usize {
        let now = Instant::now();
        self.until.retain(|_, t| *t > now);
        self.hold_for_multipathd(plan, policy, now);
        let failed_held = |a: &Action| self.until.contains_key(a) && self.failures.contains_key(a);
        let before = plan.lanes.len();
        plan.lanes
            .retain(|lane| !lane.actions.iter().any(failed_held));
        let retrying = before - plan.lanes.len();
        for lane in plan.lanes.iter_mut() {
            lane.actions.retain(|a| !self.until.contains_key(a));
        }
        plan.lanes.retain(|l| !l.actions.is_empty());
        retrying
    }
}
