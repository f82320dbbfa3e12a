//! lunkeeper keeps a host's iSCSI volumes attached exactly as a declarative file says.
//!
//! The layers are one-way: `desired` (what the file says) and `observe` (what the kernel
//! shows) feed `plan`, a pure function that returns actions; `act` carries them out;
//! `apply` loops observe → plan → act until the host converges.

pub mod act;
pub mod apply;
pub mod daemon;
pub mod desired;
pub mod doctor;
pub mod files;
pub mod journal;
pub mod lock;
pub mod metrics;
pub mod observe;
pub mod owned;
pub mod plan;
pub mod plural;
pub mod status;
pub mod stdout;
pub mod validate;

#[cfg(test)]
mod testkit;

/// The parsers of outside input, for the fuzz targets in `fuzz/`. Not an API: names and
/// signatures change with the code they expose.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::act::iscsiadm::rewrite_record;
    pub use crate::act::multipathd::{reply_len, reply_text, Reply};
    pub use crate::act::wwids::{addition as wwids_addition, find_lines as wwids_lines};
    pub use crate::daemon::udev::{relevant as udev_relevant, UdevEvent};
    pub use crate::desired::{locate, parse as parse_config, ConfigError};
    pub use crate::observe::sysfs::{
        parse_ip, parse_mount_points, parse_mountinfo, parse_portal_name, parse_registered_wwids,
    };
    pub use crate::observe::{DevNum, Hctl, SessionState, Wwid};
}
