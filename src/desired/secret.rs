//! Where a CHAP secret is kept. Operators paste the secret itself where its file belongs often
//! enough that no path given for a secret is ever shown unless it is a valid absolute path.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The absolute path of a file holding a CHAP secret. Only an absolute path can be made into
/// one, so what it shows in messages, logs and `plan --json` is a path, never a value pasted
/// in place of one.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SecretFile(PathBuf);

impl SecretFile {
    /// `None` unless `path` is absolute.
    pub fn absolute(path: impl Into<PathBuf>) -> Option<SecretFile> {
        let path = path.into();
        path.is_absolute().then_some(SecretFile(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_paths_are_secret_files() {
        assert!(SecretFile::absolute("hunter2").is_none());
        assert!(SecretFile::absolute("secrets/db").is_none());
        let f = SecretFile::absolute("/etc/lunkeeper/secrets/db").unwrap();
        assert_eq!(f.to_string(), "/etc/lunkeeper/secrets/db");
        assert_eq!(f.path(), Path::new("/etc/lunkeeper/secrets/db"));
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            "\"/etc/lunkeeper/secrets/db\""
        );
    }
}
