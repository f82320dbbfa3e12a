//! Reading a tree through directory handles. A snapshot opens tens of thousands of files whose
//! absolute paths are ten or more components long, and the kernel walks every component of
//! every path it is given: about a third of the kernel's share of a pass went to those
//! walks. Opened relative to a directory already open, the same file costs a walk of one or
//! two components. Listing a directory through its own handle also leaves the handle to
//! open the entries with, and a raw `getdents64` spares the `fstat` that `opendir` makes.
//!
//! Every function takes a base directory handle; [`AT_FDCWD`] with an absolute path reads
//! where a plain `open` would.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub(super) use nix::fcntl::AT_FDCWD;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::NixPath;

/// Longest attribute read: sysfs shows at most a page.
pub(super) const ATTR_MAX: usize = 4096;

/// Longest path, NUL included.
const PATH_MAX: usize = 4096;

/// `d_type` of a directory entry (`DT_DIR`, `DT_REG`, ...), or `DT_UNKNOWN` (0) when the
/// file system does not say.
pub(super) type DType = u8;
pub(super) const DT_DIR: DType = 4;
pub(super) const DT_REG: DType = 8;

/// An open directory.
#[derive(Debug)]
pub(super) struct DirFd(OwnedFd);

impl DirFd {
    /// Opens a directory to list it and to open what is below it.
    pub(super) fn open<P: ?Sized + NixPath>(base: BorrowedFd<'_>, path: &P) -> io::Result<DirFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        Ok(DirFd(openat(base, path, flags, Mode::empty())?))
    }

    /// Opens a directory only to open what is below it: an `O_PATH` handle, which the kernel
    /// makes without opening the directory itself, and which cannot be listed.
    pub(super) fn open_base<P: ?Sized + NixPath>(
        base: BorrowedFd<'_>,
        path: &P,
    ) -> io::Result<DirFd> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        Ok(DirFd(openat(base, path, flags, Mode::empty())?))
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Device and inode of the directory, to tell two paths to one directory apart.
    pub(super) fn identity(&self) -> io::Result<(u64, u64)> {
        let st = fstat(&self.0)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Calls `f` with the name and type of every entry but `.` and `..`, in the order the
    /// file system gives them. Reads from the handle's position, so a handle is listed once.
    pub(super) fn for_each_entry(&self, mut f: impl FnMut(&[u8], DType)) -> io::Result<()> {
        // Large enough for a few hundred entries per call, so that only the directories of
        // every device (`sys/dev/block`, `dev`, `run/udev/data`) take more than two calls.
        const BUF: usize = 32 * 1024;
        let mut buf: Vec<u8> = Vec::with_capacity(BUF);
        loop {
            buf.clear();
            // SAFETY: the kernel writes at most `capacity` bytes into the vector's buffer,
            // and returns how many it wrote (or -1), which is all that `set_len` then covers.
            let n = unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_getdents64,
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.capacity(),
                )
            };
            let n = match usize::try_from(n) {
                Ok(0) => return Ok(()),
                Ok(n) => n.min(buf.capacity()),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            // SAFETY: see above; `n` bytes from the start were written by the kernel.
            unsafe { buf.set_len(n) };
            parse_dirents(&buf, &mut f);
        }
    }

    /// Entry names; names that are not UTF-8 (never the case in sysfs) are skipped.
    pub(super) fn names(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        self.for_each_entry(|name, _| {
            if let Ok(s) = std::str::from_utf8(name) {
                out.push(s.to_string());
            }
        })?;
        Ok(out)
    }
}

/// The records of a `getdents64` buffer (`struct linux_dirent64`: inode u64, offset i64,
/// record length u16, type u8, then the NUL-terminated name), `.` and `..` left out. A record
/// that does not fit ends the buffer: the kernel never writes one.
fn parse_dirents(buf: &[u8], f: &mut impl FnMut(&[u8], DType)) {
    const NAME_AT: usize = 19;
    let mut rest = buf;
    while let Some(&[lo, hi, d_type]) = rest.get(16..NAME_AT) {
        let len = usize::from(u16::from_ne_bytes([lo, hi]));
        let (Some(record), Some(next)) = (rest.get(NAME_AT..len), rest.get(len..)) else {
            return;
        };
        let name = record.split(|&b| b == 0).next().unwrap_or_default();
        if name != b"." && name != b".." && !name.is_empty() {
            f(name, d_type);
        }
        rest = next;
    }
}

