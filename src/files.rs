//! File primitives the layers share: replacing a file atomically and taking a lock that says
//! "one lunkeeper at a time".

use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Replaces `path` with `data` atomically (same-directory temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    write_atomic_via(path, dir, data, mode)
}

/// Marks the temp files of [`write_atomic_via`]: `.<name>.tmp.<pid>.<n>`.
const TEMP_MARK: &str = ".tmp.";

/// Replaces `path` with `data` atomically, the temp file written in `staging` (which must be on
/// the same file system), so a directory whose every entry is read by someone else (open-iscsi's
/// node database) never holds a half-written or leftover file. The temp file is removed on
/// every error path; one left by a kill is found by [`sweep_temp_files`].
pub fn write_atomic_via(
    path: &Path,
    staging: &Path,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    // Two writes at once from this process (records are all named `default`) need two names.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(staging)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = staging.join(format!(
        ".{file_name}{TEMP_MARK}{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // ENOSPC, EXDEV or anything else: the temp file must not stay behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Whether `name` is a temp file of [`write_atomic_via`] (or of lunkeeper before it, named
/// `.<name>.tmp.<pid>`) whose process no longer runs, judged by `proc`.
pub fn is_stale_temp_file(name: &str, proc: &Path) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((_, tail)) = rest.rsplit_once(TEMP_MARK) else {
        return false;
    };
    let mut parts = tail.split('.');
    let pid = parts.next().unwrap_or("");
    let counter = parts.next();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || parts.next().is_some() || counter.is_some_and(|c| !digits(c)) {
        return false;
    }
    pid != std::process::id().to_string() && !proc.join(pid).exists()
}

/// Removes stale temp files (see [`is_stale_temp_file`]) directly in `dir`; returns how many.
pub fn sweep_temp_files(dir: &Path, proc: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| is_stale_temp_file(n, proc))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Takes an exclusive lock on `path` (created if missing) without waiting. `Ok(None)` means
/// another process holds it; the lock lasts as long as the returned value.
pub fn try_lock(path: &Path) -> std::io::Result<Option<Flock<std::fs::File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Replaces one file in the background, on a thread of its own: the caller never waits, and
/// when writes come faster than the disk takes them only the newest content is written (a
/// status file needs the latest state, not every state). A disk that stalls holds up this
/// thread alone; what is handed over meanwhile waits in the one slot.
#[derive(Debug)]
pub struct LatestWriter {
    /// The content not yet written, if any.
    pending: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    /// Wakes the thread; one wake-up queued at most (the thread takes whatever is newest).
    /// Dropping it ends the thread once the last content is written.
    wake: std::sync::mpsc::SyncSender<()>,
}

impl LatestWriter {
    /// A writer of `path` (mode `mode`); `what` names the file in the log when a write fails.
    /// Errors are logged once until they change; the next content is tried regardless.
    pub fn new(path: &Path, mode: u32, what: &'static str) -> std::io::Result<Self> {
        let pending = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let slot = std::sync::Arc::clone(&pending);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("lunkeeper-file".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut last_error: Option<String> = None;
                // Blocks until woken; ends once the writer is dropped and nothing is queued.
                while woken.recv().is_ok() {
                    let Some(data) = take(&slot) else { continue };
                    let error = write_atomic(&path, &data, mode).err().map(|e| e.to_string());
                    if let Some(e) = &error {
                        if last_error.as_ref() != Some(e) {
                            tracing::warn!(path = %path.display(), error = %e, "cannot write the {what}");
                        }
                    }
                    last_error = error;
                }
            })?;
        Ok(LatestWriter { pending, wake })
    }

    /// Hands over the file's new content; returns at once.
    pub fn write(&self, data: Vec<u8>) {
        *lock(&self.pending) = Some(data);
        // Full: a wake-up is queued already, and it will find this content.
        let _ = self.wake.try_send(());
    }

    /// Whether everything handed over has been taken by the thread (tests).
    pub fn is_idle(&self) -> bool {
        lock(&self.pending).is_none()
    }
}

fn lock(pending: &std::sync::Mutex<Option<Vec<u8>>>) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn take(pending: &std::sync::Mutex<Option<Vec<u8>>>) -> Option<Vec<u8>> {
    lock(pending).take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_write_leaves_nothing_in_the_staging_dir_or_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("nodes/t/p,3260,1/default");
        let staging = dir.path().join(".lunkeeper-tmp");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        write_atomic_via(&target, &staging, b"x = 1\n", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x = 1\n");
        let names = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        assert_eq!(names(target.parent().unwrap()), ["default"]);
        assert!(names(&staging).is_empty());
    }

    #[test]
    fn a_failed_write_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(".lunkeeper-tmp");
        // The rename fails: the target's directory is a file.
        std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
        let target = dir.path().join("not-a-dir/default");
        assert!(write_atomic_via(&target, &staging, b"secret", 0o600).is_err());
        assert!(
            !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none(),
            "a temp file was left behind"
        );
        // Same when the rename itself fails (the target is a directory that is not empty).
        let target = dir.path().join("busy");
        std::fs::create_dir_all(target.join("x")).unwrap();
        assert!(write_atomic_via(&target, &staging, b"secret", 0o600).is_err());
        assert!(std::fs::read_dir(&staging).unwrap().next().is_none());
    }

    #[test]
    fn stale_temp_files_are_those_of_processes_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("4242")).unwrap();
        let me = std::process::id();
        assert!(is_stale_temp_file(".default.tmp.777", &proc));
        assert!(is_stale_temp_file(".default.tmp.777.3", &proc));
        assert!(
            !is_stale_temp_file(".default.tmp.4242.3", &proc),
            "still runs"
        );
        assert!(!is_stale_temp_file(&format!(".default.tmp.{me}.0"), &proc));
        for foreign in [
            "default",
            ".default.tmp",
            ".default.tmp.x",
            "a.tmp.777",
            ".d.tmp.7.7.7",
        ] {
            assert!(!is_stale_temp_file(foreign, &proc), "{foreign}");
        }
        let d = dir.path().join("d");
        std::fs::create_dir_all(&d).unwrap();
        for name in [".default.tmp.777.1", ".default.tmp.4242.1", "default"] {
            std::fs::write(d.join(name), "").unwrap();
        }
        assert_eq!(sweep_temp_files(&d, &proc), 1);
        assert!(!d.join(".default.tmp.777.1").exists());
        assert!(d.join(".default.tmp.4242.1").exists() && d.join("default").exists());
    }

    #[test]
    fn a_held_lock_is_reported_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = try_lock(&path).unwrap();
        assert!(held.is_some());
        assert!(
            try_lock(&path).unwrap().is_none(),
            "a second lock must not be granted"
        );
        drop(held);
        assert!(try_lock(&path).unwrap().is_some());
    }

    #[test]
    fn latest_writer_ends_with_the_newest_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let writer = LatestWriter::new(&path, 0o644, "status file").unwrap();
        for i in 0..50 {
            writer.write(format!("{i}").into_bytes());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&path).ok().as_deref() != Some("49") {
            assert!(
                std::time::Instant::now() < deadline,
                "newest content never written"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(writer.is_idle());
    }

    #[test]
    fn latest_writer_survives_a_failing_write_and_writes_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"").unwrap();
        // The parent is a file: every write fails, and the writer keeps going.
        let writer = LatestWriter::new(&blocker.join("status.json"), 0o644, "status file").unwrap();
        writer.write(b"a".to_vec());
        writer.write(b"b".to_vec());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !writer.is_idle() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
