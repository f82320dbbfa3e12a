//! The observe → plan → act loop.