/// A sysfs attribute, surrounding white space removed. Attributes are at most a page, so one
/// `read` into a page-sized buffer replaces `read_to_string`'s `statx` and second `read`.
pub(super) fn read_attr_at<'b, P: ?Sized + NixPath>(
    base: BorrowedFd<'_>,
    path: &P,
    buf: &'b mut [u8; ATTR_MAX],
) -> io::Result<Cow<'b, str>> {
    let len = read_small_at(base, path, buf)?;
    Ok(trimmed(buf.get(..len).unwrap_or_default()))
}

/// Reads a file into `buf`, returning the length; a file longer than `buf` is cut at its
/// length. A short read is the end: sysfs gives the whole attribute at once, and a small
/// regular file is read whole too; the loop only covers reads interrupted early.
pub(super) fn read_small_at<P: ?Sized + NixPath>(
    base: BorrowedFd<'_>,
    path: &P,
    buf: &mut [u8],
) -> io::Result<usize> {
    let fd = openat(
        base,
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut len = 0;
    loop {
        let want = buf.len() - len;
        let n = match nix::unistd::read(&fd, buf.get_mut(len..).unwrap_or_default()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        len += n;
        if n == 0 || n < want {
            return Ok(len);
        }
    }
}

/// Text as `String::from_utf8_lossy(..).trim()` gives it, borrowed when it can be.
fn trimmed(bytes: &[u8]) -> Cow<'_, str> {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
    }
}

