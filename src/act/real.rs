//! The real host: the kernel's sysfs, iscsiadm, multipathd.

use std::path::PathBuf;
use std::time::Duration;

use super::command;
use super::iscsiadm::{self, Done, Iscsiadm};
use super::multipathd::{Multipathd, Reply};
use super::offload::Offload;
use super::sysfs::{self, SysfsError};
use super::wwids::{wwids_path, WwidsFile};
use super::{preflight, ActError, Host, Missing, ObserveFailure, Outcome};
use crate::desired::{Desired, PortalHost, SecretFile};
use crate::observe::names::NAMES_DIR;
use crate::observe::{self, Observed};
use crate::owned::SessionKey;
use crate::owned::{Owned, OwnedError, OwnedStore};
use crate::plan::{Action, NodeSettings};

/// `resize map` is asked at most this often per action, 100 ms apart and doubling (1.5 s in
/// all): multipathd refuses it while the map waits for udev or another command holds its
/// lock. A refusal that outlasts this fails the action, which is retried with backoff.
const RESIZE_ATTEMPTS: u32 = 5;
const RESIZE_RETRY_FIRST: Duration = Duration::from_millis(100);

/// `dmsetup remove` of one partition map: an ioctl, then a wait for udev to have processed the
/// removal (udev sync). `--retry` tries again for a few seconds while udev's own probe still
/// holds the device open. A udev that does not answer must not hold up the lane for longer.
const DMSETUP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct RealHostConfig {
    /// `/` in production; everything in sysfs, /dev and /proc is read below it.
    pub root: PathBuf,
    pub iscsiadm: Iscsiadm,
    pub multipathd: Multipathd,
    /// The `dmsetup` program (partition maps are removed with it).
    pub dmsetup: String,
    /// How long to wait for another writer's lock on `etc/multipath/wwids` below `root`.
    pub wwids_lock_timeout: Duration,
    /// A targeted scan waits for the target to answer INQUIRY and friends.
    pub scan_timeout: Duration,
    /// Deleting a path whose transport is down waits up to the replacement timeout.
    pub delete_timeout: Duration,
    pub dns_timeout: Duration,
    /// Reading a secret, writing a node record or a name mapping: local files, but on a host
    /// whose disks stall these block too, and they must not block the event loop forever.
    pub file_timeout: Duration,
    /// The preflight checks read a few files; a hung /proc or file system must not hold
    /// `apply` past its promise to answer within 5 s.
    pub preflight_timeout: Duration,
    /// One look at sysfs: a read of a device attribute can block while the device is stuck; a
    /// look that takes longer fails (transient) and the next one is tried later.
    pub observe_timeout: Duration,
}

