//! What a reload changes: a pure comparison of the old and the new desired state, so the daemon
//! can say what it is about to do and give changed volumes a fresh start.

use std::collections::BTreeSet;

use super::Desired;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: BTreeSet<String>,
    pub removed: BTreeSet<String>,
    pub changed: BTreeSet<String>,
}

impl Diff {
    pub fn between(old: &Desired, new: &Desired) -> Diff {
        let mut diff = Diff::default();
        for v in &new.volumes {
            match old.volume(v.name.as_str()) {
                None => {
                    diff.added.insert(v.name.to_string());
                }
                Some(o) if o != v => {
                    diff.changed.insert(v.name.to_string());
                }
                Some(_) => {}
            }
        }
        for v in &old.volumes {
            if new.volume(v.name.as_str()).is_none() {
                diff.removed.insert(v.name.to_string());
            }
        }
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Every volume the reload touches.
    pub fn touched(&self) -> BTreeSet<String> {
        self.added
            .iter()
            .chain(&self.removed)
            .chain(&self.changed)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::VolumeState;
    use crate::testkit::*;

    #[test]
    fn names_added_removed_and_changed_volumes() {
        let old = desired(vec![
            volume("keep", TARGET_A, &[P1], 0),
            volume("go", TARGET_A, &[P1], 1),
            volume("edit", TARGET_A, &[P1], 2),
        ]);
        let mut edited = volume("edit", TARGET_A, &[P1], 2);
        edited.state = VolumeState::Absent;
        let new = desired(vec![
            volume("keep", TARGET_A, &[P1], 0),
            edited,
            volume("new", TARGET_B, &[P1], 0),
        ]);
        let d = Diff::between(&old, &new);
        assert_eq!(d.added, BTreeSet::from(["new".to_string()]));
        assert_eq!(d.removed, BTreeSet::from(["go".to_string()]));
        assert_eq!(d.changed, BTreeSet::from(["edit".to_string()]));
        assert!(Diff::between(&new, &new).is_empty());
    }
}
