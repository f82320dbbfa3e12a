//! The status report: how each volume stands, which device to open, and each path.
//! Built from plain data only, so `status`, `apply` and the daemon print the same thing.
//!
//! `status --json`, `apply --json`, the daemon's `status.json` and `plan --json` carry
//! `"schema": SCHEMA`; docs/status-schema.md describes every field. Adding a field does not
//! change the number; renaming, removing or changing the meaning of one does.

mod table;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::apply::VolumeResult;
use crate::desired::{Desired, Volume, VolumeState};
use crate::observe::{Observed, SessionState, Wwid};
use crate::plan::Verdict;

pub use table::{human_size, render};

/// The version of the JSON documents lunkeeper prints and publishes (docs/status-schema.md).
pub const SCHEMA: u32 = 1;

pub(crate) fn schema() -> u32 {
    SCHEMA
}

/// Any document with the schema version first: `{"schema": 1, ...its fields}`.
#[derive(Debug, Clone, Serialize)]
pub struct Versioned<T> {
    pub schema: u32,
    #[serde(flatten)]
    pub document: T,
}

impl<T> Versioned<T> {
    pub fn new(document: T) -> Self {
        Versioned {
            schema: SCHEMA,
            document,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default = "schema")]
    pub schema: u32,
    pub volumes: Vec<VolumeStatus>,
    /// Usable volumes (ready or degraded by their verdict) whose `/dev/lunkeeper/<name>` udev
    /// has not made yet, or not for their current device. Only where lunkeeper's udev rule is
    /// installed: elsewhere no link is coming and nothing waits for one. A volume ready but
    /// for its link shows as pending. Not part of the JSON document.
    #[serde(skip)]
    pub awaiting_link: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub name: String,
    /// ready, degraded, pending, failed, blocked or absent.
    pub state: String,
    /// `/dev/lunkeeper/<name>`, once lunkeeper has written the udev name mapping for the
    /// volume's device (rules/90-lunkeeper.rules makes the link from it); null before.
    #[serde(default)]
    pub stable_name: Option<String>,
    /// The size of the volume's device in bytes; null while there is no device.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// What a user opens: `/dev/mapper/<map>` or `/dev/sdX`; null while there is none.
    pub device: Option<String>,
    pub wwid: Option<Wwid>,
    pub paths: Vec<PathStatus>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    pub portal: String,
    /// The iSCSI session id (N of sessionN).
    pub session: Option<u32>,
    /// The path's disk, `sdX`.
    pub device: Option<String>,
    /// active, down or missing.
    pub state: String,
}

impl Status {
    pub fn build(
        desired: &Desired,
        observed: &Observed,
        results: &BTreeMap<String, VolumeResult>,
    ) -> Status {
        let mut awaiting_link = Vec::new();
        let volumes = desired
            .volumes
            .iter()
            .map(|v| {
                let (status, linked) = volume_status(v, observed, results.get(v.name.as_str()));
                if !linked {
                    awaiting_link.push(v.name.to_string());
                }
                status
            })
            .collect();
        Status {
            schema: SCHEMA,
            volumes,
            awaiting_link,
        }
    }

    /// Whether every volume is as the file wants it: present ones ready, absent ones gone.
    pub fn as_wanted(&self) -> bool {
        all_as_wanted(&self.volumes)
    }

    /// One line for humans and for systemd's STATUS=.
    pub fn summary(&self) -> String {
        summarize(&self.volumes)
    }
}

/// Whether every volume in the list is ready or absent (an absent one is only reported
/// `absent` once it is gone from the host).
pub fn all_as_wanted(volumes: &[VolumeStatus]) -> bool {
    volumes
        .iter()
        .all(|v| v.state == "ready" || v.state == "absent")
}

/// "N ready, N degraded, ..." over any list of volume statuses.
pub fn summarize(volumes: &[VolumeStatus]) -> String {
    let count = |s: &str| volumes.iter().filter(|v| v.state == s).count();
    format!(
        "{} ready, {} degraded, {} pending, {} failed, {} blocked, {} absent",
        count("ready"),
        count("degraded"),
        count("pending"),
        count("failed"),
        count("blocked"),
        count("absent")
    )
}

