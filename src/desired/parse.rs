//! Reading the desired-state file. TOML is first read into private `Raw*` structs that keep
//! the byte span of every value, so a rule broken later can still be reported at its line and
//! column; those structs are then checked and turned into the public types.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{ConfigError, Location};
use super::{
    Chap, DaemonSettings, Desired, Lun, Portal, PortalHost, SecretFile, TargetName, Volume,
    VolumeName, VolumeState,
};
use crate::observe::Wwid;

/// The IANA port for iSCSI, used when a portal names none.
const DEFAULT_PORT: u16 = 3260;
const MAX_LUN: i64 = 16383;
/// RFC 3720 §3.2.6.1: an iSCSI name is at most 223 bytes.
const MAX_TARGET_NAME_BYTES: usize = 223;
const MAX_VOLUME_NAME_LEN: usize = 63;
const MAX_HOST_NAME_LEN: usize = 253;
const MAX_HOST_LABEL_LEN: usize = 63;

/// The value of the top-level `volumes` key that declares "nothing to manage yet". A string
/// rather than an empty list: a generator rendering an empty list writes `volume = []` or no
/// `[[volume]]` at all, both of which stay errors, but never this word by accident.
pub const NO_VOLUMES: &str = "none";

/// A key whose value is a whole number of seconds.
struct Seconds {
    name: &'static str,
    min: u32,
    max: u32,
    default: u32,
}

const REPLACEMENT_TIMEOUT: Seconds = Seconds {
    name: "replacement_timeout",
    min: 1,
    max: 3600,
    default: 5,
};
const LOGIN_TIMEOUT: Seconds = Seconds {
    name: "login_timeout",
    min: 1,
    max: 600,
    default: 15,
};
const RESYNC_INTERVAL: Seconds = Seconds {
    name: "resync_interval",
    min: 1,
    max: 86400,
    // A safety net behind udev and iSCSI events: each look wakes the daemon and a blocking
    // thread, so every 5 minutes keeps an idle daemon under 0.05 wake-ups per second.
    default: 300,
};

/// A TOML integer of any size. Reading into this rather than `u32` lets a negative or huge
/// number get a range message instead of serde's "expected u32", and a wrong type reads
/// "expected an integer" rather than naming a Rust type.
struct Integer(i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Integer, D::Error> {
        deserializer.deserialize_i64(IntegerVisitor)
    }
}

struct IntegerVisitor;

impl serde::de::Visitor<'_> for IntegerVisitor {
    type Value = Integer;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Integer, E> {
        Ok(Integer(value))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Integer, E> {
        i64::try_from(value)
            .map(Integer)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// `volumes = "none"`: the file deliberately declares no volumes (see [`NO_VOLUMES`]).
    volumes: Option<Spanned<String>>,
    defaults: Option<RawDefaults>,
    daemon: Option<RawDaemon>,
    volume: Option<Vec<RawVolume>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    multipath: Option<Spanned<bool>>,
    replacement_timeout: Option<Spanned<Integer>>,
    login_timeout: Option<Spanned<Integer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    resync_interval: Option<Spanned<Integer>>,
    metrics_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: Spanned<String>,
    target: Spanned<String>,
    portals: Spanned<Vec<Spanned<String>>>,
    lun: Spanned<Integer>,
    multipath: Option<Spanned<bool>>,
    replacement_timeout: Option<Spanned<Integer>>,
    login_timeout: Option<Spanned<Integer>>,
    expect_wwid: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
    chap: Option<RawChap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChap {
    username: Spanned<String>,
    password_file: Spanned<String>,
    username_in: Option<Spanned<String>>,
    password_in_file: Option<Spanned<String>>,
}

/// Reads and checks the desired-state file at `path`.
pub fn load(path: &Path) -> Result<Desired, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(path, &text)
}

/// Checks the text of a desired-state file; `source` is only used in messages and in
/// [`Desired::source`].
pub fn parse(source: &Path, text: &str) -> Result<Desired, ConfigError> {
    let file = File { source, text };
    let raw = file.read_raw()?;
    let defaults = file.defaults(raw.defaults.as_ref())?;
    let daemon = file.daemon(raw.daemon.as_ref())?;
    let raw_volumes = raw.volume.unwrap_or_default();
    match &raw.volumes {
        Some(word) if word.get_ref() != NO_VOLUMES => {
            return Err(file.error_at(
                word.span(),
                "volumes",
                format!(
                    "the only value is \"{NO_VOLUMES}\" (this host has nothing to manage yet); \
                     volumes are declared in [[volume]] tables"
                ),
            ));
        }
        Some(word) if !raw_volumes.is_empty() => {
            return Err(file.error_at(
                word.span(),
                "volumes",
                format!(
                    "\"{NO_VOLUMES}\" contradicts the {} declared in this file",
                    crate::plural::count(raw_volumes.len(), "[[volume]] table")
                ),
            ));
        }
        Some(_) => {
            return Ok(Desired {
                source: source.to_path_buf(),
                daemon,
                volumes: Vec::new(),
            });
        }
        None if raw_volumes.is_empty() => {
            return Err(ConfigError::NoVolumes {
                path: source.to_path_buf(),
            });
        }
        None => {}
    }
    let volumes = raw_volumes
        .iter()
        .enumerate()
        .map(|(index, raw)| file.volume(&defaults, index, raw))
        .collect::<Result<Vec<_>, _>>()?;
    file.check_names_unique(&raw_volumes)?;
    file.check_luns_unique(&raw_volumes, &volumes)?;
    Ok(Desired {
        source: source.to_path_buf(),
        daemon,
        volumes,
    })
}

/// Where the value of `key` (a key path such as `volume[1].chap.password_file`) is written in
/// `text`, for checks made after parsing that point at the file; `None` when the key is not
/// written (it took its default).
pub fn locate(text: &str, key: &str) -> Option<Location> {
    let (tree, _) = DeTable::parse_recoverable(text);
    let nodes = NodeIndex::of_document(text, &tree);
    nodes
        .nodes
        .iter()
        .filter(|n| n.path == key && !n.span.is_empty())
        .max_by_key(|n| n.span.start)
        .map(|n| Location::of_offset(text, n.span.start))
}

/// What a volume gets for each key it leaves out.
struct Defaults {
    multipath: bool,
    replacement_timeout: u32,
    login_timeout: u32,
}

/// The file being read, for turning spans into located errors.
struct File<'a> {
    source: &'a Path,
    text: &'a str,
}

