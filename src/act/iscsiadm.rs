//! open-iscsi's iscsiadm, shelled out to (iscsid's IPC is not a stable ABI). Exit codes come
//! from open-iscsi's `include/iscsi_err.h`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::command::{self, CommandError, Finished};
use crate::owned::SessionKey;

/// What a non-zero iscsiadm exit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    SessionNotFound,
    Login,
    NodeDatabase,
    TransportTimeout,
    SessionExists,
    IscsidUnreachable,
    FatalLogin,
    NoRecords,
    AuthFailed,
    TryAgain,
    Other,
}

impl Failure {
    pub fn from_code(code: i32) -> Failure {
        match code {
            2 => Failure::SessionNotFound,
            5 => Failure::Login,
            6 => Failure::NodeDatabase,
            8 => Failure::TransportTimeout,
            15 => Failure::SessionExists,
            18 | 20 => Failure::IscsidUnreachable,
            19 => Failure::FatalLogin,
            21 => Failure::NoRecords,
            24 => Failure::AuthFailed,
            29 => Failure::TryAgain,
            _ => Failure::Other,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Failure::SessionNotFound => "session not found",
            Failure::Login => "login failed",
            Failure::NodeDatabase => "node database error",
            Failure::TransportTimeout => "transport timeout",
            Failure::SessionExists => "session exists",
            Failure::IscsidUnreachable => "cannot reach iscsid",
            Failure::FatalLogin => "fatal login error (target refused)",
            Failure::NoRecords => "no records found",
            Failure::AuthFailed => "authentication failed (check the CHAP user and secret)",
            Failure::TryAgain => "iscsid asked to try again",
            Failure::Other => "failed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IscsiadmError {
    #[error("iscsiadm {op}: {} (exit {code}){}", failure.describe(), detail(stderr))]
    Failed {
        op: &'static str,
        code: i32,
        failure: Failure,
        stderr: String,
    },
    #[error("iscsiadm {op} was killed by a signal{}", detail(stderr))]
    Killed { op: &'static str, stderr: String },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("deleting the node record {path}: {source}")]
    DeleteRecord {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn detail(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}

impl IscsiadmError {
    pub fn failure(&self) -> Option<Failure> {
        match self {
            IscsiadmError::Failed { failure, .. } => Some(*failure),
            _ => None,
        }
    }
}

/// Whether iscsiadm reported that the thing it was asked to do is already so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Changed,
    AlreadySo,
}

#[derive(Debug, Clone)]
pub struct Iscsiadm {
    pub program: String,
    /// The node database (`/etc/iscsi/nodes` on Debian), where secrets are written directly.
    pub node_dirs: Vec<PathBuf>,
    pub timeout: Duration,
    /// How many iscsiadm processes may run at once. Every `--login` reads every node record
    /// under the database's global lock, so dozens at once only queue behind each other until
    /// their deadlines kill them (64 at once did, under emulation).
    pub slots: Arc<Semaphore>,
    /// The database lock iscsiadm takes with link(2). A process killed while holding it
    /// leaves it behind, and every later iscsiadm then waits 30 s for it and fails.
    pub lock_file: PathBuf,
}

/// A database lock held this long is not held by a working process: iscsiadm itself gives up
/// waiting for it after 30 s, and holders keep it for milliseconds.
const STALE_LOCK_AGE: Duration = Duration::from_secs(10);

/// Beside each node database (`/etc/iscsi/.lunkeeper-tmp` for `/etc/iscsi/nodes`), on the same
/// file system: where rewrites of node records, which hold CHAP secrets, are staged. Never
/// inside the database: open-iscsi reads every entry of a target or portal directory as a
/// record, so a temp file left there by a full disk or a kill would become a session.
pub const STAGING_DIR: &str = ".lunkeeper-tmp";

/// iscsiadm processes lunkeeper runs at once (see [`Iscsiadm::slots`]).
pub const ISCSIADM_SLOTS: usize = 8;

impl Default for Iscsiadm {
    fn default() -> Self {
        Iscsiadm {
            program: "iscsiadm".to_string(),
            node_dirs: vec![
                PathBuf::from("/etc/iscsi/nodes"),
                PathBuf::from("/var/lib/iscsi/nodes"),
            ],
            timeout: Duration::from_secs(30),
            slots: Arc::new(Semaphore::new(ISCSIADM_SLOTS)),
            lock_file: PathBuf::from("/run/lock/iscsi/lock.write"),
        }
    }
}

fn node_args(key: &SessionKey) -> [String; 6] {
    [
        "-m".into(),
        "node".into(),
        "-T".into(),
        key.target.clone(),
        "-p".into(),
        key.portal.to_string(),
    ]
}

impl Iscsiadm {
    async fn call(
        &self,
        op: &'static str,
        args: &[String],
        timeout: Duration,
        ok: &[Failure],
    ) -> Result<Done, IscsiadmError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The deadline covers the process, not the wait for a slot. A closed semaphore cannot
        // happen (nothing closes it); running without a slot is the harmless fallback.
        let _slot = self.slots.acquire().await.ok();
        let finished = command::run(&self.program, &args, timeout).await;
        if matches!(finished, Err(CommandError::Timeout { .. })) {
            self.clear_stale_lock(Path::new("/proc"), STALE_LOCK_AGE);
        }
        let Finished { code, stderr, .. } = finished?;
        match code {
            Some(0) => Ok(Done::Changed),
            Some(code) => {
                let failure = Failure::from_code(code);
                if ok.contains(&failure) {
                    Ok(Done::AlreadySo)
                } else {
                    Err(IscsiadmError::Failed {
                        op,
                        code,
                        failure,
                        stderr,
                    })
                }
            }
            None => Err(IscsiadmError::Killed { op, stderr }),
        }
    }

    /// Removes the database lock after lunkeeper killed an iscsiadm, if no iscsiadm process is
    /// left that could hold it and nobody has taken it for `min_age` (link(2) sets the lock's
    /// ctime; iscsid takes it too, for milliseconds): otherwise every later iscsiadm call on
    /// the host (lunkeeper's and everybody else's) fails until someone deletes it by hand.
    fn clear_stale_lock(&self, proc: &Path, min_age: Duration) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(&self.lock_file) else {
            return;
        };
        let taken =
            std::time::UNIX_EPOCH + Duration::from_secs(meta.ctime().try_into().unwrap_or(0));
        let fresh = std::time::SystemTime::now()
            .duration_since(taken)
            .map_or(true, |age| age < min_age);
        if fresh || iscsiadm_running(proc) {
            return;
        }
        match std::fs::remove_file(&self.lock_file) {
            Ok(()) => tracing::warn!(
                lock = %self.lock_file.display(),
                "removed the iSCSI database lock a killed iscsiadm left behind"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                lock = %self.lock_file.display(),
                %error,
                "could not remove the iSCSI database lock a killed iscsiadm left behind"
            ),
        }
    }

    /// Creates the node record if it is missing (an existing one keeps its other settings).
    pub async fn create_node(&self, key: &SessionKey) -> Result<Done, IscsiadmError> {
        if self.record_file(key).is_some() {
            return Ok(Done::AlreadySo);
        }
        let mut args = node_args(key).to_vec();
        args.extend(["-o".into(), "new".into()]);
        self.call(
            "create node",
            &args,
            self.timeout,
            &[Failure::SessionExists],
        )
        .await
    }

    pub async fn login(&self, key: &SessionKey, timeout: Duration) -> Result<Done, IscsiadmError> {
        let mut args = node_args(key).to_vec();
        args.push("--login".into());
        self.call("login", &args, timeout, &[Failure::SessionExists])
            .await
    }

    pub async fn logout(&self, key: &SessionKey) -> Result<Done, IscsiadmError> {
        let mut args = node_args(key).to_vec();
        args.push("--logout".into());
        self.call(
            "logout",
            &args,
            self.timeout,
            &[Failure::SessionNotFound, Failure::NoRecords],
        )
        .await
    }

    /// Deletes every record of this target and portal (whatever its TPGT and interface) and
    /// the target's directory once empty, as `iscsiadm -o delete` does, without a process
    /// each. Two `-o delete` for one target's portals at once fail with a database error
    /// (both try to remove the target directory); removing the files cannot race that way.
    pub fn delete_records(&self, key: &SessionKey) -> Result<Done, IscsiadmError> {
        let mut done = Done::AlreadySo;
        for dir in &self.node_dirs {
            let target = dir.join(&key.target);
            for entry in self.record_entries(&target, key) {
                let removed = if entry.is_dir() {
                    std::fs::remove_dir_all(&entry)
                } else {
                    std::fs::remove_file(&entry)
                };
                match removed {
                    Ok(()) => done = Done::Changed,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(IscsiadmError::DeleteRecord {
                            path: entry,
                            source,
                        })
                    }
                }
            }
            // Fails while other portals' records remain, which is what should happen.
            let _ = std::fs::remove_dir(&target);
        }
        Ok(done)
    }

    /// `<addr>,<port>,<tpgt>` (a directory, or a file in older layouts) or `<addr>,<port>` (a
    /// file, when the record was created without a TPGT, as `-o new` does), sorted.
    fn record_entries(&self, target_dir: &Path, key: &SessionKey) -> Vec<PathBuf> {
        let bare = format!("{},{}", addr_text(key), key.portal.port());
        let with_tpgt = format!("{bare},");
        let Ok(entries) = std::fs::read_dir(target_dir) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == bare || n.starts_with(&with_tpgt))
            })
            .collect();
        found.sort();
        found
    }

    /// Where a rewrite of `record` is staged (see [`STAGING_DIR`]).
    pub fn staging_dir(&self, record: &Path) -> PathBuf {
        let base = self
            .node_dirs
            .iter()
            .find(|d| record.starts_with(d))
            .or(self.node_dirs.first());
        match base {
            Some(dir) => staging_beside(dir),
            // No database to stand beside (not a configuration lunkeeper makes): stage where
            // a leftover cannot be read as a record.
            None => std::env::temp_dir().join(STAGING_DIR),
        }
    }

    /// Sets or removes keys of a node record (see [`write_record_keys`]), staged outside the
    /// database.
    pub fn write_record_keys(
        &self,
        record: &Path,
        keys: &[(&str, Option<String>)],
    ) -> std::io::Result<()> {
        write_record_keys(record, &self.staging_dir(record), keys)
    }

    /// Removes temp files that a killed lunkeeper left: in the staging directories, and in the
    /// databases themselves, where earlier versions staged them. Only files named as
    /// lunkeeper names its temp files, of processes that no longer run, are touched. Returns
    /// how many were removed.
    pub fn sweep_leftovers(&self, proc: &Path) -> usize {
        let mut removed = 0;
        for dir in &self.node_dirs {
            removed += crate::files::sweep_temp_files(&staging_beside(dir), proc);
            // <db>/<target>/<portal>[/<file>]: temp files sat beside the record they replaced.
            let Ok(targets) = std::fs::read_dir(dir) else {
                continue;
            };
            for target in targets.flatten().filter(is_dir) {
                removed += crate::files::sweep_temp_files(&target.path(), proc);
                let Ok(portals) = std::fs::read_dir(target.path()) else {
                    continue;
                };
                for portal in portals.flatten().filter(is_dir) {
                    removed += crate::files::sweep_temp_files(&portal.path(), proc);
                }
            }
        }
        removed
    }

    /// The record file for this target and portal, whatever its TPGT and interface.
    pub fn record_file(&self, key: &SessionKey) -> Option<PathBuf> {
        for dir in &self.node_dirs {
            for entry in self.record_entries(&dir.join(&key.target), key) {
                if entry.is_file() {
                    return Some(entry);
                }
                let default = entry.join("default");
                if default.is_file() {
                    return Some(default);
                }
                if let Ok(files) = std::fs::read_dir(&entry) {
                    let mut files: Vec<_> = files
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_file())
                        .collect();
                    files.sort();
                    if let Some(f) = files.into_iter().next() {
                        return Some(f);
                    }
                }
            }
        }
        None
    }
}

