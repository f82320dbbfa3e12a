//! The daemon's event loop. It owns no logic: udev events, config edits, signals and timers
//! only decide *when* the engine looks at the world again (level-triggered, so lost or
//! duplicated events do no harm); the engine plans and acts exactly as `apply` does.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use sd_notify::NotifyState;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

use super::iscsi_events::{IscsiEvents, IscsiEventsError};
use super::udev::{capacity_changed, relevant, UdevMonitor};
use super::watch::ConfigWatcher;
use crate::act::{preflight, Host, Missing};
use crate::apply::{Engine, Pass, RetryPolicy};
use crate::desired::{self, Desired, Diff};
use crate::files::LatestWriter;
use crate::lock::{self, HeldLock, LockError};
use crate::metrics::{MetricsWriter, Snapshot};
use crate::owned::{Owned, OwnedStore};
use crate::plan::mass_detach::{self, MassDetach};
use crate::status::{summarize, Status, VolumeStatus};

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// `/run/lunkeeper`: status.json and the daemon lock.
    pub runtime_dir: PathBuf,
    /// Bursts of config events within this window collapse into one reload.
    pub debounce: Duration,
    /// How often to look again while a volume is on its way (the kernel, udev and multipathd
    /// move on their own; most of their moves also arrive as udev events).
    pub poll: Duration,
    pub retry: RetryPolicy,
    /// READY=1 is sent when the first pass has settled, or after this long at the latest.
    pub ready_deadline: Duration,
}

impl DaemonOptions {
    pub fn new(config: PathBuf, state_dir: PathBuf, runtime_dir: PathBuf) -> Self {
        DaemonOptions {
            config,
            state_dir,
            runtime_dir,
            debounce: Duration::from_millis(200),
            poll: Duration::from_millis(250),
            retry: RetryPolicy {
                first: Duration::from_secs(1),
                cap: Duration::from_secs(60),
                settle: Duration::from_secs(3),
                grace: Duration::from_secs(1),
            },
            ready_deadline: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] super::watch::WatchError),
    #[error(transparent)]
    Apply(#[from] crate::apply::ApplyError),
}

/// What the daemon publishes in `status.json`: the status of every volume and whether the
/// configuration it runs is the file's current content. Mode 0644 in a 0755 directory: any
/// user may read it (`lunkeeper status` as non-root), so it carries no secret; reasons and
/// errors are the same text the journal gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// [`crate::status::SCHEMA`]; absent in files of lunkeeper before it was versioned.
    #[serde(default = "crate::status::schema")]
    pub schema: u32,
    pub volumes: Vec<VolumeStatus>,
    pub config: ConfigState,
    /// Set while something acting needs is missing ("waiting: iscsid is not running (run
    /// `systemctl start iscsid`)"); the daemon acts on nothing meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigState {
    pub path: PathBuf,
    /// False when the file's current content was rejected; the last good one stays in force.
    pub ok: bool,
    pub error: Option<String>,
}

pub const STATUS_FILE: &str = "status.json";
/// How long the daemon keeps looking after an event.
const FOLLOW_UP: Duration = Duration::from_secs(2);
/// How often a missing service is looked for again when no event comes first.
const PREFLIGHT_RECHECK: Duration = Duration::from_secs(3);
/// While everything is there, preflight is repeated at most this often: a pass can run every
/// 100 ms after an event, and a service that died shows in the failing steps meanwhile.
const PREFLIGHT_FRESH: Duration = Duration::from_secs(5);
/// How often, while nothing else happens, the daemon checks that iscsid, multipathd and udevd
/// still run: one of them killed raises no event, and status must name it within seconds, not
/// at the next resync. A read of /proc/net/unix, far cheaper than a pass.
const SERVICE_WATCH: Duration = Duration::from_secs(5);
/// How often it looks during that time: sysfs reads are cheap, and a session's state flips a
/// few hundred milliseconds after the event that announced the trouble.
const FOLLOW_UP_POLL: Duration = Duration::from_millis(100);
/// Looks that find nothing new come further and further apart, up to this: a volume that
/// stays degraded (a portal down for hours) or a portal that flaps costs a look every 2 s, not
/// ten a second. Anything that changes arrives as an event and starts the intervals over.
const POLL_BACKOFF_CAP: Duration = Duration::from_secs(2);
pub const LOCK_FILE: &str = lock::DAEMON_LOCK;
/// How often the daemon tries again for the planner lock while an `apply` holds it.
const PLANNER_LOCK_RETRY: Duration = Duration::from_millis(500);

