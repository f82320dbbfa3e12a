//! Executors: carry out one planned action each. Every executor is idempotent (it reports
//! `Outcome::AlreadySo` when there was nothing to do) and every call into the outside world has
//! a deadline.

pub mod command;
pub mod iscsiadm;
pub mod multipathd;
pub mod offload;
pub mod preflight;
mod real;
pub mod sim;
pub mod sysfs;
pub mod wwids;

use std::future::Future;

pub use preflight::Missing;
pub use real::{RealHost, RealHostConfig};

use crate::desired::{Desired, VolumeState};
use crate::observe::{ObserveError, Observed};
use crate::owned::{Owned, OwnedError, OwnedStore};
use crate::plan::Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    AlreadySo,
}

#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error(transparent)]
    Iscsiadm(#[from] iscsiadm::IscsiadmError),
    #[error(transparent)]
    Multipathd(#[from] multipathd::MultipathdError),
    #[error("multipathd refused {command:?}: {reply}")]
    MultipathdRefused { command: String, reply: String },
    #[error(transparent)]
    Wwids(#[from] wwids::WwidsError),
    #[error(transparent)]
    Sysfs(#[from] sysfs::SysfsError),
    #[error(transparent)]
    Blocked(#[from] offload::OffloadError),
    /// The file's content never appears here: `source` comes from reading it, and
    /// [`read_secret`](iscsiadm::read_secret) never puts the content in an error.
    #[error("CHAP secret file {file} (chap.{key}): {source}")]
    Secret {
        key: &'static str,
        file: crate::desired::SecretFile,
        source: std::io::Error,
    },
    #[error("node record for {session} not found after creating it")]
    NoRecord { session: String },
    #[error("writing the node record {path}: {source}")]
    Record {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Command(#[from] command::CommandError),
    /// iscsiadm said there is no such session while the kernel still has it: iscsid, just
    /// started, has not caught up with the kernel's sessions yet. Tried again later.
    #[error("iscsid does not know session {id} of {session} yet (just started?); the kernel still has it")]
    SessionUnknownToIscsid { session: String, id: u32 },
    /// Whether the kernel still has a session could not be read.
    #[error("cannot look for the session in sysfs: {0}")]
    SessionCheck(ObserveError),
    #[error("{command} failed (exit {code:?}): {stderr}")]
    Dmsetup {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
}

impl ActError {
    /// Retrying cannot help until an operator changes something.
    ///
    /// A secret file that is missing, empty or unreadable is not permanent: it is often so for
    /// a moment while a tool rewrites it, and a permanent error may lead to a rollback of the
    /// volume, which a briefly empty file must never cause.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ActError::Iscsiadm(e) if matches!(
                e.failure(),
                Some(iscsiadm::Failure::AuthFailed | iscsiadm::Failure::FatalLogin)
            )
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveFailure {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error("cannot look at the host: {0}")]
    Task(String),
}

/// The world lunkeeper acts on: the real kernel, or a simulation for tests.
pub trait Host {
    /// A fresh snapshot; host names of the desired portals are resolved into it.
    fn observe(&self, desired: &Desired) -> impl Future<Output = Result<Observed, ObserveFailure>>;

    fn execute(&self, action: &Action) -> impl Future<Output = Result<Outcome, ActError>>;

    /// Whether what acting on `desired` needs is there (iSCSI transport, iscsid, multipathd
    /// when a present volume wants multipath, udevd, the initiator name); `Err` names every
    /// missing piece. Bounded by a deadline and never blocks the runtime thread.
    fn preflight(&self, desired: &Desired) -> impl Future<Output = Result<(), Vec<Missing>>>;

    /// Writes what lunkeeper owns. The real host does it off the event loop under a deadline
    /// (a stalled /var must not stop the watchdog ping); the simulation writes at once.
    fn save_owned(
        &self,
        store: &OwnedStore,
        owned: &Owned,
    ) -> impl Future<Output = Result<(), OwnedError>> {
        std::future::ready(store.save(owned))
    }
}

/// Whether a present volume of `desired` wants multipath, so multipathd must run.
pub fn wants_multipath(desired: &Desired) -> bool {
    desired
        .volumes
        .iter()
        .any(|v| v.state == VolumeState::Present && v.multipath)
}
