//! Builders for tests: desired volumes without the TOML parser, and a simulated storage network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::act::sim::{SimHost, SimTarget};
use crate::desired::{
    Chap, DaemonSettings, Desired, Lun, Portal, PortalHost, SecretFile, TargetName, Volume,
    VolumeName, VolumeState,
};
use crate::observe::Wwid;

pub const TARGET_A: &str = "iqn.2026-11.test.lunkeeper:a";
pub const TARGET_B: &str = "iqn.2026-11.test.lunkeeper:b";
pub const P1: &str = "127.0.0.1:3260";
pub const P2: &str = "127.0.0.2:3260";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

pub fn wwid(s: &str) -> Wwid {
    s.parse().expect("test wwid")
}

pub fn volume(name: &str, target: &str, portals: &[&str], lun: u32) -> Volume {
    Volume {
        name: VolumeName(name.to_string()),
        target: TargetName(target.to_string()),
        portals: portals
            .iter()
            .map(|p| {
                let a = addr(p);
                Portal {
                    host: PortalHost::Ip(a.ip()),
                    port: a.port(),
                }
            })
            .collect(),
        lun: Lun(lun),
        multipath: true,
        expect_wwid: None,
        state: VolumeState::Present,
        chap: None,
        replacement_timeout: 5,
        login_timeout: Duration::from_secs(15),
    }
}

/// The volume with its portal `index` written as a host name (resolve it with
/// `observed.resolved` in the simulation).
pub fn named_portal(mut v: Volume, index: usize, name: &str) -> Volume {
    v.portals[index].host = PortalHost::Name(name.to_string());
    v
}

pub fn absent(mut v: Volume) -> Volume {
    v.state = VolumeState::Absent;
    v
}

pub fn with_chap(mut v: Volume, user: &str) -> Volume {
    v.chap = Some(Chap {
        username: user.to_string(),
        password_file: SecretFile::absolute(format!("/etc/lunkeeper/secrets/{user}"))
            .expect("an absolute path"),
        username_in: None,
        password_in_file: None,
    });
    v
}

pub fn desired(volumes: Vec<Volume>) -> Desired {
    Desired {
        source: PathBuf::from("/test/volumes.toml"),
        daemon: DaemonSettings::default(),
        volumes,
    }
}

/// A network with TARGET_A (LUNs 0, 1, 300 on P1 and P2) and TARGET_B (LUN 0 on P1).
pub fn network() -> SimHost {
    let sim = SimHost::new();
    sim.add_target(
        TARGET_A,
        SimTarget {
            portals: vec![addr(P1), addr(P2)],
            luns: BTreeMap::from([
                (0, wwid("36001405aaaa000000000000000000000")),
                (1, wwid("36001405aaaa000000000000000000001")),
                (300, wwid("36001405aaaa000000000000000000300")),
            ]),
            chap_user: None,
        },
    );
    sim.add_target(
        TARGET_B,
        SimTarget {
            portals: vec![addr(P1)],
            luns: BTreeMap::from([(0, wwid("36001405bbbb000000000000000000000"))]),
            chap_user: None,
        },
    );
    sim
}