/// Runs until SIGTERM or SIGINT. Must run inside a `LocalSet`.
pub async fn run<H: Host + 'static>(host: Rc<H>, opts: DaemonOptions) -> Result<(), DaemonError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DaemonError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.runtime_dir).map_err(io(&opts.runtime_dir))?;
    let _daemon_lock = lock::daemon(&opts.runtime_dir, &opts.config)?;

    let mut watcher = ConfigWatcher::new(&opts.config, opts.debounce)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io(Path::new("SIGHUP")))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io(Path::new("SIGTERM")))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io(Path::new("SIGINT")))?;
    let mut udev = match UdevMonitor::new() {
        Ok(m) => Some(m),
        Err(e) => {
            // Events only make lunkeeper quick; the periodic resync keeps it correct.
            error!(error = %e, "no udev events; relying on the periodic resync");
            None
        }
    };
    let mut iscsi = match IscsiEvents::new() {
        Ok(e) => Some(e),
        Err(e) => {
            warn!(error = %e, "no iSCSI connection events; a dropped session shows at the next udev event or resync");
            None
        }
    };
    let watchdog = watchdog_interval();
    let Some(_planner_lock) = planner_lock(&opts, watchdog, &mut sigterm, &mut sigint).await?
    else {
        return Ok(());
    };
    // After an event the kernel, iscsid and multipathd keep moving for a moment (a session turns
    // FAILED a little after its connection error), so the daemon keeps looking for this long.
    let mut follow_up_until: Option<Instant> = None;
    // The interval to the next look while following up or waiting; doubled after each look the
    // timer asked for, reset by anything else that wakes the daemon.
    let mut poll_every = FOLLOW_UP_POLL;

    let probe = Rc::clone(&host);
    let mut gate = Preflight::default();
    let mut engine = Engine::new(host, OwnedStore::new(&opts.state_dir), opts.retry)?.without_log();
    let mut config = Config::load(&opts.config, engine.owned());
    let mut resync = resync_timer(config.desired.as_ref());
    let started = Instant::now();
    let mut ready_sent = false;
    let mut awaiting_link: Vec<String> = Vec::new();
    // The volumes with their /dev/lunkeeper link, where the udev rule is installed (None where
    // it is not), and whether systemd is asked about their device units before READY=1.
    let mut linked: Option<Vec<String>> = None;
    let mut ask_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    let mut told_units = false;
    let mut dirty = true;
    let mut wake_at: Option<Instant> = None;
    let mut last_status = Published::new(&opts.runtime_dir.join(STATUS_FILE));
    let mut next_watchdog = watchdog.map(|w| Instant::now() + w);
    let mut service_watch = tokio::time::interval_at(Instant::now() + SERVICE_WATCH, SERVICE_WATCH);
    service_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = MetricsWriter::default();
    let mut telemetry = Telemetry::default();

    loop {
        if dirty {
            dirty = false;
            let waiting = match &config.desired {
                Some(desired) => gate.check(probe.as_ref(), desired).await,
                None => None,
            };
            let mut settled = match &config.desired {
                Some(_) if waiting.is_some() => {
                    // Nothing is acted on; the volumes are shown as last seen.
                    let volumes = last_status
                        .last
                        .as_ref()
                        .map(|s| s.volumes.clone())
                        .unwrap_or_default();
                    publish(&config, volumes, waiting, &mut last_status);
                    wake_at = Some(Instant::now() + PREFLIGHT_RECHECK);
                    false
                }
                Some(desired) => match engine.pass(desired).await {
                    Ok(pass) => {
                        telemetry.last_pass = Some(std::time::SystemTime::now());
                        let judged = judge(&engine, desired, &pass);
                        awaiting_link = judged.status.awaiting_link;
                        linked = pass.observed.links.as_ref().map(|_| {
                            let v = judged.status.volumes.iter();
                            v.filter(|v| v.stable_name.is_some())
                                .map(|v| v.name.clone())
                                .collect()
                        });
                        publish(&config, judged.status.volumes, None, &mut last_status);
                        let following = follow_up_until.is_some_and(|t| Instant::now() < t);
                        let every = if following {
                            poll_every
                        } else {
                            poll_every.max(opts.poll)
                        };
                        poll_every = (every * 2).min(POLL_BACKOFF_CAP.max(opts.poll));
                        wake_at =
                            next_wake(judged.waiting || following, every, engine.next_release());
                        judged.settled
                    }
                    Err(e) => {
                        error!(error = %e, "cannot observe the host; trying again");
                        wake_at = Some(Instant::now() + opts.retry.first);
                        false
                    }
                },
                None => {
                    publish(&config, Vec::new(), None, &mut last_status);
                    true
                }
            };
            let snapshot = Snapshot {
                volumes: last_status
                    .last
                    .as_ref()
                    .map(|s| s.volumes.clone())
                    .unwrap_or_default(),
                actions: engine.action_stats().clone(),
                config_ok: config.state.ok,
                reloads_accepted: telemetry.reloads_accepted,
                reloads_rejected: telemetry.reloads_rejected,
                last_reload: telemetry.last_reload,
                last_pass: telemetry.last_pass,
            };
            metrics.update(metrics_file(&config).as_deref(), &snapshot);
            let names = linked.as_deref().unwrap_or_default();
            if !ready_sent && settled && ask_systemd && !names.is_empty() {
                match device_units_active(names).await {
                    Ok(true) => {}
                    Ok(false) => {
                        settled = false;
                        let soon = Instant::now() + FOLLOW_UP_POLL;
                        wake_at = Some(wake_at.map_or(soon, |t| t.min(soon)));
                        if !told_units {
                            told_units = true;
                            info!("volumes and links ready; waiting for systemd's device units of the links");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot ask systemd about the links' device units; READY=1 goes without");
                        ask_systemd = false;
                        settled = true;
                    }
                }
            }
            if !ready_sent && (settled || started.elapsed() >= opts.ready_deadline) {
                ready_sent = true;
                notify(&[NotifyState::Ready]);
                let elapsed_ms = started.elapsed().as_millis() as u64;
                if settled || awaiting_link.is_empty() {
                    info!(elapsed_ms, "ready");
                } else {
                    // A mount of these from /etc/fstab will fail: udev never made the link
                    // (rule not loaded, udevd busy or stopped, a rule of the host's own that
                    // takes the name).
                    warn!(elapsed_ms, awaiting_link = ?awaiting_link, "ready at the deadline; no /dev/lunkeeper link yet for some volumes");
                }
            }
        }

        let mut timer_woke = false;
        tokio::select! {
            finished = engine.finish_one(), if engine.is_running() => {
                finished?;
                dirty = true;
            }
            changed = watcher.changed() => {
                changed?;
                telemetry.reloaded(reload(&opts, &mut config, &mut engine));
                resync = resync_timer(config.desired.as_ref());
                dirty = true;
            }
            _ = sighup.recv() => {
                telemetry.reloaded(reload(&opts, &mut config, &mut engine));
                resync = resync_timer(config.desired.as_ref());
                dirty = true;
            }
            batch = next_iscsi(&mut iscsi) => {
                match batch {
                    Ok(_) => {
                        dirty = true;
                        follow_up_until = Some(Instant::now() + FOLLOW_UP);
                    }
                    Err(e) => {
                        warn!(error = %e, "iSCSI event socket failed; relying on udev and the resync");
                        iscsi = None;
                    }
                }
            }
            batch = next_udev(&mut udev) => {
                match batch {
                    Ok(events) if events.iter().any(relevant) => {
                        // The kernel passes a grown LUN on but does not rescan: the next
                        // pass has every path of the device's volume re-read its capacity.
                        let resized: Vec<_> =
                            events.iter().filter_map(capacity_changed).collect();
                        if !resized.is_empty() {
                            let devices: Vec<String> =
                                resized.iter().map(ToString::to_string).collect();
                            info!(
                                devices = %devices.join(","),
                                "the array reports a changed LUN capacity"
                            );
                            engine.capacity_changed(resized);
                        }
                        dirty = true;
                        follow_up_until = Some(Instant::now() + FOLLOW_UP);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "udev monitor failed; relying on the periodic resync");
                        udev = None;
                    }
                }
            }
            _ = sleep_until(wake_at.unwrap_or_else(far_future)), if wake_at.is_some() => {
                wake_at = None;
                dirty = true;
                timer_woke = true;
            }
            _ = resync.tick() => dirty = true,
            _ = service_watch.tick() => {
                if let Some(desired) = &config.desired {
                    dirty = gate.changed(probe.as_ref(), desired).await;
                }
            }
            _ = sleep_until(next_watchdog.unwrap_or_else(far_future)), if next_watchdog.is_some() => {
                notify(&[NotifyState::Watchdog]);
                next_watchdog = watchdog.map(|w| Instant::now() + w);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        // Something other than the poll timer asked for a look: the next ones come quickly
        // again.
        if dirty && !timer_woke {
            poll_every = FOLLOW_UP_POLL;
        }
    }

    // Attachments stay as they are: a restart adopts them. Steps under way get a moment to
    // finish so no half-written record is left; then they are abandoned.
    notify(&[NotifyState::Stopping]);
    info!("stopping; volumes stay attached");
    let grace = Instant::now() + Duration::from_secs(10);
    while engine.is_running() {
        tokio::select! {
            r = engine.finish_one() => { r?; }
            _ = sleep_until(grace) => { engine.abandon().await; }
        }
    }
    engine.flush().await;
    Ok(())
}

/// How a pass left things.
#[derive(Debug)]
struct Judged {
    status: Status,
    /// Some volume is on its way, or usable but without its /dev/lunkeeper link yet: look
    /// again soon (the link's udev event usually comes first).
    waiting: bool,
    /// Nothing started, nothing running, nothing on its way, every usable volume's link made
    /// (where the udev rule is installed): the first READY=1 may go. A mount of
    /// /dev/lunkeeper/NAME ordered after lunkeeper (remote-fs-pre.target) needs the link,
    /// which udev makes a moment after the map.
    settled: bool,
}

fn judge<H: Host + 'static>(engine: &Engine<H>, desired: &Desired, pass: &Pass) -> Judged {
    let results = engine.results(&pass.plan);
    let status = Status::build(desired, &pass.observed, &results);
    let waiting = pass.waiting(engine.failed()) || !status.awaiting_link.is_empty();
    let settled = pass.started == 0 && !engine.is_running() && !waiting;
    Judged {
        status,
        waiting,
        settled,
    }
}

