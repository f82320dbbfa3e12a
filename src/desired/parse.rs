// placeholder: the desired-parsing helper replaces this file
use super::{ConfigError, Desired};
use std::path::Path;
pub fn parse(_source: &Path, _text: &str) -> Result<Desired, ConfigError> { Err(ConfigError) }
pub fn load(_path: &Path) -> Result<Desired, ConfigError> { Err(ConfigError) }
