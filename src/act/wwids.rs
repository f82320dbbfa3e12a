//! `/etc/multipath/wwids`, edited the way multipath-tools edits it: under a whole-file
//! `fcntl` write lock (libmultipath takes the same lock), a new WWID appended as a `/<wwid>/`
//! line, a removed one commented out in place (`#<wwid>/`), as `multipath -w` does.
//!
//! Doing this directly rather than through `multipath -a`/`-w` matters for speed: each of those
//! starts a process that loads the whole multipath configuration and probes devices, which
//! costs 1–2 s per volume on a slow host, while multipathd rereads this file whenever it looks
//! at a new path anyway. Registering right after the first path is scanned lets multipathd
//! build the map from the path's own uevent, before lunkeeper has to ask.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use tokio::time::Instant;

use crate::observe::{registered_in_line, Wwid};

/// What multipath writes at the top of a new file; kept identical so the file looks the same
/// whoever created it.
const HEADER: &str = "# Multipath wwids, Version : 1.0\n\
# NOTE: This file is automatically maintained by multipath and multipathd.\n\
# You should not need to edit this file in normal circumstances.\n\
#\n\
# Valid WWIDs:\n";

#[derive(Debug, thiserror::Error)]
pub enum WwidsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: still locked by another process after {waited:?}")]
    Locked { path: PathBuf, waited: Duration },
}

#[derive(Debug, Clone)]
pub struct WwidsFile {
    pub path: PathBuf,
    /// How long to wait for another writer's lock.
    pub lock_timeout: Duration,
}

