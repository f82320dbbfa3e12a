//! The desired-state file (TOML). Must hold: parsing never panics; every refusal is one line
//! that starts with the file's path, and every refusal but "no volumes" carries a
//! `file:line:col` inside the text; `locate` never panics and points inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lunkeeper::fuzzing::{locate, parse_config, ConfigError};

const PATH: &str = "/etc/lunkeeper/volumes.toml";

/// Key paths `validate` asks `locate` for.
const KEYS: [&str; 6] = [
    "volume[0].name",
    "volume[0].portals[0]",
    "volume[0].chap.password_file",
    "volume[1].chap.password_in_file",
    "volume[0].replacement_timeout",
    "defaults.login_timeout",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines as an editor counts them: a final line without a newline still counts.
    let lines = text.split('\n').count();
    let in_text = |line: usize, column: usize| {
        line >= 1
            && line <= lines
            && column >= 1
            && column <= text.split('\n').nth(line - 1).map_or(0, |l| l.chars().count()) + 1
    };
    match parse_config(Path::new(PATH), text) {
        Ok(desired) => assert!(!desired.volumes.is_empty()),
        Err(err) => {
            let shown = err.to_string();
            assert!(!shown.contains(['\n', '\r']), "not one line: {shown:?}");
            assert!(shown.starts_with(PATH), "no path: {shown:?}");
            match &err {
                ConfigError::NoVolumes { .. } => {}
                ConfigError::Toml { location, .. } | ConfigError::Invalid { location, .. } => {
                    assert!(
                        in_text(location.line, location.column),
                        "{location} is outside the text: {shown:?}"
                    );
                    let prefix = format!("{PATH}:{}:{}: ", location.line, location.column);
                    assert!(shown.starts_with(&prefix), "{shown:?}");
                }
                other => panic!("a refusal without file:line:col: {other}"),
            }
        }
    }
    for key in KEYS {
        if let Some(at) = locate(text, key) {
            assert!(in_text(at.line, at.column), "{key} located at {at}");
        }
    }
});
