//! What `lunkeeper validate` checks beyond the file's own rules, without acting on the host:
//! the CHAP secret files exist and are private, and volumes that would share one iSCSI session
//! agree on how it is set up (the planner would block all of them otherwise, at attach time).
//! Every finding is a [`ConfigError`] located at the key it is about; none echoes a secret.

use crate::act::iscsiadm::read_secret;
use crate::desired::{locate, Chap, ConfigError, Desired, Location, SecretFile, VolumeState};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;

/// Every finding for the file `desired` was parsed from; `text` is that file's content.
pub fn check(desired: &Desired, text: &str) -> Vec<ConfigError> {
    let mut found = Vec::new();
    for (index, volume) in desired.volumes.iter().enumerate() {
        let Some(chap) = &volume.chap else { continue };
        let files = [
            ("password_file", Some(&chap.password_file)),
            ("password_in_file", chap.password_in_file.as_ref()),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            if let Some(why) = secret_file_problem(file) {
                let key = format!("volume[{index}].chap.{key}");
                found.push(error(desired, text, key, index, why));
            }
        }
    }
    found.extend(session_conflicts(desired, text));
    found
}

/// Why a secret file cannot be used as it is, if it cannot.
fn secret_file_problem(file: &SecretFile) -> Option<String> {
    let meta = match std::fs::metadata(file.path()) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Some(format!("the secret file {file} does not exist"))
        }
        Err(e) => return Some(format!("cannot look at the secret file {file}: {e}")),
    };
    if !meta.is_file() {
        return Some(format!("the secret file {file} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    let readers = match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (true, true) => Some("its group and all other users"),
        (true, false) => Some("its group"),
        (false, true) => Some("all other users"),
        (false, false) => None,
    };
    if let Some(readers) = readers {
        return Some(format!(
            "the secret file {file} is readable by {readers} (mode {mode:04o}); make it \
             private: chmod 600 {file}"
        ));
    }
    // The error never carries the file's content.
    match read_secret(file.path()) {
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Some(format!(
            "cannot read the secret file {file}: {e} (validate as the user the daemon runs as)"
        )),
        Err(e) => Some(format!("the secret file {file}: {e}")),
    }
}

/// Volumes with one target and one portal share a session, whose node record holds one set of
/// CHAP settings and one replacement timeout. Compared as written: a host name and an address
/// that resolve to one portal are found only at attach time.
fn session_conflicts(desired: &Desired, text: &str) -> Vec<ConfigError> {
    let present: Vec<(usize, &crate::desired::Volume)> = desired
        .volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| v.state == VolumeState::Present)
        .collect();
    let mut found = Vec::new();
    for (later, (index, volume)) in present.iter().enumerate() {
        let first = present.iter().take(later).find(|(_, other)| {
            other
                .target
                .as_str()
                .eq_ignore_ascii_case(volume.target.as_str())
                && other.portals.iter().any(|p| volume.portals.contains(p))
        });
        let Some((first_index, other)) = first else {
            continue;
        };
        let disagreement = match chap_difference(other.chap.as_ref(), volume.chap.as_ref()) {
            Some(field) => Some((format!("volume[{index}].{field}"), "CHAP settings")),
            None if other.replacement_timeout != volume.replacement_timeout => Some((
                format!("volume[{index}].replacement_timeout"),
                "replacement_timeout",
            )),
            None => None,
        };
        let Some((key, what)) = disagreement else {
            continue;
        };
        let portal = other
            .portals
            .iter()
            .find(|p| volume.portals.contains(p))
            .map(ToString::to_string)
            .unwrap_or_default();
        let first_line = locate(text, &format!("volume[{first_index}].name")).map_or(0, |l| l.line);
        let why = format!(
            "volume \"{}\" and volume \"{}\" (line {first_line}) share the session to {} at \
             {portal} but disagree on {what}; volumes that share a session must agree on it",
            volume.name, other.name, volume.target
        );
        found.push(error(desired, text, key, *index, why));
    }
    found
}

/// The first CHAP key (under the volume) whose value differs, naming no value.
fn chap_difference(a: Option<&Chap>, b: Option<&Chap>) -> Option<&'static str> {
    match (a, b) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => Some("chap"),
        (Some(a), Some(b)) => {
            if a.username != b.username {
                Some("chap.username")
            } else if a.password_file != b.password_file {
                Some("chap.password_file")
            } else if a.username_in != b.username_in {
                Some("chap.username_in")
            } else if a.password_in_file != b.password_in_file {
                Some("chap.password_in_file")
            } else {
                None
            }
        }
    }
}

