//! One planner per host. `apply` and the daemon take the same lock, `<state_dir>/lock`, before
//! they plan: two planners would each see the other's half-done work as something to undo, and
//! each would overwrite the other's ownership records.
//!
//! The daemon also holds `<runtime_dir>/daemon.lock` for its whole life. `apply` refuses to run
//! while that lock is held, even in the moment the daemon is starting and does not hold the
//! planner lock yet, and tells the operator to hand the change to the daemon instead. Each lock
//! file names its holder (`pid=`, `role=`, and for the daemon `config=`), so the refusal can say
//! who holds it and which file the daemon watches. flock locks die with their process: a
//! killed holder never leaves a stale lock behind.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use crate::files::try_lock;

/// The lock every planner takes, under the state directory.
pub const PLANNER_LOCK: &str = "lock";
/// The lock the daemon holds for its lifetime, under the runtime directory.
pub const DAEMON_LOCK: &str = "daemon.lock";

/// Who takes a lock; written into the lock file for whoever finds it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Apply,
    Daemon,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Apply => "apply",
            Role::Daemon => "daemon",
        })
    }
}

/// What a held lock file says about its holder. Fields are empty when the holder wrote nothing
/// (an older lunkeeper) or the file could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub role: Option<String>,
    /// The desired-state file a daemon watches.
    pub config: Option<PathBuf>,
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => h.pid = v.trim().parse().ok(),
                Some(("role", v)) => h.role = Some(v.trim().to_string()),
                Some(("config", v)) => h.config = Some(PathBuf::from(v)),
                _ => {}
            }
        }
        h
    }

    fn is_daemon(&self) -> bool {
        self.role.as_deref() == Some("daemon")
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = self.role.as_deref().unwrap_or("lunkeeper");
        match self.pid {
            Some(pid) => write!(f, "{role} (pid {pid})"),
            None => write!(f, "{role}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the lunkeeper daemon{pid} manages this host (it holds {}); apply does not plan beside it. \
         Edit {} instead: the daemon applies it within a second (or run `systemctl reload lunkeeper`), \
         and `lunkeeper status` shows the result. To apply by hand, stop the daemon first \
         (`systemctl stop lunkeeper`)",
        .lock.display(),
        .holder.config.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "the file the daemon watches".into()),
        pid = .holder.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DaemonRunning { lock: PathBuf, holder: Holder },
    #[error("{holder} holds {}: one lunkeeper plans at a time; try again when it has finished", .lock.display())]
    Busy { lock: PathBuf, holder: Holder },
    #[error("{}: cannot take the lock", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct HeldLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Takes `path` without waiting and writes who holds it into it. `Ok(None)`: someone else does.
fn take(path: &Path, role: Role, config: Option<&Path>) -> Result<Option<HeldLock>, LockError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let Some(mut lock) = try_lock(path).map_err(io(path))? else {
        return Ok(None);
    };
    let mut text = format!("pid={}\nrole={role}\n", std::process::id());
    if let Some(c) = config {
        text.push_str(&format!("config={}\n", c.display()));
    }
    // Only informative: a lock whose note cannot be written is still a lock.
    let noted = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(text.as_bytes()));
    if let Err(error) = noted {
        tracing::debug!(path = %path.display(), %error, "cannot note the lock's holder");
    }
    Ok(Some(HeldLock {
        _lock: lock,
        path: path.to_path_buf(),
    }))
}

/// Who a lock file says holds it.
fn holder(path: &Path) -> Holder {
    let mut text = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => Holder::parse(&text),
        Err(_) => Holder::default(),
    }
}

/// Whether a daemon holds `<runtime_dir>/daemon.lock`. Only an existing file is probed, so
/// asking creates nothing in the runtime directory; it is opened read-only, so any user can
/// ask (the daemon creates it 0644), and `lunkeeper status` as non-root finds the daemon.
pub fn daemon_running(runtime_dir: &Path) -> bool {
    matches!(probe(&runtime_dir.join(DAEMON_LOCK)), Ok(true))
}

/// Whether someone holds an exclusive lock on `path`, asked through a read-only descriptor
/// with a shared lock that is let go at once. A missing file is not held.
fn probe(path: &Path) -> std::io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(e.into()),
    }
}

/// The lock `apply` takes: the planner lock, refused while a daemon runs.
pub fn for_apply(state_dir: &Path, runtime_dir: &Path) -> Result<HeldLock, LockError> {
    let planner = state_dir.join(PLANNER_LOCK);
    let daemon = runtime_dir.join(DAEMON_LOCK);
    let Some(held) = take(&planner, Role::Apply, None)? else {
        let holder = holder(&planner);
        // The planner lock's note is authoritative, even when the daemon's runtime directory is
        // not the one this apply was told about.
        if holder.is_daemon() || daemon_running(runtime_dir) {
            let holder = if holder.is_daemon() {
                holder
            } else {
                self::holder(&daemon)
            };
            return Err(LockError::DaemonRunning {
                lock: planner,
                holder,
            });
        }
        return Err(LockError::Busy {
            lock: planner,
            holder,
        });
    };
    // Checked with the planner lock held: a daemon that starts now waits for this apply to
    // release it, and one that started just before is refused here.
    if daemon_running(runtime_dir) {
        return Err(LockError::DaemonRunning {
            holder: holder(&daemon),
            lock: daemon,
        });
    }
    Ok(held)
}

