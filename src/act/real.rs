//! The real host: the kernel's sysfs, iscsiadm, multipathd.

use std::path::PathBuf;
use std::time::Duration;

use super::iscsiadm::{self, Done, Iscsiadm};
use super::multipathd::{Multipathd, Reply};
use super::sysfs::{self, SysfsError};
use super::wwids::{wwids_path, WwidsFile};
use super::{preflight, ActError, Host, Missing, ObserveFailure, Outcome};
use crate::desired::{Desired, PortalHost};
use crate::observe::names::NAMES_DIR;
use crate::observe::{self, Observed};
use crate::owned::SessionKey;
use crate::plan::{Action, NodeSettings};

#[derive(Debug, Clone)]
pub struct RealHostConfig {
    /// `/` in production; everything in sysfs, /dev and /proc is read below it.
    pub root: PathBuf,
    pub iscsiadm: Iscsiadm,
    pub multipathd: Multipathd,
    /// How long to wait for another writer's lock on `etc/multipath/wwids` below `root`.
    pub wwids_lock_timeout: Duration,
    /// A targeted scan waits for the target to answer INQUIRY and friends.
    pub scan_timeout: Duration,
    /// Deleting a path whose transport is down waits up to the replacement timeout.
    pub delete_timeout: Duration,
    pub dns_timeout: Duration,
    /// The preflight checks read a few files; a hung /proc or file system must not hold
    /// `apply` past its promise to answer within 5 s.
    pub preflight_timeout: Duration,
}

