//! The `multipath` command, for the one thing the multipathd socket cannot do: adding a WWID
//! to (and removing it from) `/etc/multipath/wwids`.

use std::time::Duration;

use super::command::{self, CommandError};
use crate::observe::Wwid;

#[derive(Debug, thiserror::Error)]
pub enum MultipathError {
    #[error("multipath {flag} {wwid} failed (exit {code:?}): {stderr}")]
    Failed {
        flag: &'static str,
        wwid: Wwid,
        code: Option<i32>,
        stderr: String,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

#[derive(Debug, Clone)]
pub struct MultipathCli {
    pub program: String,
    pub timeout: Duration,
}

impl Default for MultipathCli {
    fn default() -> Self {
        MultipathCli {
            program: "multipath".to_string(),
            timeout: Duration::from_secs(20),
        }
    }
}

impl MultipathCli {
    pub async fn add_wwid(&self, wwid: &Wwid) -> Result<(), MultipathError> {
        self.call("-a", wwid).await
    }

    pub async fn remove_wwid(&self, wwid: &Wwid) -> Result<(), MultipathError> {
        self.call("-w", wwid).await
    }

    async fn call(&self, flag: &'static str, wwid: &Wwid) -> Result<(), MultipathError> {
        let out = command::run(&self.program, &[flag, wwid.as_str()], self.timeout).await?;
        if out.success() {
            Ok(())
        } else {
            Err(MultipathError::Failed {
                flag,
                wwid: wwid.clone(),
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }
}
