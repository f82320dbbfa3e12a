//! `/etc/multipath/wwids`, read by observe and edited by add (append) and remove (comment out
//! in place). Must hold: no panic; after add the WWID is registered and nothing else changed;
//! add twice appends once; after remove the WWID is no longer registered and nothing else
//! changed. The file is bytes, as the editor reads it: a line that is not UTF-8 must not stop
//! it.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use lunkeeper::fuzzing::{parse_registered_wwids, wwids_addition, wwids_lines, Wwid};

fuzz_target!(|data: &[u8]| {
    // The WWID to add and remove comes from the input too, after a NUL.
    let (text, wwid) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"360014058e56025504e62559c52c147ac"[..]),
    };
    // Observe reads the file lossily; the editor edits its bytes.
    let registered = parse_registered_wwids(&String::from_utf8_lossy(text));
    let Some(wwid) = std::str::from_utf8(wwid)
        .ok()
        .and_then(|w| w.parse::<Wwid>().ok())
    else {
        return;
    };
    let others: BTreeSet<Wwid> = registered.iter().filter(|w| **w != wwid).cloned().collect();

    let mut added = text.to_vec();
    match wwids_addition(text, &wwid) {
        Some(add) => {
            assert!(!registered.contains(&wwid), "{wwid} was already there");
            added.extend_from_slice(add.as_bytes());
        }
        None => assert!(registered.contains(&wwid), "{wwid} was not there"),
    }
    let after_add = parse_registered_wwids(&String::from_utf8_lossy(&added));
    assert!(after_add.contains(&wwid), "{wwid} not registered in {added:?}");
    let others_after: BTreeSet<Wwid> = after_add.iter().filter(|w| **w != wwid).cloned().collect();
    assert_eq!(others, others_after);
    assert_eq!(wwids_addition(&added, &wwid), None, "added twice");

    let mut removed = added.clone();
    for offset in wwids_lines(&added, &wwid) {
        assert_eq!(removed.get(offset), Some(&b'/'));
        removed[offset] = b'#';
    }
    let after_remove = parse_registered_wwids(&String::from_utf8_lossy(&removed));
    assert!(!after_remove.contains(&wwid), "{wwid} still registered in {removed:?}");
    assert_eq!(others, after_remove);
});
