use std::fmt;

use serde::Serialize;

use crate::desired::{Lun, SecretFile};
use crate::observe::{Hctl, Wwid};
use crate::owned::SessionKey;
use crate::status::human_size;

/// One step lunkeeper can take. Each is idempotent: running it when the world is already so
/// changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Record a volume (and, once known, its WWID) as lunkeeper's.
    OwnVolume {
        volume: String,
        target: String,
        lun: Lun,
        wwid: Option<Wwid>,
        /// The LUN was attached already when lunkeeper took the volume on.
        adopted: bool,
        /// The volume has been usable.
        attached: bool,
    },
    /// Forget a volume that has nothing left on the host, or that another name now claims.
    DisownVolume {
        volume: String,
    },
    /// Use an existing session that exactly matches a present volume; it is never logged out.
    AdoptSession {
        session: SessionKey,
    },
    /// Drop the record of a session whose session and node record are both gone.
    ForgetSession {
        session: SessionKey,
    },
    /// Drop the record of a WWID that is no longer in the wwids file.
    ForgetWwid {
        wwid: Wwid,
    },
    /// Create or update the node record so that a login scans nothing and starts nothing.
    EnsureNode {
        session: SessionKey,
        settings: NodeSettings,
        login_timeout_secs: u32,
    },
    Login {
        session: SessionKey,
        timeout_secs: u32,
    },
    /// Scan exactly one LUN on the session's SCSI host: never a wildcard LUN.
    Scan {
        session: SessionKey,
        host: u32,
        lun: Lun,
    },
    /// Add the WWID to multipath's wwids file so a map forms even with one path.
    RegisterWwid {
        wwid: Wwid,
    },
    /// Ask multipathd to create the map now.
    AddMap {
        wwid: Wwid,
    },
    AddPath {
        disk: String,
    },
    DelPath {
        disk: String,
    },
    /// Make the kernel read the device's identity and capacity again (its cached WWID is
    /// stale after the LUN behind a session was swapped on the array; its size after the LUN
    /// was grown, which the kernel reports but does not act on).
    RescanDevice {
        hctl: Hctl,
    },
    /// Have multipathd reload the map at the size every path now reports (`resize map`).
    /// Planned only when every live path agrees on a size larger than the map's: a map is
    /// never shrunk.
    ResizeMap {
        map: String,
        from_bytes: u64,
        to_bytes: u64,
    },
    /// Fail queued I/O instead of blocking forever: the map has no live path left.
    DisableQueueing {
        map: String,
    },
    /// Remove a kpartx partition map of a map being flushed (`dmsetup remove`, which the
    /// kernel refuses while the partition is open). Planned only for a partition that is not
    /// mounted and not held.
    RemovePartitionMap {
        /// The partition map's name (`<map>-part<N>`).
        part: String,
        /// The multipath map it is a partition of.
        map: String,
    },
    FlushMap {
        map: String,
    },
    DeleteDevice {
        hctl: Hctl,
        disk: Option<String>,
    },
    UnregisterWwid {
        wwid: Wwid,
    },
    Logout {
        session: SessionKey,
    },
    DeleteNode {
        session: SessionKey,
    },
    /// Map `key` (`mpath-<wwid>` or `sd-<wwid>`) to the volume's name for the udev rule, and
    /// have udev look at the device again so `/dev/lunkeeper/<volume>` appears. `device` is
    /// None for a map that does not exist yet: written before multipathd makes it, the
    /// mapping is read on the map's own uevents, which saves udev an event per map.
    NameDevice {
        key: String,
        volume: String,
        device: Option<String>,
    },
    /// Drop a name mapping nothing uses any more.
    UnnameDevice {
        key: String,
    },
}

/// What a node record must say. Secrets are referenced by file, never carried.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NodeSettings {
    pub replacement_timeout: u32,
    pub chap: Option<ChapSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ChapSettings {
    pub username: String,
    pub password_file: SecretFile,
    pub username_in: Option<String>,
    pub password_in_file: Option<SecretFile>,
}

impl Action {
    /// Whether success means "requested" rather than "done": after a scan returns the kernel
    /// still probes the disk, and multipathd defers adding a path to a map that udev has not
    /// finished processing. Repeating such a request at once only adds noise.
    pub fn takes_effect_later(&self) -> bool {
        matches!(
            self,
            Action::Scan { .. } | Action::AddMap { .. } | Action::AddPath { .. }
        )
    }

    /// Whether multipathd normally does this itself once udev has told it about the path (the
    /// WWID is registered first), so asking is only a fallback.
    pub fn multipathd_may_do_it(&self) -> bool {
        matches!(self, Action::AddMap { .. } | Action::AddPath { .. })
    }