impl File<'_> {
    fn error_at(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.to_path_buf(),
            location: Location::of_offset(self.text, span.start),
            key: key.into(),
            message: one_line(&message.into()),
        }
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        Location::of_offset(self.text, span.start).line
    }

    /// Parses once into a spanned document tree, which also tells which key an error from the
    /// TOML reader is about, and then deserializes the raw structs from that tree.
    fn read_raw(&self) -> Result<RawFile, ConfigError> {
        let (tree, errors) = DeTable::parse_recoverable(self.text);
        let nodes = NodeIndex::of_document(self.text, &tree);
        if let Some(error) = errors.into_iter().next() {
            return Err(self.toml_error(&nodes, &error));
        }
        RawFile::deserialize(toml::de::Deserializer::from(tree))
            .map_err(|error| self.toml_error(&nodes, &error))
    }

    fn toml_error(&self, nodes: &NodeIndex, error: &toml::de::Error) -> ConfigError {
        let message = one_line(error.message());
        match error.span() {
            Some(span) => {
                let (key, message) = hide_chap_values(nodes.key_path_at(&span), message);
                ConfigError::Toml {
                    path: self.source.to_path_buf(),
                    location: Location::of_offset(self.text, span.start),
                    key,
                    message,
                }
            }
            None => ConfigError::Unplaced {
                path: self.source.to_path_buf(),
                message,
            },
        }
    }

    fn defaults(&self, raw: Option<&RawDefaults>) -> Result<Defaults, ConfigError> {
        let seconds = |value: Option<&Spanned<Integer>>, limits: &Seconds| {
            self.seconds(value, "defaults", limits, limits.default)
        };
        Ok(Defaults {
            multipath: raw
                .and_then(|d| d.multipath.as_ref())
                .is_none_or(|m| *m.get_ref()),
            replacement_timeout: seconds(
                raw.and_then(|d| d.replacement_timeout.as_ref()),
                &REPLACEMENT_TIMEOUT,
            )?,
            login_timeout: seconds(raw.and_then(|d| d.login_timeout.as_ref()), &LOGIN_TIMEOUT)?,
        })
    }

    fn daemon(&self, raw: Option<&RawDaemon>) -> Result<DaemonSettings, ConfigError> {
        let value = raw.and_then(|d| d.resync_interval.as_ref());
        let seconds = self.seconds(value, "daemon", &RESYNC_INTERVAL, RESYNC_INTERVAL.default)?;
        let metrics_file = match raw.and_then(|d| d.metrics_file.as_ref()) {
            None => DaemonSettings::default().metrics_file,
            Some(v) if v.get_ref().is_empty() => None,
            Some(v) if Path::new(v.get_ref()).is_absolute() => Some(PathBuf::from(v.get_ref())),
            Some(v) => {
                return Err(self.error_at(
                    v.span(),
                    "daemon.metrics_file",
                    format!(
                        "{:?} is not an absolute path; name the .prom file in node_exporter's \
                         textfile directory by its absolute path, or \"\" for no metrics",
                        v.get_ref()
                    ),
                ))
            }
        };
        Ok(DaemonSettings {
            resync_interval: Duration::from_secs(seconds.into()),
            metrics_file,
        })
    }

    /// `value` if set and within `limits`, else `fallback`; `table` is the key path of the
    /// table it sits in.
    fn seconds(
        &self,
        value: Option<&Spanned<Integer>>,
        table: &str,
        limits: &Seconds,
        fallback: u32,
    ) -> Result<u32, ConfigError> {
        let Some(value) = value else {
            return Ok(fallback);
        };
        u32::try_from(value.get_ref().0)
            .ok()
            .filter(|s| (limits.min..=limits.max).contains(s))
            .ok_or_else(|| {
                self.error_at(
                    value.span(),
                    format!("{table}.{}", limits.name),
                    format!(
                        "{} is out of range: must be {}..={} seconds",
                        value.get_ref().0,
                        limits.min,
                        limits.max
                    ),
                )
            })
    }

    fn volume(
        &self,
        defaults: &Defaults,
        index: usize,
        raw: &RawVolume,
    ) -> Result<Volume, ConfigError> {
        let table = format!("volume[{index}]");
        // Checked in the order the keys are usually written, so the first error reported is
        // the first one an operator reading down the file would meet.
        let name = self.volume_name(&table, &raw.name)?;
        let target = self.target(&table, &raw.target)?;
        let portals = self.portals(&table, &raw.portals)?;
        let lun = self.lun(&table, &raw.lun)?;
        let multipath = raw
            .multipath
            .as_ref()
            .map_or(defaults.multipath, |m| *m.get_ref());
        self.check_multipath(&table, raw, multipath)?;
        let replacement_timeout = self.seconds(
            raw.replacement_timeout.as_ref(),
            &table,
            &REPLACEMENT_TIMEOUT,
            defaults.replacement_timeout,
        )?;
        let login_timeout = self.seconds(
            raw.login_timeout.as_ref(),
            &table,
            &LOGIN_TIMEOUT,
            defaults.login_timeout,
        )?;
        Ok(Volume {
            name,
            target,
            portals,
            lun,
            multipath,
            expect_wwid: raw
                .expect_wwid
                .as_ref()
                .map(|w| self.wwid(&table, w))
                .transpose()?,
            state: raw
                .state
                .as_ref()
                .map_or(Ok(VolumeState::Present), |s| self.state(&table, s))?,
            chap: raw
                .chap
                .as_ref()
                .map(|c| self.chap(&table, c))
                .transpose()?,
            replacement_timeout,
            login_timeout: Duration::from_secs(login_timeout.into()),
        })
    }

    fn volume_name(&self, table: &str, raw: &Spanned<String>) -> Result<VolumeName, ConfigError> {
        let name = raw.get_ref();
        check_volume_name(name)
            .map(|()| VolumeName(name.clone()))
            .map_err(|why| {
                self.error_at(
                    raw.span(),
                    format!("{table}.name"),
                    format!("{name:?} is not a volume name: {why}"),
                )
            })
    }

    fn target(&self, table: &str, raw: &Spanned<String>) -> Result<TargetName, ConfigError> {
        let name = raw.get_ref();
        check_target_name(name)
            .map(|()| TargetName(name.clone()))
            .map_err(|why| {
                self.error_at(
                    raw.span(),
                    format!("{table}.target"),
                    format!("{name:?} is not an iSCSI target name: {why}"),
                )
            })
    }

    fn portals(
        &self,
        table: &str,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<Vec<Portal>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error_at(
                raw.span(),
                format!("{table}.portals"),
                "lists no portals; a volume needs at least one",
            ));
        }
        let mut portals: Vec<Portal> = Vec::with_capacity(raw.get_ref().len());
        for (index, written) in raw.get_ref().iter().enumerate() {
            let key = format!("{table}.portals[{index}]");
            let portal = parse_portal(written.get_ref()).map_err(|why| {
                self.error_at(
                    written.span(),
                    &key,
                    format!("{:?} is not a portal: {why}", written.get_ref()),
                )
            })?;
            if let Some(first) = portals.iter().position(|p| *p == portal) {
                return Err(self.error_at(
                    written.span(),
                    key,
                    format!(
                        "{:?} is the same portal as portals[{first}]; list each portal once",
                        written.get_ref()
                    ),
                ));
            }
            portals.push(portal);
        }
        Ok(portals)
    }

    /// Without multipath each path to a LUN becomes its own SCSI disk, and two disks for the
    /// same blocks invite a filesystem to be mounted twice.
    fn check_multipath(
        &self,
        table: &str,
        raw: &RawVolume,
        multipath: bool,
    ) -> Result<(), ConfigError> {
        let paths = raw.portals.get_ref().len();
        if multipath || paths <= 1 {
            return Ok(());
        }
        let (span, key, from) = match &raw.multipath {
            Some(m) => (m.span(), format!("{table}.multipath"), ""),
            None => (
                raw.portals.span(),
                format!("{table}.portals"),
                " (from [defaults])",
            ),
        };
        Err(self.error_at(
            span,
            key,
            format!(
                "multipath = false{from} with {paths} portals: two paths to one LUN without multipath \
                 would give two disks for the same data; set multipath = true or list one portal"
            ),
        ))
    }

    fn lun(&self, table: &str, raw: &Spanned<Integer>) -> Result<Lun, ConfigError> {
        let lun = raw.get_ref().0;
        if !(0..=MAX_LUN).contains(&lun) {
            return Err(self.error_at(
                raw.span(),
                format!("{table}.lun"),
                format!("{lun} is out of range: must be 0..={MAX_LUN}"),
            ));
        }
        // In range, so the conversion cannot fail; the fallback only keeps this panic-free.
        Ok(Lun(u32::try_from(lun).unwrap_or_default()))
    }

    fn wwid(&self, table: &str, raw: &Spanned<String>) -> Result<Wwid, ConfigError> {
        let written = raw.get_ref();
        parse_wwid(written).map_err(|why| {
            self.error_at(
                raw.span(),
                format!("{table}.expect_wwid"),
                format!("{written:?} is not a WWID: {why}"),
            )
        })
    }

    fn state(&self, table: &str, raw: &Spanned<String>) -> Result<VolumeState, ConfigError> {
        match raw.get_ref().as_str() {
            "present" => Ok(VolumeState::Present),
            "absent" => Ok(VolumeState::Absent),
            other => Err(self.error_at(
                raw.span(),
                format!("{table}.state"),
                format!("{other:?} is not a state: must be \"present\" or \"absent\""),
            )),
        }
    }

    fn chap(&self, table: &str, raw: &RawChap) -> Result<Chap, ConfigError> {
        let table = format!("{table}.chap");
        let username = self.chap_username(&table, "username", &raw.username)?;
        let password_file = self.secret_path(&table, "password_file", &raw.password_file)?;
        let (username_in, password_in_file) = match (&raw.username_in, &raw.password_in_file) {
            (None, None) => (None, None),
            (Some(user), Some(file)) => (
                Some(self.chap_username(&table, "username_in", user)?),
                Some(self.secret_path(&table, "password_in_file", file)?),
            ),
            (Some(user), None) => {
                return Err(self.error_at(
                    user.span(),
                    format!("{table}.username_in"),
                    "username_in is set without password_in_file; mutual CHAP needs both",
                ))
            }
            (None, Some(file)) => {
                return Err(self.error_at(
                    file.span(),
                    format!("{table}.password_in_file"),
                    "password_in_file is set without username_in; mutual CHAP needs both",
                ))
            }
        };
        Ok(Chap {
            username,
            password_file,
            username_in,
            password_in_file,
        })
    }

    fn chap_username(
        &self,
        table: &str,
        key: &str,
        raw: &Spanned<String>,
    ) -> Result<String, ConfigError> {
        let name = raw.get_ref();
        let why = if name.is_empty() {
            "is empty"
        } else if name.chars().any(char::is_control) {
            // The name ends up in an open-iscsi node record, which is line-based.
            "contains a control character"
        } else {
            return Ok(name.clone());
        };
        Err(self.error_at(
            raw.span(),
            format!("{table}.{key}"),
            format!("CHAP user name {why}"),
        ))
    }

    /// Secrets are read later by a root-only daemon whose working directory is not the
    /// operator's, so a relative path would silently point somewhere else. What was written is
    /// not echoed: a value that is not an absolute path is often the secret itself.
    fn secret_path(
        &self,
        table: &str,
        key: &str,
        raw: &Spanned<String>,
    ) -> Result<SecretFile, ConfigError> {
        SecretFile::absolute(raw.get_ref()).ok_or_else(|| {
            self.error_at(
                raw.span(),
                format!("{table}.{key}"),
                "is not an absolute path (the value is not shown: it may be a secret pasted in \
                 place of its file); name the file holding the secret by its absolute path",
            )
        })
    }

    fn check_names_unique(&self, raw: &[RawVolume]) -> Result<(), ConfigError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, volume) in raw.iter().enumerate() {
            let name = volume.name.get_ref();
            if let Some(&first) = seen.get(name.as_str()) {
                let first_line = raw.get(first).map_or(0, |v| self.line_of(&v.name.span()));
                return Err(self.error_at(
                    volume.name.span(),
                    format!("volume[{index}].name"),
                    format!("{name:?} is already the name of volume[{first}] (line {first_line})"),
                ));
            }
            seen.insert(name, index);
        }
        Ok(())
    }

    /// Two entries for one logical unit would fight: one may say present and the other absent,
    /// or both would try to own the same device links.
    fn check_luns_unique(&self, raw: &[RawVolume], volumes: &[Volume]) -> Result<(), ConfigError> {
        let mut seen: HashMap<(String, Lun), usize> = HashMap::new();
        for (index, (raw_volume, volume)) in raw.iter().zip(volumes).enumerate() {
            // eui. and naa. names are hex, which a target may report in either case.
            let key = (volume.target.as_str().to_ascii_lowercase(), volume.lun);
            if let Some(&first) = seen.get(&key) {
                let first_volume = raw.get(first);
                let first_name = first_volume.map_or("", |v| v.name.get_ref().as_str());
                let first_line = first_volume.map_or(0, |v| self.line_of(&v.lun.span()));
                return Err(self.error_at(
                    raw_volume.lun.span(),
                    format!("volume[{index}].lun"),
                    format!(
                        "volume \"{}\" claims LUN {} of target {}, which volume \"{first_name}\" (line \
                         {first_line}) already claims; list each LUN once",
                        volume.name, volume.lun, volume.target
                    ),
                ));
            }
            seen.insert(key, index);
        }
        Ok(())
    }
}

