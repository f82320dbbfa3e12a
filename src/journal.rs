//! Logging to systemd's journal with native fields, so `journalctl -u lunkeeper VOLUME=db`
//! answers "what did lunkeeper do to db?".
//!
//! A layer of its own rather than tracing-journald: that crate adds its own `TARGET` field (the
//! Rust module) beside ours (the iSCSI target), and cannot give one entry several `VOLUME`
//! values, which a session shared by two volumes needs. Here:
//! - the fields of the event and of every span around it become journal fields, upper-cased
//!   (`volume` → `VOLUME`, `target` → `TARGET`, `error` → `ERROR`);
//! - a field named `volumes` (a comma-separated list) becomes one `VOLUME` per name;
//! - `MESSAGE` is the message followed by every field as `key=value`, so `journalctl` without
//!   field filters reads like the text log; `PRIORITY` follows the level;
//!   `SYSLOG_IDENTIFIER=lunkeeper`.
//!
//! The fields every change to the host carries (see `apply::engine`): VOLUME, TARGET, PORTAL,
//! WWID, ACTION (the action's kind, as in the metrics), RESULT (`changed`, `already`, `failed`).

use std::fmt::{self, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// journald's socket for the native protocol.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether stderr is connected to the journal, as systemd tells a service it starts with
/// `JOURNAL_STREAM=<dev>:<inode>` of that stream (systemd.exec(5)): a child whose stderr was
/// redirected elsewhere inherits the variable but not the stream.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    matches_stream(&var.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// Whether `JOURNAL_STREAM`'s `<dev>:<inode>` names this device and inode.
pub fn matches_stream(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// Where encoded entries go: journald's socket, or a test's buffer.
pub trait Sink: Send + Sync + 'static {
    fn send(&self, entry: &[u8]);
}

/// journald's socket. An entry it refuses (too big, journald restarting) is written to stderr
/// as text, which systemd also puts in the journal, without the fields.
pub struct Socket {
    socket: UnixDatagram,
}

impl Socket {
    pub fn connect(path: &Path) -> std::io::Result<Socket> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Socket { socket })
    }
}

impl Sink for Socket {
    fn send(&self, entry: &[u8]) {
        if self.socket.send(entry).is_err() {
            if let Some(text) = message_of(entry) {
                eprintln!("{text}");
            }
        }
    }
}

/// The MESSAGE of an encoded entry (for the stderr fallback).
fn message_of(entry: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(entry);
    text.lines()
        .find_map(|l| l.strip_prefix("MESSAGE="))
        .map(str::to_string)
}

/// The tracing layer.
pub struct JournalLayer<K: Sink> {
    sink: K,
}

impl<K: Sink> JournalLayer<K> {
    pub fn new(sink: K) -> Self {
        JournalLayer { sink }
    }
}

/// A span's fields, kept in its extensions for the events inside it.
struct SpanFields(Vec<(String, String)>);

#[derive(Default)]
struct Collect {
    message: Option<String>,
    fields: Vec<(String, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), format!("{value:?}"));
    }
}

impl Collect {
    fn put(&mut self, name: &str, value: String) {
        if name == "message" {
            self.message = Some(value);
        } else {
            self.fields.retain(|(n, _)| n != name);
            self.fields.push((name.to_string(), value));
        }
    }
}

impl<S, K> tracing_subscriber::Layer<S> for JournalLayer<K>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    K: Sink,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        attrs.record(&mut c);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(c.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let Some(SpanFields(fields)) = ext.get_mut::<SpanFields>() else {
            return;
        };
        let mut c = Collect {
            message: None,
            fields: std::mem::take(fields),
        };
        values.record(&mut c);
        *fields = c.fields;
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Outermost span first, the event last: an inner value replaces an outer one.
        let mut c = Collect::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    for (n, v) in fields {
                        c.put(n, v.clone());
                    }
                }
            }
        }
        event.record(&mut c);
        let entry = entry(
            *event.metadata().level(),
            c.message.as_deref().unwrap_or_default(),
            &c.fields,
        );
        self.sink.send(&encode(&entry));
    }
}