/// The target of a symlink. Read into a buffer on the stack: nix's `readlinkat` allocates a
/// page, then shrinks and copies it, for each of the thousands of links of `sys/dev/block`.
pub(super) fn read_link_at<P: ?Sized + NixPath>(
    base: BorrowedFd<'_>,
    path: &P,
) -> io::Result<PathBuf> {
    let mut buf = [0u8; PATH_MAX];
    let n = path.with_nix_path(|p| {
        // SAFETY: `p` is a NUL-terminated path, and the kernel writes at most `buf.len()`
        // bytes into `buf`.
        unsafe {
            nix::libc::readlinkat(
                base.as_raw_fd(),
                p.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })?;
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // A target that fills the buffer may have been cut; PATH_MAX counts a NUL, so no path
    // the kernel would follow is that long.
    match buf.get(..n) {
        Some(target) if n < buf.len() => Ok(PathBuf::from(OsStr::from_bytes(target))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "symlink target of PATH_MAX bytes or more",
        )),
    }
}

/// The type of what `path` names, symlinks followed (as `fs::metadata`); None when it
/// cannot be seen.
pub(super) fn kind_at<P: ?Sized + NixPath>(base: BorrowedFd<'_>, path: &P) -> Option<SFlag> {
    let st = fstatat(base, path, AtFlags::empty()).ok()?;
    Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::error::Error;
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    const DT_UNKNOWN: DType = 0;

    fn record(name: &[u8], d_type: DType, pad: usize) -> Vec<u8> {
        let len = 19 + name.len() + 1 + pad;
        let mut r = Vec::new();
        r.extend_from_slice(&7u64.to_ne_bytes());
        r.extend_from_slice(&1i64.to_ne_bytes());
        r.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        r.push(d_type);
        r.extend_from_slice(name);
        r.resize(len, 0);
        r
    }

    fn parsed(buf: &[u8]) -> Vec<(String, DType)> {
        let mut out = Vec::new();
        parse_dirents(buf, &mut |name, t| {
            out.push((String::from_utf8_lossy(name).into_owned(), t))
        });
        out
    }

    #[test]
    fn dirent_records_are_parsed_and_dots_skipped() {
        let mut buf = Vec::new();
        buf.extend(record(b".", DT_DIR, 4));
        buf.extend(record(b"..", DT_DIR, 3));
        buf.extend(record(b"6:0:0:300", DT_DIR, 2));
        buf.extend(record(b"state", DT_REG, 0));
        assert_eq!(
            parsed(&buf),
            [
                ("6:0:0:300".to_string(), DT_DIR),
                ("state".to_string(), DT_REG)
            ]
        );
    }

    #[test]
    fn a_cut_or_bogus_record_ends_the_buffer() {
        let mut buf = record(b"sda", DT_UNKNOWN, 0);
        let whole = record(b"sdb", DT_UNKNOWN, 0);
        buf.extend_from_slice(whole.get(..whole.len() - 1).unwrap_or_default());
        assert_eq!(parsed(&buf), [("sda".to_string(), DT_UNKNOWN)]);
        // A record length shorter than its header.
        let mut short = record(b"sdc", DT_REG, 0);
        if let Some(len) = short.get_mut(16..18) {
            len.copy_from_slice(&3u16.to_ne_bytes());
        }
        assert_eq!(parsed(&short), []);
        assert_eq!(parsed(&[]), []);
        assert_eq!(parsed(&[0; 10]), []);
    }

    #[test]
    fn lists_reads_and_resolves_relative_to_a_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        fs::create_dir(d.join("sub"))?;
        fs::write(d.join("sub/attr"), "  running\n")?;
        fs::write(d.join("file"), "")?;
        symlink("sub", d.join("link"))?;
        for i in 0..2000 {
            fs::write(d.join(format!("many-{i:04}")), "")?;
        }
        let top = DirFd::open(AT_FDCWD, d)?;
        let mut seen = BTreeMap::new();
        top.for_each_entry(|name, t| {
            seen.insert(String::from_utf8_lossy(name).into_owned(), t);
        })?;
        assert_eq!(seen.len(), 2003);
        // tmpfs and ext4 both report types; a file system that does not says DT_UNKNOWN.
        for (name, t) in [("sub", DT_DIR), ("file", DT_REG)] {
            assert!(matches!(seen.get(name), Some(&k) if k == t || k == DT_UNKNOWN));
        }

        let mut buf = [0u8; ATTR_MAX];
        assert_eq!(read_attr_at(top.fd(), "link/attr", &mut buf)?, "running");
        let abs = d.join("sub/attr");
        assert_eq!(read_attr_at(AT_FDCWD, abs.as_path(), &mut buf)?, "running");
        let base = DirFd::open_base(top.fd(), "sub")?;
        assert_eq!(read_attr_at(base.fd(), "attr", &mut buf)?, "running");
        let missing = read_attr_at(base.fd(), "nothing", &mut buf).err();
        assert_eq!(missing.map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        // An O_PATH handle cannot be listed.
        assert!(base.names().is_err());

        assert_eq!(read_link_at(top.fd(), "link")?, PathBuf::from("sub"));
        let long = format!("{}/x", "a".repeat(PATH_MAX - 10));
        symlink(&long, d.join("long-link"))?;
        assert_eq!(read_link_at(top.fd(), "long-link")?, PathBuf::from(&long));
        assert!(read_link_at(top.fd(), "sub").is_err());
        assert_eq!(kind_at(top.fd(), "link"), Some(SFlag::S_IFDIR));
        assert_eq!(kind_at(top.fd(), "file"), Some(SFlag::S_IFREG));
        assert_eq!(kind_at(top.fd(), "nothing"), None);
        assert_eq!(DirFd::open(top.fd(), "sub")?.names()?, ["attr".to_string()]);
        let (dev, ino) = top.identity()?;
        let m = fs::metadata(d)?;
        assert_eq!(
            (dev, ino),
            (
                std::os::unix::fs::MetadataExt::dev(&m),
                std::os::unix::fs::MetadataExt::ino(&m)
            )
        );
        Ok(())
    }

    #[test]
    fn long_files_are_cut_and_junk_is_kept_lossily() -> TestResult {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("long"), "x".repeat(3 * ATTR_MAX))?;
        fs::write(dir.path().join("junk"), b"\xff ab\xfe\n")?;
        let top = DirFd::open(AT_FDCWD, dir.path())?;
        let mut buf = [0u8; ATTR_MAX];
        assert_eq!(read_attr_at(top.fd(), "long", &mut buf)?.len(), ATTR_MAX);
        assert_eq!(
            read_attr_at(top.fd(), "junk", &mut buf)?,
            "\u{fffd} ab\u{fffd}"
        );
        Ok(())
    }
}
