//! What the kernel and the storage daemons show right now, read into one plain snapshot.
//! Everything reads below a root path so tests can point it at a fixture tree.

mod dirfd;
#[doc(hidden)]
pub mod fixture;
mod model;
pub mod names;
pub(crate) mod sysfs;
mod wwid;

pub use model::{
    BlockDev, DevNum, Hctl, LunDevice, Map, NodeRecord, Observed, PartMap, Session, SessionState,
};
pub use sysfs::{observe, read_disk_sizes, registered_in_line, sectors_to_bytes, ObserveError};
pub use wwid::{Wwid, WwidError};
