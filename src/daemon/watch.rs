//! Notices edits of the desired-state file, however they are made.
//!
//! The watch is on the directory that holds the file, never on the file: editors and `git`
//! replace the file (a new inode), and a Kubernetes ConfigMap mount swaps the `..data` symlink
//! two levels above the real file, so a watch on the file's inode would go deaf after the first
//! such update. A directory watch sees every one of these as an entry created, moved or deleted.
//!
//! Idle costs nothing: the inotify descriptor sits in Tokio's reactor and no timer runs until a
//! relevant event starts a debounce window.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use inotify::{EventMask, EventOwned, EventStream, Inotify, WatchDescriptor, WatchMask};
use tokio::time::Instant;

/// How soon a lost directory watch is re-added, doubling up to the cap for as long as the
/// directory stays away. Tools that replace the directory (rm + mkdir, or a rename swap)
/// recreate it within milliseconds; one unmounted or deleted by hand may come back after
/// minutes, and the daemon keeps the configuration in force meanwhile rather than exit.
const REWATCH_FIRST: Duration = Duration::from_millis(100);
const REWATCH_CAP: Duration = Duration::from_secs(5);

/// Large enough for many events per read; one event needs at most 16 + NAME_MAX + 1 bytes.
const EVENT_BUFFER: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{}: not a file path (it has no file name)", .path.display())]
    NoFileName { path: PathBuf },
    #[error("cannot watch for config changes outside a Tokio runtime")]
    NoRuntime,
    #[error("cannot set up inotify: {source}")]
    Init {
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot watch directory: {source}", .dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot read inotify events: {source}", .dir.display())]
    Read {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: inotify event stream ended", .dir.display())]
    Closed { dir: PathBuf },
}

/// Watches the directory holding the desired-state file and reports when the file may have
/// changed. See the module documentation for why the directory and not the file.
#[derive(Debug)]
pub struct ConfigWatcher {
    dir: PathBuf,
    file_name: OsString,
    debounce: Duration,
    stream: EventStream<Vec<u8>>,
    /// `None` while the directory is not watched (it was deleted or moved away).
    wd: Option<WatchDescriptor>,
    /// Set once a relevant event has been seen and not yet reported; kept in `self` rather than
    /// in `changed`'s future so that a cancelled `changed` (e.g. losing a `select!`) does not
    /// lose the change: the next call picks the window up where it was.
    quiet_until: Option<Instant>,
    /// Set while the directory cannot be watched; kept in `self` for the same reason as
    /// `quiet_until`, so a cancelled wait neither restarts the backoff nor logs again.
    lost: Option<Lost>,
}

/// The directory is away: when to try watching it again, and the delay after that.
#[derive(Debug)]
struct Lost {
    retry_at: Instant,
    delay: Duration,
    attempts: u32,
}

/// What one event means for the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ignore,
    Changed,
    /// The kernel dropped the watch (directory deleted, file system unmounted).
    WatchGone,
    /// The directory was renamed; the watch follows the inode to its new name, so it must be
    /// dropped and the path watched again.
    DirMoved,
}

