//! Writes to sysfs that can block inside the kernel (a scan waits for the target, a delete of a
//! dead path waits for the transport): each runs on a blocking thread under a deadline, so one
//! stuck device never stalls the others.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("writing {value:?} to {path} did not return within {}s (the kernel is still waiting on the device)", after.as_secs_f32())]
    Timeout {
        path: PathBuf,
        value: String,
        after: Duration,
    },
    #[error("{device} is in use ({reason}); not deleting it")]
    InUse { device: String, reason: String },
}

/// Writes `value` to a sysfs attribute. Returns Ok(false) if the attribute does not exist
/// (the device is already gone).
pub async fn write_attr(
    path: PathBuf,
    value: String,
    timeout: Duration,
) -> Result<bool, SysfsError> {
    let (p, v) = (path.clone(), value.clone());
    let task = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let mut f = match std::fs::OpenOptions::new().write(true).open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        f.write_all(v.as_bytes())?;
        Ok(true)
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(r)) => r.map_err(|source| SysfsError::Write {
            path,
            value,
            source,
        }),
        Ok(Err(join)) => Err(SysfsError::Write {
            path,
            value,
            source: std::io::Error::other(join.to_string()),
        }),
        Err(_) => Err(SysfsError::Timeout {
            path,
            value,
            after: timeout,
        }),
    }
}

/// Opens the device exclusively: fails with EBUSY while a file system, a dm map, md or a program
/// that opened it with O_EXCL holds it. On success the open also flushes what is cached for it.
pub fn probe_exclusive(dev_node: &Path) -> Result<Option<std::fs::File>, SysfsError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
        .open(dev_node)
    {
        Ok(f) => {
            // Dirty pages of the block device itself (written without O_DIRECT) go out now,
            // while the path still works.
            let _ = f.sync_all();
            Ok(Some(f))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => Err(SysfsError::InUse {
            device: dev_node.display().to_string(),
            reason: "it is open exclusively by another user (mounted, held by a map, or opened with O_EXCL)".into(),
        }),
        Err(source) => Err(SysfsError::Write {
            path: dev_node.to_path_buf(),
            value: "open O_EXCL".into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_attribute_means_already_gone() {
        let dir = tempfile::tempdir().unwrap();
        let r = write_attr(
            dir.path().join("nope/delete"),
            "1".into(),
            Duration::from_secs(1),
        )
        .await;
        assert!(!r.unwrap());
    }

    #[tokio::test]
    async fn writes_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("scan");
        std::fs::write(&p, "").unwrap();
        assert!(
            write_attr(p.clone(), "0 - 300".into(), Duration::from_secs(1))
                .await
                .unwrap()
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "0 - 300");
    }

    #[tokio::test]
    async fn a_blocking_write_times_out() {
        // A FIFO with no reader blocks open(O_WRONLY) the way a stuck sysfs write blocks.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let r = write_attr(p.clone(), "1".into(), Duration::from_millis(200)).await;
        assert!(matches!(r, Err(SysfsError::Timeout { .. })), "{r:?}");
        // Unblock the stuck thread so the test runtime can shut down.
        let _ = std::fs::File::open(&p);
    }
}
