//! lunkeeper keeps a host's iSCSI volumes attached exactly as a declarative file says.
//!
//! The layers are one-way: `desired` (what the file says) and `observe` (what the kernel
//! shows) feed `plan`, a pure function that returns actions; `act` carries them out;
//! `apply` loops observe → plan → act until the host converges.

pub mod act;
pub mod apply;
pub mod daemon;
pub mod desired;
pub mod doctor;
pub mod files;
pub mod journal;
pub mod lock;
pub mod metrics;
pub mod observe;
pub mod owned;
pub mod plan;
pub mod plural;
pub mod status;
pub mod stdout;
pub mod validate;

#[cfg(test)]
mod testkit;
