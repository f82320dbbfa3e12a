//! The kernel's iSCSI netlink events. A session that loses its connection sends no uevent:
//! the kernel tells iscsid on NETLINK_ISCSI's multicast group, and so it can tell lunkeeper.
//! Every message only means "look again" (level-triggered), so none is parsed. Exercised by
//! the daemon VM scenario (a disabled portal shows as degraded within 2 s): the build
//! machines' kernel has no iSCSI transport to open this socket on.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;

/// iscsid's multicast group (ISCSI_NL_GRP_ISCSID in the kernel's iscsi_if.h), as a bit mask.
const ISCSID_GROUP: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IscsiEventsError {
    #[error("cannot listen to the kernel's iSCSI events: {0}")]
    Open(Errno),
    #[error("cannot register the iSCSI event socket with the runtime: {0}")]
    Register(std::io::Error),
    #[error("reading the kernel's iSCSI events: {0}")]
    Read(std::io::Error),
}

pub struct IscsiEvents {
    fd: AsyncFd<OwnedFd>,
}

impl IscsiEvents {
    /// Needs a tokio runtime and CAP_NET_ADMIN (or root) to join the group.
    pub fn new() -> Result<IscsiEvents, IscsiEventsError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkISCSI,
        )
        .map_err(IscsiEventsError::Open)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, ISCSID_GROUP)).map_err(IscsiEventsError::Open)?;
        // SAFETY: an OwnedFd owns its descriptor until it is dropped, and the AsyncFd owns the
        // OwnedFd, so the descriptor stays valid and the same for as long as it is registered.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| IscsiEventsError::Register(e.into_parts().1))?;
        Ok(IscsiEvents { fd })
    }

    /// Waits for at least one event and reads every queued one; returns how many.
    pub async fn next_batch(&mut self) -> Result<usize, IscsiEventsError> {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = self.fd.readable().await.map_err(IscsiEventsError::Read)?;
            let mut n = 0;
            loop {
                match recv(
                    guard.get_inner().as_fd().as_raw_fd(),
                    &mut buf,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(_) => n += 1,
                    Err(Errno::EAGAIN) => break,
                    // Events were dropped: the caller looks again anyway, which is all an
                    // event would have asked for.
                    Err(Errno::ENOBUFS) => n += 1,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(IscsiEventsError::Read(e.into())),
                }
            }
            guard.clear_ready();
            if n > 0 {
                return Ok(n);
            }
        }
    }
}