impl ConfigWatcher {
    /// Watches the directory holding `path` (not following the file: see the module docs).
    ///
    /// The directory must exist; the file need not. Must be called inside a Tokio runtime
    /// with I/O enabled.
    pub fn new(path: &Path, debounce: Duration) -> Result<ConfigWatcher, WatchError> {
        let file_name = path
            .file_name()
            .ok_or_else(|| WatchError::NoFileName {
                path: path.to_path_buf(),
            })?
            .to_os_string();
        // A bare file name has an empty parent; the kernel wants ".".
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Registering the descriptor with the reactor panics without a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WatchError::NoRuntime);
        }
        let inotify = Inotify::init().map_err(|source| WatchError::Init { source })?;
        let stream = inotify
            .into_event_stream(vec![0u8; EVENT_BUFFER])
            .map_err(|source| WatchError::Init { source })?;
        let mut watcher = ConfigWatcher {
            dir,
            file_name,
            debounce,
            stream,
            wd: None,
            quiet_until: None,
            lost: None,
        };
        let wd = watcher.add_watch().map_err(|source| WatchError::Watch {
            dir: watcher.dir.clone(),
            source,
        })?;
        watcher.wd = Some(wd);
        Ok(watcher)
    }

    /// Resolves when the file may have changed: after the first relevant event, waits until
    /// `debounce` passes with no further relevant event (bursts collapse into one), then
    /// returns.
    ///
    /// Spurious wake-ups happen (the caller re-reads and diffs); missed changes do not: the
    /// watch is in place before this returns, so anything after the caller's re-read is
    /// reported by the next call. Cancel-safe.
    ///
    /// A directory that goes away is reported once (the caller re-reads, fails, and keeps the
    /// configuration in force), then watched for with backoff until it is back, which is
    /// reported again; it never ends the watcher.
    pub async fn changed(&mut self) -> Result<(), WatchError> {
        loop {
            if self.wd.is_none() {
                if let Some(deadline) = self.quiet_until {
                    if Instant::now() >= deadline {
                        self.quiet_until = None;
                        return Ok(());
                    }
                }
                if self.rewatch() {
                    // Whatever happened while the directory was unwatched is unknown.
                    self.mark_changed();
                    continue;
                }
                let retry_at = self.lost.as_ref().map_or_else(Instant::now, |l| l.retry_at);
                let wake = match self.quiet_until {
                    Some(q) => q.min(retry_at),
                    None => retry_at,
                };
                tokio::time::sleep_until(wake).await;
                continue;
            }
            let event = match self.quiet_until {
                None => self.next_event().await?,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.next_event()).await {
                        Ok(event) => event?,
                        Err(_quiet) => {
                            self.quiet_until = None;
                            return Ok(());
                        }
                    }
                }
            };
            self.handle(&event);
        }
    }

    fn add_watch(&mut self) -> io::Result<WatchDescriptor> {
        // Not OPEN, ACCESS or CLOSE_NOWRITE: the daemon's own re-read would wake it again.
        // EXCL_UNLINK: writes to a file already unlinked from the directory cannot change
        // what the path holds. ONLYDIR: a file where the directory should be is an error,
        // not a watch on the wrong thing.
        let mask = WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::ATTRIB
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::EXCL_UNLINK
            | WatchMask::ONLYDIR;
        self.stream.watches().add(&self.dir, mask)
    }

    /// Tries to watch the directory again if a retry is due; true once it is watched. Logs
    /// the loss once and the return once, whatever the number of attempts in between.
    fn rewatch(&mut self) -> bool {
        let now = Instant::now();
        if self.lost.as_ref().is_some_and(|l| now < l.retry_at) {
            return false;
        }
        match self.add_watch() {
            Ok(wd) => {
                if let Some(lost) = self.lost.take() {
                    tracing::info!(dir = %self.dir.display(), attempts = lost.attempts, "config directory is back; watching it again");
                }
                self.wd = Some(wd);
                true
            }
            Err(error) => {
                match self.lost.as_mut() {
                    None => {
                        tracing::warn!(
                            dir = %self.dir.display(), %error,
                            "config directory is gone; the configuration in force stays, watching for it to come back"
                        );
                        self.lost = Some(Lost {
                            retry_at: now + REWATCH_FIRST,
                            delay: REWATCH_FIRST,
                            attempts: 1,
                        });
                    }
                    Some(lost) => {
                        tracing::debug!(dir = %self.dir.display(), attempts = lost.attempts, %error, "config directory not back yet");
                        lost.attempts += 1;
                        lost.delay = (lost.delay * 2).min(REWATCH_CAP);
                        lost.retry_at = now + lost.delay;
                    }
                }
                false
            }
        }
    }

    async fn next_event(&mut self) -> Result<EventOwned, WatchError> {
        match self.stream.next().await {
            Some(Ok(event)) => Ok(event),
            Some(Err(source)) => Err(WatchError::Read {
                dir: self.dir.clone(),
                source,
            }),
            None => Err(WatchError::Closed {
                dir: self.dir.clone(),
            }),
        }
    }

    fn handle(&mut self, event: &EventOwned) {
        // Overflow carries no watch descriptor; events were lost, so assume the worst.
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(dir = %self.dir.display(), "inotify queue overflowed");
            self.mark_changed();
            return;
        }
        // Leftovers of a watch already dropped (its IN_IGNORED after a move, or events queued
        // before the drop) say nothing about the directory now at the path.
        if self.wd.as_ref() != Some(&event.wd) {
            return;
        }
        match classify(event.mask, event.name.as_deref(), &self.file_name) {
            Verdict::Ignore => {}
            Verdict::Changed => self.mark_changed(),
            Verdict::WatchGone => {
                tracing::warn!(dir = %self.dir.display(), "config directory watch dropped by the kernel");
                self.wd = None;
                self.mark_changed();
            }
            Verdict::DirMoved => {
                tracing::warn!(dir = %self.dir.display(), "config directory was moved");
                if let Some(wd) = self.wd.take() {
                    // Failure means the kernel already dropped it, which is what we want.
                    if let Err(err) = self.stream.watches().remove(wd) {
                        tracing::debug!(%err, "removing the moved directory's watch");
                    }
                }
                self.mark_changed();
            }
        }
    }

    fn mark_changed(&mut self) {
        self.quiet_until = Some(Instant::now() + self.debounce);
    }
}