/// The journal fields of one event: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, then the fields.
pub fn entry(level: Level, message: &str, fields: &[(String, String)]) -> Vec<(String, String)> {
    let mut text = message.to_string();
    for (n, v) in fields {
        let _ = write!(text, " {n}={v}");
    }
    let mut out = vec![
        ("MESSAGE".to_string(), text),
        ("PRIORITY".to_string(), priority(level).to_string()),
        ("SYSLOG_IDENTIFIER".to_string(), "lunkeeper".to_string()),
    ];
    for (name, value) in fields {
        if name == "volumes" {
            out.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| ("VOLUME".to_string(), v.to_string())),
            );
            continue;
        }
        let name = field_name(name);
        // Fields journald sets itself, and empty names, are not ours to write.
        if name.is_empty() || ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"].contains(&&*name) {
            continue;
        }
        out.push((name, value.clone()));
    }
    // One VOLUME=db however many spans name it.
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.clone()));
    out
}

/// syslog priorities: error 3, warning 4, info 6, debug and trace 7.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A journal field name: upper-case letters, digits and `_`, not starting with `_` or a digit
/// (those are journald's own or invalid), at most 64 characters.
pub fn field_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    mapped
        .trim_start_matches(|c: char| c == '_' || c.is_ascii_digit())
        .chars()
        .take(64)
        .collect()
}