/// The keys a `[volume.chap]` table may hold.
const CHAP_KEYS: [&str; 4] = [
    "username",
    "password_file",
    "username_in",
    "password_in_file",
];

/// Operators paste secrets into `[volume.chap]` (in place of a file name, or as a line of their
/// own), and the TOML reader quotes what it refuses ("invalid type: integer `123456`", "unknown
/// field `…`"): an error about that table keeps its location and a key the schema knows, and
/// says what is wrong in words of its own.
fn hide_chap_values(key: String, message: String) -> (String, String) {
    let Some(table_end) = chap_table_end(&key) else {
        return (key, message);
    };
    let table = key.get(..table_end).unwrap_or_default().to_string();
    let field = key.get(table_end..).unwrap_or_default();
    let known = field
        .strip_prefix('.')
        .is_some_and(|f| CHAP_KEYS.contains(&f));
    let hidden = "(what was written is not shown: it may be a secret)";
    if message.starts_with("missing field") {
        // Names a key of the schema, nothing the operator wrote.
        (key, message)
    } else if message.starts_with("unknown field") || (!field.is_empty() && !known) {
        (
            table,
            format!(
                "unknown key {hidden}; allowed keys: {}",
                CHAP_KEYS.join(", ")
            ),
        )
    } else if field.is_empty() {
        (table, format!("must be a table of CHAP settings {hidden}"))
    } else {
        (key, format!("must be a quoted string {hidden}"))
    }
}

/// Where the `volume[N].chap` part of a key path ends, if the path is in a chap table.
fn chap_table_end(key: &str) -> Option<usize> {
    let rest = key.strip_prefix("volume[")?;
    let close = rest.find(']')?;
    let after = rest.get(close + 1..)?;
    let tail = after.strip_prefix(".chap")?;
    (tail.is_empty() || tail.starts_with('.'))
        .then_some("volume[".len() + close + 1 + ".chap".len())
}

/// Keeps every message on one line whatever the file contained, e.g. a key with a newline.
fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `[a-z0-9][a-z0-9._-]{0,62}`: the name also becomes a file name and a device-link name.
fn check_volume_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok {
        return Err("must start with a lowercase letter or a digit".into());
    }
    if name.len() > MAX_VOLUME_NAME_LEN {
        return Err(format!("longer than {MAX_VOLUME_NAME_LEN} characters"));
    }
    match name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        Some(bad) => Err(format!(
            "{bad:?} is not allowed; use lowercase letters, digits, '.', '_' and '-'"
        )),
        None => Ok(()),
    }
}

/// RFC 3720 §3.2.6 and RFC 3722: `iqn.`, `eui.` or `naa.` names.
fn check_target_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_TARGET_NAME_BYTES {
        return Err(format!("longer than {MAX_TARGET_NAME_BYTES} bytes"));
    }
    if let Some(rest) = name.strip_prefix("iqn.") {
        check_iqn(rest)
    } else if let Some(hex) = name.strip_prefix("eui.") {
        check_hex("eui.", hex, &[16])
    } else if let Some(hex) = name.strip_prefix("naa.") {
        check_hex("naa.", hex, &[16, 32])
    } else {
        Err("must start with \"iqn.\", \"eui.\" or \"naa.\"".into())
    }
}

