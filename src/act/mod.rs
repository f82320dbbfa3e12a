//! Executors for planned actions.
