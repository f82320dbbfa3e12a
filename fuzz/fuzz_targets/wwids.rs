//! `/etc/multipath/wwids`, read by observe and edited by add (append) and remove (comment out
//! in place). Must hold: no panic; after add the WWID is registered and nothing else changed;
//! add twice appends once; after remove the WWID is no longer registered and nothing else
//! changed.
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
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let registered = parse_registered_wwids(text);
    let Some(wwid) = std::str::from_utf8(wwid)
        .ok()
        .and_then(|w| w.parse::<Wwid>().ok())
    else {
        return;
    };
    let others: BTreeSet<Wwid> = registered.iter().filter(|w| **w != wwid).cloned().collect();

    let added = match wwids_addition(text, &wwid) {
        Some(add) => {
            assert!(!registered.contains(&wwid), "{wwid} was already there");
            format!("{text}{add}")
        }
        None => {
            assert!(registered.contains(&wwid), "{wwid} was not there");
            text.to_string()
        }
    };
    let after_add = parse_registered_wwids(&added);
    assert!(after_add.contains(&wwid), "{wwid} not registered in {added:?}");
    let others_after: BTreeSet<Wwid> = after_add.iter().filter(|w| **w != wwid).cloned().collect();
    assert_eq!(others, others_after);
    assert_eq!(wwids_addition(&added, &wwid), None, "added twice");

    let mut removed = added.clone().into_bytes();
    for offset in wwids_lines(&added, &wwid) {
        assert_eq!(removed.get(offset), Some(&b'/'));
        removed[offset] = b'#';
    }
    let removed = String::from_utf8(removed).expect("'#' over '/' keeps UTF-8");
    let after_remove = parse_registered_wwids(&removed);
    assert!(!after_remove.contains(&wwid), "{wwid} still registered in {removed:?}");
    assert_eq!(others, after_remove);
});