/// The native protocol: `NAME=value\n`, or for a value with a newline `NAME\n`, its length as
/// a little-endian u64, the value and `\n`.
pub fn encode(fields: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// A sink that keeps entries, for tests.
#[derive(Default, Clone)]
pub struct Captured(pub std::sync::Arc<Mutex<Vec<Vec<u8>>>>);

impl Sink for Captured {
    fn send(&self, entry: &[u8]) {
        if let Ok(mut v) = self.0.lock() {
            v.push(entry.to_vec());
        }
    }
}

impl Captured {
    /// Every captured entry's fields (names and values of `NAME=value` lines).
    pub fn entries(&self) -> Vec<Vec<(String, String)>> {
        let Ok(v) = self.0.lock() else {
            return Vec::new();
        };
        v.iter()
            .map(|e| {
                String::from_utf8_lossy(e)
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn values<'a>(entry: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        entry
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn field_names_are_journal_names() {
        assert_eq!(field_name("volume"), "VOLUME");
        assert_eq!(field_name("elapsed_ms"), "ELAPSED_MS");
        assert_eq!(field_name("_private"), "PRIVATE");
        assert_eq!(field_name("a.b-c"), "A_B_C");
        assert_eq!(field_name("9lives"), "LIVES");
        assert_eq!(field_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn encoding_follows_the_native_protocol() {
        let e = encode(&[
            ("MESSAGE".into(), "one line".into()),
            ("ERROR".into(), "two\nlines".into()),
        ]);
        let mut want = b"MESSAGE=one line\nERROR\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(e, want);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(matches_stream("8:1234", 8, 1234));
        assert!(!matches_stream("8:1234", 8, 99));
        assert!(!matches_stream("garbage", 8, 1234));
    }

    /// The fields of a change: span and event fields, a session lane's volumes as one VOLUME
    /// each, and a text MESSAGE.
    #[test]
    fn a_change_carries_volume_target_portal_action_and_result() {
        let sink = Captured::default();
        let subscriber = tracing_subscriber::registry().with(JournalLayer::new(sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "lane",
                target = "iqn.2026-11.test:a",
                portal = "192.0.2.1:3260",
                volumes = "db,logs"
            );
            let _g = span.enter();
            tracing::info!(action = "login", result = "changed", "log in");
            let inner = tracing::info_span!("lane", volume = "db");
            let _g2 = inner.enter();
            tracing::warn!(
                action = "add_map",
                wwid = "36001405aa",
                result = "failed",
                error = "boom",
                "create map"
            );
        });
        let entries = sink.entries();
        assert_eq!(entries.len(), 2);
        let login = &entries[0];
        assert_eq!(values(login, "VOLUME"), ["db", "logs"]);
        assert_eq!(values(login, "TARGET"), ["iqn.2026-11.test:a"]);
        assert_eq!(values(login, "PORTAL"), ["192.0.2.1:3260"]);
        assert_eq!(values(login, "ACTION"), ["login"]);
        assert_eq!(values(login, "RESULT"), ["changed"]);
        assert_eq!(values(login, "PRIORITY"), ["6"]);
        assert_eq!(values(login, "SYSLOG_IDENTIFIER"), ["lunkeeper"]);
        let msg = values(login, "MESSAGE")[0];
        assert!(msg.starts_with("log in "), "{msg}");
        assert!(msg.contains("target=iqn.2026-11.test:a"), "{msg}");
        let map = &entries[1];
        assert_eq!(
            values(map, "VOLUME"),
            ["db", "logs"],
            "outer volumes and inner volume"
        );
        assert_eq!(values(map, "WWID"), ["36001405aa"]);
        assert_eq!(values(map, "RESULT"), ["failed"]);
        assert_eq!(values(map, "ERROR"), ["boom"]);
        assert_eq!(values(map, "PRIORITY"), ["4"]);
    }

    /// What `journalctl -u lunkeeper VOLUME=db` shows after an attach: every change to the
    /// host made for db, each with its action, result and (for sessions) target and portal.
    #[tokio::test(start_paused = true)]
    async fn an_attach_is_in_the_volume_s_history() {
        use crate::act::sim::SimHost;
        use crate::apply::{apply, ApplyOptions, NoWake};
        use crate::owned::OwnedStore;
        use crate::testkit::*;
        use std::rc::Rc;

        let sink = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(JournalLayer::new(sink.clone()));
        let _guard = tracing::subscriber::set_default(subscriber);
        let sim: Rc<SimHost> = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let store = OwnedStore::new(dir.path());
        let d = desired(vec![
            volume("db", TARGET_A, &[P1, P2], 0),
            volume("logs", TARGET_A, &[P1, P2], 1),
        ]);
        let local = tokio::task::LocalSet::new();
        let r = local
            .run_until(apply(
                Rc::clone(&sim),
                &d,
                &store,
                &ApplyOptions::default(),
                &mut NoWake,
            ))
            .await
            .unwrap();
        assert!(r.converged);
        let entries = sink.entries();
        let history: Vec<_> = entries
            .iter()
            .filter(|e| values(e, "VOLUME").contains(&"db"))
            .collect();
        let actions: Vec<&str> = history.iter().flat_map(|e| values(e, "ACTION")).collect();
        for kind in ["ensure_node", "login", "register_wwid", "name_device"] {
            assert!(actions.contains(&kind), "{kind} missing from {actions:?}");
        }
        let logins: Vec<_> = history
            .iter()
            .filter(|e| values(e, "ACTION") == ["login"])
            .collect();
        assert_eq!(logins.len(), 2, "one per portal");
        for l in &logins {
            assert_eq!(
                values(l, "VOLUME"),
                ["db", "logs"],
                "a shared session serves both"
            );
            assert_eq!(values(l, "TARGET"), [TARGET_A]);
            assert_eq!(values(l, "PORTAL").len(), 1);
            assert_eq!(values(l, "RESULT"), ["changed"]);
        }
        let register = history
            .iter()
            .find(|e| values(e, "ACTION") == ["register_wwid"])
            .unwrap();
        assert_eq!(values(register, "WWID").len(), 1);
        // Bookkeeping (own_volume) is not a change to the host: not at info.
        assert!(!actions.contains(&"own_volume"), "{actions:?}");
    }
}