/// How long systemctl may take to answer about the device units. At boot systemd is busy: one
/// answer took over 2 s in tests/boot. A slower one is asked again, up to READY's deadline.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);

/// systemd's device unit of `/dev/lunkeeper/<name>`, as `systemd-escape --path
/// --suffix=device` names it: `/` becomes `-`, and every byte but `[A-Za-z0-9:_.]` is
/// `\xNN` (a volume name's `-` too).
fn device_unit(name: &str) -> String {
    let mut unit = String::from("dev-lunkeeper-");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') {
            unit.push(char::from(b));
        } else {
            unit.push_str(&format!("\\x{b:02x}"));
        }
    }
    unit.push_str(".device");
    unit
}

/// Whether systemd has every link's device unit active. Under systemd a `_netdev` mount of
/// /dev/lunkeeper/NAME waits for that unit, which becomes active when systemd has processed the
/// udev event that made the link: at boot, with a backlog of events, up to a second after the
/// link is on disk (tests/boot saw 0.8 s under emulation). READY=1 is processed before queued
/// device events, so without this wait remote-fs-pre.target can be reached before the unit.
async fn device_units_active(names: &[String]) -> Result<bool, String> {
    let units: Vec<String> = names.iter().map(|n| device_unit(n)).collect();
    let mut args = vec!["show", "--property=ActiveState", "--value", "--"];
    args.extend(units.iter().map(String::as_str));
    let out = match crate::act::command::run("systemctl", &args, SYSTEMCTL_TIMEOUT).await {
        Ok(out) => out,
        // systemd busy with the boot: not known yet, asked again at the next look.
        Err(crate::act::command::CommandError::Timeout { .. }) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    if !out.success() {
        return Err(format!(
            "systemctl show: exit {:?}: {}",
            out.code,
            out.stderr.trim()
        ));
    }
    Ok(all_active(&out.stdout, units.len()))
}

/// `systemctl show --property=ActiveState --value U1 U2 ...` printed `active` for each unit
/// (one value per unit, units separated by an empty line).
fn all_active(stdout: &str, units: usize) -> bool {
    let states: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    states.len() == units && states.iter().all(|s| s.trim() == "active")
}

/// What the metrics count besides the engine's actions.
#[derive(Debug, Default)]
struct Telemetry {
    reloads_accepted: u64,
    reloads_rejected: u64,
    last_reload: Option<std::time::SystemTime>,
    last_pass: Option<std::time::SystemTime>,
}

impl Telemetry {
    fn reloaded(&mut self, accepted: bool) {
        if accepted {
            self.reloads_accepted += 1;
        } else {
            self.reloads_rejected += 1;
        }
        self.last_reload = Some(std::time::SystemTime::now());
    }
}

/// The metrics file of the configuration in force (the default one before any is).
fn metrics_file(config: &Config) -> Option<PathBuf> {
    match &config.desired {
        Some(d) => d.daemon.metrics_file.clone(),
        None => desired::DaemonSettings::default().metrics_file,
    }
}

/// The configuration in force, and whether the file's current content was accepted.
struct Config {
    desired: Option<Desired>,
    state: ConfigState,
}

impl Config {
    /// The file at start. One that would detach most attached volumes by leaving them out is
    /// not put in force: the daemon touches nothing until the file changes.
    fn load(path: &Path, owned: &Owned) -> Config {
        let refused = |error: String| Config {
            desired: None,
            state: ConfigState {
                path: path.to_path_buf(),
                ok: false,
                error: Some(error),
            },
        };
        match desired::load(path) {
            Ok(d) => match mass_detach::check(&d, owned) {
                Some(m) => {
                    let e = mass_detach_error(&m);
                    error!(error = %e, "configuration refused at start; no volume is touched until it changes");
                    refused(e)
                }
                None => {
                    info!(path = %path.display(), volumes = d.volumes.len(), "configuration loaded");
                    Config {
                        desired: Some(d),
                        state: ConfigState {
                            path: path.to_path_buf(),
                            ok: true,
                            error: None,
                        },
                    }
                }
            },
            Err(e) => {
                error!(error = %e, "configuration rejected; no volume is touched until it is fixed");
                refused(e.to_string())
            }
        }
    }
}

/// Validates the new file and diffs it against the one in force. A file that does not load
/// changes nothing: the last good configuration stays, and the error is logged and published.
/// Returns whether the file was put in force.
fn reload<H: Host + 'static>(
    opts: &DaemonOptions,
    config: &mut Config,
    engine: &mut Engine<H>,
) -> bool {
    notify(&[NotifyState::Reloading]);
    let accepted = match desired::load(&opts.config) {
        Ok(new) => match mass_detach::check(&new, engine.owned()) {
            Some(refused) => {
                let e = mass_detach_error(&refused);
                error!(error = %e, "configuration refused; keeping the last good one, nothing is detached");
                config.state.ok = false;
                config.state.error = Some(e);
                false
            }
            None => {
                accept(config, new, engine);
                true
            }
        },
        Err(e) => {
            error!(error = %e, "configuration rejected; keeping the last good one, nothing is detached");
            config.state.ok = false;
            config.state.error = Some(e.to_string());
            false
        }
    };
    notify(&[NotifyState::Ready]);
    accepted
}

