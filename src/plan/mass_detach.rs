//! The mass-detach guard: one change of the file must not silently detach most of the host.
//!
//! A file that lost most of its volumes is far more often a mistake (a truncated push, the
//! wrong branch, a template rendered with an empty list) than an intent, and detaching a
//! mounted database cannot be undone by fixing the file. So when one change would detach more
//! than half of the volumes lunkeeper has attached, and at least two, *because they are no
//! longer named in the file*, the whole change is refused. Volumes the file marks
//! `state = "absent"` say so explicitly and never count.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::desired::{Desired, Lun, VolumeState};
use crate::owned::Owned;

/// The guard tripped: applying the file would detach these volumes only because they are
/// missing from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MassDetach {
    /// Volumes lunkeeper attached that the file no longer names.
    pub disappeared: BTreeSet<String>,
    /// Volumes lunkeeper has attached (owns) in all.
    pub attached: usize,
}

impl fmt::Display for MassDetach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.disappeared.iter().map(String::as_str).collect();
        write!(
            f,
            "refusing to detach {} of {} attached volumes because they are no longer in the file ({}); \
             nothing was detached",
            self.disappeared.len(),
            self.attached,
            names.join(", ")
        )
    }
}

/// The smallest number of disappeared volumes that trips the guard: one volume going is an
/// ordinary edit even on a host with a single volume.
pub const MIN_DISAPPEARED: usize = 2;

/// Whether applying `desired` would detach too many of the volumes in `owned` because they are
/// missing from the file. `None`: the change may go ahead.
pub fn check(desired: &Desired, owned: &Owned) -> Option<MassDetach> {
    let named: BTreeSet<&str> = desired.volumes.iter().map(|v| v.name.as_str()).collect();
    let present: BTreeSet<(&str, Lun)> = desired
        .volumes
        .iter()
        .filter(|v| v.state == VolumeState::Present)
        .map(|v| (v.target.as_str(), v.lun))
        .collect();
    // Not detached when they leave the file: adopted volumes (left as found) and renamed
    // ones (another name in the file has their LUN).
    let disappeared: BTreeSet<String> = owned
        .volumes
        .iter()
        .filter(|(name, record)| {
            !named.contains(name.as_str())
                && !record.adopted
                && !present.contains(&(record.target.as_str(), record.lun))
        })
        .map(|(name, _)| name.clone())
        .collect();
    let attached = owned.volumes.len();
    let too_many = disappeared.len() >= MIN_DISAPPEARED && disappeared.len() * 2 > attached;
    too_many.then_some(MassDetach {
        disappeared,
        attached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owned::OwnedVolume;
    use crate::testkit::*;

    fn owned(names: &[&str]) -> Owned {
        let mut o = Owned::default();
        for (i, n) in names.iter().enumerate() {
            o.volumes.insert(
                n.to_string(),
                OwnedVolume {
                    target: TARGET_A.into(),
                    lun: Lun(i as u32),
                    wwid: None,
                    ..Default::default()
                },
            );
        }
        o
    }

    /// Present volumes keep the LUN `owned` gives their name (a..), others get fresh LUNs.
    fn file(present: &[&str], gone: &[&str]) -> Desired {
        let mut vs: Vec<_> = present
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let lun = match n.as_bytes() {
                    [c @ b'a'..=b'h'] => u32::from(c - b'a'),
                    _ => 50 + i as u32,
                };
                volume(n, TARGET_A, &[P1], lun)
            })
            .collect();
        vs.extend(
            gone.iter()
                .enumerate()
                .map(|(i, n)| absent(volume(n, TARGET_A, &[P1], 100 + i as u32))),
        );
        desired(vs)
    }

    #[test]
    fn more_than_half_and_at_least_two_trips() {
        let o = owned(&["a", "b", "c", "d"]);
        let m = check(&file(&["a"], &[]), &o).expect("3 of 4 trips");
        assert_eq!(m.attached, 4);
        assert_eq!(
            m.disappeared,
            BTreeSet::from(["b".into(), "c".into(), "d".into()])
        );
        let text = m.to_string();
        assert!(text.contains("3 of 4"), "{text}");
        assert!(text.contains("b, c, d"), "{text}");
    }

    #[test]
    fn exactly_half_is_allowed() {
        let o = owned(&["a", "b", "c", "d"]);
        assert_eq!(check(&file(&["a", "b"], &[]), &o), None);
    }

    #[test]
    fn one_volume_going_is_an_ordinary_edit() {
        assert_eq!(check(&file(&[], &[]), &owned(&["a"])), None);
        assert_eq!(check(&file(&["x"], &[]), &owned(&["a"])), None);
        assert!(check(&file(&["x"], &[]), &owned(&["a", "b"])).is_some());
    }

    #[test]
    fn volumes_marked_absent_never_count() {
        let o = owned(&["a", "b", "c", "d"]);
        assert_eq!(check(&file(&["a"], &["b", "c", "d"]), &o), None);
        // Two marked absent, one missing: one disappeared is below the minimum.
        assert_eq!(check(&file(&["a"], &["b", "c"]), &o), None);
        // Marking some absent does not launder the others: 2 of 4 missing is only half.
        assert_eq!(check(&file(&[], &["a", "b"]), &o), None);
        let o = owned(&["a", "b", "c", "d", "e"]);
        let m = check(&file(&[], &["a", "b"]), &o).expect("3 of 5 missing");
        assert_eq!(m.disappeared.len(), 3);
    }

    #[test]
    fn volumes_not_attached_do_not_count() {
        // New volumes in the file do not dilute the share of attached ones going away.
        let o = owned(&["a", "b", "c"]);
        assert!(check(&file(&["a", "x", "y", "z"], &[]), &o).is_some());
        assert_eq!(check(&file(&[], &[]), &Owned::default()), None);
    }

    #[test]
    fn renamed_and_adopted_volumes_are_not_detached_so_they_do_not_count() {
        let mut o = owned(&["a", "b", "c", "d"]);
        // b, c and d renamed: the file has their LUNs under new names.
        let renamed = desired(vec![
            volume("a", TARGET_A, &[P1], 0),
            volume("b2", TARGET_A, &[P1], 1),
            volume("c2", TARGET_A, &[P1], 2),
            volume("d2", TARGET_A, &[P1], 3),
        ]);
        assert_eq!(check(&renamed, &o), None);
        for v in o.volumes.values_mut() {
            v.adopted = true;
        }
        assert_eq!(check(&file(&["a"], &[]), &o), None);
    }
}