impl WwidsFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        WwidsFile {
            path: path.into(),
            lock_timeout: Duration::from_secs(10),
        }
    }

    /// Adds `/<wwid>/` unless the file has it. Returns whether the file changed.
    pub fn add(&self, wwid: &Wwid) -> Result<bool, WwidsError> {
        let (mut file, text) = self.open_locked(true)?;
        let Some(add) = addition(&text, wwid) else {
            return Ok(false);
        };
        let io = |source| WwidsError::Io {
            path: self.path.clone(),
            source,
        };
        file.seek(SeekFrom::End(0)).map_err(io)?;
        file.write_all(add.as_bytes()).map_err(io)?;
        // The entry decides whether a map forms at the next boot: it must survive a crash.
        file.sync_data().map_err(io)?;
        Ok(true)
    }

    /// Comments out every `/<wwid>/` line in place. Returns whether the file changed.
    pub fn remove(&self, wwid: &Wwid) -> Result<bool, WwidsError> {
        if !self.path.exists() {
            return Ok(false);
        }
        let (file, text) = self.open_locked(false)?;
        let io = |source| WwidsError::Io {
            path: self.path.clone(),
            source,
        };
        let mut changed = false;
        for offset in find_lines(&text, wwid) {
            file.write_all_at(b"#", offset as u64).map_err(io)?;
            changed = true;
        }
        if changed {
            file.sync_data().map_err(io)?;
        }
        Ok(changed)
    }

    /// Opens the file (creating it and its directory if asked), takes the write lock and reads
    /// the whole content. The lock lasts as long as the returned `File`. Bytes, not text: a
    /// comment someone wrote in Latin-1 must not stop lunkeeper from editing the file, and
    /// editing in place needs the offsets of the file itself.
    fn open_locked(&self, create: bool) -> Result<(File, Vec<u8>), WwidsError> {
        let io = |source| WwidsError::Io {
            path: self.path.clone(),
            source,
        };
        if create {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o644)
            .open(&self.path)
            .map_err(io)?;
        self.lock(&file)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        Ok((file, text))
    }

    /// A non-blocking attempt repeated until the deadline: a blocking F_SETLKW could wait
    /// forever on a stuck multipath process. (Callers run this off the event loop.)
    fn lock(&self, file: &File) -> Result<(), WwidsError> {
        let start = Instant::now();
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        loop {
            match fcntl(file, FcntlArg::F_SETLK(&lock)) {
                Ok(_) => return Ok(()),
                Err(Errno::EACCES | Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => {
                    return Err(WwidsError::Io {
                        path: self.path.clone(),
                        source: e.into(),
                    })
                }
            }
            if start.elapsed() >= self.lock_timeout {
                return Err(WwidsError::Locked {
                    path: self.path.clone(),
                    waited: self.lock_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What [`WwidsFile::add`] appends to a file holding `text` so that it registers `wwid`: None
/// when it already does.
pub fn addition(text: &[u8], wwid: &Wwid) -> Option<String> {
    if find_lines(text, wwid).next().is_some() {
        return None;
    }
    let mut add = String::new();
    if text.is_empty() {
        add.push_str(HEADER);
    } else if !text.ends_with(b"\n") {
        add.push('\n');
    }
    add.push_str(&format!("/{}/\n", wwid.as_str()));
    Some(add)
}

/// Byte offsets of the lines that register `wwid` (read as observe reads them,
/// [`registered_in_line`]): where [`WwidsFile::remove`] writes its `#`.
pub fn find_lines<'a>(text: &'a [u8], wwid: &'a Wwid) -> impl Iterator<Item = usize> + 'a {
    let mut offset = 0;
    text.split_inclusive(|&b| b == b'\n')
        .filter_map(move |line| {
            let start = offset;
            offset += line.len();
            let (slash, found) = registered_in_line(line)?;
            (found == *wwid).then_some(start + slash)
        })
}

/// The path of the wwids file below `root`.
pub fn wwids_path(root: &Path) -> PathBuf {
    root.join("etc/multipath/wwids")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn wwid(s: &str) -> Wwid {
        Wwid::from_str(s).unwrap()
    }

    /// A wwids file below a fresh root, holding `text`.
    fn existing(text: &str) -> (tempfile::TempDir, WwidsFile) {
        let dir = tempfile::tempdir().unwrap();
        let f = WwidsFile::new(wwids_path(dir.path()));
        std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
        std::fs::write(&f.path, text).unwrap();
        (dir, f)
    }

    #[test]
    fn add_creates_the_file_with_multipaths_header_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let f = WwidsFile::new(wwids_path(dir.path()));
        let w = wwid("36001405aaaa");
        assert!(f.add(&w).unwrap());
        assert!(!f.add(&w).unwrap());
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert!(text.starts_with("# Multipath wwids, Version : 1.0\n"));
        assert!(text.ends_with("# Valid WWIDs:\n/36001405aaaa/\n"));
        assert_eq!(text.matches("/36001405aaaa/").count(), 1);
    }

    #[test]
    fn add_keeps_other_lines_and_ends_an_unterminated_last_line() {
        let (_dir, f) = existing("# hand\n/3600a/");
        assert!(f.add(&wwid("3600b")).unwrap());
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "# hand\n/3600a/\n/3600b/\n"
        );
    }

    #[test]
    fn a_wwid_that_only_prefixes_another_is_not_taken_for_it() {
        let (_dir, f) = existing("/3600abc/\n");
        assert!(f.add(&wwid("3600ab")).unwrap());
        assert!(!f.remove(&wwid("3600a")).unwrap());
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "/3600abc/\n/3600ab/\n"
        );
    }

    #[test]
    fn remove_comments_the_line_out_in_place_like_multipath_w() {
        let (_dir, f) = existing("# c\n/3600a/\n  /3600b/\n/3600c/\n");
        assert!(f.remove(&wwid("3600b")).unwrap());
        assert!(!f.remove(&wwid("3600b")).unwrap());
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "# c\n/3600a/\n  #3600b/\n/3600c/\n"
        );
    }

    /// Found by the wwids fuzz target's model of the file as bytes: a comment that is not
    /// UTF-8 (an operator's Latin-1 note) made every add and remove fail, so no WWID could be
    /// registered or removed again, while observe read the same file fine.
    #[test]
    fn a_line_that_is_not_utf8_does_not_stop_add_or_remove() {
        let dir = tempfile::tempdir().unwrap();
        let f = WwidsFile::new(wwids_path(dir.path()));
        std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
        std::fs::write(&f.path, b"# caf\xe9\n/3600a/\n").unwrap();
        assert!(f.add(&wwid("3600b")).unwrap());
        assert!(f.remove(&wwid("3600a")).unwrap());
        assert_eq!(
            std::fs::read(&f.path).unwrap(),
            b"# caf\xe9\n#3600a/\n/3600b/\n"
        );
        let text = String::from_utf8_lossy(&std::fs::read(&f.path).unwrap()).into_owned();
        assert_eq!(
            crate::observe::sysfs::parse_registered_wwids(&text),
            [wwid("3600b")].into()
        );
    }

    #[test]
    fn remove_without_a_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = WwidsFile::new(wwids_path(dir.path()));
        assert!(!f.remove(&wwid("3600a")).unwrap());
        assert!(!f.path.exists());
    }

    #[test]
    fn a_lock_held_by_another_process_times_out_with_a_clear_error() {
        use std::io::BufRead;
        let (_dir, mut f) = existing("");
        f.lock_timeout = Duration::from_millis(100);
        // fcntl locks belong to a process, so the holder must be another one; Python's lockf
        // takes the same kind of lock libmultipath does.
        let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys, time\n\
                 f = open(sys.argv[1], 'r+'); fcntl.lockf(f, fcntl.LOCK_EX)\n\
                 print('locked', flush=True); time.sleep(30)",
            ])
            .arg(&f.path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        let err = f.add(&wwid("3600a")).unwrap_err();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(matches!(err, WwidsError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("still locked"));
        assert!(f.add(&wwid("3600a")).unwrap());
    }
}