/// The daemon's wording of a tripped mass-detach guard: `--allow-mass-detach` is for `apply`,
/// which does not run beside the daemon.
fn mass_detach_error(refused: &MassDetach) -> String {
    format!(
        "{refused}; the configuration in force stays. If that is what you want, mark them \
         state = \"absent\" in the file (or remove them a few at a time)"
    )
}

/// Puts a new file in force.
fn accept<H: Host + 'static>(config: &mut Config, new: Desired, engine: &mut Engine<H>) {
    let diff = match &config.desired {
        Some(old) => Diff::between(old, &new),
        None => Diff {
            added: new.volumes.iter().map(|v| v.name.to_string()).collect(),
            ..Diff::default()
        },
    };
    if diff.is_empty() {
        info!("configuration reloaded; no volume changed");
    } else {
        info!(added = ?diff.added, removed = ?diff.removed, changed = ?diff.changed, "configuration reloaded");
    }
    engine.reset_volumes(&diff.touched());
    config.desired = Some(new);
    config.state.ok = true;
    config.state.error = None;
}

/// The status last published, and the writer of status.json.
struct Published {
    last: Option<DaemonStatus>,
    /// status.json is written on a thread of its own: a stalled disk under /run must not hold
    /// up the event loop (None: that thread could not start; the file is then not written).
    file: Option<LatestWriter>,
}

