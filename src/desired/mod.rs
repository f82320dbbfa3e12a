//! The desired-state file: schema, parsing and validation into typed values. Pure: no I/O
//! beyond reading the file, no DNS, no secrets loaded.

mod diff;
mod error;
mod parse;
mod portal;
mod secret;
mod types;

pub use diff::Diff;
pub use error::{ConfigError, Location};
pub use parse::{load, locate, parse};
pub use portal::{Portal, PortalHost};
pub use secret::SecretFile;
pub use types::{Chap, DaemonSettings, Desired, Lun, TargetName, Volume, VolumeName, VolumeState};
