//! Status report.