impl Default for RealHostConfig {
    fn default() -> Self {
        RealHostConfig {
            root: PathBuf::from("/"),
            iscsiadm: Iscsiadm::default(),
            multipathd: Multipathd::default(),
            wwids_lock_timeout: Duration::from_secs(10),
            scan_timeout: Duration::from_secs(30),
            delete_timeout: Duration::from_secs(60),
            dns_timeout: Duration::from_secs(5),
            preflight_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RealHost {
    config: RealHostConfig,
}

impl RealHost {
    pub fn new(config: RealHostConfig) -> Self {
        RealHost { config }
    }

    fn wwids(&self) -> WwidsFile {
        WwidsFile {
            path: wwids_path(&self.config.root),
            lock_timeout: self.config.wwids_lock_timeout,
        }
    }

    async fn resolve(&self, desired: &Desired, observed: &mut Observed) {
        let names = desired
            .volumes
            .iter()
            .flat_map(|v| v.portals.iter())
            .filter(|p| matches!(p.host, PortalHost::Name(_)));
        for portal in names {
            let text = portal.to_string();
            if observed.resolved.contains_key(&text) {
                continue;
            }
            let lookup = tokio::net::lookup_host(text.clone());
            match tokio::time::timeout(self.config.dns_timeout, lookup).await {
                Ok(Ok(mut addrs)) => {
                    if let Some(addr) = addrs.next() {
                        observed.resolved.insert(text, addr);
                    }
                }
                Ok(Err(e)) => tracing::warn!(portal = %text, error = %e, "portal does not resolve"),
                Err(_) => tracing::warn!(portal = %text, "portal name lookup timed out"),
            }
        }
    }

    /// `iscsiadm -o new` only when the record is missing (it takes iscsid.conf's defaults), then
    /// lunkeeper's keys written straight into the record file in one atomic rewrite: one
    /// process per session instead of two, and CHAP secrets never on a command line.
    async fn ensure_node(
        &self,
        key: &SessionKey,
        settings: &NodeSettings,
        login_timeout: u32,
    ) -> Result<Outcome, ActError> {
        let adm = &self.config.iscsiadm;
        let created = adm.create_node(key).await?;
        let read = |path: &PathBuf| {
            iscsiadm::read_secret(path).map_err(|source| ActError::Secret {
                path: path.clone(),
                source,
            })
        };
        let mut values: Vec<(&str, Option<String>)> = vec![
            // A login must not scan the whole target (foreign LUNs, kubernetes #59946) nor
            // come back at boot behind lunkeeper's back.
            ("node.session.scan", Some("manual".into())),
            ("node.startup", Some("manual".into())),
            (
                "node.session.timeo.replacement_timeout",
                Some(settings.replacement_timeout.to_string()),
            ),
            (
                "node.conn[0].timeo.login_timeout",
                Some(login_timeout.to_string()),
            ),
            ("node.session.initial_login_retry_max", Some("1".into())),
        ];
        match &settings.chap {
            Some(chap) => values.extend([
                ("node.session.auth.authmethod", Some("CHAP".into())),
                ("node.session.auth.username", Some(chap.username.clone())),
                (
                    "node.session.auth.password",
                    Some(read(&chap.password_file)?),
                ),
                ("node.session.auth.username_in", chap.username_in.clone()),
                (
                    "node.session.auth.password_in",
                    chap.password_in_file.as_ref().map(read).transpose()?,
                ),
            ]),
            None => values.extend([
                ("node.session.auth.authmethod", Some("None".into())),
                ("node.session.auth.username", None),
                ("node.session.auth.password", None),
                ("node.session.auth.username_in", None),
                ("node.session.auth.password_in", None),
            ]),
        }
        let record = adm.record_file(key).ok_or_else(|| ActError::NoRecord {
            session: key.to_string(),
        })?;
        iscsiadm::write_record_keys(&record, &values).map_err(|source| ActError::Record {
            path: record,
            source,
        })?;
        Ok(done(created))
    }

    async fn multipathd(&self, command: String) -> Result<Outcome, ActError> {
        let reply = self.config.multipathd.command(&command).await?;
        match Reply::parse(&reply) {
            Reply::Ok => Ok(Outcome::Changed),
            Reply::Fail(detail) if detail.contains("in use") => Err(SysfsError::InUse {
                device: command.rsplit(' ').next().unwrap_or_default().to_string(),
                reason: format!("multipathd: {detail}"),
            }
            .into()),
            Reply::Fail(detail) | Reply::Other(detail) => Err(ActError::MultipathdRefused {
                command,
                reply: detail,
            }),
        }
    }

    /// Writes the mapping the udev rule imports, then asks udev to process the device again
    /// (what `udevadm trigger --action=change` does), so the link appears now.
    async fn name_device(
        &self,
        key: &str,
        volume: &str,
        device: Option<&str>,
    ) -> Result<Outcome, ActError> {
        let path = self.config.root.join(NAMES_DIR).join(key);
        let line = format!("LUNKEEPER_VOLUME={volume}\n");
        crate::files::write_atomic(&path, line.as_bytes(), 0o644)
            .map_err(|source| ActError::Record { path, source })?;
        // A map made between the plan and the write above may have had its events processed
        // without the name: look for it now.
        let device = match device {
            Some(d) => Some(d.to_string()),
            None => self.dm_with_uuid(key),
        };
        if let Some(device) = device {
            let uevent = self
                .config
                .root
                .join("sys/class/block")
                .join(device)
                .join("uevent");
            sysfs::write_attr(uevent, "change".into(), self.config.scan_timeout).await?;
        }
        Ok(Outcome::Changed)
    }

    /// The `dm-N` whose device-mapper uuid is `uuid`, if any.
    fn dm_with_uuid(&self, uuid: &str) -> Option<String> {
        let block = self.config.root.join("sys/block");
        std::fs::read_dir(&block).ok()?.flatten().find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with("dm-") {
                return None;
            }
            let found = std::fs::read_to_string(block.join(&name).join("dm/uuid")).ok()?;
            (found.trim_end() == uuid).then_some(name)
        })
    }

    fn map_exists(&self, name: &str) -> bool {
        self.config.root.join("dev/mapper").join(name).exists()
    }

    async fn delete_device(
        &self,
        hctl: &crate::observe::Hctl,
        disk: Option<&str>,
    ) -> Result<Outcome, ActError> {
        let root = &self.config.root;
        // Held for the duration of the delete so nobody mounts the disk in between.
        let _guard = match disk {
            Some(d) => sysfs::probe_exclusive(&root.join("dev").join(d))?,
            None => None,
        };
        let path = root.join(format!("sys/class/scsi_device/{hctl}/device/delete"));
        let wrote = sysfs::write_attr(path, "1".into(), self.config.delete_timeout).await?;
        Ok(changed(wrote))
    }
}

fn changed(changed: bool) -> Outcome {
    if changed {
        Outcome::Changed
    } else {
        Outcome::AlreadySo
    }
}

fn done(d: Done) -> Outcome {
    match d {
        Done::Changed => Outcome::Changed,
        Done::AlreadySo => Outcome::AlreadySo,
    }
}

impl Host for RealHost {
    async fn observe(&self, desired: &Desired) -> Result<Observed, ObserveFailure> {
        let root = self.config.root.clone();
        let mut observed = tokio::task::spawn_blocking(move || observe::observe(&root))
            .await
            .map_err(|e| ObserveFailure::Task(e.to_string()))??;
        self.resolve(desired, &mut observed).await;
        Ok(observed)
    }