impl Published {
    fn new(path: &Path) -> Self {
        let file = LatestWriter::new(path, 0o644, "status file")
            .map_err(|e| warn!(path = %path.display(), error = %e, "cannot start the status file's writer; status.json is not written"))
            .ok();
        Published { last: None, file }
    }
}

fn publish(
    config: &Config,
    volumes: Vec<VolumeStatus>,
    waiting: Option<String>,
    published: &mut Published,
) {
    let last = &mut published.last;
    let status = DaemonStatus {
        schema: crate::status::SCHEMA,
        volumes,
        config: config.state.clone(),
        waiting,
    };
    if last.as_ref() == Some(&status) {
        return;
    }
    log_state_changes(last.as_ref().map(|l| l.volumes.as_slice()), &status.volumes);
    let summary = summarize(&status.volumes);
    let mut line = match &status.config.error {
        None => format!("{summary}; config ok"),
        Some(e) => format!("{summary}; config REJECTED, last good one in force: {e}"),
    };
    if let Some(w) = &status.waiting {
        line = format!("{w}; {line}");
    }
    notify(&[NotifyState::Status(&line)]);
    info!(status = %line, "status");
    match serde_json::to_vec_pretty(&status) {
        Ok(json) => {
            if let Some(file) = &published.file {
                file.write(json);
            }
        }
        Err(e) => warn!(error = %e, "cannot encode the status"),
    }
    *last = Some(status);
}

/// Each volume whose state changed, one entry with its VOLUME (a volume's history in the
/// journal shows it turning degraded and ready again, not only lunkeeper's own actions).
fn log_state_changes(before: Option<&[VolumeStatus]>, now: &[VolumeStatus]) {
    for v in now {
        let was = before.and_then(|b| b.iter().find(|o| o.name == v.name));
        let previous = was.map_or("unknown", |o| o.state.as_str());
        if previous == v.state {
            continue;
        }
        let reason = v.reason.as_deref().unwrap_or("");
        match v.state.as_str() {
            "ready" | "absent" | "pending" => {
                info!(volume = %v.name, state = %v.state, previous, reason, "volume {}", v.state)
            }
            _ => warn!(volume = %v.name, state = %v.state, previous, reason, "volume {}", v.state),
        }
    }
}

/// The daemon's preflight: checked before a pass acts, again on every pass while something is
/// missing, at most every [`PREFLIGHT_FRESH`] while all is there; logged when what is missing
/// changes, never per pass.
#[derive(Debug, Default)]
struct Preflight {
    missing: Vec<Missing>,
    ok_at: Option<Instant>,
}

impl Preflight {
    /// Whether what acting needs has gone or come back since the last check (the pass that
    /// follows checks again and says so in status).
    async fn changed<H: Host>(&mut self, host: &H, desired: &Desired) -> bool {
        let missing = host.preflight(desired).await.err().unwrap_or_default();
        if missing == self.missing {
            if missing.is_empty() {
                self.ok_at = Some(Instant::now());
            }
            return false;
        }
        self.ok_at = None;
        true
    }

    /// `Some("waiting: ...")` while something acting needs is missing.
    async fn check<H: Host>(&mut self, host: &H, desired: &Desired) -> Option<String> {
        let fresh = self.ok_at.is_some_and(|t| t.elapsed() < PREFLIGHT_FRESH);
        if self.missing.is_empty() && fresh {
            return None;
        }
        let missing = host.preflight(desired).await.err().unwrap_or_default();
        self.ok_at = missing.is_empty().then(Instant::now);
        if missing != self.missing {
            if missing.is_empty() {
                info!("everything acting needs is there again; acting");
            } else {
                warn!(missing = %preflight::describe(&missing), "waiting; nothing is acted on until it is there");
            }
            self.missing = missing;
        }
        (!self.missing.is_empty())
            .then(|| format!("waiting: {}", preflight::describe(&self.missing)))
    }
}

