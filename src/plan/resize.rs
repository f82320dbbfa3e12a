//! Online resize: when the array grows a LUN, each path's disk takes the new size once the
//! kernel re-reads the device's capacity (a rescan), and the multipath map on top keeps the
//! old size until multipathd reloads it. The planner compares the live paths' sizes with the
//! map's on every look, so the daemon (after a capacity unit attention) and `lunkeeper
//! resize` (after its own rescans) reach the same decision:
//!
//! - every live path reports one size, larger than the map's: grow the map (`resize map`);
//! - the paths disagree: the map stays as it is and the volume is degraded, naming each
//!   path's size (a rescan that has not reached every path, or an array whose ports
//!   disagree);
//! - every live path reports one size, smaller than the map's: refused and reported (the
//!   data past the new end is gone on the array; shrinking the map would hide that from
//!   whatever uses it, and only an operator can decide what to do).
//!
//! Growing the file system (or LVM physical volume) on the map stays the user's job.

use std::collections::BTreeMap;

use crate::observe::{Map, Observed};
use crate::status::human_size;

/// How a map's size compares with what its live paths report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    /// No live path with a known size, or the map's size is unreadable: nothing to decide.
    Unknown,
    /// Every live path reports the map's size.
    Same,
    /// Every live path reports the same, larger size.
    Grown { from: u64, to: u64 },
    /// Every live path reports the same, smaller size.
    Shrunk { from: u64, to: u64 },
    /// The live paths report different sizes: each disk with its size.
    Disagree { sizes: BTreeMap<String, u64> },
}

/// Compares the map's size with the sizes of the given live path disks (kernel names). A disk
/// whose size is unknown or 0 (being probed) says nothing.
pub fn capacity<'d>(
    observed: &Observed,
    map: &Map,
    live_disks: impl IntoIterator<Item = &'d str>,
) -> Capacity {
    let Some(map_size) = map.size_bytes.filter(|&s| s > 0) else {
        return Capacity::Unknown;
    };
    let sizes: BTreeMap<String, u64> = live_disks
        .into_iter()
        .filter_map(|d| {
            let size = observed.disk_sizes.get(d).copied().filter(|&s| s > 0)?;
            Some((d.to_string(), size))
        })
        .collect();
    let mut distinct = sizes.values().copied().collect::<Vec<_>>();
    distinct.sort_unstable();
    distinct.dedup();
    match distinct.as_slice() {
        [] => Capacity::Unknown,
        [one] if *one == map_size => Capacity::Same,
        [one] if *one > map_size => Capacity::Grown {
            from: map_size,
            to: *one,
        },
        [one] => Capacity::Shrunk {
            from: map_size,
            to: *one,
        },
        _ => Capacity::Disagree { sizes },
    }
}

/// Why a volume with this capacity is degraded, if it is.
pub fn problem(volume: &str, map: &Map, capacity: &Capacity) -> Option<String> {
    match capacity {
        Capacity::Unknown | Capacity::Same | Capacity::Grown { .. } => None,
        Capacity::Shrunk { from, to } => Some(format!(
            "the array now reports {} for every path but map {} is {}: lunkeeper never shrinks \
             a map (the data past the new end is gone on the array); grow the LUN back on the \
             array, or detach the volume",
            human_size(*to),
            map.name,
            human_size(*from)
        )),
        Capacity::Disagree { sizes } => {
            let each: Vec<String> = sizes
                .iter()
                .map(|(disk, size)| format!("{disk} {}", human_size(*size)))
                .collect();
            Some(format!(
                "paths disagree on the LUN's size ({}); map {} stays at {} until every path \
                 reports one size (`lunkeeper resize {volume}` re-reads them)",
                each.join(", "),
                map.name,
                map.size_bytes.map(human_size).unwrap_or_default()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{BlockDev, DevNum};

    fn map(size: Option<u64>) -> Map {
        Map {
            name: "mpatha".into(),
            wwid: "36001405aaaa000000000000000000000".parse().unwrap(),
            dev: BlockDev {
                name: "dm-0".into(),
                devnum: DevNum {
                    major: 253,
                    minor: 0,
                },
                holders: Vec::new(),
                partitions: Vec::new(),
                node_present: true,
                udev_initialized: true,
            },
            slaves: vec!["sda".into(), "sdb".into()],
            suspended: false,
            size_bytes: size,
            parts: Vec::new(),
        }
    }

    fn observed(sizes: &[(&str, u64)]) -> Observed {
        Observed {
            disk_sizes: sizes.iter().map(|(d, s)| (d.to_string(), *s)).collect(),
            ..Observed::default()
        }
    }

    const G: u64 = 1 << 30;

    #[test]
    fn every_path_larger_is_a_grow() {
        let o = observed(&[("sda", 2 * G), ("sdb", 2 * G)]);
        assert_eq!(
            capacity(&o, &map(Some(G)), ["sda", "sdb"]),
            Capacity::Grown { from: G, to: 2 * G }
        );
    }

    #[test]
    fn same_size_is_nothing_to_do() {
        let o = observed(&[("sda", G), ("sdb", G)]);
        assert_eq!(capacity(&o, &map(Some(G)), ["sda", "sdb"]), Capacity::Same);
    }

    #[test]
    fn disagreeing_paths_are_named_with_their_sizes() {
        let o = observed(&[("sda", 2 * G), ("sdb", G)]);
        let c = capacity(&o, &map(Some(G)), ["sda", "sdb"]);
        assert!(matches!(c, Capacity::Disagree { .. }), "{c:?}");
        let why = problem("db", &map(Some(G)), &c).unwrap();
        assert!(why.contains("sda 2 GiB, sdb 1 GiB"), "{why}");
        assert!(why.contains("lunkeeper resize db"), "{why}");
    }

    #[test]
    fn a_smaller_size_everywhere_is_refused() {
        let o = observed(&[("sda", G / 2), ("sdb", G / 2)]);
        let c = capacity(&o, &map(Some(G)), ["sda", "sdb"]);
        assert_eq!(c, Capacity::Shrunk { from: G, to: G / 2 });
        let why = problem("db", &map(Some(G)), &c).unwrap();
        assert!(why.contains("never shrinks"), "{why}");
    }

    #[test]
    fn unknown_and_zero_sizes_say_nothing() {
        // A disk being probed reads 0 sectors for a moment: not a shrink.
        let o = observed(&[("sda", 0), ("sdb", G)]);
        assert_eq!(capacity(&o, &map(Some(G)), ["sda", "sdb"]), Capacity::Same);
        assert_eq!(
            capacity(&observed(&[]), &map(Some(G)), ["sda"]),
            Capacity::Unknown
        );
        let o = observed(&[("sda", 2 * G)]);
        assert_eq!(capacity(&o, &map(None), ["sda"]), Capacity::Unknown);
    }
}