/// The staging directory for the node database `dir`. A database that is a symbolic link
/// (`/etc/iscsi/nodes` → `/var/lib/iscsi/nodes`) is staged beside where it really is, so the
/// rename into it stays on one file system.
fn staging_beside(dir: &Path) -> PathBuf {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match real.parent() {
        Some(parent) => parent.join(STAGING_DIR),
        None => std::env::temp_dir().join(STAGING_DIR),
    }
}

fn is_dir(entry: &std::fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_dir())
}

/// Whether any process on the host is an iscsiadm (by `/proc/<pid>/comm`).
fn iscsiadm_running(proc: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(proc) else {
        // Cannot tell: assume one is, and leave the lock alone.
        return true;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim_end() == "iscsiadm")
    })
}

fn addr_text(key: &SessionKey) -> String {
    key.portal.ip().to_string()
}

/// Sets (`Some`) or removes (`None`) keys of a node record file in one atomic rewrite, mode
/// 0600, the new file written in `staging` first. Used instead of `iscsiadm -o update`: that costs a process per call and would put a
/// CHAP secret in argv, where any user can read it from /proc. iscsiadm reads the file's keys
/// over its compiled-in defaults, so a removed key means "the default" (for the auth keys:
/// empty).
pub fn write_record_keys(
    record: &Path,
    staging: &Path,
    keys: &[(&str, Option<String>)],
) -> std::io::Result<()> {
    let text = std::fs::read_to_string(record)?;
    let out = rewrite_record(&text, keys);
    crate::files::write_atomic_via(record, staging, out.as_bytes(), 0o600)
}

