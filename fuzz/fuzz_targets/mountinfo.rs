//! `/proc/self/mountinfo` (its device numbers decide what counts as mounted). Must hold: no
//! panic; every device number found is the third field of some line and prints back to itself;
//! the devices given mount points are exactly those.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunkeeper::fuzzing::{parse_mount_points, parse_mountinfo, DevNum};

fuzz_target!(|data: &[u8]| {
    // Read as observe reads it: lossily, a page at a time to the end.
    let text = String::from_utf8_lossy(data);
    let mounted = parse_mountinfo(&text);
    assert!(mounted.len() <= text.lines().count());
    // observe takes the mounted set from the mount points' keys: exactly the same devices.
    let points = parse_mount_points(&text);
    assert!(points.keys().eq(mounted.iter()));
    for dev in &mounted {
        assert_eq!(dev.to_string().parse::<DevNum>(), Ok(*dev));
        assert!(
            text.lines().any(|l| l
                .split_ascii_whitespace()
                .nth(2)
                .and_then(|f| f.parse::<DevNum>().ok())
                == Some(*dev)),
            "{dev} is on no line"
        );
    }
});
