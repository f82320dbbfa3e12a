//! How actions change lunkeeper's ownership records. Claims are recorded before an action runs,
//! so a crash in the middle leaves a record of what may need tearing down; releases are
//! recorded only after an action succeeded.

use super::Action;
use crate::owned::{Owned, OwnedVolume};

/// Records what `action` is about to take. Returns whether anything changed.
pub fn claim(owned: &mut Owned, action: &Action) -> bool {
    match action {
        Action::OwnVolume {
            volume,
            target,
            lun,
            wwid,
            adopted,
            attached,
        } => {
            let record = owned.volumes.entry(volume.clone()).or_default();
            let before = record.clone();
            *record = OwnedVolume {
                target: target.clone(),
                lun: *lun,
                wwid: wwid.clone(),
                adopted: *adopted,
                attached: *attached,
                unknown: std::mem::take(&mut record.unknown),
            };
            *record != before || before.target.is_empty()
        }
        // Only the session: its node record stays the operator's, as found.
        Action::AdoptSession { session } => owned.adopted_sessions.insert(session.clone()),
        Action::EnsureNode { session, .. } => owned.nodes.insert(session.clone()),
        Action::Login { session, .. } => owned.sessions.insert(session.clone()),
        Action::RegisterWwid { wwid } => owned.wwids.insert(wwid.clone()),
        _ => false,
    }
}

/// Records that `action` succeeded in giving something up. Returns whether anything changed.
pub fn release(owned: &mut Owned, action: &Action) -> bool {
    match action {
        Action::DisownVolume { volume } => owned.volumes.remove(volume).is_some(),
        Action::ForgetSession { session } => {
            let a = owned.sessions.remove(session);
            let b = owned.nodes.remove(session);
            let c = owned.adopted_sessions.remove(session);
            a || b || c
        }
        Action::Logout { session } => owned.sessions.remove(session),
        Action::DeleteNode { session } => owned.nodes.remove(session),
        Action::UnregisterWwid { wwid } | Action::ForgetWwid { wwid } => owned.wwids.remove(wwid),
        _ => false,
    }
}
