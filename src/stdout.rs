//! Writing the command's output to stdout without `println!`, which panics when stdout fails.
//!
//! `lunkeeper status | head -n1` closes the pipe after one line: further output is dropped
//! quietly and the command still ends with its own exit code, so a monitor running it under
//! `pipefail` reads the volumes' state, not an artefact of the pipe. Any other failure (a full
//! disk behind a redirection, an I/O error) is remembered; the command reports it once on stderr
//! and exits [`IO_ERROR`], since output that was cut short must not look like a success.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;

/// Exit code when stdout could not be written (sysexits' EX_IOERR).
pub const IO_ERROR: u8 = 74;

/// What became of stdout so far.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Open,
    /// The reader went away (EPIPE): drop the rest quietly.
    Closed,
    /// Any other error; the message names the first one.
    Failed(String),
}

static STATE: Mutex<Outcome> = Mutex::new(Outcome::Open);

/// Writes formatted text to stdout; the `outln!`/`out!` macros call this.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    let Ok(mut state) = STATE.lock() else {
        return;
    };
    if *state != Outcome::Open {
        return;
    }
    let mut stdout = io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args) {
        record(&mut state, &error);
    }
}

/// Flushes stdout and says how the output went: `None` when it was written in full or the
/// reader closed the pipe, `Some(message)` when it failed otherwise. Call once, at the end.
pub fn finish() -> Option<String> {
    let Ok(mut state) = STATE.lock() else {
        return None;
    };
    if *state == Outcome::Open {
        if let Err(error) = io::stdout().lock().flush() {
            record(&mut state, &error);
        }
    }
    match &*state {
        Outcome::Failed(message) => Some(message.clone()),
        Outcome::Open | Outcome::Closed => None,
    }
}

fn record(state: &mut Outcome, error: &io::Error) {
    *state = if error.kind() == io::ErrorKind::BrokenPipe {
        Outcome::Closed
    } else {
        Outcome::Failed(format!("cannot write to stdout: {error}"))
    };
}

/// `println!` for command output: never panics (see the module's documentation).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output: never panics (see the module's documentation).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write_fmt(format_args!($($arg)*))
    };
}
