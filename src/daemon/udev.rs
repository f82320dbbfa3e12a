//! Tells the daemon that something relevant happened to the host's block, SCSI or iSCSI devices.
//!
//! The daemon is level-triggered: on any event it observes the whole host again, so this module
//! never has to be complete or precise about *what* changed, only prompt about *that* something
//! did. The events name the device for logs and targeted work.
//!
//! The monitor listens to udev's netlink group, not the kernel's: udev re-broadcasts an event
//! only after its rules ran, so the device node exists and properties such as `DM_UUID` and
//! `ID_SERIAL` are set. A kernel-group event can arrive before the device is usable.
//!
//! Idle costs nothing: the socket sits in Tokio's reactor and nothing runs until it is readable.
//!
//! Lost events are reported, not hidden: when the kernel drops messages because the socket's
//! receive buffer was full (`ENOBUFS`), or a message could not be read, [`UdevMonitor::next_batch`]
//! returns a single synthetic event with action `"overflow"` (see [`UdevEvent::is_overflow`]);
//! the daemon must then do a full resync.
//!
//! The receive buffer is left as libudev sets it: it already asks for 128 MiB (SO_RCVBUFFORCE,
//! so it works as root) when it creates the socket, and `udev_monitor_set_receive_buffer_size`
//! could only shrink that. A buffer that overflows anyway ends in one resync.
//!
//! Without a running udevd nothing re-broadcasts events, so none arrive (in a container libudev
//! may not even subscribe); [`UdevMonitor::new`] logs a warning when udevd's control socket is
//! missing, as the daemon then only converges on its other triggers.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use udev::{MonitorBuilder, MonitorSocket};

/// Subsystems whose events can change what lunkeeper observes. Device-mapper maps come as
/// `block` events carrying `DM_*` properties; SCSI devices, targets and hosts as `scsi`; unit
/// attention (`SDEV_UA`, e.g. a LUN resized or the LUN inventory changed) as `scsi` change
/// events. Filtering happens in the kernel (a socket filter libudev installs), so events of
/// other subsystems never wake the daemon.
const SUBSYSTEMS: [&str; 5] = [
    "block",
    "scsi",
    "scsi_host",
    "iscsi_session",
    "iscsi_connection",
];

/// The properties lunkeeper reads; everything else udev sends is dropped at once so that a
/// batch stays small.
const KEPT_PROPERTIES: [&str; 8] = [
    "DM_UUID",
    "DM_NAME",
    "DM_ACTION",
    "DM_PATH",
    "DM_NR_VALID_PATHS",
    "ID_SERIAL",
    "SDEV_UA",
    "DEVTYPE",
];

/// The synthetic action of the event that stands for lost events.
const OVERFLOW_ACTION: &str = "overflow";

/// Upper bound on receive attempts per wake-up, so that an event storm cannot keep the daemon
/// reading forever without acting; the rest stays queued and is read by the next call.
const MAX_READS: usize = 4096;

/// Block devices that can never be an iSCSI LUN, its partition or a map on top of it. Matched
/// as the name followed by a digit, so `sr0` matches and `sra` does not.
const UNRELATED_BLOCK_PREFIXES: [&str; 6] = ["loop", "ram", "zram", "nbd", "sr", "fd"];

#[derive(Debug, thiserror::Error)]
pub enum UdevError {
    #[error("cannot watch for udev events outside a Tokio runtime")]
    NoRuntime,
    #[error("cannot open a udev monitor socket: {source}")]
    Open {
        #[source]
        source: io::Error,
    },
    #[error("cannot filter udev events by subsystem {subsystem}: {source}")]
    Filter {
        subsystem: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start receiving udev events: {source}")]
    Listen {
        #[source]
        source: io::Error,
    },
    #[error("cannot register the udev socket with Tokio: {source}")]
    Register {
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for udev events: {source}")]
    Wait {
        #[source]
        source: io::Error,
    },
    #[error("cannot receive udev events: {source}")]
    Receive {
        #[source]
        source: io::Error,
    },
}

/// One udev event, copied out of libudev as soon as it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdevEvent {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `online`, `offline`, ... or `overflow`
    /// for the synthetic event that stands for lost events.
    pub action: String,
    pub subsystem: String,
    /// `sdc`, `dm-3`, `session4`, `6:0:0:300`, `host6`, ...
    pub sysname: String,
    /// (major, minor) for devices with a device node.
    pub devnum: Option<(u32, u32)>,
    /// Only the properties lunkeeper uses: DM_UUID, DM_NAME, DM_ACTION, DM_PATH,
    /// DM_NR_VALID_PATHS, ID_SERIAL, SDEV_UA, DEVTYPE.
    pub properties: BTreeMap<String, String>,
}

impl UdevEvent {
    /// dm multipath path events: DM_ACTION=PATH_FAILED|PATH_REINSTATED on a map.
    pub fn is_path_event(&self) -> bool {
        matches!(
            self.property("DM_ACTION"),
            Some("PATH_FAILED" | "PATH_REINSTATED")
        )
    }

