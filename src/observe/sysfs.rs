// placeholder: the observer helper replaces this file
use super::Observed;
use std::path::Path;
#[derive(Debug, thiserror::Error)]
#[error("observe error")]
pub struct ObserveError;
pub fn observe(_root: &Path) -> Result<Observed, ObserveError> { Ok(Observed::default()) }