/// Decides what an event on the current watch means. Generous on purpose: a config directory
/// sees few events, and a spurious re-read is cheap where a missed one is not.
fn classify(mask: EventMask, name: Option<&OsStr>, file_name: &OsStr) -> Verdict {
    if mask.contains(EventMask::IGNORED) {
        return Verdict::WatchGone;
    }
    if mask.contains(EventMask::MOVE_SELF) {
        return Verdict::DirMoved;
    }
    // Followed by IN_IGNORED, which re-adds the watch.
    if mask.intersects(EventMask::DELETE_SELF | EventMask::UNMOUNT) {
        return Verdict::Changed;
    }
    if let Some(name) = name {
        // `..data`, `..data_tmp` and the timestamped directories of a ConfigMap mount.
        if name == file_name || name.as_bytes().starts_with(b"..") {
            return Verdict::Changed;
        }
    }
    // Any entry coming, going or being rewritten: `git` and some editors go through names
    // we cannot predict. Only MODIFY of another file is left out, as it comes per write().
    let structural = EventMask::CLOSE_WRITE
        | EventMask::MOVED_TO
        | EventMask::MOVED_FROM
        | EventMask::CREATE
        | EventMask::DELETE
        | EventMask::ATTRIB;
    if mask.intersects(structural) {
        Verdict::Changed
    } else {
        Verdict::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use tokio::time::timeout;

    const DEBOUNCE: Duration = Duration::from_millis(50);
    const RESOLVES: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(300);

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("volumes.toml");
        fs::write(&file, "a = 1\n").expect("write initial file");
        (dir, file)
    }

    async fn assert_resolves(w: &mut ConfigWatcher) {
        timeout(RESOLVES, w.changed())
            .await
            .expect("changed() did not resolve in time")
            .expect("changed() failed");
    }

    async fn assert_quiet(w: &mut ConfigWatcher) {
        let r = timeout(QUIET, w.changed()).await;
        assert!(r.is_err(), "changed() resolved with nothing changed: {r:?}");
    }

    #[tokio::test]
    async fn write_in_place_is_noticed() {
        let (_dir, file) = setup();
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .expect("open");
        f.write_all(b"a = 2\n").expect("write");
        drop(f);
        assert_resolves(&mut w).await;
    }

    #[tokio::test]
    async fn write_temp_then_rename_is_noticed() {
        let (dir, file) = setup();
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        let tmp = dir.path().join(".volumes.toml.swp");
        fs::write(&tmp, "a = 2\n").expect("write temp");
        fs::rename(&tmp, &file).expect("rename");
        assert_resolves(&mut w).await;
        assert_quiet(&mut w).await;
    }

    #[tokio::test]
    async fn delete_then_create_is_noticed() {
        let (_dir, file) = setup();
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        fs::remove_file(&file).expect("remove");
        assert_resolves(&mut w).await;
        assert_quiet(&mut w).await;
        fs::write(&file, "a = 3\n").expect("create");
        assert_resolves(&mut w).await;
    }

    /// Lays out a ConfigMap volume: `volumes.toml -> ..data/volumes.toml`,
    /// `..data -> ..<timestamp>`; returns the timestamped directory.
    fn configmap(root: &Path, stamp: &str, content: &str) -> PathBuf {
        let data = root.join(stamp);
        fs::create_dir(&data).expect("mkdir timestamped dir");
        fs::write(data.join("volumes.toml"), content).expect("write configmap file");
        data
    }

    fn configmap_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let old = configmap(root.path(), "..2026_11_21_05_00_00.123456789", "a = 1\n");
        symlink(
            "..2026_11_21_05_00_00.123456789",
            root.path().join("..data"),
        )
        .expect("..data");
        let file = root.path().join("volumes.toml");
        symlink("..data/volumes.toml", &file).expect("file symlink");
        (root, file, old)
    }

    #[tokio::test]
    async fn configmap_data_swap_is_noticed() {
        let (root, file, old) = configmap_setup();
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        let stamp = "..2026_11_21_05_01_00.987654321";
        configmap(root.path(), stamp, "a = 2\n");
        symlink(stamp, root.path().join("..data_tmp")).expect("..data_tmp");
        fs::rename(root.path().join("..data_tmp"), root.path().join("..data")).expect("swap");
        fs::remove_dir_all(old).expect("remove old dir");
        assert_resolves(&mut w).await;
        assert_eq!(fs::read_to_string(&file).expect("read"), "a = 2\n");
        assert_quiet(&mut w).await;
    }

    /// The swap alone, with the new directory and `..data_tmp` made before watching: the
    /// rename of `..data` is the only thing that happens to the file's contents.
    #[tokio::test]
    async fn configmap_rename_alone_is_noticed() {
        let (root, file, _old) = configmap_setup();
        let stamp = "..2026_11_21_05_01_00.987654321";
        configmap(root.path(), stamp, "a = 2\n");
        symlink(stamp, root.path().join("..data_tmp")).expect("..data_tmp");
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        fs::rename(root.path().join("..data_tmp"), root.path().join("..data")).expect("swap");
        assert_resolves(&mut w).await;
    }

    #[tokio::test]
    async fn burst_collapses_into_one_change() {
        let (_dir, file) = setup();
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        for i in 0..20 {
            fs::write(&file, format!("a = {i}\n")).expect("write");
        }
        assert_resolves(&mut w).await;
        assert_quiet(&mut w).await;
    }

    /// Writes spread over longer than the debounce window, each gap shorter than it, still
    /// make one change: the window restarts with every event.
    #[tokio::test]
    async fn window_restarts_with_each_event() {
        let (_dir, file) = setup();
        // Gaps far below the window, so a loaded machine cannot split the burst.
        let debounce = Duration::from_millis(200);
        let mut w = ConfigWatcher::new(&file, debounce).expect("new");
        let writer = {
            let file = file.clone();
            tokio::spawn(async move {
                for i in 0..8 {
                    fs::write(&file, format!("a = {i}\n")).expect("write");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let started = Instant::now();
        assert_resolves(&mut w).await;
        // One window from the first write would end at 200 ms; the last write is >= 140 ms in.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "resolved after {took:?}"
        );
        writer.await.expect("writer");
        assert_quiet(&mut w).await;
    }

    #[tokio::test]
    async fn nothing_happening_does_not_resolve() {
        let (_dir, file) = setup();
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        assert_quiet(&mut w).await;
    }

    /// The daemon re-reads the file after every change; that must not wake it again, also
    /// through the ConfigMap symlinks.
    #[tokio::test]
    async fn reading_the_file_is_not_a_change() {
        let (_root, file, _old) = configmap_setup();
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        for _ in 0..3 {
            fs::read_to_string(&file).expect("read");
            fs::metadata(&file).expect("stat");
        }
        assert_quiet(&mut w).await;
    }

    #[tokio::test]
    async fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("nope").join("volumes.toml");
        let err = ConfigWatcher::new(&file, DEBOUNCE).expect_err("must fail");
        assert!(matches!(err, WatchError::Watch { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn file_where_directory_should_be_is_an_error() {
        let (_dir, file) = setup();
        let err = ConfigWatcher::new(&file.join("volumes.toml"), DEBOUNCE).expect_err("must fail");
        assert!(matches!(err, WatchError::Watch { .. }), "{err:?}");
    }

    #[test]
    fn outside_a_runtime_is_an_error() {
        let (_dir, file) = setup();
        let err = ConfigWatcher::new(&file, DEBOUNCE).expect_err("must fail");
        assert!(matches!(err, WatchError::NoRuntime), "{err:?}");
    }

    #[tokio::test]
    async fn directory_recreated_is_watched_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("lunkeeper");
        fs::create_dir(&dir).expect("mkdir");
        let file = dir.join("volumes.toml");
        fs::write(&file, "a = 1\n").expect("write");
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        fs::remove_dir_all(&dir).expect("rm dir");
        fs::create_dir(&dir).expect("mkdir again");
        assert_resolves(&mut w).await;
        fs::write(&file, "a = 2\n").expect("write in new dir");
        assert_resolves(&mut w).await;
    }

    /// The directory renamed away and a new one put in its place (an atomic directory swap):
    /// the watch must move to the new directory and stop reporting the old one.
    #[tokio::test]
    async fn directory_moved_away_is_watched_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("lunkeeper");
        let old = root.path().join("lunkeeper.old");
        fs::create_dir(&dir).expect("mkdir");
        let file = dir.join("volumes.toml");
        fs::write(&file, "a = 1\n").expect("write");
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        fs::rename(&dir, &old).expect("move dir away");
        fs::create_dir(&dir).expect("mkdir new");
        assert_resolves(&mut w).await;
        fs::write(old.join("volumes.toml"), "a = 9\n").expect("write in old dir");
        assert_quiet(&mut w).await;
        fs::write(&file, "a = 2\n").expect("write in new dir");
        assert_resolves(&mut w).await;
    }

    /// Gone for longer than any tool takes to replace it: reported once, then quiet (no error,
    /// no busy loop), then noticed when it comes back, and watched as before.
    #[tokio::test]
    async fn directory_gone_for_a_while_is_watched_again_when_it_returns() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("lunkeeper");
        fs::create_dir(&dir).expect("mkdir");
        let file = dir.join("volumes.toml");
        let mut w = ConfigWatcher::new(&file, DEBOUNCE).expect("new");
        fs::remove_dir(&dir).expect("rm dir");
        assert_resolves(&mut w).await;
        // Several backoff rounds pass, with many cancelled waits as in the daemon's select!.
        for _ in 0..10 {
            assert_quiet(&mut w).await;
        }
        let attempts = w.lost.as_ref().map(|l| l.attempts).unwrap_or(0);
        assert!(
            (3..=12).contains(&attempts),
            "{attempts} attempts in 3 s: cancelled waits must not restart the backoff"
        );
        fs::create_dir(&dir).expect("mkdir again");
        fs::write(&file, "a = 2\n").expect("write");
        assert_resolves(&mut w).await;
        assert!(w.lost.is_none());
        assert_quiet(&mut w).await;
        fs::write(&file, "a = 3\n").expect("write again");
        assert_resolves(&mut w).await;
    }

    /// The backoff doubles up to its cap: a directory away for an hour costs a look every
    /// few seconds, not ten per second.
    #[tokio::test(start_paused = true)]
    async fn rewatch_backs_off_to_the_cap() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("lunkeeper");
        fs::create_dir(&dir).expect("mkdir");
        let mut w = ConfigWatcher::new(&dir.join("volumes.toml"), DEBOUNCE).expect("new");
        fs::remove_dir(&dir).expect("rm dir");
        // Paused time: the reported loss, then an hour of virtual time.
        timeout(RESOLVES, w.changed())
            .await
            .expect("reported")
            .expect("ok");
        let r = timeout(Duration::from_secs(3600), w.changed()).await;
        assert!(r.is_err(), "{r:?}");
        let lost = w.lost.as_ref().expect("still lost");
        assert_eq!(lost.delay, REWATCH_CAP);
        let at_most = 3600 / REWATCH_CAP.as_secs() as u32 + 10;
        assert!(lost.attempts <= at_most, "{} attempts", lost.attempts);
    }

    /// A `changed()` cancelled after it saw an event must not lose that event.
    #[tokio::test]
    async fn cancelled_wait_keeps_the_change() {
        let (_dir, file) = setup();
        let mut w = ConfigWatcher::new(&file, Duration::from_millis(200)).expect("new");
        fs::write(&file, "a = 2\n").expect("write");
        let cut = timeout(Duration::from_millis(50), w.changed()).await;
        assert!(cut.is_err(), "resolved before the debounce window: {cut:?}");
        assert_resolves(&mut w).await;
    }

    #[test]
    fn classify_rules() {
        let f = OsStr::new("volumes.toml");
        let c = |mask, name: Option<&str>| classify(mask, name.map(OsStr::new), f);
        assert_eq!(c(EventMask::MODIFY, Some("volumes.toml")), Verdict::Changed);
        assert_eq!(c(EventMask::MODIFY, Some("..data")), Verdict::Changed);
        assert_eq!(c(EventMask::MODIFY, Some("other.log")), Verdict::Ignore);
        assert_eq!(c(EventMask::CLOSE_WRITE, Some("other")), Verdict::Changed);
        assert_eq!(c(EventMask::MOVED_TO, Some("x")), Verdict::Changed);
        assert_eq!(c(EventMask::MOVED_FROM, Some("x")), Verdict::Changed);
        assert_eq!(
            c(EventMask::CREATE | EventMask::ISDIR, Some("x")),
            Verdict::Changed
        );
        assert_eq!(c(EventMask::DELETE, Some("x")), Verdict::Changed);
        assert_eq!(c(EventMask::ATTRIB, None), Verdict::Changed);
        assert_eq!(c(EventMask::DELETE_SELF, None), Verdict::Changed);
        assert_eq!(c(EventMask::IGNORED, None), Verdict::WatchGone);
        assert_eq!(c(EventMask::MOVE_SELF, None), Verdict::DirMoved);
    }
}