/// `yyyy-mm.reversed.domain[:unique]`, the part of an iqn name after `iqn.`.
fn check_iqn(rest: &str) -> Result<(), String> {
    if let Some(bad) = rest.chars().find(|&c| !is_iqn_char(c)) {
        return Err(if bad.is_ascii_uppercase() {
            "iSCSI names are lowercase (RFC 3722)".into()
        } else {
            format!("{bad:?} is not allowed; iqn names hold lowercase letters, digits, '.', '-' and ':'")
        });
    }
    let (date, authority_and_unique) = rest.split_once('.').unwrap_or((rest, ""));
    check_iqn_date(date)?;
    let (authority, unique) = match authority_and_unique.split_once(':') {
        Some((authority, unique)) => (authority, Some(unique)),
        None => (authority_and_unique, None),
    };
    check_naming_authority(authority)?;
    if unique == Some("") {
        return Err("nothing follows the ':'".into());
    }
    Ok(())
}

fn is_iqn_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':')
}

/// The year and month the naming authority owned its domain, `yyyy-mm`.
fn check_iqn_date(date: &str) -> Result<(), String> {
    let bytes = date.as_bytes();
    let shape_ok = bytes.len() == 7
        && bytes.iter().enumerate().all(|(i, b)| {
            if i == 4 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let month_ok = date
        .get(5..)
        .and_then(|m| m.parse::<u8>().ok())
        .is_some_and(|m| (1..=12).contains(&m));
    if shape_ok && month_ok {
        Ok(())
    } else {
        Err(
            "after \"iqn.\" must come a date as yyyy-mm, then '.' and a reversed domain name"
                .into(),
        )
    }
}

/// The reversed domain name of an iqn, e.g. `com.example`.
fn check_naming_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("the date must be followed by '.' and a reversed domain name".into());
    }
    for label in authority.split('.') {
        check_domain_label(label)
            .map_err(|why| format!("naming authority {authority:?}: {why}"))?;
    }
    Ok(())
}

/// One label of a domain name as RFC 1123 allows it.
fn check_domain_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("has an empty label".into());
    }
    if label.len() > MAX_HOST_LABEL_LEN {
        return Err(format!(
            "label {label:?} is longer than {MAX_HOST_LABEL_LEN} characters"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!("label {label:?} contains {bad:?}"));
    }
    Ok(())
}

/// `eui.` and `naa.` names carry a binary identifier as hex; RFC 3720's own examples write it
/// in uppercase, so both cases are accepted.
fn check_hex(prefix: &str, hex: &str, lengths: &[usize]) -> Result<(), String> {
    let lengths_text = lengths
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{prefix} must be followed by hex digits only"));
    }
    if !lengths.contains(&hex.len()) {
        return Err(format!(
            "{prefix} must be followed by {lengths_text} hex digits, not {}",
            hex.len()
        ));
    }
    Ok(())
}

/// `a.b.c.d[:port]`, `[v6][:port]` or `hostname[:port]`.
fn parse_portal(written: &str) -> Result<Portal, String> {
    if written.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(rest) = written.strip_prefix('[') {
        return parse_bracketed_portal(rest);
    }
    let (host, port) = match written.split_once(':') {
        None => (written, None),
        Some((host, port)) if !port.contains(':') => (host, Some(port)),
        Some(_) => return Err(bare_ipv6_hint(written)),
    };
    let port = port.map_or(Ok(DEFAULT_PORT), parse_port)?;
    Ok(Portal {
        host: parse_host(host)?,
        port,
    })
}

/// The rest of `[v6][:port]` after the `[`.
fn parse_bracketed_portal(rest: &str) -> Result<Portal, String> {
    let (address, after) = rest.split_once(']').ok_or("'[' has no matching ']'")?;
    let ip: Ipv6Addr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IPv6 address"))?;
    let port = match after {
        "" => DEFAULT_PORT,
        after => parse_port(
            after
                .strip_prefix(':')
                .ok_or("only \":port\" may follow ']'")?,
        )?,
    };
    Ok(Portal {
        host: PortalHost::Ip(IpAddr::V6(ip)),
        port,
    })
}

/// Without brackets an IPv6 address cannot be told apart from its port.
fn bare_ipv6_hint(written: &str) -> String {
    match written.parse::<Ipv6Addr>() {
        Ok(ip) => format!("write an IPv6 address in brackets, as \"[{ip}]:{DEFAULT_PORT}\""),
        Err(_) => {
            "too many ':'; write an IPv6 address in brackets, as \"[2001:db8::10]:3260\"".into()
        }
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("the port after ':' is empty".into());
    }
    if !port.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| "port must be 1..=65535".into())
}

fn parse_host(host: &str) -> Result<PortalHost, String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    // A name of digits and dots could only be meant as an IPv4 address; calling a typo like
    // 10.0.0 a host name would send it to DNS instead of failing here.
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return host
            .parse::<Ipv4Addr>()
            .map(|ip| PortalHost::Ip(IpAddr::V4(ip)))
            .map_err(|_| format!("{host:?} is not an IPv4 address"));
    }
    check_host_name(host)?;
    // DNS names are case-insensitive (RFC 4343); one spelling keeps two entries for one
    // portal from looking like two portals.
    Ok(PortalHost::Name(host.to_ascii_lowercase()))
}

fn check_host_name(host: &str) -> Result<(), String> {
    if host.len() > MAX_HOST_NAME_LEN {
        return Err(format!(
            "host name is longer than {MAX_HOST_NAME_LEN} characters"
        ));
    }
    for label in host.split('.') {
        check_domain_label(label).map_err(|why| format!("host name {why}"))?;
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|top| top.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("the last label of a host name cannot be all digits".into());
    }
    Ok(())
}

/// multipath's form. The sysfs form and uppercase hex are refused with the right spelling,
/// because either would never equal the WWID lunkeeper observes and the volume would never
/// be recognised as attached.
fn parse_wwid(written: &str) -> Result<Wwid, String> {
    let is_sysfs_form = ["naa.", "eui.", "t10."]
        .iter()
        .any(|p| written.starts_with(p));
    if is_sysfs_form {
        return Err(match Wwid::from_sysfs(written) {
            Ok(wwid) => format!("this is the sysfs form; multipath's form is \"{wwid}\""),
            Err(e) => e.to_string(),
        });
    }
    let hex_typed = written.starts_with('2') || written.starts_with('3');
    if hex_typed && written.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "multipath writes NAA and EUI identifiers in lowercase: \"{}\"",
            written.to_ascii_lowercase()
        ));
    }
    written.parse::<Wwid>().map_err(|e| e.to_string())
}

/// Every key and value of the document with its span and key path, to name the key a TOML
/// reader error points at.
struct NodeIndex<'a> {
    text: &'a str,
    nodes: Vec<Node>,
}

struct Node {
    span: Range<usize>,
    path: String,
    depth: usize,
    /// A `[table]` or `[[array]]` header, which opens a table that runs on below it.
    header: bool,
}