    /// The WWID of a multipath map (DM_UUID starts with "mpath-"). Partition maps on top of a
    /// multipath map (`part1-mpath-...`) are not multipath maps and give `None`.
    pub fn map_wwid(&self) -> Option<&str> {
        self.property("DM_UUID")?
            .strip_prefix("mpath-")
            .filter(|wwid| !wwid.is_empty())
    }

    /// Whether this is the synthetic event that stands for lost events: the daemon must resync
    /// everything, as it cannot know what it missed.
    pub fn is_overflow(&self) -> bool {
        self.action == OVERFLOW_ACTION && self.subsystem.is_empty() && self.sysname.is_empty()
    }

    /// One of the kept properties (see [`UdevEvent::properties`]).
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    fn overflow() -> UdevEvent {
        UdevEvent {
            action: OVERFLOW_ACTION.to_string(),
            subsystem: String::new(),
            sysname: String::new(),
            devnum: None,
            properties: BTreeMap::new(),
        }
    }

    fn from_libudev(event: &udev::Event) -> UdevEvent {
        UdevEvent::from_parts(
            event.action(),
            event.subsystem(),
            event.sysname(),
            event.devnum(),
            |name| event.property_value(name),
        )
    }

    /// The event made of what libudev read off the wire: its action, subsystem, kernel name,
    /// `dev_t` and a lookup of its properties, of which only the kept ones are copied.
    pub fn from_parts<'e>(
        action: Option<&OsStr>,
        subsystem: Option<&OsStr>,
        sysname: &OsStr,
        devnum: Option<nix::libc::dev_t>,
        property: impl Fn(&str) -> Option<&'e OsStr>,
    ) -> UdevEvent {
        fn owned(s: Option<&OsStr>) -> String {
            s.map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        }
        let properties = KEPT_PROPERTIES
            .iter()
            .filter_map(|&name| {
                property(name).map(|value| (name.to_string(), value.to_string_lossy().into_owned()))
            })
            .collect();
        UdevEvent {
            action: owned(action),
            subsystem: owned(subsystem),
            sysname: sysname.to_string_lossy().into_owned(),
            devnum: devnum.and_then(|dev| {
                let major = u32::try_from(nix::sys::stat::major(dev)).ok()?;
                let minor = u32::try_from(nix::sys::stat::minor(dev)).ok()?;
                Some((major, minor))
            }),
            properties,
        }
    }
}