fn next_wake(waiting: bool, poll: Duration, release: Option<Instant>) -> Option<Instant> {
    let poll_at = waiting.then(|| Instant::now() + poll);
    match (poll_at, release) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn resync_timer(desired: Option<&Desired>) -> tokio::time::Interval {
    let every = desired
        .map(|d| d.daemon.resync_interval)
        .unwrap_or(Duration::from_secs(300));
    let mut t = tokio::time::interval_at(Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

async fn next_iscsi(events: &mut Option<IscsiEvents>) -> Result<usize, IscsiEventsError> {
    match events {
        Some(e) => e.next_batch().await,
        None => std::future::pending().await,
    }
}

async fn next_udev(
    udev: &mut Option<UdevMonitor>,
) -> Result<Vec<super::udev::UdevEvent>, super::udev::UdevError> {
    match udev {
        Some(m) => m.next_batch().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Half the watchdog period systemd asked for, if it asked.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

fn notify(states: &[NotifyState<'_>]) {
    // Without NOTIFY_SOCKET (not under systemd) this does nothing.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Takes the planner lock `apply` takes too, waiting while an `apply` started before the daemon
/// finishes (its own lifetime lock already keeps new ones out). `None`: stopped while waiting.
async fn planner_lock(
    opts: &DaemonOptions,
    watchdog: Option<Duration>,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) -> Result<Option<HeldLock>, DaemonError> {
    let mut told = false;
    loop {
        if let Some(held) = lock::try_planner_for_daemon(&opts.state_dir, &opts.config)? {
            if told {
                info!("the other planner finished; starting");
            }
            return Ok(Some(held));
        }
        if !told {
            told = true;
            let holder = lock::planner_holder(&opts.state_dir);
            let line = format!("waiting: {holder} holds the planner lock");
            warn!(%holder, "another lunkeeper is planning; waiting for it to finish");
            notify(&[NotifyState::Status(&line)]);
        }
        if watchdog.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
        tokio::select! {
            _ = tokio::time::sleep(PLANNER_LOCK_RETRY) => {}
            _ = sigterm.recv() => return Ok(None),
            _ = sigint.recv() => return Ok(None),
        }
    }
}

/// Whether a daemon holds the lock in `runtime_dir`, i.e. its status file is live.
pub fn daemon_running(runtime_dir: &Path) -> bool {
    lock::daemon_running(runtime_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::sim::SimHost;
    use crate::apply::{apply, ApplyOptions, NoWake};
    use crate::plan::Action;
    use crate::testkit::*;

    fn toml(volumes: &[(&str, u32, &str)]) -> String {
        volumes
            .iter()
            .map(|(name, lun, state)| {
                format!(
                    "[[volume]]\nname = \"{name}\"\ntarget = \"{TARGET_A}\"\n\
                     portals = [\"{P1}\", \"{P2}\"]\nlun = {lun}\nstate = \"{state}\"\n\n"
                )
            })
            .collect()
    }

    fn retry() -> RetryPolicy {
        ApplyOptions::default().retry
    }

    /// Three volumes attached by lunkeeper, recorded in `state`.
    async fn three_attached(sim: &Rc<SimHost>, state: &Path, file: &Path) -> Desired {
        std::fs::write(
            file,
            toml(&[
                ("db0", 0, "present"),
                ("db1", 1, "present"),
                ("big", 300, "present"),
            ]),
        )
        .unwrap();
        let d = desired::load(file).unwrap();
        let store = OwnedStore::new(state);
        let local = tokio::task::LocalSet::new();
        let r = local
            .run_until(apply(
                Rc::clone(sim),
                &d,
                &store,
                &ApplyOptions::default(),
                &mut NoWake,
            ))
            .await
            .unwrap();
        assert!(r.converged, "{:?}", r.volumes);
        d
    }

    fn detached(sim: &SimHost) -> bool {
        sim.lock().log.iter().any(|a| {
            matches!(
                a,
                Action::Logout { .. } | Action::DeleteDevice { .. } | Action::FlushMap { .. }
            )
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_that_drops_most_volumes_keeps_the_previous_configuration() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let (state, file) = (dir.path().join("state"), dir.path().join("volumes.toml"));
        let old = three_attached(&sim, &state, &file).await;
        let opts = DaemonOptions::new(file.clone(), state.clone(), dir.path().join("run"));
        let mut engine = Engine::new(Rc::clone(&sim), OwnedStore::new(&state), retry()).unwrap();
        let mut config = Config::load(&file, engine.owned());
        assert!(config.state.ok);

        std::fs::write(&file, toml(&[("db0", 0, "present")])).unwrap();
        assert!(
            !reload(&opts, &mut config, &mut engine),
            "counted as rejected"
        );
        assert_eq!(
            config.desired.as_ref(),
            Some(&old),
            "the old file stays in force"
        );
        assert!(!config.state.ok);
        let e = config.state.error.clone().unwrap_or_default();
        assert!(e.contains("2 of 3"), "{e}");
        assert!(e.contains("state = \"absent\""), "{e}");
        // The published status line carries it (STATUS= and status.json).
        let path = opts.runtime_dir.join(STATUS_FILE);
        let mut last = Published::new(&path);
        publish(&config, Vec::new(), None, &mut last);
        let published = written_eventually(&path);
        assert!(published.contains("2 of 3"), "{published}");

        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let desired = config.desired.clone().unwrap();
                engine.pass(&desired).await.unwrap();
                while engine.finish_one().await.unwrap() {}
            })
            .await;
        assert!(!detached(&sim), "{:?}", sim.lock().log);

        // Said explicitly, the same change is put in force.
        std::fs::write(
            &file,
            toml(&[
                ("db0", 0, "present"),
                ("db1", 1, "absent"),
                ("big", 300, "absent"),
            ]),
        )
        .unwrap();
        assert!(
            reload(&opts, &mut config, &mut engine),
            "counted as accepted"
        );
        assert!(config.state.ok, "{:?}", config.state.error);
        assert_eq!(config.desired.as_ref().map(|d| d.volumes.len()), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_daemon_started_on_a_file_that_drops_most_volumes_touches_nothing() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let (state, file) = (dir.path().join("state"), dir.path().join("volumes.toml"));
        three_attached(&sim, &state, &file).await;
        std::fs::write(&file, toml(&[("big", 300, "present")])).unwrap();
        let engine = Engine::new(Rc::clone(&sim), OwnedStore::new(&state), retry()).unwrap();
        let config = Config::load(&file, engine.owned());
        assert!(config.desired.is_none(), "nothing is put in force");
        let e = config.state.error.unwrap_or_default();
        assert!(e.contains("2 of 3") && e.contains("db0, db1"), "{e}");
    }

    /// The config directory gone (an unmount, a botched deploy): the reload it causes fails
    /// and the last good configuration stays in force; when it is back, it is read again.
    #[tokio::test(start_paused = true)]
    async fn a_config_directory_that_disappears_keeps_the_last_good_configuration() {
        let sim = Rc::new(network());
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let (state, file) = (dir.path().join("state"), etc.join("volumes.toml"));
        let old = three_attached(&sim, &state, &file).await;
        let opts = DaemonOptions::new(file.clone(), state.clone(), dir.path().join("run"));
        let mut engine = Engine::new(Rc::clone(&sim), OwnedStore::new(&state), retry()).unwrap();
        let mut config = Config::load(&file, engine.owned());
        std::fs::remove_dir_all(&etc).unwrap();
        reload(&opts, &mut config, &mut engine);
        assert_eq!(config.desired.as_ref(), Some(&old));
        assert!(!config.state.ok);
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(&file, toml(&[("db0", 0, "present"), ("db1", 1, "present")])).unwrap();
        reload(&opts, &mut config, &mut engine);
        assert!(config.state.ok, "{:?}", config.state.error);
        assert_eq!(config.desired.map(|d| d.volumes.len()), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn preflight_waits_rechecks_while_missing_and_is_cached_while_ok() {
        let sim = network();
        sim.lock().missing = vec![Missing::Iscsid];
        let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
        let mut gate = Preflight::default();
        let w = gate.check(&sim, &d).await.expect("waiting");
        assert_eq!(
            w,
            "waiting: iscsid is not running (run `systemctl start iscsid`)"
        );
        assert!(gate.check(&sim, &d).await.is_some());
        assert_eq!(
            sim.lock().preflights,
            2,
            "checked again on every pass while missing"
        );
        sim.lock().missing.clear();
        assert_eq!(gate.check(&sim, &d).await, None);
        assert_eq!(gate.check(&sim, &d).await, None);
        assert_eq!(
            sim.lock().preflights,
            3,
            "not re-checked on every pass while ok"
        );
        tokio::time::advance(PREFLIGHT_FRESH).await;
        sim.lock().missing = vec![Missing::Udevd];
        assert!(gate
            .check(&sim, &d)
            .await
            .is_some_and(|w| w.contains("udevd")));
    }

    /// Runs daemon passes on the simulated host until the first that may send READY=1; the
    /// status of each pass.
    async fn passes_until_settled(sim: &Rc<SimHost>, d: &Desired) -> Vec<Status> {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::new(Rc::clone(sim), OwnedStore::new(dir.path()), retry())
            .unwrap()
            .without_log();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let pass = engine.pass(d).await.unwrap();
                    let judged = judge(&engine, d, &pass);
                    let mut status = judged.status;
                    if judged.settled {
                        assert!(!judged.waiting);
                        seen.push(status);
                        return seen;
                    }
                    assert!(
                        judged.waiting || engine.is_running() || pass.started > 0,
                        "not settled, so it must look again: {status:?}"
                    );
                    while engine.finish_one().await.unwrap() {}
                    // As the loop does: look again after the poll, or when a hold ends.
                    let poll =
                        DaemonOptions::new(PathBuf::new(), PathBuf::new(), PathBuf::new()).poll;
                    if let Some(at) = next_wake(true, poll, engine.next_release()) {
                        sleep_until(at).await;
                    }
                    status.awaiting_link.sort();
                    seen.push(status);
                }
                panic!("never settled: {:?}", seen.last());
            })
            .await
    }

    /// The first READY=1 waits for udev's /dev/lunkeeper links where the rule is installed
    /// (a `_netdev` mount of one is ordered after lunkeeper), and not where it is not.
    #[tokio::test(start_paused = true)]
    async fn ready_waits_for_the_udev_links_only_where_the_rule_is_installed() {
        let d = desired(vec![
            volume("db", TARGET_A, &[P1, P2], 0),
            volume("logs", TARGET_A, &[P1, P2], 1),
        ]);

        let without = Rc::new(network());
        let plain = passes_until_settled(&without, &d).await;
        let last = plain.last().unwrap();
        assert!(last.as_wanted(), "{last:?}");
        assert!(plain.iter().all(|s| s.awaiting_link.is_empty()));

        let with = Rc::new(network());
        with.lock().udev_rule = Some(4);
        let linked = passes_until_settled(&with, &d).await;
        let last = linked.last().unwrap();
        assert!(last.as_wanted(), "{last:?}");
        assert!(last.awaiting_link.is_empty());
        assert!(
            linked.len() > plain.len(),
            "settled only after the links: {} passes, {} without the rule",
            linked.len(),
            plain.len()
        );
        // Before it settled, some pass had both maps but not yet the links: pending then.
        let waited = linked
            .iter()
            .find(|s| s.awaiting_link.len() == 2)
            .expect("a pass with the maps but no links");
        for v in &waited.volumes {
            assert_eq!(v.state, "pending", "{v:?}");
            assert!(v.device.is_some() && v.stable_name.is_none(), "{v:?}");
        }
        let links = with.lock().links.clone();
        for (name, device) in [("db", 0), ("logs", 1)] {
            let map = with.snapshot().maps[device].dev.name.clone();
            assert_eq!(links.get(name), Some(&map), "{links:?}");
        }
    }

    #[test]
    fn device_units_are_named_as_systemd_escape_names_them() {
        assert_eq!(device_unit("db"), "dev-lunkeeper-db.device");
        assert_eq!(
            device_unit("db-1.data_x"),
            "dev-lunkeeper-db\\x2d1.data_x.device"
        );
        assert!(all_active("active\n\nactive\n", 2));
        assert!(!all_active("active\n\ninactive\n", 2));
        assert!(!all_active("active\n", 2), "a unit missing from the answer");
        assert!(!all_active("", 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_goes_between_passes_is_noticed_and_named_at_once() {
        let sim = network();
        let d = desired(vec![volume("db", TARGET_A, &[P1], 0)]);
        let mut gate = Preflight::default();
        assert_eq!(gate.check(&sim, &d).await, None);
        assert!(!gate.changed(&sim, &d).await, "nothing went");
        // udevd killed: no event comes, the watch sees it, and the very next pass names
        // it although the last check is still fresh.
        sim.lock().missing = vec![Missing::Udevd];
        assert!(gate.changed(&sim, &d).await);
        assert!(gate
            .check(&sim, &d)
            .await
            .is_some_and(|w| w.contains("udevd")));
        assert!(
            !gate.changed(&sim, &d).await,
            "still the same missing piece"
        );
        sim.lock().missing.clear();
        assert!(gate.changed(&sim, &d).await, "back again");
        assert_eq!(gate.check(&sim, &d).await, None);
    }

    /// The status file's content once its writer thread has written it.
    fn written_eventually(path: &Path) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never written",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn waiting_is_published_in_status_and_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DaemonOptions::new(
            dir.path().join("volumes.toml"),
            dir.path().join("state"),
            dir.path().join("run"),
        );
        let config = Config::load(&opts.config, &Owned::default());
        std::fs::create_dir_all(&opts.runtime_dir).unwrap();
        let path = opts.runtime_dir.join(STATUS_FILE);
        let mut last = Published::new(&path);
        let w = "waiting: iscsid is not running (run `systemctl start iscsid`)".to_string();
        publish(&config, Vec::new(), Some(w.clone()), &mut last);
        let text = written_eventually(&path);
        let status: DaemonStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(status.waiting, Some(w));
    }

    #[test]
    fn a_volume_s_state_changes_are_logged_under_its_name() {
        use crate::journal::{Captured, JournalLayer};
        use tracing_subscriber::layer::SubscriberExt;
        let v = |state: &str| VolumeStatus {
            name: "db".into(),
            state: state.into(),
            stable_name: None,
            size_bytes: None,
            device: None,
            wwid: None,
            paths: vec![],
            reason: (state != "ready").then(|| "1 of 2 paths down".to_string()),
        };
        let sink = Captured::default();
        let subscriber = tracing_subscriber::registry().with(JournalLayer::new(sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            log_state_changes(None, &[v("ready")]);
            log_state_changes(Some(&[v("ready")]), &[v("ready")]);
            log_state_changes(Some(&[v("ready")]), &[v("degraded")]);
        });
        let entries = sink.entries();
        assert_eq!(entries.len(), 2, "an unchanged state is not logged again");
        let degraded = &entries[1];
        let get = |n: &str| {
            degraded
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("VOLUME"), Some("db"));
        assert_eq!(get("STATE"), Some("degraded"));
        assert_eq!(get("PREVIOUS"), Some("ready"));
        assert_eq!(get("PRIORITY"), Some("4"));
    }
}