    async fn preflight(&self, desired: &Desired) -> Result<(), Vec<Missing>> {
        let root = self.config.root.clone();
        let multipath = super::wants_multipath(desired);
        let checks = tokio::task::spawn_blocking(move || preflight::check(&root, multipath));
        let missing = match tokio::time::timeout(self.config.preflight_timeout, checks).await {
            Ok(Ok(missing)) => missing,
            Ok(Err(_)) | Err(_) => vec![Missing::Unanswered],
        };
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    async fn execute(&self, action: &Action) -> Result<Outcome, ActError> {
        let c = &self.config;
        match action {
            Action::EnsureNode {
                session,
                settings,
                login_timeout_secs,
            } => {
                self.ensure_node(session, settings, *login_timeout_secs)
                    .await
            }
            Action::Login {
                session,
                timeout_secs,
            } => {
                // iscsiadm's own retries are bounded by the node settings; the margin lets it
                // report its own error before the deadline cuts it off.
                let deadline = Duration::from_secs(u64::from(*timeout_secs) + 5);
                Ok(done(c.iscsiadm.login(session, deadline).await?))
            }
            Action::Scan { host, lun, .. } => {
                let path = c.root.join(format!("sys/class/scsi_host/host{host}/scan"));
                // Channel 0, any target id (iscsi_tcp has one), exactly this LUN.
                let wrote = sysfs::write_attr(path, format!("0 - {lun}"), c.scan_timeout).await?;
                Ok(changed(wrote))
            }
            Action::RegisterWwid { wwid } => Ok(changed(self.wwids().add(wwid).await?)),
            Action::UnregisterWwid { wwid } => Ok(changed(self.wwids().remove(wwid).await?)),
            Action::AddMap { wwid } => self.multipathd(format!("add map {wwid}")).await,
            Action::AddPath { disk } => self.multipathd(format!("add path {disk}")).await,
            Action::DelPath { disk } => self.multipathd(format!("del path {disk}")).await,
            Action::DisableQueueing { map } => {
                self.multipathd(format!("disablequeueing map {map}")).await
            }
            Action::FlushMap { map } => match self.multipathd(format!("del map {map}")).await {
                Err(ActError::MultipathdRefused { .. }) if !self.map_exists(map) => {
                    Ok(Outcome::AlreadySo)
                }
                other => other,
            },
            Action::DeleteDevice { hctl, disk } => self.delete_device(hctl, disk.as_deref()).await,
            Action::Logout { session } => Ok(done(c.iscsiadm.logout(session).await?)),
            Action::NameDevice {
                key,
                volume,
                device,
            } => self.name_device(key, volume, device.as_deref()).await,
            Action::UnnameDevice { key } => {
                let path = c.root.join(NAMES_DIR).join(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(Outcome::Changed),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Outcome::AlreadySo),
                    Err(source) => Err(ActError::Record { path, source }),
                }
            }
            Action::DeleteNode { session } => Ok(done(c.iscsiadm.delete_records(session)?)),
            // Bookkeeping is matched above; listed so a new action cannot be forgotten here.
            Action::OwnVolume { .. }
            | Action::DisownVolume { .. }
            | Action::AdoptSession { .. }
            | Action::ForgetSession { .. }
            | Action::ForgetWwid { .. } => Ok(Outcome::Changed),
        }
    }
}
