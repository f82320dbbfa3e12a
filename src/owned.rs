//! What lunkeeper created or adopted, persisted under `/var/lib/lunkeeper` so that a restart
//! (or an entry deleted from the file) still knows what it may tear down. Anything not recorded
//! here is someone else's — a boot disk, a hand-made session — and is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::Lun;
use crate::observe::Wwid;

/// A session (or its node record) is identified by the target and the portal logged in to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub target: String,
    pub portal: SocketAddr,
}

impl SessionKey {
    pub fn new(target: &str, portal: SocketAddr) -> Self {
        SessionKey {
            target: target.to_string(),
            portal,
        }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.target, self.portal)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedVolume {
    pub target: String,
    pub lun: Lun,
    /// Set once the LUN has shown its identity.
    pub wwid: Option<Wwid>,
    /// The LUN was already attached when lunkeeper first took the volume on: if the volume
    /// disappears from the file it is left as found; only `state = "absent"` takes it down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// The volume has been usable at least once. Only an attach that never got this far is
    /// rolled back after an error retrying cannot fix.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// Fields written by a newer lunkeeper, kept as they were.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// The format of `owned.json` this build writes. A missing `version` is format 1 (before
/// created and adopted sessions were told apart: every session in it counts as created).
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    #[serde(default = "format_v1")]
    pub version: u32,
    /// Sessions lunkeeper logged in itself: logged out once no present volume needs them.
    #[serde(default)]
    pub sessions: BTreeSet<SessionKey>,
    /// Sessions that existed already and matched a present volume: used, never logged out.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub adopted_sessions: BTreeSet<SessionKey>,
    /// Node records lunkeeper created; a record that existed before is never rewritten or
    /// deleted.
    #[serde(default)]
    pub nodes: BTreeSet<SessionKey>,
    /// WWIDs lunkeeper added to `/etc/multipath/wwids` (ones already there stay the operator's).
    #[serde(default)]
    pub wwids: BTreeSet<Wwid>,
    /// Volumes lunkeeper attached, by name.
    #[serde(default)]
    pub volumes: BTreeMap<String, OwnedVolume>,
    /// Fields written by a newer lunkeeper, kept as they were.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

fn format_v1() -> u32 {
    1
}

impl Default for Owned {
    fn default() -> Self {
        Owned {
            version: FORMAT_VERSION,
            sessions: BTreeSet::new(),
            adopted_sessions: BTreeSet::new(),
            nodes: BTreeSet::new(),
            wwids: BTreeSet::new(),
            volumes: BTreeMap::new(),
            unknown: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnedError {
    #[error("{path}: cannot read ownership records: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: ownership records are corrupt ({source}); refusing to guess what lunkeeper owns"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path}: ownership records in format {found}, newer than this lunkeeper knows ({known}); \
         refusing to act on records it may misread (upgrade lunkeeper)"
    )]
    Newer {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    /// The write did not finish in time (a stalled disk); nothing that needed it was done.
    #[error("cannot write ownership records: {0}")]
    Stalled(#[from] crate::act::offload::OffloadError),
    #[error("{path}: cannot write ownership records: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.adopted_sessions.is_empty()
            && self.nodes.is_empty()
            && self.wwids.is_empty()
            && self.volumes.is_empty()
    }
}

/// The ownership file and how it is read and written.
#[derive(Debug, Clone)]
pub struct OwnedStore {
    path: PathBuf,
}

impl OwnedStore {
    pub fn new(state_dir: &Path) -> Self {
        OwnedStore {
            path: state_dir.join("owned.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A missing file means nothing is owned yet; a corrupt one is an error, because guessing
    /// "nothing" would orphan attachments and guessing "everything" would tear down others'.
    pub fn load(&self) -> Result<Owned, OwnedError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Owned::default()),
            Err(source) => {
                return Err(OwnedError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let owned: Owned = serde_json::from_str(&text).map_err(|source| OwnedError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        if owned.version > FORMAT_VERSION {
            return Err(OwnedError::Newer {
                path: self.path.clone(),
                found: owned.version,
                known: FORMAT_VERSION,
            });
        }
        let mut owned = owned;
        if owned.version < 2 {
            // Format 1 did not record whether a volume had been usable: count every one as
            // having been, so no error after an upgrade ever rolls one back.
            for v in owned.volumes.values_mut() {
                v.attached = true;
            }
        }
        Ok(owned)
    }

    /// Write-then-rename, with fsync of file and directory, so a crash leaves either the old or
    /// the new record, never half of one. The file is read again first (the caller holds the
    /// host lock, so nobody else writes it meanwhile): records written by a newer lunkeeper are
    /// refused, and fields this build does not know are carried over rather than dropped.
    pub fn save(&self, owned: &Owned) -> Result<(), OwnedError> {
        let err = |source| OwnedError::Write {
            path: self.path.clone(),
            source,
        };
        let on_disk = self.load()?;
        let mut owned = owned.clone();
        owned.version = FORMAT_VERSION;
        for (key, value) in on_disk.unknown {
            owned.unknown.entry(key).or_insert(value);
        }
        for (name, record) in on_disk.volumes {
            if let Some(ours) = owned.volumes.get_mut(&name) {
                for (key, value) in record.unknown {
                    ours.unknown.entry(key).or_insert(value);
                }
            }
        }
        let json = serde_json::to_vec_pretty(&owned).map_err(|e| err(std::io::Error::other(e)))?;
        crate::files::write_atomic(&self.path, &json, 0o600).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_and_round_trip_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        assert!(store.load().unwrap().is_empty());
        let mut o = Owned::default();
        let key = SessionKey {
            target: "iqn.2026-11.test:a".into(),
            portal: "[::1]:3260".parse().unwrap(),
        };
        o.sessions.insert(key.clone());
        o.nodes.insert(key);
        o.wwids.insert("36001405abc".parse().unwrap());
        o.volumes.insert(
            "db".into(),
            OwnedVolume {
                target: "iqn.2026-11.test:a".into(),
                lun: Lun(300),
                wwid: None,
                ..Default::default()
            },
        );
        store.save(&o).unwrap();
        assert_eq!(store.load().unwrap(), o);
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        std::fs::write(store.path(), b"{\"sessions\": [").unwrap();
        assert!(matches!(store.load(), Err(OwnedError::Corrupt { .. })));
    }

    #[test]
    fn a_format_1_file_loads_with_every_session_created() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        std::fs::write(
            store.path(),
            br#"{"sessions":[{"target":"iqn.2026-11.test:a","portal":"127.0.0.1:3260"}],
                "nodes":[],"wwids":[],"volumes":{}}"#,
        )
        .unwrap();
        let o = store.load().unwrap();
        assert_eq!(o.version, 1);
        assert_eq!(o.sessions.len(), 1);
        assert!(o.adopted_sessions.is_empty());
        store.save(&o).unwrap();
        assert_eq!(store.load().unwrap().version, FORMAT_VERSION);
    }

    #[test]
    fn fields_from_a_newer_build_survive_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        std::fs::write(
            store.path(),
            br#"{"version":2,"sessions":[],"nodes":[],"wwids":[],"reservations":{"k":1},
                "volumes":{"db":{"target":"iqn.2026-11.test:a","lun":0,"wwid":null,"size":5}}}"#,
        )
        .unwrap();
        let mut o = store.load().unwrap();
        // What an older build does: it rebuilds records from its own fields only.
        o.unknown.clear();
        for v in o.volumes.values_mut() {
            v.unknown.clear();
            v.attached = true;
        }
        store.save(&o).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["reservations"]["k"], 1, "{text}");
        assert_eq!(v["volumes"]["db"]["size"], 5, "{text}");
        assert_eq!(v["volumes"]["db"]["attached"], true, "{text}");
    }

    #[test]
    fn records_from_a_newer_format_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        std::fs::write(store.path(), br#"{"version":99}"#).unwrap();
        assert!(matches!(
            store.load(),
            Err(OwnedError::Newer { found: 99, .. })
        ));
        assert!(store.save(&Owned::default()).is_err());
    }
}
