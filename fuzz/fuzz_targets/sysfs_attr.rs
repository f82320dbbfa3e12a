//! Values and names read from sysfs: a SCSI device's `wwid`, `dev` and `H:C:T:L` names, a
//! session's `state`, a connection's `persistent_address`, dm's `uuid`. Must hold: no panic;
//! what parses prints back to what parses the same; a WWID never holds a space, `/` or a
//! control character (it becomes a line of the wwids file and a udev file name).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunkeeper::fuzzing::{parse_ip, DevNum, Hctl, SessionState, Wwid};

fn check_wwid(w: &Wwid) {
    let s = w.as_str();
    assert!(s.len() >= 2, "{s:?}");
    assert!(s.bytes().all(|b| b.is_ascii_graphic() && b != b'/'), "{s:?}");
    assert_eq!(s.parse::<Wwid>().as_ref(), Ok(w));
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    if let Ok(w) = Wwid::from_sysfs(text) {
        check_wwid(&w);
        // What from_sysfs makes is stable: a `naa.`/`eui.`/`t10.` prefix is consumed once.
    }
    if let Ok(w) = text.parse::<Wwid>() {
        check_wwid(&w);
    }
    if let Some(w) = text.strip_prefix("mpath-").and_then(|u| u.parse::<Wwid>().ok()) {
        check_wwid(&w);
    }
    if let Ok(d) = text.parse::<DevNum>() {
        assert_eq!(d.to_string().parse::<DevNum>(), Ok(d));
    }
    if let Ok(h) = text.parse::<Hctl>() {
        assert_eq!(h.to_string().parse::<Hctl>(), Ok(h));
    }
    let _ = SessionState::parse(text);
    if let Some(ip) = parse_ip(text) {
        assert_eq!(parse_ip(&ip.to_string()), Some(ip));
    }
});
