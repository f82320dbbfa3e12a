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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedVolume {
    pub target: String,
    pub lun: Lun,
    /// Set once the LUN has shown its identity.
    pub wwid: Option<Wwid>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owned {
    /// Sessions lunkeeper logged in, or adopted because they matched a present volume.
    #[serde(default)]
    pub sessions: BTreeSet<SessionKey>,
    /// Node records lunkeeper created or adopted.
    #[serde(default)]
    pub nodes: BTreeSet<SessionKey>,
    /// WWIDs lunkeeper added to `/etc/multipath/wwids` (ones already there stay the operator's).
    #[serde(default)]
    pub wwids: BTreeSet<Wwid>,
    /// Volumes lunkeeper attached, by name.
    #[serde(default)]
    pub volumes: BTreeMap<String, OwnedVolume>,
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
    #[error("{path}: cannot write ownership records: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
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
        serde_json::from_str(&text).map_err(|source| OwnedError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Write-then-rename, with fsync of file and directory, so a crash leaves either the old or
    /// the new record, never half of one.
    pub fn save(&self, owned: &Owned) -> Result<(), OwnedError> {
        let err = |source| OwnedError::Write {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(owned).map_err(|e| err(std::io::Error::other(e)))?;
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
}
