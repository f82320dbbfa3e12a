//! udev events as libudev hands them over: `KEY=value` properties (NUL- or line-separated,
//! as `udevadm monitor --property` prints them). Must hold: no panic; only the kept properties
//! are copied; a map's WWID is never empty; an overflow is only the synthetic event; the log
//! line is one line when the properties are.
#![no_main]

use std::collections::BTreeMap;
use std::ffi::OsStr;

use libfuzzer_sys::fuzz_target;
use lunkeeper::fuzzing::{udev_relevant, UdevEvent};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut props: BTreeMap<&str, &str> = BTreeMap::new();
    for field in text.split(['\0', '\n']) {
        if let Some((k, v)) = field.split_once('=') {
            props.insert(k, v);
        }
    }
    let get = |k: &str| props.get(k).map(|v| OsStr::new(*v));
    let sysname = props
        .get("DEVPATH")
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("");
    let number = |k: &str| props.get(k).and_then(|v| v.parse::<u64>().ok());
    let devnum = match (number("MAJOR"), number("MINOR")) {
        (Some(major), Some(minor)) if major < 1 << 32 && minor < 1 << 32 => {
            Some(makedev(major, minor))
        }
        _ => None,
    };
    let ev = UdevEvent::from_parts(
        get("ACTION"),
        get("SUBSYSTEM"),
        OsStr::new(sysname),
        devnum,
        |k| props.get(k).map(|v| OsStr::new(*v)),
    );
    if devnum.is_some() {
        assert_eq!(
            ev.devnum.map(|(a, b)| (u64::from(a), u64::from(b))),
            number("MAJOR").zip(number("MINOR"))
        );
    }
    for (k, v) in &ev.properties {
        assert_eq!(props.get(k.as_str()), Some(&v.as_str()));
    }
    if let Some(w) = ev.map_wwid() {
        assert!(!w.is_empty());
    }
    if ev.is_overflow() {
        assert!(ev.subsystem.is_empty() && ev.sysname.is_empty());
    }
    let _ = ev.is_path_event();
    let relevant = udev_relevant(&ev);
    if ev.subsystem != "block" {
        assert!(relevant);
    }
    let line = ev.to_string();
    let fields_one_line = !ev.action.contains('\n')
        && !ev.subsystem.contains('\n')
        && !ev.sysname.contains('\n')
        && ev.properties.values().all(|v| !v.contains('\n'));
    if fields_one_line {
        assert!(!line.contains('\n'));
    }
});

/// `makedev` as glibc packs it.
fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}
