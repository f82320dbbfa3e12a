//! The status report: how each volume stands, which device to open, and each path.
//! Built from plain data only, so `status`, `apply` and the daemon print the same thing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::apply::VolumeResult;
use crate::desired::{Desired, Volume, VolumeState};
use crate::observe::{Observed, SessionState, Wwid};
use crate::plan::Verdict;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub volumes: Vec<VolumeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub name: String,
    /// ready, degraded, pending, failed, blocked or absent.
    pub state: String,
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
        let volumes = desired
            .volumes
            .iter()
            .map(|v| volume_status(v, observed, results.get(v.name.as_str())))
            .collect();
        Status { volumes }
    }

    /// One line for humans and for systemd's STATUS=.
    pub fn summary(&self) -> String {
        summarize(&self.volumes)
    }
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

fn volume_status(
    volume: &Volume,
    observed: &Observed,
    result: Option<&VolumeResult>,
) -> VolumeStatus {
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
    let device = if volume.state == VolumeState::Absent {
        None
    } else if volume.multipath {
        wwid.as_ref()
            .and_then(|w| observed.maps.iter().find(|m| &m.wwid == w))
            .filter(|m| m.dev.node_present)
            .map(|m| format!("/dev/mapper/{}", m.name))
    } else {
        paths
            .iter()
            .filter(|p| p.state == "active")
            .find_map(|p| p.device.as_ref())
            .map(|d| format!("/dev/{d}"))
    };

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
    let device = if matches!(
        result.map(|r| &r.verdict),
        Some(Verdict::Ready | Verdict::Degraded(_))
    ) {
        device
    } else {
        None
    };
    VolumeStatus {
        name: volume.name.to_string(),
        state: state.to_string(),
        device,
        wwid,
        paths,
        reason,
    }
}