impl Default for RealHostConfig {
    fn default() -> Self {
        RealHostConfig {
            root: PathBuf::from("/"),
            iscsiadm: Iscsiadm::default(),
            multipathd: Multipathd::default(),
            dmsetup: "dmsetup".to_string(),
            wwids_lock_timeout: Duration::from_secs(10),
            scan_timeout: Duration::from_secs(30),
            delete_timeout: Duration::from_secs(60),
            dns_timeout: Duration::from_secs(5),
            file_timeout: Duration::from_secs(10),
            preflight_timeout: Duration::from_secs(2),
            observe_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RealHost {
    config: RealHostConfig,
    /// Every blocking call of this host's executors runs through it.
    offload: Offload,
}

impl RealHost {
    pub fn new(config: RealHostConfig) -> Self {
        RealHost {
            config,
            offload: Offload::default(),
        }
    }

    /// Removes temp files a killed lunkeeper left in or beside the node database, where
    /// open-iscsi would read them as records. Run once at start, before acting.
    pub async fn sweep_leftovers(&self) {
        let adm = self.config.iscsiadm.clone();
        let proc = self.config.root.join("proc");
        let swept = self
            .offload
            .run(
                "sweeping temp files of the node database",
                None,
                self.config.file_timeout,
                move || adm.sweep_leftovers(&proc),
            )
            .await;
        match swept {
            Ok(0) => {}
            Ok(removed) => tracing::warn!(
                removed,
                "removed temp files a killed lunkeeper left in the iSCSI node database"
            ),
            Err(error) => tracing::warn!(%error, "could not sweep the node database's temp files"),
        }
    }

    /// Threads left blocked in the kernel by calls that passed their deadline.
    pub fn stuck_calls(&self) -> usize {
        self.offload.stuck()
    }

    /// Edits multipath's wwids file off the event loop: waiting for its lock, writing and
    /// syncing it can all block.
    async fn edit_wwids(
        &self,
        what: &str,
        wwid: &crate::observe::Wwid,
        add: bool,
    ) -> Result<Outcome, ActError> {
        let file = self.wwids();
        let deadline = file.lock_timeout + self.config.file_timeout;
        let object = file.path.to_string_lossy().into_owned();
        let wwid = wwid.clone();
        let edited = self
            .offload
            .run(what, Some(&object), deadline, move || {
                if add {
                    file.add(&wwid)
                } else {
                    file.remove(&wwid)
                }
            })
            .await??;
        Ok(changed(edited))
    }

    /// The id of a session the kernel has to this target through this portal, if any.
    async fn kernel_session(
        &self,
        key: &crate::owned::SessionKey,
    ) -> Result<Option<u32>, ActError> {
        let root = self.config.root.clone();
        let observed = self
            .offload
            .run(
                "looking for the session in sysfs",
                Some("observe"),
                self.config.observe_timeout,
                move || observe::observe(&root),
            )
            .await?;
        let observed = observed.map_err(ActError::SessionCheck)?;
        Ok(observed
            .sessions
            .iter()
            .find(|s| s.target == key.target && s.portal == Some(key.portal))
            .map(|s| s.id))
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
        let (adm, key_owned, settings) = (adm.clone(), key.clone(), settings.clone());
        // The secret reads and the record write touch files only: one call off the event loop,
        // one at a time per session's record.
        let object = format!("node record {key}");
        self.offload
            .run(
                &format!("writing the {object}"),
                Some(&object),
                self.config.file_timeout,
                move || write_node(&adm, &key_owned, &settings, login_timeout),
            )
            .await??;
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
        let target = path.clone();
        self.offload
            .run(
                &format!("writing {}", path.display()),
                Some(&path.display().to_string()),
                self.config.file_timeout,
                move || crate::files::write_atomic(&target, line.as_bytes(), 0o644),
            )
            .await?
            .map_err(|source| ActError::Record { path, source })?;
        // A map made between the plan and the write above may have had its events processed
        // without the name: look for it now.
        let device = match device {
            Some(d) => Some(d.to_string()),
            None => self.dm_with_uuid(key),
        };
        if let Some(device) = device {
            // Its partitions (made before the mapping existed, e.g. on a volume adopted with
            // a partition table) read the same mapping for their -partN links.
            let partitions = self.partitions_of(&device, key);
            for dev in std::iter::once(device).chain(partitions) {
                let uevent = self
                    .config
                    .root
                    .join("sys/class/block")
                    .join(dev)
                    .join("uevent");
                sysfs::write_attr(
                    &self.offload,
                    uevent,
                    "change".into(),
                    self.config.scan_timeout,
                )
                .await?;
            }
        }
        Ok(Outcome::Changed)
    }

    /// The partitions of `device`: `sdXN` below a disk, or the kpartx maps holding a map
    /// whose uuid is `part<N>-<key>` (`key` is the map's uuid, `mpath-<wwid>`).
    fn partitions_of(&self, device: &str, key: &str) -> Vec<String> {
        let dir = self.config.root.join("sys/class/block").join(device);
        if device.starts_with("dm-") {
            let Ok(holders) = std::fs::read_dir(dir.join("holders")) else {
                return Vec::new();
            };
            let suffix = format!("-{key}");
            holders
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let uuid =
                        std::fs::read_to_string(dir.join("holders").join(&name).join("dm/uuid"))
                            .ok()?;
                    let uuid = uuid.trim_end();
                    (uuid.starts_with("part") && uuid.ends_with(&suffix)).then_some(name)
                })
                .collect()
        } else {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Vec::new();
            };
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    (name.starts_with(device) && dir.join(&name).join("partition").exists())
                        .then_some(name)
                })
                .collect()
        }
    }

    /// Removes a kpartx partition map by its name. The kernel refuses to remove a dm device
    /// that is open (mounted, held, opened by anyone), so no force and no deferred removal:
    /// a busy partition stays and the lane ends with the refusal.
    async fn remove_partition_map(&self, part: &str) -> Result<Outcome, ActError> {
        if !self.map_exists(part) {
            return Ok(Outcome::AlreadySo);
        }
        let done = command::run(
            &self.config.dmsetup,
            &["remove", "--retry", "--", part],
            DMSETUP_TIMEOUT,
        )
        .await?;
        if done.success() {
            return Ok(Outcome::Changed);
        }
        if !self.map_exists(part) {
            return Ok(Outcome::AlreadySo);
        }
        let stderr = done.stderr.trim().to_string();
        if stderr.contains("busy") {
            return Err(SysfsError::InUse {
                device: part.to_string(),
                reason: format!("dmsetup: {stderr}"),
            }
            .into());
        }
        Err(ActError::Dmsetup {
            command: format!("dmsetup remove {part}"),
            code: done.code,
            stderr,
        })
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
        // Held for the duration of the delete so nobody mounts the disk in between, then
        // closed off the event loop (the last close flushes again); on an error path dropping
        // it closes it on a detached thread.
        let guard = match disk {
            Some(d) => {
                let node = root.join("dev").join(d);
                sysfs::probe_exclusive(&self.offload, &node, self.config.delete_timeout).await?
            }
            None => None,
        };
        let path = root.join(format!("sys/class/scsi_device/{hctl}/device/delete"));
        let wrote =
            sysfs::write_attr(&self.offload, path, "1".into(), self.config.delete_timeout).await?;
        if let Some(guard) = guard {
            // The disk is deleted: a close that hangs does not undo that.
            if let Err(error) = guard.close(self.config.delete_timeout).await {
                tracing::warn!(%hctl, %error, "closing a deleted disk did not finish");
            }
        }
        Ok(changed(wrote))
    }
}