    /// A short stable name of the kind of action, for counters and structured logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::OwnVolume { .. } => "own_volume",
            Action::DisownVolume { .. } => "disown_volume",
            Action::AdoptSession { .. } => "adopt_session",
            Action::ForgetSession { .. } => "forget_session",
            Action::ForgetWwid { .. } => "forget_wwid",
            Action::EnsureNode { .. } => "ensure_node",
            Action::Login { .. } => "login",
            Action::Scan { .. } => "scan",
            Action::RegisterWwid { .. } => "register_wwid",
            Action::AddMap { .. } => "add_map",
            Action::AddPath { .. } => "add_path",
            Action::DelPath { .. } => "del_path",
            Action::RescanDevice { .. } => "rescan_device",
            Action::ResizeMap { .. } => "resize_map",
            Action::DisableQueueing { .. } => "disable_queueing",
            Action::RemovePartitionMap { .. } => "remove_partition_map",
            Action::FlushMap { .. } => "flush_map",
            Action::DeleteDevice { .. } => "delete_device",
            Action::UnregisterWwid { .. } => "unregister_wwid",
            Action::Logout { .. } => "logout",
            Action::DeleteNode { .. } => "delete_node",
            Action::NameDevice { .. } => "name_device",
            Action::UnnameDevice { .. } => "unname_device",
        }
    }

    /// Whether the action only changes lunkeeper's own records.
    pub fn is_bookkeeping(&self) -> bool {
        matches!(
            self,
            Action::OwnVolume { .. }
                | Action::DisownVolume { .. }
                | Action::AdoptSession { .. }
                | Action::ForgetSession { .. }
                | Action::ForgetWwid { .. }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::OwnVolume {
                volume,
                target,
                lun,
                wwid,
                ..
            } => {
                write!(f, "own volume {volume} ({target} LUN {lun}")?;
                if let Some(w) = wwid {
                    write!(f, ", WWID {w}")?;
                }
                f.write_str(")")
            }
            Action::DisownVolume { volume } => write!(f, "forget volume {volume}"),
            Action::AdoptSession { session } => write!(f, "adopt session {session}"),
            Action::ForgetSession { session } => write!(f, "forget session {session}"),
            Action::ForgetWwid { wwid } => write!(f, "forget WWID {wwid}"),
            Action::EnsureNode {
                session, settings, ..
            } => {
                write!(
                    f,
                    "node record {session}: scan=manual startup=manual replacement_timeout={}",
                    settings.replacement_timeout
                )?;
                match &settings.chap {
                    Some(c) if c.username_in.is_some() => {
                        write!(f, " auth=CHAP(mutual) user={}", c.username)
                    }
                    Some(c) => write!(f, " auth=CHAP user={}", c.username),
                    None => Ok(()),
                }
            }
            Action::Login { session, .. } => write!(f, "log in to {session}"),
            Action::Scan { session, host, lun } => {
                write!(f, "scan LUN {lun} on host{host} ({session})")
            }
            Action::RegisterWwid { wwid } => write!(f, "register WWID {wwid} with multipath"),
            Action::AddMap { wwid } => write!(f, "create multipath map {wwid}"),
            Action::AddPath { disk } => write!(f, "add path {disk} to its multipath map"),
            Action::DelPath { disk } => write!(f, "remove path {disk} from its multipath map"),
            Action::RescanDevice { hctl } => {
                write!(f, "re-read the identity and capacity of SCSI device {hctl}")
            }
            Action::ResizeMap {
                map,
                from_bytes,
                to_bytes,
            } => write!(
                f,
                "grow multipath map {map} from {} to {}",
                human_size(*from_bytes),
                human_size(*to_bytes)
            ),
            Action::DisableQueueing { map } => {
                write!(f, "disable queueing on map {map} (no live path)")
            }
            Action::RemovePartitionMap { part, map } => {
                write!(f, "remove partition map {part} of {map}")
            }
            Action::FlushMap { map } => write!(f, "flush multipath map {map}"),
            Action::DeleteDevice { hctl, disk } => match disk {
                Some(d) => write!(f, "delete SCSI device {hctl} ({d})"),
                None => write!(f, "delete SCSI device {hctl}"),
            },
            Action::UnregisterWwid { wwid } => write!(f, "unregister WWID {wwid} from multipath"),
            Action::Logout { session } => write!(f, "log out of {session}"),
            Action::NameDevice {
                volume,
                device: Some(device),
                ..
            } => write!(f, "name {device} /dev/lunkeeper/{volume}"),
            Action::NameDevice {
                key,
                volume,
                device: None,
            } => write!(f, "name {key} /dev/lunkeeper/{volume} ahead of its map"),
            Action::UnnameDevice { key } => write!(f, "drop the name mapping {key}"),
            Action::DeleteNode { session } => write!(f, "delete node record {session}"),
        }
    }
}
