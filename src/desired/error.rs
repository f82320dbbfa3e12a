use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A place in the desired-state file, 1-based. Columns count characters, not bytes, so they
/// match what an editor shows on lines with non-ASCII text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The place of byte `offset` in `text`. Offsets come from the TOML reader and from our own
    /// spans; an offset past the end or inside a multi-byte character is clamped back to the
    /// start of that character instead of panicking.
    pub(crate) fn of_offset(text: &str, offset: usize) -> Location {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let before = text.get(..end).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let this_line = before.get(line_start..).unwrap_or("");
        Location {
            line: before.matches('\n').count() + 1,
            column: this_line.chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a desired-state file was refused. Every variant displays as one line that starts with
/// the file path, so it can go straight into a log or a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The OS error is part of the message rather than a
    /// `source()`, so chained reporters do not print it twice.
    #[error("{}: cannot read: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },

    /// The TOML reader refused the file: bad syntax, an unknown key, a wrong type or a
    /// missing required key.
    #[error("{}:{location}: {}{message}", path.display(), KeyPrefix(key))]
    Toml {
        path: PathBuf,
        location: Location,
        /// Where in the document, e.g. `volume[1].portals[0]`; empty when the error is
        /// outside every key.
        key: String,
        message: String,
    },

    /// The file is well-formed TOML of the right shape, but a value breaks a rule.
    #[error("{}:{location}: {}{message}", path.display(), KeyPrefix(key))]
    Invalid {
        path: PathBuf,
        location: Location,
        key: String,
        message: String,
    },

    /// An empty file must never be read as "detach everything".
    #[error(
        "{}: lists no volumes; refusing to treat an empty file as 'detach everything' — mark \
         volumes state = \"absent\" to detach them, or write volumes = \"none\" if this host has \
         nothing to manage yet",
        path.display()
    )]
    NoVolumes { path: PathBuf },

    /// The TOML reader refused the file without saying where.
    #[error("{}: {message}", path.display())]
    Unplaced { path: PathBuf, message: String },
}

impl ConfigError {
    /// The file and the place in it that the error is about, for callers that point an editor
    /// or a diagnostic at it.
    pub fn location(&self) -> Option<(&Path, Location)> {
        match self {
            ConfigError::Toml { path, location, .. }
            | ConfigError::Invalid { path, location, .. } => Some((path.as_path(), *location)),
            ConfigError::Read { .. }
            | ConfigError::NoVolumes { .. }
            | ConfigError::Unplaced { .. } => None,
        }
    }
}

/// `key: ` before a message, or nothing when there is no key to name.
struct KeyPrefix<'a>(&'a str);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Location {
        Location { line, column }
    }

    #[test]
    fn location_counts_lines_and_characters() {
        let text = "ab\ncd\n\u{e9}\u{e9}x";
        assert_eq!(Location::of_offset(text, 0), at(1, 1));
        assert_eq!(Location::of_offset(text, 4), at(2, 2));
        // "éé" is four bytes; 'x' is the third character of line 3.
        assert_eq!(Location::of_offset(text, 10), at(3, 3));
    }

    #[test]
    fn location_clamps_offsets_inside_characters_and_past_the_end() {
        let text = "\u{e9}\u{e9}";
        assert_eq!(Location::of_offset(text, 1), at(1, 1));
        assert_eq!(Location::of_offset(text, 3), at(1, 2));
        assert_eq!(Location::of_offset(text, 999), at(1, 3));
        assert_eq!(Location::of_offset("", 5), at(1, 1));
    }

    #[test]
    fn display_is_one_line_with_path_location_and_key() {
        let err = ConfigError::Invalid {
            path: PathBuf::from("/etc/lunkeeper/volumes.toml"),
            location: at(12, 11),
            key: "volume[1].portals[0]".into(),
            message: "\"10.0.0.1:99999\" is not a portal: port must be 1..=65535".into(),
        };
        assert_eq!(
            err.to_string(),
            "/etc/lunkeeper/volumes.toml:12:11: volume[1].portals[0]: \"10.0.0.1:99999\" is not a \
             portal: port must be 1..=65535"
        );
        assert_eq!(
            err.location(),
            Some((Path::new("/etc/lunkeeper/volumes.toml"), at(12, 11)))
        );
    }

    #[test]
    fn display_leaves_out_an_empty_key() {
        let err = ConfigError::Toml {
            path: PathBuf::from("v.toml"),
            location: at(1, 1),
            key: String::new(),
            message: "invalid key".into(),
        };
        assert_eq!(err.to_string(), "v.toml:1:1: invalid key");
    }
}
