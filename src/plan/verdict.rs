use serde::Serialize;

/// How a volume stands, judged from what the kernel shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// Attached on every portal, device usable.
    Ready,
    /// Usable, but not on every portal.
    Degraded(String),
    /// Not yet where it should be; lunkeeper is working on it or waiting for the kernel.
    Pending(String),
    /// lunkeeper refuses to act; the reason says what an operator must do.
    Blocked(String),
    /// Marked absent and nothing of it is left.
    Absent,
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Ready => "ready",
            Verdict::Degraded(_) => "degraded",
            Verdict::Pending(_) => "pending",
            Verdict::Blocked(_) => "blocked",
            Verdict::Absent => "absent",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Degraded(r) | Verdict::Pending(r) | Verdict::Blocked(r) => Some(r),
            Verdict::Ready | Verdict::Absent => None,
        }
    }

    /// Where it should be: nothing left to wait for.
    pub fn is_settled(&self) -> bool {
        matches!(self, Verdict::Ready | Verdict::Absent)
    }
}
