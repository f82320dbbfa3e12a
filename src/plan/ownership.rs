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
        } => {
            let record = OwnedVolume {
                target: target.clone(),
                lun: *lun,
                wwid: wwid.clone(),
            };
            owned.volumes.insert(volume.clone(), record.clone()) != Some(record)
        }
        Action::AdoptSession { session } => {
            // The node record of an adopted session is adopted with it: on teardown nothing of
            // the session should be left behind.
            let a = owned.sessions.insert(session.clone());
            let b = owned.nodes.insert(session.clone());
            a || b
        }
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
            a || b
        }
        Action::Logout { session } => owned.sessions.remove(session),
        Action::DeleteNode { session } => owned.nodes.remove(session),
        Action::UnregisterWwid { wwid } | Action::ForgetWwid { wwid } => owned.wwids.remove(wwid),
        _ => false,
    }
}
