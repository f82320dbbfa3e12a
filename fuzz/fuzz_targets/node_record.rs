//! open-iscsi's node database: the names of its entries (`<addr>,<port>,<tpgt>`) and the text
//! of a record, which lunkeeper rewrites to set its keys. Must hold: no panic; a portal name
//! that parses prints back to the same address; after a rewrite every key set appears exactly
//! once with its value, no removed key is left, every other line is kept in order, and the
//! `# END RECORD` trailer stays last.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunkeeper::fuzzing::{parse_portal_name, rewrite_record};

/// The keys `write_node` sets or removes.
const SET: [&str; 5] = [
    "node.session.scan",
    "node.startup",
    "node.session.timeo.replacement_timeout",
    "node.conn[0].timeo.login_timeout",
    "node.session.auth.authmethod",
];
const REMOVED: [&str; 2] = ["node.session.auth.password", "node.session.auth.password_in"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line doubles as an entry name of the database.
    let name = text.lines().next().unwrap_or("");
    if let Some((addr, tpgt)) = parse_portal_name(name) {
        // The address as iscsiadm names entries reads back the same.
        let canonical = format!("{},{},{tpgt}", addr.ip(), addr.port());
        assert_eq!(parse_portal_name(&canonical), Some((addr, tpgt)), "{name:?}");
    }

    let keys: Vec<(&str, Option<String>)> = SET
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, Some(format!("v{i}"))))
        .chain(REMOVED.iter().map(|k| (*k, None)))
        .collect();
    let out = rewrite_record(text, &keys);
    let key_of = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    for (i, key) in SET.iter().enumerate() {
        let lines: Vec<&str> = out.lines().filter(|l| key_of(l) == *key).collect();
        assert_eq!(lines, vec![format!("{key} = v{i}")], "{key} in {out:?}");
    }
    for key in REMOVED {
        assert!(out.lines().all(|l| key_of(l) != key), "{key} left in {out:?}");
    }
    let ours = |l: &str| {
        let k = key_of(l);
        SET.contains(&k.as_str()) || REMOVED.contains(&k.as_str()) || l.trim() == "# END RECORD"
    };
    // A lone `\r` ending the last line becomes a line ending: that is no change of content.
    let kept = |t: &'_ str| -> Vec<String> {
        t.lines()
            .filter(|l| !ours(l))
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    };
    let (kept_in, kept_out) = (kept(text), kept(&out));
    assert_eq!(kept_in, kept_out, "other lines changed");
    if text.lines().any(|l| l.trim() == "# END RECORD") {
        assert_eq!(out.lines().last().map(str::trim), Some("# END RECORD"));
    }
});
