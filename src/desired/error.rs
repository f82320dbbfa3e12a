// placeholder: the desired-parsing helper replaces this file
#[derive(Debug, thiserror::Error)]
#[error("config error")]
pub struct ConfigError;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location;