impl<'a> NodeIndex<'a> {
    fn of_document(text: &'a str, root: &Spanned<DeTable<'_>>) -> NodeIndex<'a> {
        let mut index = NodeIndex {
            text,
            nodes: Vec::new(),
        };
        index.add_table(root.get_ref(), "", 0);
        index
    }

    fn add_table(&mut self, table: &DeTable<'_>, prefix: &str, depth: usize) {
        for (key, value) in table.iter() {
            let segment = key_segment(key.get_ref());
            let path = if prefix.is_empty() {
                segment
            } else {
                format!("{prefix}.{segment}")
            };
            self.nodes.push(Node {
                span: key.span(),
                path: path.clone(),
                depth: depth + 1,
                header: false,
            });
            self.add_value(value, path, depth + 1);
        }
    }

    fn add_value(&mut self, value: &Spanned<DeValue<'_>>, path: String, depth: usize) {
        let span = value.span();
        let header = value.get_ref().is_table()
            && self
                .text
                .get(span.clone())
                .is_some_and(|s| s.starts_with('['));
        match value.get_ref() {
            DeValue::Table(table) => self.add_table(table, &path, depth),
            DeValue::Array(array) => {
                for (i, element) in array.iter().enumerate() {
                    self.add_value(element, format!("{path}[{i}]"), depth + 1);
                }
            }
            _ => {}
        }
        self.nodes.push(Node {
            span,
            path,
            depth,
            header,
        });
    }

    /// The innermost key or value that holds `span`. A syntax error often lies between
    /// values instead; then the key written last before it on its line, and failing that the
    /// table whose header comes last before it, is where the reader was.
    fn key_path_at(&self, span: &Range<usize>) -> String {
        self.holding(span)
            .or_else(|| self.last_on_line_before(span.start))
            .or_else(|| self.last_header_before(span.start))
            .map(|n| n.path.clone())
            .unwrap_or_default()
    }

    fn holding(&self, span: &Range<usize>) -> Option<&Node> {
        self.nodes
            .iter()
            .filter(|n| !n.span.is_empty() && n.span.start <= span.start && span.end <= n.span.end)
            .min_by_key(|n| (n.span.len(), std::cmp::Reverse(n.depth)))
    }

    fn last_on_line_before(&self, offset: usize) -> Option<&Node> {
        let on_same_line = |n: &&Node| {
            self.text
                .get(n.span.end..offset)
                .is_some_and(|gap| !gap.contains('\n'))
        };
        self.nodes
            .iter()
            .filter(|n| !n.span.is_empty() && n.span.end <= offset)
            .filter(on_same_line)
            .max_by_key(|n| (n.span.end, n.depth))
    }

    fn last_header_before(&self, offset: usize) -> Option<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.header && n.span.start <= offset)
            .max_by_key(|n| (n.span.start, n.depth))
    }
}

/// A key as it would be written in TOML: bare when it can be, quoted otherwise.
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    const PATH: &str = "/etc/lunkeeper/volumes.toml";

    fn parse_text(text: &str) -> Result<Desired, ConfigError> {
        parse(Path::new(PATH), text)
    }

    /// Asserts that `text` is refused at `line`:`column`, about `key`, with a message that
    /// contains `needle`.
    #[track_caller]
    fn assert_refused(text: &str, line: usize, column: usize, key: &str, needle: &str) {
        let err = match parse_text(text) {
            Ok(d) => panic!("accepted: {d:?}"),
            Err(e) => e,
        };
        let message = err.to_string();
        assert_eq!(
            err.location(),
            Some((Path::new(PATH), Location { line, column })),
            "{message}"
        );
        let prefix = format!("{PATH}:{line}:{column}: {key}: ");
        assert!(
            message.starts_with(&prefix),
            "{message:?} does not start with {prefix:?}"
        );
        assert!(
            message.contains(needle),
            "{message:?} does not contain {needle:?}"
        );
        assert!(!message.contains('\n'), "{message:?} is not one line");
    }

    /// One valid volume, for tests that break one thing in it.
    fn one_volume(extra: &str) -> String {
        format!(
            "[[volume]]\nname = \"db\"\ntarget = \"iqn.2026-11.com.example:db\"\nportals = \
             [\"192.0.2.10\"]\nlun = 0\n{extra}"
        )
    }

    const FULL: &str = r#"[defaults]
multipath = true
replacement_timeout = 7
login_timeout = 20

[daemon]
resync_interval = 120

[[volume]]
name = "db-data"
target = "iqn.2026-11.com.example:db"
portals = ["192.0.2.10:3260", "[2001:db8::10]:3261", "SAN-A.example"]
lun = 0
replacement_timeout = 5
expect_wwid = "36001405abcdef0123456789abcdef012"
state = "present"
[volume.chap]
username = "u"
password_file = "/etc/lunkeeper/secrets/db"
username_in = "t"
password_in_file = "/etc/lunkeeper/secrets/db-in"

[[volume]]
name = "logs"
target = "naa.60014051234567890123456789abcdef"
portals = ["192.0.2.11"]
lun = 16383
multipath = false
login_timeout = 600
state = "absent"
"#;

    #[test]
    fn full_example_parses_into_exact_values() {
        let desired = parse_text(FULL).unwrap();
        let expected = Desired {
            source: PathBuf::from(PATH),
            daemon: DaemonSettings {
                resync_interval: Duration::from_secs(120),
                ..DaemonSettings::default()
            },
            volumes: vec![
                Volume {
                    name: VolumeName("db-data".into()),
                    target: TargetName("iqn.2026-11.com.example:db".into()),
                    portals: vec![
                        Portal {
                            host: PortalHost::Ip("192.0.2.10".parse().unwrap()),
                            port: 3260,
                        },
                        Portal {
                            host: PortalHost::Ip("2001:db8::10".parse().unwrap()),
                            port: 3261,
                        },
                        Portal {
                            host: PortalHost::Name("san-a.example".into()),
                            port: 3260,
                        },
                    ],
                    lun: Lun(0),
                    multipath: true,
                    expect_wwid: Some("36001405abcdef0123456789abcdef012".parse().unwrap()),
                    state: VolumeState::Present,
                    chap: Some(Chap {
                        username: "u".into(),
                        password_file: SecretFile::absolute("/etc/lunkeeper/secrets/db").unwrap(),
                        username_in: Some("t".into()),
                        password_in_file: SecretFile::absolute("/etc/lunkeeper/secrets/db-in"),
                    }),
                    replacement_timeout: 5,
                    login_timeout: Duration::from_secs(20),
                },
                Volume {
                    name: VolumeName("logs".into()),
                    target: TargetName("naa.60014051234567890123456789abcdef".into()),
                    portals: vec![Portal {
                        host: PortalHost::Ip("192.0.2.11".parse().unwrap()),
                        port: 3260,
                    }],
                    lun: Lun(16383),
                    multipath: false,
                    expect_wwid: None,
                    state: VolumeState::Absent,
                    chap: None,
                    replacement_timeout: 7,
                    login_timeout: Duration::from_secs(600),
                },
            ],
        };
        assert_eq!(desired, expected);
    }

    /// The schema as documented, comments and all.
    const SCHEMA: &str = r#"[defaults]                 # optional; each key may also be set per volume
multipath = true           # default true when not set anywhere
replacement_timeout = 5    # seconds (u32, 1..=3600) -> default 5
login_timeout = 15         # seconds (1..=600) lunkeeper waits for one login -> default 15

[daemon]                   # optional
resync_interval = 300      # seconds, 1..=86400, default 300 -> DaemonSettings.resync_interval
metrics_file = "/var/lib/prometheus/node-exporter/lunkeeper.prom"  # "" = off

