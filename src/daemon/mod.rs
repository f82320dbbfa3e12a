//! The long-running daemon.

pub mod watch;