/// A finding located at `key`, or at the volume's name when `key` is not written (a default).
fn error(desired: &Desired, text: &str, key: String, index: usize, message: String) -> ConfigError {
    let location = locate(text, &key)
        .or_else(|| locate(text, &format!("volume[{index}].name")))
        .unwrap_or(Location { line: 1, column: 1 });
    ConfigError::Invalid {
        path: desired.source.clone(),
        location,
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::parse;
    use std::path::{Path, PathBuf};

    /// A volume on LUN 0 of one target, except "two" on LUN 2.
    fn volume(name: &str, portal: &str, extra: &str) -> String {
        let lun = if name == "two" { 2 } else { 0 };
        format!(
            "[[volume]]\nname = \"{name}\"\ntarget = \"iqn.2026-11.com.example:db\"\n\
             portals = [\"{portal}\"]\nlun = {lun}\n{extra}"
        )
    }

    fn chap(file: &Path) -> String {
        format!(
            "[volume.chap]\nusername = \"u\"\npassword_file = \"{}\"\n",
            file.display()
        )
    }

    fn findings(text: &str) -> Vec<String> {
        let desired = parse(Path::new("/v.toml"), text).unwrap();
        check(&desired, text)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn secret(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_private_non_empty_secret_file_passes() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(dir.path(), "s", "Hunter2Secret\n", 0o600);
        assert!(findings(&volume("db", "192.0.2.1", &chap(&s))).is_empty());
    }

    #[test]
    fn secret_file_problems_name_file_line_and_key_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (dir.path().join("missing"), "does not exist"),
            (dir.path().to_path_buf(), "is not a regular file"),
            (secret(dir.path(), "empty", "", 0o600), "empty"),
            (secret(dir.path(), "blank", "\n", 0o600), "empty"),
            (
                secret(dir.path(), "g", "Hunter2Secret\n", 0o640),
                "readable by its group (mode 0640)",
            ),
            (
                secret(dir.path(), "o", "Hunter2Secret\n", 0o604),
                "readable by all other users (mode 0604)",
            ),
            (
                secret(dir.path(), "go", "Hunter2Secret\n", 0o644),
                "readable by its group and all other users (mode 0644)",
            ),
        ];
        for (file, needle) in cases {
            let text = volume("db", "192.0.2.1", &chap(&file));
            let found = findings(&text);
            assert_eq!(found.len(), 1, "{file:?}: {found:?}");
            let prefix = "/v.toml:8:17: volume[0].chap.password_file: ";
            assert!(found[0].starts_with(prefix), "{}", found[0]);
            assert!(found[0].contains(needle), "{}", found[0]);
            assert!(
                found[0].contains(&file.display().to_string()),
                "{}",
                found[0]
            );
            assert!(!found[0].contains("Hunter2Secret"), "{}", found[0]);
        }
    }

    #[test]
    fn the_mutual_chap_secret_file_is_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(dir.path(), "s", "a\n", 0o600);
        let extra = format!(
            "{}username_in = \"t\"\npassword_in_file = \"{}\"\n",
            chap(&s),
            dir.path().join("nope").display()
        );
        let found = findings(&volume("db", "192.0.2.1", &extra));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("/v.toml:10:20: volume[0].chap.password_in_file: "),
            "{}",
            found[0]
        );
    }

    #[test]
    fn volumes_sharing_a_session_must_agree_on_chap_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let a = secret(dir.path(), "a", "a\n", 0o600);
        let b = secret(dir.path(), "b", "b\n", 0o600);
        let text = format!(
            "{}{}",
            volume("one", "192.0.2.1", &chap(&a)),
            volume("two", "192.0.2.1", &chap(&b))
        );
        let found = findings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("/v.toml:16:17: volume[1].chap.password_file: "),
            "{}",
            found[0]
        );
        assert!(
            found[0].contains("volume \"two\" and volume \"one\" (line 2)"),
            "{}",
            found[0]
        );
        // One with CHAP, one without: located at the name of the one without.
        let text = format!(
            "{}{}",
            volume("one", "192.0.2.1", &chap(&a)),
            volume("two", "192.0.2.1", "")
        );
        let found = findings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("/v.toml:10:8: volume[1].chap: "),
            "{}",
            found[0]
        );
    }

    #[test]
    fn volumes_sharing_a_session_must_agree_on_replacement_timeout() {
        let text = format!(
            "{}{}",
            volume("one", "192.0.2.1", "replacement_timeout = 5\n"),
            volume("two", "192.0.2.1", "replacement_timeout = 9\n")
        );
        let found = findings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("/v.toml:12:23: volume[1].replacement_timeout: "),
            "{}",
            found[0]
        );
        assert!(found[0].contains("\"one\"") && found[0].contains("\"two\""));
    }

    #[test]
    fn volumes_on_other_portals_or_absent_may_differ() {
        let other_portal = format!(
            "{}{}",
            volume("one", "192.0.2.1", "replacement_timeout = 5\n"),
            volume("two", "192.0.2.2", "replacement_timeout = 9\n")
        );
        assert!(findings(&other_portal).is_empty());
        let absent = format!(
            "{}{}",
            volume("one", "192.0.2.1", "replacement_timeout = 5\n"),
            volume(
                "two",
                "192.0.2.1",
                "replacement_timeout = 9\nstate = \"absent\"\n"
            )
        );
        assert!(findings(&absent).is_empty());
    }
}
