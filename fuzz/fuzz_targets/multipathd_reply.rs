//! multipathd's replies on its control socket: a native `size_t` length, then the text and its
//! NUL. Must hold: no panic; a length over the cap is refused before anything is allocated;
//! the text never ends in a NUL; `ok` and `fail` are told apart whatever surrounds them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunkeeper::fuzzing::{reply_len, reply_text, Reply};

const HEADER: usize = std::mem::size_of::<usize>();

fuzz_target!(|data: &[u8]| {
    let Some((header, body)) = data.split_first_chunk::<HEADER>() else {
        return;
    };
    // The body as the client would read it: the announced length, or what arrived (a short
    // read is an I/O error before any parsing).
    let body = match reply_len(*header) {
        Some(len) if len <= body.len() => &body[..len],
        Some(_) => body,
        None => {
            assert!(usize::from_ne_bytes(*header) > 64 << 20);
            body
        }
    };
    let text = reply_text(body.to_vec());
    assert!(!text.ends_with('\0'));
    match Reply::parse(&text) {
        Reply::Ok => assert_eq!(text.trim(), "ok"),
        Reply::Fail(detail) => {
            assert!(text.trim().starts_with("fail"));
            assert_eq!(detail, detail.trim());
        }
        Reply::Other(t) => {
            assert!(t != "ok" && !t.starts_with("fail"));
            assert_eq!(t, t.trim());
        }
    }
});
