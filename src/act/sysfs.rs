//! Writes to sysfs that can block inside the kernel (a scan waits for the target, a delete of a
//! dead path waits for the transport), and the exclusive open and flush of a disk before it is
//! deleted: each runs on a detached thread under a deadline (see [`super::offload`]), so one
//! stuck device never stalls the others, the event loop, or the exit.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::offload::{Offload, OffloadError};

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Blocked(#[from] OffloadError),
    #[error("{device} is in use ({reason}); not deleting it")]
    InUse { device: String, reason: String },
}

/// Writes `value` to a sysfs attribute. Returns Ok(false) if the attribute does not exist
/// (the device is already gone). One write per attribute at a time: the kernel serialises
/// them anyway (a host's scans take its scan mutex), and a stuck one refuses the next at once.
pub async fn write_attr(
    offload: &Offload,
    path: PathBuf,
    value: String,
    timeout: Duration,
) -> Result<bool, SysfsError> {
    let what = format!("writing {value:?} to {}", path.display());
    let object = path.display().to_string();
    let (p, v) = (path.clone(), value.clone());
    let written = offload
        .run(
            &what,
            Some(&object),
            timeout,
            move || -> std::io::Result<bool> {
                let mut f = match std::fs::OpenOptions::new().write(true).open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                };
                f.write_all(v.as_bytes())?;
                Ok(true)
            },
        )
        .await?;
    written.map_err(|source| SysfsError::Write {
        path,
        value,
        source,
    })
}

/// Opens the device exclusively: fails with EBUSY while a file system, a dm map, md or a program
/// that opened it with O_EXCL holds it. On success the open also flushes what is cached for it.
/// The open and the flush can block on a device whose transport is down, so both run off the
/// event loop under `timeout`.
pub async fn probe_exclusive(
    offload: &Offload,
    dev_node: &Path,
    timeout: Duration,
) -> Result<Option<ExclusiveOpen>, SysfsError> {
    let node = dev_node.to_path_buf();
    let what = format!("opening {} exclusively", node.display());
    let object = node.display().to_string();
    let opened = offload
        .run(&what, Some(&object), timeout, move || open_exclusive(&node))
        .await??;
    Ok(opened.map(|file| ExclusiveOpen {
        file: Some(file),
        offload: offload.clone(),
        object,
    }))
}

fn open_exclusive(dev_node: &Path) -> Result<Option<File>, SysfsError> {
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

/// An exclusive open of a disk, held so nobody mounts it while it is being deleted. The last
/// close of a block device flushes it, which can block too: [`ExclusiveOpen::close`] closes it
/// under a deadline, and dropping it without that (an error path) closes it on a detached
/// thread nobody waits for.
#[derive(Debug)]
pub struct ExclusiveOpen {
    file: Option<File>,
    offload: Offload,
    object: String,
}

impl ExclusiveOpen {
    /// Closes the device off the event loop, waiting for it until `timeout`. A close that
    /// passes it is left behind like any stuck call, holding the device.
    pub async fn close(mut self, timeout: Duration) -> Result<(), SysfsError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let what = format!("closing {}", self.object);
        self.offload
            .run(&what, Some(&self.object), timeout, move || drop(file))
            .await?;
        Ok(())
    }
}

impl Drop for ExclusiveOpen {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            self.offload.drop_later(&self.object, file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_attribute_means_already_gone() {
        let dir = tempfile::tempdir().unwrap();
        let r = write_attr(
            &Offload::default(),
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
        assert!(write_attr(
            &Offload::default(),
            p.clone(),
            "0 - 300".into(),
            Duration::from_secs(1)
        )
        .await
        .unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "0 - 300");
    }

    #[tokio::test]
    async fn the_exclusive_probe_runs_under_a_deadline_and_closes_off_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let offload = Offload::new(4);
        let t = Duration::from_secs(5);
        assert!(probe_exclusive(&offload, &dir.path().join("gone"), t)
            .await
            .unwrap()
            .is_none());
        let disk = dir.path().join("sdb");
        std::fs::write(&disk, "data").unwrap();
        let guard = probe_exclusive(&offload, &disk, t).await.unwrap().unwrap();
        guard.close(t).await.unwrap();
        assert_eq!(offload.stuck(), 0);
        // An open that hangs (a FIFO without a writer, here) passes its deadline.
        let fifo = dir.path().join("sdc");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let start = std::time::Instant::now();
        let r = probe_exclusive(&offload, &fifo, Duration::from_millis(100)).await;
        assert!(
            matches!(r, Err(SysfsError::Blocked(OffloadError::Timeout { .. }))),
            "{r:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(offload.stuck(), 1);
        // Unblock it so the test ends cleanly.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }

    #[tokio::test]
    async fn a_blocking_write_times_out() {
        // A FIFO with no reader blocks open(O_WRONLY) the way a stuck sysfs write blocks.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let offload = Offload::default();
        let r = write_attr(&offload, p.clone(), "1".into(), Duration::from_millis(200)).await;
        assert!(
            matches!(r, Err(SysfsError::Blocked(OffloadError::Timeout { .. }))),
            "{r:?}"
        );
        // A second write to the same attribute is refused at once while the first is stuck.
        let start = std::time::Instant::now();
        let r = write_attr(&offload, p.clone(), "1".into(), Duration::from_secs(10)).await;
        assert!(
            matches!(r, Err(SysfsError::Blocked(OffloadError::StillStuck { .. }))),
            "{r:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        // Unblock the stuck thread so the test runtime can shut down.
        let _ = std::fs::File::open(&p);
    }
}
