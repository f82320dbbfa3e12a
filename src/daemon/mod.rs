//! The long-running daemon: the same engine as `apply`, driven by udev events, config edits,
//! signals and timers.

pub mod iscsi_events;
mod run;
pub mod udev;
pub mod watch;

pub use run::{
    daemon_running, run, ConfigState, DaemonError, DaemonOptions, DaemonStatus, LOCK_FILE,
    STATUS_FILE,
};