/// One line for logs: `change block dm-3 (253:3) DM_ACTION=PATH_FAILED DM_UUID=mpath-36...`.
impl fmt::Display for UdevEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_overflow() {
            return f.write_str("overflow (udev events were lost)");
        }
        write!(f, "{} {} {}", self.action, self.subsystem, self.sysname)?;
        if let Some((major, minor)) = self.devnum {
            write!(f, " ({major}:{minor})")?;
        }
        for (name, value) in &self.properties {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// Whether an event may change what lunkeeper observes. Conservative: anything not known to be
/// noise is relevant, as a spurious resync costs a little and a missed one leaves the host
/// unconverged until something else happens.
pub fn relevant(ev: &UdevEvent) -> bool {
    if ev.is_overflow() || ev.subsystem != "block" {
        return true;
    }
    if is_unrelated_block_device(&ev.sysname) {
        return false;
    }
    // udev's `watch` rule turns every close of a partition opened for writing (mkfs, a
    // database's fsync-and-close) into a change event; partitions coming and going are
    // add/remove events, and nothing lunkeeper reads changes with a partition's content.
    let dm = ev.properties.keys().any(|name| name.starts_with("DM_"));
    !(ev.action == "change" && ev.property("DEVTYPE") == Some("partition") && !dm)
}

/// The SCSI device (one path) through which the array reported that its LUN's capacity
/// changed: a `change` of a `scsi` device with `SDEV_UA=CAPACITY_DATA_HAS_CHANGED`. The
/// kernel only passes the unit attention on; the size it holds stays the old one until the
/// device is rescanned, which the daemon then does for every path of the volume.
pub fn capacity_changed(ev: &UdevEvent) -> Option<crate::observe::Hctl> {
    if ev.action != "change"
        || ev.subsystem != "scsi"
        || ev.property("SDEV_UA") != Some("CAPACITY_DATA_HAS_CHANGED")
    {
        return None;
    }
    ev.sysname.parse().ok()
}

fn is_unrelated_block_device(sysname: &str) -> bool {
    UNRELATED_BLOCK_PREFIXES.iter().any(|prefix| {
        sysname
            .strip_prefix(prefix)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Receives udev events of the subsystems lunkeeper cares about.
///
/// Not `Send` (libudev objects are not thread-safe); the daemon runs it on a current-thread
/// runtime.
pub struct UdevMonitor {
    fd: AsyncFd<MonitorSocket>,
}

impl fmt::Debug for UdevMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdevMonitor")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl UdevMonitor {
    /// Subscribes to udev's processed events. Must be called inside a Tokio runtime with I/O
    /// enabled. Events that happen from this call on are delivered by
    /// [`next_batch`](Self::next_batch), so the daemon should subscribe before its first full
    /// observation.
    pub fn new() -> Result<UdevMonitor, UdevError> {
        // Registering the descriptor with the reactor panics without a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(UdevError::NoRuntime);
        }
        let mut builder = MonitorBuilder::new().map_err(|source| UdevError::Open { source })?;
        for subsystem in SUBSYSTEMS {
            builder = builder
                .match_subsystem(subsystem)
                .map_err(|source| UdevError::Filter { subsystem, source })?;
        }
        let socket = builder
            .listen()
            .map_err(|source| UdevError::Listen { source })?;
        if !Path::new("/run/udev/control").exists() {
            tracing::warn!(
                "udevd does not seem to run (no /run/udev/control): no device events until it does"
            );
        }
        // SAFETY: the socket owns its descriptor: libudev closes it only when the monitor is
        // freed, which happens when the `MonitorSocket` (owned by the `AsyncFd`) is dropped,
        // and `as_raw_fd` returns that same descriptor on every call.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(
            |err| UdevError::Register {
                source: err.into_parts().1,
            },
        )?;
        Ok(UdevMonitor { fd })
    }

    /// Waits until at least one event arrives; returns every event read (at least one).
    ///
    /// Reads everything queued on the socket (up to an internal bound per call), so a burst
    /// comes back as one batch. When events were lost (the receive buffer overflowed, or a
    /// message could not be read), returns instead a batch holding only the synthetic overflow
    /// event ([`UdevEvent::is_overflow`]): the daemon must resync everything. The batch is not
    /// filtered by [`relevant`].
    ///
    /// Cancel-safe: events are read only after the wait, without awaiting in between.
    pub async fn next_batch(&mut self) -> Result<Vec<UdevEvent>, UdevError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| UdevError::Wait { source })?;
            let drained = drain(&mut SocketReceiver(guard.get_inner()), MAX_READS)?;
            // Tokio waits for readiness edges: readiness may only be cleared once the socket is
            // known to be empty, or a message left behind would wait for the next event.
            if drained.empty {
                guard.clear_ready();
            }
            if drained.lost {
                tracing::warn!("udev events were lost; asking for a full resync");
                return Ok(vec![UdevEvent::overflow()]);
            }
            if !drained.events.is_empty() {
                return Ok(drained.events);
            }
            // Only messages libudev ignored (or a spurious wake-up): keep waiting.
        }
    }
}

/// `lunkeeper apply` looks again as soon as udev has processed a relevant event. Without a
/// monitor (or once it fails) it never wakes, and apply falls back to its poll interval.
impl crate::apply::Wake for Option<UdevMonitor> {
    async fn changed(&mut self) {
        while let Some(monitor) = self.as_mut() {
            match monitor.next_batch().await {
                Ok(batch) if batch.iter().any(relevant) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "udev monitor failed; polling instead");
                    *self = None;
                }
            }
        }
        std::future::pending::<()>().await
    }
}