/// The text of a node record with `keys` set (`Some`) or removed (`None`): every other line
/// kept in order, the keys set at the end, before iscsiadm's `# END RECORD` trailer.
pub fn rewrite_record(text: &str, keys: &[(&str, Option<String>)]) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut end = None;
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if keys.iter().any(|(k, _)| *k == key) {
            continue;
        }
        // Keep iscsiadm's trailer last, where it writes it.
        if line.trim() == "# END RECORD" {
            end = Some(line);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (key, value) in keys {
        if let Some(v) = value {
            out.push_str(&format!("{key} = {v}\n"));
        }
    }
    if let Some(end) = end {
        out.push_str(end);
        out.push('\n');
    }
    out
}

/// Reads a secret file: the first line, without its line ending. The error never carries the
/// file's content.
pub fn read_secret(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let secret = text.lines().next().unwrap_or("").to_string();
    if secret.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the secret file is empty",
        ));
    }
    if secret.contains(['\n', '\r', '\0']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the secret holds a control character",
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(portal: &str) -> SessionKey {
        SessionKey {
            target: "iqn.2026-11.test:a".into(),
            portal: portal.parse().unwrap(),
        }
    }

    #[test]
    fn exit_codes_map_to_failures() {
        assert_eq!(Failure::from_code(24), Failure::AuthFailed);
        assert_eq!(Failure::from_code(15), Failure::SessionExists);
        assert_eq!(Failure::from_code(21), Failure::NoRecords);
        assert_eq!(Failure::from_code(8), Failure::TransportTimeout);
        assert_eq!(Failure::from_code(20), Failure::IscsidUnreachable);
        assert_eq!(Failure::from_code(99), Failure::Other);
    }

    #[test]
    fn finds_record_files_in_both_layouts_and_for_ipv6() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("iqn.2026-11.test:a");
        std::fs::create_dir_all(t.join("127.0.0.1,3260,-1")).unwrap();
        std::fs::write(t.join("127.0.0.1,3260,-1/default"), "node.name = x\n").unwrap();
        std::fs::create_dir_all(t.join("::1,3260,1")).unwrap();
        std::fs::write(t.join("::1,3260,1/default"), "").unwrap();
        std::fs::write(t.join("127.0.0.2,3260,1"), "").unwrap();
        std::fs::write(t.join("127.0.0.4,3260"), "").unwrap();
        let adm = Iscsiadm {
            node_dirs: vec![dir.path().join("absent"), dir.path().to_path_buf()],
            ..Iscsiadm::default()
        };
        assert_eq!(
            adm.record_file(&key("127.0.0.1:3260")),
            Some(t.join("127.0.0.1,3260,-1/default"))
        );
        assert_eq!(
            adm.record_file(&key("[::1]:3260")),
            Some(t.join("::1,3260,1/default"))
        );
        assert_eq!(
            adm.record_file(&key("127.0.0.2:3260")),
            Some(t.join("127.0.0.2,3260,1"))
        );
        assert_eq!(
            adm.record_file(&key("127.0.0.4:3260")),
            Some(t.join("127.0.0.4,3260"))
        );
        assert_eq!(adm.record_file(&key("127.0.0.3:3260")), None);
        // 127.0.0.1:326 must not match the record for port 3260.
        assert_eq!(adm.record_file(&key("127.0.0.1:326")), None);
    }

    #[test]
    fn deleting_records_takes_every_layout_of_one_portal_and_then_the_empty_target() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("iqn.2026-11.test:a");
        std::fs::create_dir_all(t.join("127.0.0.1,3260,1")).unwrap();
        std::fs::write(t.join("127.0.0.1,3260,1/default"), "").unwrap();
        std::fs::write(t.join("127.0.0.1,3260"), "").unwrap();
        std::fs::write(t.join("127.0.0.1,32600"), "").unwrap();
        std::fs::write(t.join("127.0.0.2,3260"), "").unwrap();
        let other = dir.path().join("iqn.2026-11.test:b");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("127.0.0.1,3260"), "").unwrap();
        let adm = Iscsiadm {
            node_dirs: vec![dir.path().to_path_buf()],
            ..Iscsiadm::default()
        };
        assert!(matches!(
            adm.delete_records(&key("127.0.0.1:3260")),
            Ok(Done::Changed)
        ));
        let mut left: Vec<_> = std::fs::read_dir(&t)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["127.0.0.1,32600", "127.0.0.2,3260"]);
        assert!(matches!(
            adm.delete_records(&key("127.0.0.1:3260")),
            Ok(Done::AlreadySo)
        ));
        std::fs::remove_file(t.join("127.0.0.1,32600")).unwrap();
        adm.delete_records(&key("127.0.0.2:3260")).unwrap();
        assert!(!t.exists(), "the empty target directory goes too");
        assert!(other.join("127.0.0.1,3260").exists());
    }

    #[test]
    fn a_lock_left_by_a_killed_iscsiadm_is_removed_only_when_nobody_can_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("1")).unwrap();
        std::fs::write(proc.join("1/comm"), "init\n").unwrap();
        let adm = Iscsiadm {
            lock_file: dir.path().join("lock.write"),
            ..Iscsiadm::default()
        };
        std::fs::create_dir_all(proc.join("77")).unwrap();
        std::fs::write(proc.join("77/comm"), "iscsiadm\n").unwrap();
        std::fs::write(&adm.lock_file, "").unwrap();
        adm.clear_stale_lock(&proc, Duration::ZERO);
        assert!(adm.lock_file.exists(), "a live iscsiadm may hold it");
        std::fs::remove_dir_all(proc.join("77")).unwrap();
        adm.clear_stale_lock(&proc, Duration::from_secs(3600));
        assert!(adm.lock_file.exists(), "taken recently: may be iscsid's");
        adm.clear_stale_lock(&dir.path().join("no-proc"), Duration::ZERO);
        assert!(adm.lock_file.exists(), "no /proc to tell: left alone");
        adm.clear_stale_lock(&proc, Duration::ZERO);
        assert!(!adm.lock_file.exists());
        adm.clear_stale_lock(&proc, Duration::ZERO);
    }

    #[tokio::test]
    async fn iscsiadm_calls_beyond_the_slots_wait_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("fake-iscsiadm");
        std::fs::write(&program, "#!/bin/sh\nsleep 0.3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let adm = Iscsiadm {
            program: program.display().to_string(),
            slots: Arc::new(Semaphore::new(1)),
            ..Iscsiadm::default()
        };
        let start = std::time::Instant::now();
        let args = ["-m".to_string()];
        let (a, b) = tokio::join!(
            adm.call("test", &args, Duration::from_secs(5), &[]),
            adm.call("test", &args, Duration::from_secs(5), &[]),
        );
        assert!(a.is_ok() && b.is_ok());
        assert!(
            start.elapsed() >= Duration::from_millis(600),
            "one slot runs them one after the other: {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn record_keys_are_replaced_removed_and_added_before_the_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("default");
        std::fs::write(
            &f,
            "# BEGIN RECORD 2.1.8\nnode.name = iqn\nnode.session.auth.password = old\n\
             node.session.scan = auto\nnode.session.auth.password_in = oldin\n# END RECORD\n",
        )
        .unwrap();
        write_record_keys(
            &f,
            &dir.path().join(STAGING_DIR),
            &[
                ("node.session.scan", Some("manual".into())),
                ("node.session.auth.password", Some("s3cret".into())),
                ("node.session.auth.password_in", None),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            text,
            "# BEGIN RECORD 2.1.8\nnode.name = iqn\nnode.session.scan = manual\n\
             node.session.auth.password = s3cret\n# END RECORD\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn record_rewrites_are_staged_outside_the_database_and_leftovers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = dir.path().join("iscsi/nodes");
        let portal = nodes.join("iqn.2026-11.test:a/127.0.0.1,3260,1");
        std::fs::create_dir_all(&portal).unwrap();
        std::fs::write(portal.join("default"), "node.name = x\n# END RECORD\n").unwrap();
        let old_layout = nodes.join("iqn.2026-11.test:a/127.0.0.2,3260");
        std::fs::write(&old_layout, "node.name = y\n").unwrap();
        let adm = Iscsiadm {
            node_dirs: vec![nodes.clone()],
            ..Iscsiadm::default()
        };
        let staging = std::fs::canonicalize(dir.path())
            .unwrap()
            .join("iscsi")
            .join(STAGING_DIR);
        assert_eq!(adm.staging_dir(&portal.join("default")), staging);
        // A database reached through a symbolic link is staged beside its real place.
        let link = dir.path().join("etc-nodes");
        std::os::unix::fs::symlink(&nodes, &link).unwrap();
        let linked = Iscsiadm {
            node_dirs: vec![link.clone()],
            ..Iscsiadm::default()
        };
        assert_eq!(linked.staging_dir(&link.join("t/p/default")), staging);
        adm.write_record_keys(
            &portal.join("default"),
            &[("node.session.auth.password", Some("s3cret".into()))],
        )
        .unwrap();
        let listing = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(listing(&portal), ["default"]);
        assert!(listing(&staging).is_empty());

        // What a kill -9 leaves: a temp file of a process that is gone, in the staging
        // directory and (from older versions) inside the database.
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("1")).unwrap();
        std::fs::write(staging.join(".default.tmp.999999.0"), "password = s3cret").unwrap();
        std::fs::write(portal.join(".default.tmp.999999"), "password = s3cret").unwrap();
        std::fs::write(
            nodes.join("iqn.2026-11.test:a/.127.0.0.2,3260.tmp.999999"),
            "password = s3cret",
        )
        .unwrap();
        // A live process's temp file and foreign files stay.
        std::fs::write(staging.join(".default.tmp.1.0"), "").unwrap();
        std::fs::write(portal.join("notes.txt"), "").unwrap();
        assert_eq!(adm.sweep_leftovers(&proc), 3);
        assert_eq!(listing(&portal), ["default", "notes.txt"]);
        assert_eq!(listing(&staging), [".default.tmp.1.0"]);
        assert!(old_layout.exists());
        assert_eq!(
            listing(&nodes.join("iqn.2026-11.test:a")),
            ["127.0.0.1,3260,1", "127.0.0.2,3260"]
        );
    }

    #[test]
    fn secret_files_give_their_first_line_and_refuse_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "hunter2\n").unwrap();
        assert_eq!(read_secret(&f).unwrap(), "hunter2");
        std::fs::write(&f, "\n").unwrap();
        let err = read_secret(&f).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
