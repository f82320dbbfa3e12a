use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A LUN identity in multipath's form: a type digit then the identifier (`3` + NAA hex for
/// `naa.`, `2` for `eui.`, `1` for `t10.`, `8` for anything else), as in `/etc/multipath/wwids`
/// and in a map's `mpath-<wwid>` uuid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Wwid(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WwidError {
    #[error("WWID is empty")]
    Empty,
    #[error("WWID contains a character that is not printable ASCII or is a space or '/'")]
    BadCharacter,
}

impl Wwid {
    /// From the kernel's `device/wwid` attribute (`naa.6001405...`, `eui.…`, `t10.…`, or a
    /// raw name string).
    pub fn from_sysfs(raw: &str) -> Result<Wwid, WwidError> {
        let raw = raw.trim_end_matches(['\n', '\0']).trim();
        let form = if let Some(rest) = raw.strip_prefix("naa.") {
            format!("3{}", rest.to_ascii_lowercase())
        } else if let Some(rest) = raw.strip_prefix("eui.") {
            format!("2{}", rest.to_ascii_lowercase())
        } else if let Some(rest) = raw.strip_prefix("t10.") {
            // udev's scsi_id folds runs of spaces in T10 vendor identifiers into one '_'.
            let mut out = String::from("1");
            let mut last_space = false;
            for c in rest.trim().chars() {
                if c == ' ' {
                    if !last_space {
                        out.push('_');
                    }
                    last_space = true;
                } else {
                    out.push(c);
                    last_space = false;
                }
            }
            out
        } else {
            format!("8{}", raw.replace(' ', "_"))
        };
        Wwid::from_str(&form)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Wwid {
    type Err = WwidError;

    /// From multipath's form, as an operator writes it in `expect_wwid`.
    fn from_str(s: &str) -> Result<Wwid, WwidError> {
        if s.is_empty() || s.len() == 1 {
            return Err(WwidError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
            return Err(WwidError::BadCharacter);
        }
        Ok(Wwid(s.to_string()))
    }
}

impl TryFrom<String> for Wwid {
    type Error = WwidError;
    fn try_from(s: String) -> Result<Self, WwidError> {
        Wwid::from_str(&s)
    }
}

impl From<Wwid> for String {
    fn from(w: Wwid) -> String {
        w.0
    }
}

impl fmt::Display for Wwid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa_becomes_type_3() {
        let w = Wwid::from_sysfs("naa.60014053f8c2a1b2c3d4e5f6a7b8c9d0\n").unwrap();
        assert_eq!(w.as_str(), "360014053f8c2a1b2c3d4e5f6a7b8c9d0");
    }

    #[test]
    fn eui_and_t10_and_raw() {
        assert_eq!(
            Wwid::from_sysfs("eui.0025385B71B0D1A2").unwrap().as_str(),
            "20025385b71b0d1a2"
        );
        assert_eq!(
            Wwid::from_sysfs("t10.ATA     QEMU HARDDISK   QM00001")
                .unwrap()
                .as_str(),
            "1ATA_QEMU_HARDDISK_QM00001"
        );
        assert_eq!(
            Wwid::from_sysfs("SomeVendor Id").unwrap().as_str(),
            "8SomeVendor_Id"
        );
    }

    #[test]
    fn empty_and_slash_are_refused() {
        assert_eq!(Wwid::from_sysfs(""), Err(WwidError::Empty));
        assert_eq!("3abc/def".parse::<Wwid>(), Err(WwidError::BadCharacter));
    }
}
