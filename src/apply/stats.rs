//! What the engine counts for metrics: actions by kind and result, and how long they took.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// How one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionResult {
    /// It changed the host (or lunkeeper's records).
    Changed,
    /// The world was already so.
    Already,
    Failed,
}

impl ActionResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Changed => "changed",
            ActionResult::Already => "already",
            ActionResult::Failed => "failed",
        }
    }
}

impl fmt::Display for ActionResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Upper bounds (seconds) of the duration histogram's buckets: a sysfs write takes
/// milliseconds, a login up to its timeout, a delete of a dead path up to the replacement
/// timeout.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 120.0,
];

/// A cumulative histogram as Prometheus wants it: `counts[i]` observations ≤ `DURATION_BUCKETS[i]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub counts: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, c) in DURATION_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if secs <= *bound {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += secs;
    }
}

/// Actions since the engine started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionStats {
    /// (kind, result) → how many.
    pub counts: BTreeMap<(&'static str, ActionResult), u64>,
    /// kind → durations.
    pub durations: BTreeMap<&'static str, Histogram>,
}

impl ActionStats {
    pub fn record(&mut self, kind: &'static str, result: ActionResult, took: Duration) {
        *self.counts.entry((kind, result)).or_default() += 1;
        self.durations.entry(kind).or_default().observe(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(500));
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[5], 2, "≤ 0.5 s");
        assert_eq!(
            h.counts[DURATION_BUCKETS.len() - 1],
            2,
            "500 s is only in +Inf"
        );
        assert_eq!(h.count, 3);
        assert!((h.sum_seconds - 500.303).abs() < 1e-9);
    }
}
