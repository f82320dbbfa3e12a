//! Running an external program with a deadline. A hung iscsiadm or multipath must never hold
//! up other volumes: every call has a timeout and the child is killed when it passes.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}s and was killed", after.as_secs_f32())]
    Timeout { program: String, after: Duration },
}

/// Runs `program args` with no stdin and captured output. Arguments must never carry secrets:
/// any user can read them in /proc/PID/cmdline while the program runs.
pub async fn run(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Finished, CommandError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.to_string(),
            source,
        })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Finished {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(source)) => Err(CommandError::Spawn {
            program: program.to_string(),
            source,
        }),
        // Dropping the future drops the child, and kill_on_drop kills it.
        Err(_) => Err(CommandError::Timeout {
            program: program.to_string(),
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_code_and_output_are_captured() {
        let f = run(
            "sh",
            &["-c", "echo out; echo err >&2; exit 7"],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(f.code, Some(7));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "err\n");
    }

    #[tokio::test]
    async fn a_hung_program_is_killed_at_the_deadline() {
        let start = std::time::Instant::now();
        let err = run("sleep", &["30"], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = run("/nonexistent/lunkeeper-test", &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
    }
}