/// The daemon's lifetime lock. Another daemon holding it is an error (`Busy`).
pub fn daemon(runtime_dir: &Path, config: &Path) -> Result<HeldLock, LockError> {
    let path = runtime_dir.join(DAEMON_LOCK);
    match take(&path, Role::Daemon, Some(config))? {
        Some(held) => Ok(held),
        None => Err(LockError::Busy {
            holder: holder(&path),
            lock: path,
        }),
    }
}

/// The planner lock for the daemon, without waiting. `Ok(None)` while an `apply` holds it: the
/// daemon waits for it to finish rather than planning against it.
pub fn try_planner_for_daemon(
    state_dir: &Path,
    config: &Path,
) -> Result<Option<HeldLock>, LockError> {
    take(&state_dir.join(PLANNER_LOCK), Role::Daemon, Some(config))
}

/// Who holds the planner lock now (for the daemon's "waiting for ..." message).
pub fn planner_holder(state_dir: &Path) -> Holder {
    holder(&state_dir.join(PLANNER_LOCK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let run = t.path().join("run");
        (t, state, run)
    }

    #[test]
    fn two_applies_exclude_each_other() {
        let (_t, state, run) = dirs();
        let first = for_apply(&state, &run).unwrap();
        let err = for_apply(&state, &run).unwrap_err();
        match &err {
            LockError::Busy { holder, .. } => {
                assert_eq!(holder.role.as_deref(), Some("apply"));
                assert_eq!(holder.pid, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        for_apply(&state, &run).unwrap();
    }

    #[test]
    fn apply_is_refused_while_the_daemon_runs_and_names_its_config() {
        let (_t, state, run) = dirs();
        let config = Path::new("/etc/lunkeeper/volumes.toml");
        let d = daemon(&run, config).unwrap();
        let p = try_planner_for_daemon(&state, config).unwrap().unwrap();
        let err = for_apply(&state, &run).unwrap_err();
        assert!(matches!(err, LockError::DaemonRunning { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("daemon"), "{msg}");
        assert!(msg.contains("/etc/lunkeeper/volumes.toml"), "{msg}");
        assert!(msg.contains("systemctl reload lunkeeper"), "{msg}");
        // The daemon has its lifetime lock but not the planner lock yet (it is starting).
        drop(p);
        let err = for_apply(&state, &run).unwrap_err();
        assert!(matches!(err, LockError::DaemonRunning { .. }), "{err:?}");
        drop(d);
        for_apply(&state, &run).unwrap();
    }

    /// The planner lock alone identifies the daemon, even if apply looks in another runtime dir.
    #[test]
    fn the_daemon_is_recognised_by_the_planner_lock_alone() {
        let (t, state, run) = dirs();
        let config = Path::new("/srv/volumes.toml");
        let _d = daemon(&run, config).unwrap();
        let _p = try_planner_for_daemon(&state, config).unwrap().unwrap();
        let err = for_apply(&state, &t.path().join("elsewhere")).unwrap_err();
        assert!(matches!(err, LockError::DaemonRunning { .. }), "{err:?}");
        assert!(err.to_string().contains("/srv/volumes.toml"), "{err}");
    }

    #[test]
    fn the_daemon_waits_while_an_apply_plans() {
        let (_t, state, run) = dirs();
        let config = Path::new("/etc/lunkeeper/volumes.toml");
        let a = for_apply(&state, &run).unwrap();
        let _d = daemon(&run, config).unwrap();
        assert!(try_planner_for_daemon(&state, config).unwrap().is_none());
        assert_eq!(planner_holder(&state).role.as_deref(), Some("apply"));
        drop(a);
        assert!(try_planner_for_daemon(&state, config).unwrap().is_some());
    }

    #[test]
    fn a_second_daemon_is_refused() {
        let (_t, _state, run) = dirs();
        let config = Path::new("/etc/lunkeeper/volumes.toml");
        let _d = daemon(&run, config).unwrap();
        assert!(daemon_running(&run));
        let err = daemon(&run, config).unwrap_err();
        assert!(matches!(err, LockError::Busy { .. }), "{err:?}");
    }

    /// A user who may only read the lock file (status as non-root) still finds the daemon.
    #[test]
    fn a_read_only_lock_file_still_shows_the_daemon() {
        use std::os::unix::fs::PermissionsExt;
        let (_t, _state, run) = dirs();
        let d = daemon(&run, Path::new("/etc/lunkeeper/volumes.toml")).unwrap();
        let path = run.join(DAEMON_LOCK);
        // (As root the mode does not stop a write; the probe opens read-only either way.)
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(daemon_running(&run));
        drop(d);
        assert!(!daemon_running(&run), "the probe's own lock is gone");
    }

    #[test]
    fn asking_whether_a_daemon_runs_creates_nothing() {
        let (_t, _state, run) = dirs();
        assert!(!daemon_running(&run));
        assert!(!run.exists());
    }
}