[[volume]]
name = "db-data"                        # unique; must match [a-z0-9][a-z0-9._-]{0,62}
target = "iqn.2026-11.com.example:db"   # iqn./eui./naa. name, validated
portals = ["192.0.2.10:3260", "[2001:db8::10]:3260", "san-a.example:3260"]  # port defaults to 3260
lun = 0                                 # 0..=16383
multipath = true                        # optional, falls back to [defaults]
replacement_timeout = 5                 # optional, falls back to [defaults]
login_timeout = 15                      # optional, falls back to [defaults]
expect_wwid = "36001405abc"             # optional: multipath-form WWID (parse with Wwid::from_str)
state = "present"                       # or "absent"; default "present"
[volume.chap]                           # optional
username = "u"
password_file = "/etc/lunkeeper/secrets/db"   # file holds the secret (never read here)
username_in = "t"                       # optional: mutual CHAP
password_in_file = "/etc/lunkeeper/secrets/db-in"   # required iff username_in is set
"#;

    #[test]
    fn documented_schema_parses() {
        let desired = parse_text(SCHEMA).unwrap();
        assert_eq!(desired.daemon, DaemonSettings::default());
        let volume = desired.volume("db-data").unwrap();
        let portals: Vec<String> = volume.portals.iter().map(ToString::to_string).collect();
        assert_eq!(
            portals,
            [
                "192.0.2.10:3260",
                "[2001:db8::10]:3260",
                "san-a.example:3260"
            ]
        );
        assert_eq!(
            volume.expect_wwid.as_ref().map(Wwid::as_str),
            Some("36001405abc")
        );
        assert_eq!(volume.chap.as_ref().map(|c| c.username.as_str()), Some("u"));
    }

    #[test]
    fn built_in_defaults_apply_without_defaults_and_daemon_tables() {
        let desired = parse_text(&one_volume("")).unwrap();
        assert_eq!(desired.daemon, DaemonSettings::default());
        let volume = &desired.volumes[0];
        assert!(volume.multipath);
        assert_eq!(volume.replacement_timeout, 5);
        assert_eq!(volume.login_timeout, Duration::from_secs(15));
        assert_eq!(volume.state, VolumeState::Present);
        assert_eq!(volume.portals[0].port, DEFAULT_PORT);
        assert_eq!(volume.chap, None);
        assert_eq!(volume.expect_wwid, None);
    }

    #[test]
    fn inline_volume_tables_are_accepted() {
        let text = "volume = [{ name = \"a\", target = \"eui.02004567A425678D\", portals = [\"h1\"], lun = 3 }]";
        let desired = parse_text(text).unwrap();
        assert_eq!(desired.volumes[0].lun, Lun(3));
        assert_eq!(
            desired.volumes[0].portals[0].host,
            PortalHost::Name("h1".into())
        );
    }

    #[test]
    fn example_file_in_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/volumes.example.toml");
        let desired = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(desired.volumes.len(), 3);
        assert!(desired
            .volumes
            .iter()
            .any(|v| v.state == VolumeState::Absent));
        assert!(desired
            .volumes
            .iter()
            .any(|v| !v.multipath && v.portals.len() == 1));
        assert!(desired
            .volumes
            .iter()
            .any(|v| v.multipath && v.portals.len() == 2));
    }

    #[test]
    fn unreadable_file_names_path_and_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let err = load(&path).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}: cannot read: ", path.display())),
            "{message}"
        );
        assert!(
            matches!(&err, ConfigError::Read { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
        );
        assert_eq!(err.location(), None);
    }

    #[test]
    fn syntax_error_is_located() {
        assert_refused(&one_volume("lun = = 1\n"), 6, 7, "volume[0]", "");
        assert_refused(
            "[[volume]]\nname = \"a\n",
            2,
            10,
            "volume[0].name",
            "string",
        );
    }

    #[test]
    fn duplicate_key_is_located() {
        assert_refused(&one_volume("lun = 1\n"), 6, 1, "volume[0]", "duplicate key");
    }

    #[test]
    fn unknown_keys_are_refused_everywhere() {
        assert_refused("colour = 1\n", 1, 1, "colour", "unknown field `colour`");
        assert_refused(
            "[defaults]\nmultipth = true\n",
            2,
            1,
            "defaults.multipth",
            "unknown field",
        );
        assert_refused(
            "[daemon]\ninterval = 1\n",
            2,
            1,
            "daemon.interval",
            "unknown field",
        );
        assert_refused(
            &one_volume("lunn = 1\n"),
            6,
            1,
            "volume[0].lunn",
            "unknown field `lunn`",
        );
        let chap = "[volume.chap]\nusername = \"u\"\npassword_file = \"/s\"\nsecret = \"x\"\n";
        assert_refused(
            &one_volume(chap),
            9,
            1,
            // A key under [volume.chap] that the schema does not know may be a pasted secret.
            "volume[0].chap",
            "unknown key (what was written is not shown",
        );
    }

    #[test]
    fn unknown_key_with_odd_characters_is_quoted_on_one_line() {
        assert_refused(
            "\"bad\\nkey\" = 1\n",
            1,
            1,
            "\"bad\\nkey\"",
            "unknown field",
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        assert_refused(
            &one_volume("multipath = \"yes\"\n"),
            6,
            13,
            "volume[0].multipath",
            "expected a boolean",
        );
        assert_refused(
            &one_volume("state = 1\n"),
            6,
            9,
            "volume[0].state",
            "expected a string",
        );
        let text = "[[volume]]\nname = \"db\"\ntarget = \"iqn.2026-11.com.example:db\"\nportals = [\"h\", 7]\nlun = 0\n";
        assert_refused(text, 4, 17, "volume[0].portals[1]", "expected a string");
        assert_refused(
            "[volume]\nname = \"a\"\n",
            1,
            1,
            "volume",
            "expected a sequence",
        );
        let text = one_volume("").replace("lun = 0", "lun = 0.5");
        assert_refused(
            &text,
            5,
            7,
            "volume[0].lun",
            "invalid type: floating point `0.5`, expected an integer",
        );
    }

    #[test]
    fn missing_required_keys_are_refused() {
        let text = format!(
            "{}\n[[volume]]\nname = \"b\"\nportals = [\"h\"]\nlun = 1\n",
            one_volume("")
        );
        assert_refused(&text, 7, 1, "volume[1]", "missing field `target`");
        for key in ["name", "target", "portals", "lun"] {
            let text: String = one_volume("")
                .lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_refused(&text, 1, 1, "volume[0]", &format!("missing field `{key}`"));
        }
    }

    #[test]
    fn file_without_volumes_is_refused() {
        for text in [
            "",
            "# nothing\n",
            "[defaults]\nmultipath = true\n",
            "volume = []\n",
        ] {
            let err = parse_text(text).unwrap_err();
            assert!(matches!(err, ConfigError::NoVolumes { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "{PATH}: lists no volumes; refusing to treat an empty file as 'detach everything' \
                     — mark volumes state = \"absent\" to detach them, or write volumes = \"none\" \
                     if this host has nothing to manage yet"
                )
            );
        }
    }

    #[test]
    fn volumes_none_declares_nothing_to_manage() {
        for text in [
            "volumes = \"none\"\n",
            "# not yet\nvolumes = \"none\"\n[daemon]\nresync_interval = 60\n",
        ] {
            let desired = parse_text(text).unwrap();
            assert!(desired.volumes.is_empty());
        }
    }

    #[test]
    fn volumes_takes_only_none() {
        for (text, needle) in [
            ("volumes = \"nothing\"\n", "the only value is \"none\""),
            ("volumes = \"\"\n", "the only value is \"none\""),
            ("volumes = \"None\"\n", "the only value is \"none\""),
        ] {
            assert_refused(text, 1, 11, "volumes", needle);
        }
        let err = parse_text("volumes = []\n").unwrap_err();
        assert!(err.to_string().contains("volumes"), "{err}");
    }

    #[test]
    fn volumes_none_beside_a_volume_is_refused() {
        let text = format!("volumes = \"none\"\n{}", one_volume(""));
        assert_refused(
            &text,
            1,
            11,
            "volumes",
            "contradicts the 1 [[volume]] table",
        );
    }

    #[test]
    fn duplicate_volume_names_are_refused() {
        let text = format!("{}\n[[volume]]\nname = \"db\"\ntarget = \"eui.0123456789abcdef\"\nportals = [\"h\"]\nlun = 1\n", one_volume(""));
        assert_refused(
            &text,
            8,
            8,
            "volume[1].name",
            "already the name of volume[0] (line 2)",
        );
    }

    #[test]
    fn two_volumes_on_one_lun_are_refused_naming_both() {
        let text = format!(
            "{}\n[[volume]]\nname = \"db2\"\ntarget = \"iqn.2026-11.com.example:db\"\nportals = [\"h\"]\nlun = 0\n",
            one_volume("")
        );
        assert_refused(
            &text,
            11,
            7,
            "volume[1].lun",
            "volume \"db2\" claims LUN 0 of target iqn.2026-11.com.example:db, which volume \"db\" (line 5)",
        );
    }

    #[test]
    fn same_lun_on_other_targets_is_fine() {
        let text = format!(
            "{}\n[[volume]]\nname = \"db2\"\ntarget = \"iqn.2026-11.com.example:other\"\nportals = [\"h\"]\nlun = 0\n",
            one_volume("")
        );
        assert_eq!(parse_text(&text).unwrap().volumes.len(), 2);
    }

    fn with_target(target: &str) -> String {
        format!("[[volume]]\nname = \"db\"\ntarget = \"{target}\"\nportals = [\"h\"]\nlun = 0\n")
    }

    #[test]
    fn bad_target_names_are_refused() {
        let cases = [
            ("iqn.2026-11.com.Example:db", "lowercase"),
            ("iqn.26-11.com.example", "yyyy-mm"),
            ("iqn.2026-13.com.example", "yyyy-mm"),
            ("iqn.2026-11", "reversed domain"),
            ("iqn.2026-11.:db", "reversed domain"),
            ("iqn.2026-11.com..example", "empty label"),
            ("iqn.2026-11.-com.example", "'-'"),
            ("iqn.2026-11.com.example:", "nothing follows"),
            ("iqn.2026-11.com.example:d b", "' ' is not allowed"),
            ("iqn.2026-11.com_x.example", "'_' is not allowed"),
            ("eui.0123", "16 hex digits"),
            ("eui.0123456789abcdeg", "hex digits only"),
            ("naa.0123456789abcdef01", "16 or 32"),
            ("IQN.2026-11.com.example", "must start with"),
            ("", "must start with"),
        ];
        for (target, needle) in cases {
            assert_refused(&with_target(target), 3, 10, "volume[0].target", needle);
        }
        let long = format!("iqn.2026-11.com.example:{}", "a".repeat(200));
        assert_refused(
            &with_target(&long),
            3,
            10,
            "volume[0].target",
            "longer than 223 bytes",
        );
    }

    #[test]
    fn good_target_names_are_accepted() {
        for target in [
            "iqn.2026-11.com.example",
            "iqn.2003-01.org.linux-iscsi.host.x8664:sn.0123abcd",
            "iqn.1992-08.com.netapp:sn.a:b:c",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.60014051234567890123456789ABCDEF",
        ] {
            parse_text(&with_target(target)).unwrap_or_else(|e| panic!("{target}: {e}"));
        }
    }

    fn with_portals(portals: &str) -> String {
        format!("[[volume]]\nname = \"db\"\ntarget = \"eui.0123456789abcdef\"\nportals = {portals}\nlun = 0\n")
    }

    #[test]
    fn bad_portals_are_refused() {
        let cases = [
            ("10.0.0.1:99999", "port must be 1..=65535"),
            ("10.0.0.1:0", "port must be 1..=65535"),
            ("10.0.0.1:", "port after ':' is empty"),
            ("10.0.0.1:+5", "not a number"),
            ("10.0.0", "not an IPv4 address"),
            ("256.1.1.1", "not an IPv4 address"),
            ("2001:db8::10", "in brackets, as \"[2001:db8::10]:3260\""),
            ("[2001:db8::10", "no matching ']'"),
            ("[10.0.0.1]:3260", "not an IPv6 address"),
            ("[2001:db8::10]3260", "only \":port\" may follow"),
            ("san_a.example", "contains '_'"),
            ("-san.example", "starts or ends with '-'"),
            ("san.123", "all digits"),
            ("", "empty"),
            (":3260", "host is empty"),
            ("san a", "contains ' '"),
        ];
        for (portal, needle) in cases {
            let message = format!("\"{portal}\" is not a portal");
            let text = with_portals(&format!("[\"{portal}\"]"));
            assert_refused(&text, 4, 12, "volume[0].portals[0]", &message);
            assert_refused(&text, 4, 12, "volume[0].portals[0]", needle);
        }
    }

    #[test]
    fn port_error_matches_the_documented_message() {
        let text = with_portals("[\"10.0.0.2\", \"10.0.0.1:99999\"]");
        let err = parse_text(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{PATH}:4:24: volume[0].portals[1]: \"10.0.0.1:99999\" is not a portal: port must be 1..=65535")
        );
    }

    #[test]
    fn empty_portal_list_is_refused() {
        assert_refused(
            &with_portals("[]"),
            4,
            11,
            "volume[0].portals",
            "lists no portals",
        );
    }

    #[test]
    fn same_portal_twice_is_refused() {
        let text = with_portals("[\"10.0.0.1\", \"10.0.0.1:3260\"]");
        assert_refused(
            &text,
            4,
            24,
            "volume[0].portals[1]",
            "same portal as portals[0]",
        );
        let text = with_portals("[\"[2001:db8::1]\", \"[2001:db8:0::1]:3260\"]");
        assert_refused(
            &text,
            4,
            29,
            "volume[0].portals[1]",
            "same portal as portals[0]",
        );
        let text = with_portals("[\"San.example\", \"san.EXAMPLE\"]");
        assert_refused(
            &text,
            4,
            27,
            "volume[0].portals[1]",
            "same portal as portals[0]",
        );
    }

    #[test]
    fn bad_volume_names_are_refused() {
        let cases = [
            ("", "must start with"),
            ("-db", "must start with"),
            ("Db", "must start with"),
            ("db/x", "'/' is not allowed"),
            ("dB", "'B' is not allowed"),
            ("d\u{e9}", "'\u{e9}' is not allowed"),
        ];
        for (name, needle) in cases {
            let text = one_volume("").replace("name = \"db\"", &format!("name = \"{name}\""));
            assert_refused(&text, 2, 8, "volume[0].name", needle);
        }
        let text =
            one_volume("").replace("name = \"db\"", &format!("name = \"{}\"", "a".repeat(64)));
        assert_refused(&text, 2, 8, "volume[0].name", "longer than 63");
        let text =
            one_volume("").replace("name = \"db\"", &format!("name = \"{}\"", "a".repeat(63)));
        assert!(parse_text(&text).is_ok());
    }

    #[test]
    fn lun_out_of_range_is_refused() {
        for lun in ["-1", "16384", "9223372036854775807"] {
            let text = one_volume("").replace("lun = 0", &format!("lun = {lun}"));
            assert_refused(&text, 5, 7, "volume[0].lun", "must be 0..=16383");
        }
    }

    #[test]
    fn bad_expect_wwid_is_refused() {
        let cases = [
            ("", "empty"),
            ("3", "empty"),
            ("3600 1405", "space"),
            (
                "naa.6001405ABC",
                "sysfs form; multipath's form is \"36001405abc\"",
            ),
            ("36001405ABC", "lowercase: \"36001405abc\""),
        ];
        for (wwid, needle) in cases {
            let text = one_volume(&format!("expect_wwid = \"{wwid}\"\n"));
            assert_refused(&text, 6, 15, "volume[0].expect_wwid", needle);
        }
    }

    #[test]
    fn bad_state_is_refused() {
        assert_refused(
            &one_volume("state = \"Absent\"\n"),
            6,
            9,
            "volume[0].state",
            "must be \"present\" or \"absent\"",
        );
    }

    #[test]
    fn metrics_file_is_absolute_or_empty_for_off() {
        let d = parse_text(&format!(
            "[daemon]\nmetrics_file = \"\"\n{}",
            one_volume("")
        ))
        .unwrap();
        assert_eq!(d.daemon.metrics_file, None);
        let d = parse_text(&format!(
            "[daemon]\nmetrics_file = \"/srv/m.prom\"\n{}",
            one_volume("")
        ))
        .unwrap();
        assert_eq!(d.daemon.metrics_file, Some(PathBuf::from("/srv/m.prom")));
        let d = parse_text(&one_volume("")).unwrap();
        assert_eq!(
            d.daemon.metrics_file,
            Some(PathBuf::from(crate::metrics::DEFAULT_METRICS_FILE))
        );
        let text = format!("[daemon]\nmetrics_file = \"m.prom\"\n{}", one_volume(""));
        assert_refused(&text, 2, 16, "daemon.metrics_file", "absolute path");
    }

    #[test]
    fn timeouts_out_of_range_are_refused() {
        assert_refused(
            &one_volume("replacement_timeout = 0\n"),
            6,
            23,
            "volume[0].replacement_timeout",
            "1..=3600",
        );
        assert_refused(
            &one_volume("login_timeout = 601\n"),
            6,
            17,
            "volume[0].login_timeout",
            "1..=600",
        );
        let text = format!("[defaults]\nreplacement_timeout = 3601\n{}", one_volume(""));
        assert_refused(&text, 2, 23, "defaults.replacement_timeout", "1..=3600");
        let text = format!("[daemon]\nresync_interval = 86401\n{}", one_volume(""));
        assert_refused(&text, 2, 19, "daemon.resync_interval", "1..=86400");
    }

    #[test]
    fn multipath_off_with_two_portals_is_refused() {
        let text = with_portals("[\"10.0.0.1\", \"10.0.0.2\"]") + "multipath = false\n";
        assert_refused(
            &text,
            6,
            13,
            "volume[0].multipath",
            "two paths to one LUN without multipath would give two disks for the same data",
        );
        let text = format!(
            "[defaults]\nmultipath = false\n{}",
            with_portals("[\"10.0.0.1\", \"10.0.0.2\"]")
        );
        assert_refused(
            &text,
            6,
            11,
            "volume[0].portals",
            "multipath = false (from [defaults]) with 2 portals",
        );
        let text = format!(
            "[defaults]\nmultipath = false\n{}multipath = true\n",
            with_portals("[\"10.0.0.1\", \"10.0.0.2\"]")
        );
        assert!(parse_text(&text).unwrap().volumes[0].multipath);
    }

    #[test]
    fn half_set_mutual_chap_is_refused() {
        let base = "[volume.chap]\nusername = \"u\"\npassword_file = \"/s\"\n";
        let text = one_volume(&format!("{base}username_in = \"t\"\n"));
        assert_refused(
            &text,
            9,
            15,
            "volume[0].chap.username_in",
            "without password_in_file",
        );
        let text = one_volume(&format!("{base}password_in_file = \"/t\"\n"));
        assert_refused(
            &text,
            9,
            20,
            "volume[0].chap.password_in_file",
            "without username_in",
        );
    }

    #[test]
    fn bad_chap_values_are_refused() {
        let text = one_volume("[volume.chap]\nusername = \"\"\npassword_file = \"/s\"\n");
        assert_refused(
            &text,
            7,
            12,
            "volume[0].chap.username",
            "CHAP user name is empty",
        );
        let text = one_volume("[volume.chap]\nusername = \"u\"\npassword_file = \"/s\"\nusername_in = \"\"\npassword_in_file = \"/t\"\n");
        assert_refused(
            &text,
            9,
            15,
            "volume[0].chap.username_in",
            "CHAP user name is empty",
        );
        let text = one_volume("[volume.chap]\nusername = \"u\\n\"\npassword_file = \"/s\"\n");
        assert_refused(&text, 7, 12, "volume[0].chap.username", "control character");
        let text = one_volume("[volume.chap]\nusername = \"u\"\npassword_file = \"secrets/db\"\n");
        assert_refused(
            &text,
            8,
            17,
            "volume[0].chap.password_file",
            "not an absolute path",
        );
    }

    #[test]
    fn keys_are_located_at_their_values() {
        let text = one_volume("[volume.chap]\nusername = \"u\"\npassword_file = \"/s\"\n");
        assert_eq!(
            locate(&text, "volume[0].chap.password_file"),
            Some(Location {
                line: 8,
                column: 17
            })
        );
        assert_eq!(
            locate(&text, "volume[0].lun"),
            Some(Location { line: 5, column: 7 })
        );
        assert_eq!(locate(&text, "volume[0].replacement_timeout"), None);
        assert_eq!(locate(&text, "volume[1].lun"), None);
    }

    #[test]
    fn values_under_chap_are_never_echoed() {
        const SECRET: &str = "Hunter2Secret";
        let chap = |body: &str| one_volume(&format!("[volume.chap]\n{body}"));
        let cases = [
            // The secret pasted where its file belongs, quoted or not, with wrong types too.
            chap(&format!("username = \"u\"\npassword_file = \"{SECRET}\"\n")),
            chap(&format!("username = \"u\"\npassword_file = {SECRET}\n")),
            chap(&format!("username = \"u\"\npassword_file = '{SECRET}\n")),
            chap(&format!("username = \"u\"\npassword_file = [\"{SECRET}\"]\n")),
            chap(&format!("username = \"u\"\npassword_file = {{ x = \"{SECRET}\" }}\n")),
            chap(&format!(
                "username = \"u\"\npassword_file = \"/s\"\nusername_in = \"t\"\n\
                 password_in_file = \"{SECRET}\"\n"
            )),
            chap(&format!(
                "username = \"u\"\npassword_file = \"/s\"\npassword_in_file = \"{SECRET}\"\n"
            )),
            chap(&format!("username = \"u\"\npassword = \"{SECRET}\"\n")),
            chap(&format!("username = {SECRET}\npassword_file = \"/s\"\n")),
            chap(&format!("username = \"u\"\npassword_file = \"/s\"\n{SECRET} = 1\n")),
            chap("username = \"u\"\npassword_file = 12345678\n"),
            one_volume(&format!("chap = \"{SECRET}\"\n")),
            format!(
                "volume = [{{ name = \"db\", target = \"eui.0123456789abcdef\", portals =                  [\"h\"], lun = 0, chap = {{ username = \"u\", password_file = \"{SECRET}\" }} }}]\n"
            ),
        ];
        for text in cases {
            let err = parse_text(&text).expect_err(&text).to_string();
            assert!(!err.contains(SECRET), "{err}");
            assert!(!err.to_lowercase().contains("hunter"), "{err}");
            assert!(!err.contains("12345678"), "{err}");
            assert!(err.contains("chap"), "the key is named: {err}");
        }
    }

    #[test]
    fn columns_count_characters_on_non_ascii_lines() {
        let text = "volume = [{ name = \"db\", target = \"eui.0123456789abcdef\", portals = [\"h\"], lun = 0, \
                    chap = { username = \"\u{fc}\u{df}\", password_file = \"s\" } }]\n";
        assert_refused(
            text,
            1,
            127,
            "volume[0].chap.password_file",
            "not an absolute path",
        );
        assert_refused("\"\u{e9}\" = 1\n", 1, 1, "\"\u{e9}\"", "unknown field");
        assert_refused("a = \"\u{e9}\u{e9}\" \u{e9}\n", 1, 10, "a", "");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse_text(&text);
        }

        #[test]
        fn toml_like_text_never_panics(text in "[\\[\\]a-z_=\" .:0-9\n{},#-]{0,200}") {
            let _ = parse_text(&text);
        }

        #[test]
        fn mutated_valid_file_never_panics(cut in 0usize..600, insert in "[\\[\\]\"=:,\n\u{e9}a1-]{0,4}") {
            let mut text = FULL.to_string();
            let mut at = cut.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert_str(at, &insert);
            let _ = parse_text(&text);
        }
    }
}