/// Sets lunkeeper's keys in the session's node record, CHAP secrets read from their files.
/// Runs on a detached thread: it reads and writes files only.
fn write_node(
    adm: &Iscsiadm,
    key: &SessionKey,
    settings: &NodeSettings,
    login_timeout: u32,
) -> Result<(), ActError> {
    let read = |key: &'static str, file: &SecretFile| {
        iscsiadm::read_secret(file.path()).map_err(|source| ActError::Secret {
            key,
            file: file.clone(),
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
                Some(read("password_file", &chap.password_file)?),
            ),
            ("node.session.auth.username_in", chap.username_in.clone()),
            (
                "node.session.auth.password_in",
                chap.password_in_file
                    .as_ref()
                    .map(|f| read("password_in_file", f))
                    .transpose()?,
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
    adm.write_record_keys(&record, &values)
        .map_err(|source| ActError::Record {
            path: record,
            source,
        })
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
        // The volumes' (target, LUN): their disks' sizes are read for status and, for paths
        // of a map, to notice a LUN the array grew. One small read per path of the file's
        // volumes, never one per disk of the host.
        let luns: Vec<(String, crate::desired::Lun)> = desired
            .volumes
            .iter()
            .map(|v| (v.target.to_string(), v.lun))
            .collect();
        // On the offload threads, not tokio's blocking pool: a look stuck in the kernel must
        // not keep `apply` or the daemon from exiting, and only one look runs at a time.
        let mut observed = self
            .offload
            .run(
                "looking at sysfs",
                Some("observe"),
                self.config.observe_timeout,
                move || {
                    let mut observed = observe::observe(&root)?;
                    observed.disk_sizes = observe::read_disk_sizes(&root, &observed, &luns);
                    Ok::<_, observe::ObserveError>(observed)
                },
            )
            .await
            .map_err(|e| ObserveFailure::Task(e.to_string()))??;
        self.resolve(desired, &mut observed).await;
        Ok(observed)
    }

    async fn save_owned(&self, store: &OwnedStore, owned: &Owned) -> Result<(), OwnedError> {
        let (store, owned) = (store.clone(), owned.clone());
        let path = store.path().display().to_string();
        self.offload
            .run(
                &format!("writing {path}"),
                Some(&path),
                self.config.file_timeout,
                move || store.save(&owned),
            )
            .await?
    }

    async fn preflight(&self, desired: &Desired) -> Result<(), Vec<Missing>> {
        let root = self.config.root.clone();
        let multipath = super::wants_multipath(desired);
        let checks = self.offload.run(
            "checking what acting needs",
            Some("preflight"),
            self.config.preflight_timeout,
            move || preflight::check(&root, multipath),
        );
        let missing = checks.await.unwrap_or_else(|_| vec![Missing::Unanswered]);
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
                let wrote =
                    sysfs::write_attr(&self.offload, path, format!("0 - {lun}"), c.scan_timeout)
                        .await?;
                Ok(changed(wrote))
            }
            Action::RegisterWwid { wwid } => self.edit_wwids("register a WWID", wwid, true).await,
            Action::UnregisterWwid { wwid } => {
                self.edit_wwids("unregister a WWID", wwid, false).await
            }
            Action::AddMap { wwid } => self.multipathd(format!("add map {wwid}")).await,
            Action::AddPath { disk } => self.multipathd(format!("add path {disk}")).await,
            Action::DelPath { disk } => self.multipathd(format!("del path {disk}")).await,
            Action::ResizeMap { map, .. } => {
                let command = format!("resize map {map}");
                let reply = c
                    .multipathd
                    .command_retrying(&command, RESIZE_ATTEMPTS, RESIZE_RETRY_FIRST)
                    .await?;
                match reply {
                    // multipathd answers `ok` also when the map already has the paths' size.
                    Reply::Ok => Ok(Outcome::Changed),
                    Reply::Fail(reply) | Reply::Other(reply) => {
                        Err(ActError::MultipathdRefused { command, reply })
                    }
                }
            }
            Action::DisableQueueing { map } => {
                self.multipathd(format!("disablequeueing map {map}")).await
            }
            Action::RemovePartitionMap { part, .. } => self.remove_partition_map(part).await,
            Action::FlushMap { map } => match self.multipathd(format!("del map {map}")).await {
                Err(ActError::MultipathdRefused { .. }) if !self.map_exists(map) => {
                    Ok(Outcome::AlreadySo)
                }
                other => other,
            },
            Action::DeleteDevice { hctl, disk } => self.delete_device(hctl, disk.as_deref()).await,
            Action::RescanDevice { hctl } => {
                // The kernel re-reads the device's inquiry data and VPD pages, WWID included.
                let path = c
                    .root
                    .join(format!("sys/class/scsi_device/{hctl}/device/rescan"));
                let wrote =
                    sysfs::write_attr(&self.offload, path, "1".into(), c.scan_timeout).await?;
                Ok(changed(wrote))
            }
            Action::Logout { session } => {
                let outcome = done(c.iscsiadm.logout(session).await?);
                if outcome == Outcome::AlreadySo {
                    // "No matching sessions" also comes from an iscsid that has just started and
                    // not yet taken over the kernel's sessions: believed only once sysfs agrees,
                    // or the session would be released (and its record deleted) while it lives.
                    if let Some(id) = self.kernel_session(session).await? {
                        return Err(ActError::SessionUnknownToIscsid {
                            session: session.to_string(),
                            id,
                        });
                    }
                }
                Ok(outcome)
            }
            Action::NameDevice {
                key,
                volume,
                device,
            } => self.name_device(key, volume, device.as_deref()).await,
            Action::UnnameDevice { key } => {
                let path = c.root.join(NAMES_DIR).join(key);
                let target = path.clone();
                let removed = self
                    .offload
                    .run(
                        &format!("removing {}", path.display()),
                        Some(&path.display().to_string()),
                        c.file_timeout,
                        move || std::fs::remove_file(&target),
                    )
                    .await?;
                match removed {
                    Ok(()) => Ok(Outcome::Changed),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Outcome::AlreadySo),
                    Err(source) => Err(ActError::Record { path, source }),
                }
            }
            Action::DeleteNode { session } => {
                let (adm, key) = (c.iscsiadm.clone(), session.clone());
                let object = format!("node record {session}");
                let deleted = self
                    .offload
                    .run(
                        &format!("deleting the {object}"),
                        Some(&object),
                        c.file_timeout,
                        move || adm.delete_records(&key),
                    )
                    .await??;
                Ok(done(deleted))
            }
            // Bookkeeping is matched above; listed so a new action cannot be forgotten here.
            Action::OwnVolume { .. }
            | Action::DisownVolume { .. }
            | Action::AdoptSession { .. }
            | Action::ForgetSession { .. }
            | Action::ForgetWwid { .. } => Ok(Outcome::Changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Lun;
    use crate::plan::ChapSettings;

    const TARGET: &str = "iqn.2026-11.test:a";

    /// A host whose node database holds one record for TARGET at 127.0.0.1:3260, so ensuring
    /// the node runs no iscsiadm.
    fn host_with_record(dir: &std::path::Path) -> (RealHost, PathBuf) {
        let nodes = dir.join("iscsi/nodes");
        let portal = nodes.join(TARGET).join("127.0.0.1,3260,1");
        std::fs::create_dir_all(&portal).unwrap();
        let record = portal.join("default");
        std::fs::write(&record, "node.name = x\n# END RECORD\n").unwrap();
        let host = RealHost::new(RealHostConfig {
            root: dir.to_path_buf(),
            iscsiadm: Iscsiadm {
                node_dirs: vec![nodes],
                ..Iscsiadm::default()
            },
            ..RealHostConfig::default()
        });
        (host, record)
    }

    fn ensure(secret: &std::path::Path) -> Action {
        Action::EnsureNode {
            session: SessionKey {
                target: TARGET.into(),
                portal: "127.0.0.1:3260".parse().unwrap(),
            },
            settings: NodeSettings {
                replacement_timeout: 5,
                chap: Some(ChapSettings {
                    username: "alice".into(),
                    password_file: SecretFile::absolute(secret).unwrap(),
                    username_in: None,
                    password_in_file: None,
                }),
            },
            login_timeout_secs: 15,
        }
    }

    #[tokio::test]
    async fn the_secret_goes_into_the_record_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let (host, record) = host_with_record(dir.path());
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "Hunter2Secret\n").unwrap();
        host.execute(&ensure(&secret)).await.unwrap();
        let text = std::fs::read_to_string(&record).unwrap();
        assert!(
            text.contains("node.session.auth.password = Hunter2Secret\n"),
            "{text}"
        );
        let staging = dir.path().join("iscsi").join(iscsiadm::STAGING_DIR);
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_dir(record.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[tokio::test]
    async fn no_matching_session_is_believed_only_once_the_kernel_agrees() {
        // An iscsid that has just started answers "No matching sessions found" (exit 21) for a
        // session the kernel still has; taking that as "logged out" released the session and
        // deleted its record under it (faults.sh row f).
        let dir = tempfile::tempdir().unwrap();
        let mut tree = crate::observe::fixture::FixtureTree::new(dir.path()).unwrap();
        let portal: std::net::SocketAddr = "127.0.0.1:3260".parse().unwrap();
        tree.session(4, TARGET, portal, "FAILED").unwrap();
        let program = dir.path().join("fake-iscsiadm");
        std::fs::write(
            &program,
            "#!/bin/sh\necho 'iscsiadm: No matching sessions found' >&2\nexit 21\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let host = RealHost::new(RealHostConfig {
            root: dir.path().to_path_buf(),
            iscsiadm: Iscsiadm {
                program: program.display().to_string(),
                ..Iscsiadm::default()
            },
            ..RealHostConfig::default()
        });
        let logout = Action::Logout {
            session: SessionKey {
                target: TARGET.into(),
                portal,
            },
        };
        let err = host.execute(&logout).await.unwrap_err();
        assert!(
            matches!(err, ActError::SessionUnknownToIscsid { id: 4, .. }),
            "{err}"
        );
        assert!(!err.is_permanent());
        // Gone from the kernel too: logged out indeed.
        std::fs::remove_file(dir.path().join("sys/class/iscsi_session/session4")).unwrap();
        assert_eq!(host.execute(&logout).await.unwrap(), Outcome::AlreadySo);
    }

    #[tokio::test]
    async fn an_empty_or_missing_secret_is_transient_and_leaves_the_record_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (host, record) = host_with_record(dir.path());
        let before = std::fs::read_to_string(&record).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "\n").unwrap();
        for action in [ensure(&secret), ensure(&dir.path().join("missing"))] {
            let err = host.execute(&action).await.unwrap_err();
            assert!(matches!(err, ActError::Secret { .. }), "{err}");
            assert!(
                !err.is_permanent(),
                "a secret being rewritten must not lead to a rollback: {err}"
            );
            assert!(err.to_string().contains("chap.password_file"), "{err}");
        }
        assert_eq!(std::fs::read_to_string(&record).unwrap(), before);
    }

    /// A `dmsetup` that answers as the real one does for a partition map that is open.
    fn host_with_dmsetup(dir: &std::path::Path, script: &str) -> RealHost {
        let program = dir.join("dmsetup");
        std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).unwrap();
        let mut perm = std::fs::metadata(&program).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&program, perm).unwrap();
        std::fs::create_dir_all(dir.join("dev/mapper")).unwrap();
        RealHost::new(RealHostConfig {
            root: dir.to_path_buf(),
            dmsetup: program.display().to_string(),
            ..RealHostConfig::default()
        })
    }

    fn remove_part() -> Action {
        Action::RemovePartitionMap {
            part: "3600a-part1".into(),
            map: "3600a".into(),
        }
    }

    #[tokio::test]
    async fn a_busy_partition_map_is_in_use_and_a_gone_one_already_so() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_with_dmsetup(
            dir.path(),
            "echo \"$*\" >\"$(dirname \"$0\")/argv\"\n\
             echo 'device-mapper: remove ioctl on 3600a-part1  failed: Device or resource busy' >&2\n\
             exit 1",
        );
        // No node: nothing to remove, and dmsetup is not even run.
        let done = host.execute(&remove_part()).await.unwrap();
        assert_eq!(done, Outcome::AlreadySo);
        assert!(!dir.path().join("argv").exists());

        std::fs::write(dir.path().join("dev/mapper/3600a-part1"), "").unwrap();
        let err = host.execute(&remove_part()).await.unwrap_err();
        assert!(
            matches!(&err, ActError::Sysfs(SysfsError::InUse { device, .. }) if device == "3600a-part1"),
            "{err}"
        );
        assert!(!err.is_permanent());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("argv")).unwrap(),
            "remove --retry -- 3600a-part1\n",
            "never --force, never --deferred"
        );
    }

    #[tokio::test]
    async fn a_removed_partition_map_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_with_dmsetup(dir.path(), "rm -f \"$(dirname \"$0\")/dev/mapper/$4\"");
        std::fs::write(dir.path().join("dev/mapper/3600a-part1"), "").unwrap();
        let done = host.execute(&remove_part()).await.unwrap();
        assert_eq!(done, Outcome::Changed);
        assert!(!dir.path().join("dev/mapper/3600a-part1").exists());
    }

    #[tokio::test]
    async fn a_stuck_scan_is_transient_and_the_next_one_on_that_host_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let scan_dir = dir.path().join("sys/class/scsi_host/host7");
        std::fs::create_dir_all(&scan_dir).unwrap();
        // A FIFO without a reader blocks the write's open as a scan waiting on the target does.
        let scan = scan_dir.join("scan");
        nix::unistd::mkfifo(&scan, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let host = RealHost::new(RealHostConfig {
            root: dir.path().to_path_buf(),
            scan_timeout: Duration::from_millis(100),
            ..RealHostConfig::default()
        });
        let action = |lun| Action::Scan {
            session: SessionKey {
                target: "iqn.2026-11.test:a".into(),
                portal: "127.0.0.1:3260".parse().unwrap(),
            },
            host: 7,
            lun: Lun(lun),
        };
        let err = host.execute(&action(0)).await.unwrap_err();
        assert!(!err.is_permanent(), "{err}");
        assert_eq!(host.stuck_calls(), 1);
        let start = std::time::Instant::now();
        let err = host.execute(&action(1)).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(err.to_string().contains("still stuck"), "{err}");
        assert!(!err.is_permanent(), "{err}");
        assert_eq!(host.stuck_calls(), 1, "no second thread was parked");
        let _ = std::fs::File::open(&scan);
    }
}
