use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Portal, SecretFile};
use crate::observe::Wwid;

/// The validated content of a desired-state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The file this came from, for messages.
    pub source: PathBuf,
    pub daemon: DaemonSettings,
    pub volumes: Vec<Volume>,
}

impl Desired {
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// How often the daemon re-reads the whole world even without events.
    pub resync_interval: Duration,
    /// node_exporter textfile-collector file the daemon writes its metrics to; None: off
    /// (`metrics_file = ""`). See [`crate::metrics`].
    pub metrics_file: Option<PathBuf>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            resync_interval: Duration::from_secs(300),
            metrics_file: Some(PathBuf::from(crate::metrics::DEFAULT_METRICS_FILE)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: VolumeName,
    pub target: TargetName,
    /// Never empty; order as written.
    pub portals: Vec<Portal>,
    pub lun: Lun,
    pub multipath: bool,
    pub expect_wwid: Option<Wwid>,
    pub state: VolumeState,
    pub chap: Option<Chap>,
    /// Seconds, written to `node.session.timeo.replacement_timeout`.
    pub replacement_timeout: u32,
    /// How long one login may take before lunkeeper gives up on it.
    pub login_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    Present,
    Absent,
}

/// `[a-z0-9][a-z0-9._-]{0,62}`; also used as a file and device-link name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct VolumeName(pub(crate) String);

impl VolumeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An iSCSI target name in `iqn.`, `eui.` or `naa.` form, as the target reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TargetName(pub(crate) String);

impl TargetName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SCSI logical unit number as the operator writes it (0..=16383, flat space addressing).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lun(pub u32);

impl Lun {
    /// Whether the L of an observed H:C:T:L is this LUN. The kernel shows a LUN found through
    /// REPORT LUNS in flat space addressing as 0x4000 | LUN (LUN 256 → 16640), while a targeted
    /// scan shows it plainly; both are the same logical unit.
    pub fn matches(self, observed_l: u64) -> bool {
        observed_l == u64::from(self.0)
            || (self.0 >= 256 && observed_l == 0x4000 | u64::from(self.0))
    }
}

impl fmt::Display for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// CHAP settings. Secrets stay in their files until the moment they are written to the node
/// record, so they never sit in a `Desired` that may be logged or printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub username: String,
    pub password_file: SecretFile,
    /// Mutual CHAP: the name and secret the target answers with.
    pub username_in: Option<String>,
    pub password_in_file: Option<SecretFile>,
}