/// The outcome of one attempt to read a message.
#[derive(Debug)]
enum Received {
    Event(UdevEvent),
    /// libudev returned no event; the errno it left.
    Failed(Errno),
}

/// The socket as [`drain`] sees it; a trait so that the drain logic can be tested against
/// scripted errno sequences that a test cannot make the kernel produce.
trait Receiver {
    fn receive(&mut self) -> Received;
    /// Whether a message (or a pending socket error) is still queued.
    fn pending(&self) -> io::Result<bool>;
}

struct SocketReceiver<'a>(&'a MonitorSocket);

impl Receiver for SocketReceiver<'_> {
    fn receive(&mut self) -> Received {
        // libudev says why it returned no device only through errno; cleared first, a failure
        // that sets no errno reads as 0 instead of an earlier call's leftover.
        Errno::clear();
        match self.0.iter().next() {
            Some(event) => Received::Event(UdevEvent::from_libudev(&event)),
            None => Received::Failed(Errno::last()),
        }
    }

    fn pending(&self) -> io::Result<bool> {
        socket_has_pending(self.0.as_raw_fd())
    }
}

/// Polls the descriptor without waiting.
fn socket_has_pending(fd: RawFd) -> io::Result<bool> {
    let mut pfd = nix::libc::pollfd {
        fd,
        events: nix::libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid, exclusively borrowed pollfd and the count is 1; a zero
        // timeout never blocks.
        let n = unsafe { nix::libc::poll(&mut pfd, 1, 0) };
        if n >= 0 {
            // POLLERR counts: a pending ENOBUFS is reported by the next read.
            return Ok(n > 0 && pfd.revents != 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[derive(Debug, Default)]
struct Drained {
    events: Vec<UdevEvent>,
    /// Events were lost: the kernel dropped messages, or one could not be read.
    lost: bool,
    /// The socket was seen empty after the last read, so readiness may be cleared.
    empty: bool,
}

/// Reads until the socket is empty or `max_reads` attempts were made.
///
/// libudev returns no device with errno EAGAIN both when the socket is empty and when it
/// consumed a message it ignores (an untrusted sender, a bad header): only a poll tells the
/// two apart. Any other errno but a broken descriptor means a message was consumed without
/// yielding an event (ENOBUFS: the kernel dropped some; EINVAL: one was truncated or
/// malformed; ENOMEM), so events may have been lost.
fn drain(rx: &mut impl Receiver, max_reads: usize) -> Result<Drained, UdevError> {
    let mut drained = Drained::default();
    for _ in 0..max_reads {
        match rx.receive() {
            Received::Event(event) => drained.events.push(event),
            Received::Failed(Errno::EINTR) => {}
            // errno 0: libudev failed without saying why; treat it as "maybe empty".
            Received::Failed(Errno::EAGAIN | Errno::UnknownErrno) => {
                if !rx
                    .pending()
                    .map_err(|source| UdevError::Receive { source })?
                {
                    drained.empty = true;
                    return Ok(drained);
                }
            }
            Received::Failed(
                errno @ (Errno::EBADF | Errno::ENOTSOCK | Errno::EFAULT | Errno::ENOTCONN),
            ) => {
                return Err(UdevError::Receive {
                    source: io::Error::from(errno),
                });
            }
            Received::Failed(errno) => {
                tracing::debug!(%errno, "a udev message was lost");
                drained.lost = true;
            }
        }
    }
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;
    use tokio::time::timeout;

    fn event(action: &str, subsystem: &str, sysname: &str, props: &[(&str, &str)]) -> UdevEvent {
        UdevEvent {
            action: action.to_string(),
            subsystem: subsystem.to_string(),
            sysname: sysname.to_string(),
            devnum: None,
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn path_failed() -> UdevEvent {
        event(
            "change",
            "block",
            "dm-3",
            &[
                ("DEVTYPE", "disk"),
                ("DM_ACTION", "PATH_FAILED"),
                ("DM_NAME", "mpatha"),
                ("DM_NR_VALID_PATHS", "1"),
                ("DM_PATH", "8:32"),
                ("DM_UUID", "mpath-36001405abcdef0123456789abcdef01"),
            ],
        )
    }

    #[test]
    fn path_events_are_recognised() {
        assert!(path_failed().is_path_event());
        let mut reinstated = path_failed();
        reinstated
            .properties
            .insert("DM_ACTION".into(), "PATH_REINSTATED".into());
        assert!(reinstated.is_path_event());
    }

    #[test]
    fn other_dm_events_are_not_path_events() {
        let mut other = path_failed();
        other.properties.insert("DM_ACTION".into(), "RELOAD".into());
        assert!(!other.is_path_event());
        other.properties.remove("DM_ACTION");
        assert!(!other.is_path_event());
        assert!(!event("add", "block", "sdc", &[("DEVTYPE", "disk")]).is_path_event());
    }

    #[test]
    fn map_wwid_of_a_multipath_map() {
        assert_eq!(
            path_failed().map_wwid(),
            Some("36001405abcdef0123456789abcdef01")
        );
    }

    #[test]
    fn map_wwid_is_none_for_non_multipath_devices() {
        let cases = [
            // kpartx partition on top of a map
            event(
                "change",
                "block",
                "dm-4",
                &[("DM_UUID", "part1-mpath-36001405abcdef")],
            ),
            // LVM
            event(
                "change",
                "block",
                "dm-5",
                &[("DM_UUID", "LVM-abcdefABCDEF0123456789")],
            ),
            event("change", "block", "dm-6", &[("DM_UUID", "mpath-")]),
            event("add", "block", "sdc", &[("ID_SERIAL", "36001405abcdef")]),
        ];
        for ev in &cases {
            assert_eq!(ev.map_wwid(), None, "{ev}");
        }
    }

    #[test]
    fn noise_block_devices_are_irrelevant() {
        for name in [
            "loop0", "loop12p1", "ram3", "zram0", "nbd1", "nbd1p2", "sr0", "fd0",
        ] {
            for action in ["add", "change", "remove"] {
                let ev = event(action, "block", name, &[("DEVTYPE", "disk")]);
                assert!(!relevant(&ev), "{ev}");
            }
        }
    }

    #[test]
    fn names_that_merely_start_like_noise_are_relevant() {
        // `sra` is not `sr<N>`, `loopback` not a loop device; unknown means relevant.
        for name in ["sra", "sdr", "loopback", "ramdisk", "fdx"] {
            let ev = event("add", "block", name, &[("DEVTYPE", "disk")]);
            assert!(relevant(&ev), "{ev}");
        }
    }

    #[test]
    fn lun_map_and_session_events_are_relevant() {
        let cases = [
            event("add", "block", "sdc", &[("DEVTYPE", "disk")]),
            event("change", "block", "sdc", &[("DEVTYPE", "disk")]),
            event("remove", "block", "sdc", &[("DEVTYPE", "disk")]),
            event("add", "block", "sdc1", &[("DEVTYPE", "partition")]),
            event("remove", "block", "sdc1", &[("DEVTYPE", "partition")]),
            path_failed(),
            event("add", "block", "dm-3", &[("DEVTYPE", "disk")]),
            event(
                "change",
                "scsi",
                "6:0:0:300",
                &[
                    ("DEVTYPE", "scsi_device"),
                    ("SDEV_UA", "CAPACITY_DATA_HAS_CHANGED"),
                ],
            ),
            event("bind", "scsi", "6:0:0:300", &[("DEVTYPE", "scsi_device")]),
            event("offline", "scsi", "6:0:0:300", &[]),
            event("add", "iscsi_session", "session4", &[]),
            event("remove", "iscsi_connection", "connection4:0", &[]),
            event("add", "scsi_host", "host6", &[]),
            // A subsystem we did not think of: relevant until proven otherwise.
            event("change", "block", "nvme0n1", &[("DEVTYPE", "disk")]),
            UdevEvent::overflow(),
        ];
        for ev in &cases {
            assert!(relevant(ev), "{ev}");
        }
    }

    #[test]
    fn a_capacity_unit_attention_names_its_scsi_device() {
        let ua = event(
            "change",
            "scsi",
            "6:0:0:300",
            &[
                ("DEVTYPE", "scsi_device"),
                ("SDEV_UA", "CAPACITY_DATA_HAS_CHANGED"),
            ],
        );
        assert!(relevant(&ua));
        assert_eq!(
            capacity_changed(&ua),
            Some(crate::observe::Hctl {
                host: 6,
                channel: 0,
                target: 0,
                lun: 300
            })
        );
    }

    #[test]
    fn other_events_are_not_capacity_changes() {
        let cases = [
            // Another unit attention: the kernel rescans for an inquiry change by itself.
            event(
                "change",
                "scsi",
                "6:0:0:300",
                &[("SDEV_UA", "INQUIRY_DATA_HAS_CHANGED")],
            ),
            event(
                "change",
                "scsi",
                "6:0:0:300",
                &[("SDEV_UA", "REPORTED_LUNS_DATA_HAS_CHANGED")],
            ),
            event("change", "scsi", "6:0:0:300", &[("DEVTYPE", "scsi_device")]),
            // Not a change, not a SCSI device, not a device name.
            event(
                "add",
                "scsi",
                "6:0:0:300",
                &[("SDEV_UA", "CAPACITY_DATA_HAS_CHANGED")],
            ),
            event(
                "change",
                "block",
                "sdc",
                &[("SDEV_UA", "CAPACITY_DATA_HAS_CHANGED")],
            ),
            event(
                "change",
                "scsi",
                "target6:0:0",
                &[("SDEV_UA", "CAPACITY_DATA_HAS_CHANGED")],
            ),
            UdevEvent::overflow(),
        ];
        for ev in &cases {
            assert_eq!(capacity_changed(ev), None, "{ev}");
        }
    }

    #[test]
    fn partition_change_without_dm_properties_is_irrelevant() {
        let ev = event("change", "block", "sdc1", &[("DEVTYPE", "partition")]);
        assert!(!relevant(&ev));
        let with_dm = event(
            "change",
            "block",
            "sdc1",
            &[("DEVTYPE", "partition"), ("DM_UUID", "x")],
        );
        assert!(relevant(&with_dm));
    }

    #[test]
    fn overflow_event_is_recognised_and_displayed() {
        let ev = UdevEvent::overflow();
        assert!(ev.is_overflow());
        assert!(!ev.is_path_event());
        assert_eq!(ev.to_string(), "overflow (udev events were lost)");
        // A real device event whose action happened to be "overflow" is not the marker.
        assert!(!event("overflow", "block", "sdc", &[]).is_overflow());
    }

    #[test]
    fn display_names_device_and_properties() {
        let mut ev = event("add", "block", "sdc", &[("DEVTYPE", "disk")]);
        ev.devnum = Some((8, 32));
        assert_eq!(ev.to_string(), "add block sdc (8:32) DEVTYPE=disk");
    }

    /// Plays back receive results; `pending` reports whether anything is left to play.
    struct Script(VecDeque<Received>);

    impl Script {
        fn new(items: Vec<Received>) -> Script {
            Script(items.into())
        }
    }

    impl Receiver for Script {
        fn receive(&mut self) -> Received {
            self.0
                .pop_front()
                .unwrap_or(Received::Failed(Errno::EAGAIN))
        }

        fn pending(&self) -> io::Result<bool> {
            Ok(!self.0.is_empty())
        }
    }

    fn ev(name: &str) -> Received {
        Received::Event(event("add", "block", name, &[]))
    }

    fn names(d: &Drained) -> Vec<&str> {
        d.events.iter().map(|e| e.sysname.as_str()).collect()
    }

    #[test]
    fn drain_reads_everything_then_reports_empty() {
        let mut rx = Script::new(vec![ev("sdc"), ev("sdd"), ev("dm-3")]);
        let d = drain(&mut rx, MAX_READS).expect("drain");
        assert_eq!(names(&d), ["sdc", "sdd", "dm-3"]);
        assert!(d.empty && !d.lost);
    }

    #[test]
    fn drain_reads_past_messages_libudev_ignored() {
        // libudev says EAGAIN for an ignored message although more are queued.
        let mut rx = Script::new(vec![
            ev("sdc"),
            Received::Failed(Errno::EAGAIN),
            Received::Failed(Errno::EAGAIN),
            ev("sdd"),
        ]);
        let d = drain(&mut rx, MAX_READS).expect("drain");
        assert_eq!(names(&d), ["sdc", "sdd"]);
        assert!(d.empty && !d.lost);
    }

    #[test]
    fn drain_reports_loss_on_enobufs_and_keeps_reading() {
        let mut rx = Script::new(vec![ev("sdc"), Received::Failed(Errno::ENOBUFS), ev("sdd")]);
        let d = drain(&mut rx, MAX_READS).expect("drain");
        assert!(d.lost);
        // Read through to the end, so the stale backlog does not cause a second resync.
        assert!(d.empty);
    }

    #[test]
    fn drain_reports_loss_on_an_unreadable_message() {
        let mut rx = Script::new(vec![Received::Failed(Errno::EINVAL), ev("sdc")]);
        let d = drain(&mut rx, MAX_READS).expect("drain");
        assert!(d.lost && d.empty);
    }

    #[test]
    fn drain_stops_at_the_bound_without_claiming_empty() {
        let mut rx = Script::new((0..10).map(|i| ev(&format!("sd{i}"))).collect());
        let d = drain(&mut rx, 4).expect("drain");
        assert_eq!(d.events.len(), 4);
        assert!(
            !d.empty,
            "readiness must stay set while messages are queued"
        );
        let rest = drain(&mut rx, MAX_READS).expect("drain");
        assert_eq!(rest.events.len(), 6);
        assert!(rest.empty);
    }

    #[test]
    fn drain_fails_on_a_broken_socket() {
        let mut rx = Script::new(vec![ev("sdc"), Received::Failed(Errno::EBADF)]);
        let err = drain(&mut rx, MAX_READS).expect_err("must fail");
        assert!(matches!(err, UdevError::Receive { .. }), "{err:?}");
    }

    #[test]
    fn outside_a_runtime_is_an_error() {
        let err = UdevMonitor::new().expect_err("must fail");
        assert!(matches!(err, UdevError::NoRuntime), "{err:?}");
    }

    fn monitor() -> UdevMonitor {
        UdevMonitor::new().unwrap_or_else(|err| {
            panic!("cannot open a udev monitor on this machine (is libudev usable, and may this process create netlink sockets?): {err}")
        })
    }

    #[tokio::test]
    async fn monitor_opens_inside_a_runtime() {
        let m = monitor();
        assert!(m.fd.as_raw_fd() >= 0);
    }

    #[tokio::test]
    async fn next_batch_waits_quietly_when_nothing_happens() {
        // The host may have real udev activity (another test, hotplug) on the subscribed
        // subsystems; none is expected on a build machine. The point is that the call waits
        // instead of returning an empty batch or spinning.
        let mut m = monitor();
        let r = timeout(Duration::from_millis(200), m.next_batch()).await;
        assert!(
            r.is_err(),
            "next_batch returned with nothing happening: {r:?}"
        );
    }

    /// Sends `payloads` as unicast netlink messages to the monitor's socket.
    fn send_unicast(m: &UdevMonitor, payloads: &[&[u8]]) {
        use nix::libc;
        use std::os::fd::{FromRawFd, OwnedFd};

        let fd = m.fd.as_raw_fd();
        // SAFETY: zeroed sockaddr_nl is a valid value; getsockname writes at most `len` bytes
        // into it.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        let rc = unsafe { libc::getsockname(fd, std::ptr::addr_of_mut!(addr).cast(), &mut len) };
        assert_eq!(rc, 0, "getsockname: {}", io::Error::last_os_error());
        assert_ne!(addr.nl_pid, 0, "monitor socket has no netlink port");

        // SAFETY: plain socket(2) call; the result is checked before use and then owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let sender = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: as above.
        let mut dest: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        dest.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        dest.nl_pid = addr.nl_pid;
        for payload in payloads {
            // SAFETY: buffer and address are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    sender.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    std::ptr::addr_of!(dest).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                // The suite runs as root (README); without CAP_NET_ADMIN this test cannot
                // run, and a test that cannot run must not pass.
                panic!("sendto: {err} (sending netlink uevent messages needs CAP_NET_ADMIN: run the tests as root)");
            }
        }
    }

    #[tokio::test]
    async fn ignored_messages_are_consumed_without_an_event() {
        // libudev ignores unicast messages from anyone but a trusted udevd, returning EAGAIN
        // while more may be queued: every one must be read, none reported, and the wait must
        // go on.
        let mut m = monitor();
        let junk = [b'x'; 64];
        // Larger than libudev's historical 8 KiB receive buffer.
        let huge = vec![b'x'; 9000];
        send_unicast(&m, &[&junk, &huge, &junk]);
        assert!(socket_has_pending(m.fd.as_raw_fd()).expect("poll"));
        let r = timeout(Duration::from_millis(200), m.next_batch()).await;
        assert!(r.is_err(), "ignored messages produced a batch: {r:?}");
        assert!(
            !socket_has_pending(m.fd.as_raw_fd()).expect("poll"),
            "messages were left on the socket"
        );
    }
}
