//! File primitives the layers share: replacing a file atomically and taking a lock that says
//! "one lunkeeper at a time".

use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Replaces `path` with `data` atomically (same-directory temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