/// The volume's status, and false when it is usable but waits for udev to make its
/// `/dev/lunkeeper/<name>` (see [`Status::awaiting_link`]).
fn volume_status(
    volume: &Volume,
    observed: &Observed,
    result: Option<&VolumeResult>,
) -> (VolumeStatus, bool) {
    let paths: Vec<PathStatus> = volume
        .portals
        .iter()
        .map(|portal| {
            let addr = crate::plan::portal_addr(observed, portal);
            let session = observed
                .sessions
                .iter()
                .find(|s| s.target == volume.target.as_str() && addr.is_some() && s.portal == addr);
            let device =
                session.and_then(|s| s.devices.iter().find(|d| volume.lun.matches(d.hctl.lun)));
            let state = match (session, device) {
                (Some(s), Some(d)) if s.state == SessionState::LoggedIn && d.is_running() => {
                    "active"
                }
                (Some(_), Some(_)) => "down",
                (Some(s), None) if s.state != SessionState::LoggedIn => "down",
                _ => "missing",
            };
            PathStatus {
                portal: portal.to_string(),
                session: session.map(|s| s.id),
                device: device.and_then(|d| d.disk.as_ref().map(|k| k.name.clone())),
                state: state.to_string(),
            }
        })
        .collect();

    let wwid = observed
        .sessions
        .iter()
        .filter(|s| s.target == volume.target.as_str())
        .flat_map(|s| s.devices.iter())
        .filter(|d| volume.lun.matches(d.hctl.lun))
        .find_map(|d| d.wwid.clone());
    // What a user opens, its size, and its kernel name (what /dev/lunkeeper/<name> points at).
    let (device, size_bytes, kernel) = if volume.state == VolumeState::Absent {
        (None, None, None)
    } else if volume.multipath {
        wwid.as_ref()
            .and_then(|w| observed.maps.iter().find(|m| &m.wwid == w))
            .filter(|m| m.dev.node_present)
            .map(|m| {
                let device = format!("/dev/mapper/{}", m.name);
                (Some(device), m.size_bytes, Some(m.dev.name.as_str()))
            })
            .unwrap_or_default()
    } else {
        paths
            .iter()
            .filter(|p| p.state == "active")
            .find_map(|p| p.device.as_deref())
            .map(|d| {
                let size = observed.disk_sizes.get(d).copied();
                (Some(format!("/dev/{d}")), size, Some(d))
            })
            .unwrap_or_default()
    };
    // udev makes the link a moment after the device (the mapping's "change" event, after the
    // map's own): until then a mount of /dev/lunkeeper/<name> fails, so the volume is not
    // ready. Where the rule is not installed, the link is no part of readiness.
    let linked = match &observed.links {
        None => true,
        Some(links) => {
            kernel.is_some() && links.get(volume.name.as_str()).map(String::as_str) == kernel
        }
    };
    // The mapping lunkeeper writes for this volume's device; the udev rule turns it into
    // /dev/lunkeeper/<name>.
    let key = wwid.as_ref().map(|w| match volume.multipath {
        true => format!("mpath-{w}"),
        false => format!("sd-{w}"),
    });
    let mapped = key
        .and_then(|k| observed.names.get(&k))
        .is_some_and(|n| n == volume.name.as_str());

    let (state, reason) = match result {
        Some(r) if r.failed => (
            "failed",
            r.error
                .clone()
                .or_else(|| r.verdict.reason().map(str::to_string)),
        ),
        Some(r) => {
            let reason = match (r.verdict.reason(), &r.error) {
                (Some(why), Some(err)) => Some(format!("{why}; last error: {err}")),
                (Some(why), None) => Some(why.to_string()),
                (None, err) => err.clone(),
            };
            (r.verdict.name(), reason)
        }
        None => ("pending", Some("not planned".to_string())),
    };
    let usable = matches!(
        result.map(|r| &r.verdict),
        Some(Verdict::Ready | Verdict::Degraded(_))
    );
    let (device, size_bytes) = if usable {
        (device, size_bytes)
    } else {
        (None, None)
    };
    let awaiting_link = usable && !linked;
    let (state, reason) = if awaiting_link && state == "ready" {
        let why = format!("waiting for udev to make /dev/lunkeeper/{}", volume.name);
        ("pending", Some(why))
    } else {
        (state, reason)
    };
    let stable_name =
        (usable && mapped && linked).then(|| format!("/dev/lunkeeper/{}", volume.name));
    let status = VolumeStatus {
        name: volume.name.to_string(),
        state: state.to_string(),
        stable_name,
        size_bytes,
        device,
        wwid,
        paths,
        reason,
    };
    (status, !awaiting_link)
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::act::sim::{SimHost, SIM_SIZE_BYTES};
    use crate::apply::{apply, ApplyOptions, NoWake};
    use crate::owned::OwnedStore;
    use crate::testkit::*;

    async fn converge(sim: &Rc<SimHost>, d: &Desired) -> Status {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let local = tokio::task::LocalSet::new();
        let r = local
            .run_until(apply(
                Rc::clone(sim),
                d,
                &store,
                &ApplyOptions::default(),
                &mut NoWake,
            ))
            .await
            .unwrap();
        Status::build(d, &r.observed, &r.volumes)
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_volume_shows_its_stable_name_and_size() {
        let sim = Rc::new(network());
        let mut single = volume("logs", TARGET_A, &[P1], 1);
        single.multipath = false;
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0), single]);
        let status = converge(&sim, &d).await;
        assert!(status.as_wanted(), "{status:?}");
        for v in &status.volumes {
            assert_eq!(v.state, "ready");
            assert_eq!(
                v.stable_name.as_deref(),
                Some(format!("/dev/lunkeeper/{}", v.name).as_str())
            );
            assert_eq!(v.size_bytes, Some(SIM_SIZE_BYTES), "{v:?}");
        }
        assert_eq!(status.schema, SCHEMA);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["volumes"][0]["stable_name"], "/dev/lunkeeper/db");
    }

    /// Where the udev rule is installed, `apply` is done once udev has made the links, and a
    /// volume whose link is missing or points elsewhere is pending, without its stable name.
    #[tokio::test(start_paused = true)]
    async fn with_the_udev_rule_a_volume_is_ready_once_its_link_points_at_its_device() {
        let sim = Rc::new(network());
        sim.lock().udev_rule = Some(3);
        let mut single = volume("logs", TARGET_A, &[P1], 1);
        single.multipath = false;
        let d = desired(vec![volume("db", TARGET_A, &[P1, P2], 0), single]);
        let status = converge(&sim, &d).await;
        assert!(status.as_wanted(), "{status:?}");
        assert!(status.awaiting_link.is_empty());
        let links = sim.lock().links.clone();
        let map = sim.snapshot().maps[0].dev.name.clone();
        assert_eq!(links.get("db"), Some(&map), "{links:?}");
        assert!(links.get("logs").is_some_and(|d| d.starts_with("sd")));

        // The same host seen with db's link gone, then pointing at another device.
        let mut observed = sim.snapshot();
        let mut seen = links.clone();
        seen.remove("db");
        observed.links = Some(seen.clone());
        let results = ready_results(&d);
        let s = Status::build(&d, &observed, &results);
        assert_eq!(s.awaiting_link, vec!["db".to_string()]);
        assert_eq!(s.volumes[0].state, "pending");
        assert_eq!(
            s.volumes[0].reason.as_deref(),
            Some("waiting for udev to make /dev/lunkeeper/db")
        );
        assert_eq!(s.volumes[0].stable_name, None);
        assert!(s.volumes[0].device.is_some(), "the map itself is shown");
        assert_eq!(s.volumes[1].state, "ready");
        seen.insert("db".into(), "dm-99".into());
        observed.links = Some(seen);
        let s = Status::build(&d, &observed, &results);
        assert_eq!(s.awaiting_link, vec!["db".to_string()]);

        // Without the rule no link is coming, and none is waited for.
        observed.links = None;
        let s = Status::build(&d, &observed, &results);
        assert!(s.awaiting_link.is_empty());
        assert!(s.as_wanted(), "{s:?}");
    }

    fn ready_results(d: &Desired) -> BTreeMap<String, VolumeResult> {
        d.volumes
            .iter()
            .map(|v| {
                let r = VolumeResult {
                    verdict: Verdict::Ready,
                    error: None,
                    failed: false,
                };
                (v.name.to_string(), r)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_degraded_volume_is_not_as_wanted() {
        let sim = Rc::new(network());
        let d = desired(vec![volume("db", TARGET_A, &[P1, "127.0.0.9:3260"], 0)]);
        let mut opts_status = converge(&sim, &d).await;
        assert_eq!(opts_status.volumes[0].state, "degraded");
        assert!(!opts_status.as_wanted());
        opts_status.volumes[0].state = "absent".into();
        assert!(opts_status.as_wanted());
    }

    #[test]
    fn a_status_file_without_a_schema_or_new_fields_still_reads() {
        let old = r#"{"volumes":[{"name":"db","state":"ready","device":null,"wwid":null,
            "paths":[],"reason":null}]}"#;
        let s: Status = serde_json::from_str(old).unwrap();
        assert_eq!(s.schema, SCHEMA);
        assert_eq!(s.volumes[0].stable_name, None);
    }
}
