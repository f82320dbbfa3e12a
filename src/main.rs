//! The `lunkeeper` command: argument parsing, logging set-up and exit codes. Everything else
//! lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use lunkeeper::act::{Host, RealHost, RealHostConfig};
use lunkeeper::apply::{self, ApplyOptions, VolumeResult};
use lunkeeper::daemon::udev::UdevMonitor;
use lunkeeper::daemon::{DaemonOptions, DaemonStatus};
use lunkeeper::desired::{self, Desired};
use lunkeeper::owned::OwnedStore;
use lunkeeper::plan;
use lunkeeper::plural::count;
use lunkeeper::status::Status;
use lunkeeper::{out, outln};

/// Exit codes: 0 done (or converged), 1 not converged, 2 invalid configuration, 3 could not run,
/// 64 usage error, 74 stdout unwritable. Documented in README.md and lunkeeper(8): [`EXIT_CODES`].
const NOT_CONVERGED: u8 = 1;
const BAD_CONFIG: u8 = 2;
const CANNOT_RUN: u8 = 3;
/// sysexits' EX_USAGE: kept apart from BAD_CONFIG so a script can tell a typo in its own
/// command line from a broken desired-state file.
const USAGE: u8 = 64;
const STDOUT_FAILED: u8 = lunkeeper::stdout::IO_ERROR;

/// Every exit code and its meaning, for the man page.
const EXIT_CODES: &[(u8, &str)] = &[
    (0, "Done: the file is valid (validate), the plan was shown (plan), every volume is where the file says (apply, status), the host has no problem (doctor)."),
    (NOT_CONVERGED, "apply: not every volume reached the state the file asks for within the timeout, or the mass-detach guard refused the change. status: some volume is not as the file wants it (not ready, or not yet gone), or the daemon rejected the file's current content. resize: a volume was not resized (its paths disagree on the size, the LUN shrank, or it is not attached). doctor: a problem was found."),
    (BAD_CONFIG, "The desired-state file is invalid or unreadable; nothing was changed."),
    (CANNOT_RUN, "lunkeeper could not run: another lunkeeper plans on this host, the host could not be read (status as a non-root user without the daemon running), or an action failed outright."),
    (USAGE, "Usage error: an unknown subcommand or option, a bad option value, or a volume name the file does not have (resize)."),
    (STDOUT_FAILED, "The output could not be written (for example a full disk behind a redirection). A reader that closes the pipe early is not an error."),
];

#[derive(Parser)]
#[command(
    version,
    about = "Keeps this host's iSCSI volumes attached exactly as a declarative file says"
)]
struct Cli {
    /// The desired-state file.
    #[arg(
        long,
        global = true,
        env = "LUNKEEPER_CONFIG",
        default_value = "/etc/lunkeeper/volumes.toml"
    )]
    config: PathBuf,
    /// Where lunkeeper records what it owns.
    #[arg(
        long,
        global = true,
        env = "LUNKEEPER_STATE_DIR",
        default_value = "/var/lib/lunkeeper"
    )]
    state_dir: PathBuf,
    /// Where the daemon keeps status.json and its lock.
    #[arg(
        long,
        global = true,
        env = "LUNKEEPER_RUNTIME_DIR",
        default_value = "/run/lunkeeper"
    )]
    runtime_dir: PathBuf,
    /// Root of the file system to read sysfs, /dev and /proc under (tests only).
    #[arg(long, global = true, default_value = "/", hide = true)]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the desired-state file and exit (2 if it is invalid).
    Validate,
    /// Show what the next pass would do, without doing it.
    Plan {
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Converge the host to the file; exit 0 only when every volume is where the file says.
    Apply {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Print the resulting status as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Detach volumes left out of the file even when they are most of those attached
        /// (this run only).
        #[arg(long)]
        allow_mass_detach: bool,
    },
    /// Show how each volume stands (from the daemon while it runs). Exits 0 when every volume
    /// is as the file wants it, 1 when one is not (or the daemon rejected the file), 3 when
    /// the status cannot be read.
    Status {
        /// Print the status as JSON (docs/status-schema.md) instead of the table.
        #[arg(long)]
        json: bool,
        /// Print each reason whole instead of one short line.
        #[arg(long)]
        wide: bool,
    },
    /// Make the host see volumes the array grew (safe while the daemon runs).
    ///
    /// Rescans every path of each volume, waits until all agree on the new size, then grows
    /// the multipath map (`multipathd resize map`). It takes no lock and changes no record, so
    /// it runs beside the daemon. Paths that disagree leave the map as it is; a LUN that
    /// shrank is refused. Growing the file system on the volume stays yours (resize2fs,
    /// xfs_growfs, pvresize). Exits 0 when every volume has its new size (or already had it),
    /// 1 otherwise.
    Resize {
        /// The volumes to resize, by their name in the file.
        #[arg(required = true, value_name = "NAME")]
        volumes: Vec<String>,
        /// Give up after this many seconds on paths that still disagree on the size.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Print the result as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run as a daemon: keep the host converged, reacting to udev events and config edits.
    Run,
    /// Check the host: kernel modules, iscsid, multipathd and find_multipaths, udevd, the
    /// initiator name, the udev rule, node records that log in at boot, the unit. Prints the
    /// command that fixes each problem; exits 0 when there is none, 1 otherwise.
    Doctor,
    /// Print a shell completion script (for packaging).
    #[command(hide = true)]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the man pages lunkeeper(8) and lunkeeper-SUBCOMMAND(8) into a directory (for
    /// packaging).
    #[command(hide = true)]
    Man {
        /// The directory to write them into; it must exist.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let code = run_command(&cli);
    match lunkeeper::stdout::finish() {
        None => code,
        Some(message) => {
            eprintln!("lunkeeper: {message}");
            ExitCode::from(STDOUT_FAILED)
        }
    }
}

/// `--help` and `--version` are not errors; everything else clap refuses is a usage error.
fn usage_error(e: &clap::Error) -> ExitCode {
    let code = if e.use_stderr() { USAGE } else { 0 };
    match e.print() {
        Ok(()) => ExitCode::from(code),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(code),
        Err(error) => {
            eprintln!("lunkeeper: cannot write to stdout: {error}");
            ExitCode::from(STDOUT_FAILED)
        }
    }
}

fn run_command(cli: &Cli) -> ExitCode {
    match &cli.command {
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "lunkeeper", &mut text);
            out!("{}", String::from_utf8_lossy(&text));
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            return match write_man_pages(dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "lunkeeper: {}: cannot write the man pages: {e}",
                        dir.display()
                    );
                    ExitCode::from(CANNOT_RUN)
                }
            };
        }
        _ => {}
    }
    init_logging(&cli.command);

    if let Command::Run = cli.command {
        return run_daemon(cli);
    }
    if let Command::Doctor = cli.command {
        return doctor(cli);
    }
    if let Command::Status { json, wide } = cli.command {
        if lunkeeper::daemon::daemon_running(&cli.runtime_dir) {
            return daemon_status(&cli.runtime_dir, json, wide);
        }
    }
    let desired = match desired::load(&cli.config) {
        Ok(d) => d,
        Err(desired::ConfigError::Read { path, error })
            if matches!(cli.command, Command::Status { .. })
                && error.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            eprintln!("lunkeeper: {}: {error}; {NEEDS_ROOT}", path.display());
            return ExitCode::from(CANNOT_RUN);
        }
        Err(e) => {
            eprintln!("lunkeeper: invalid configuration: {e}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    if let Command::Validate = cli.command {
        // What the file alone cannot say: secret files usable and private, sessions agreed on.
        let text = match std::fs::read_to_string(&cli.config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("lunkeeper: {}: cannot read: {e}", cli.config.display());
                return ExitCode::from(BAD_CONFIG);
            }
        };
        let findings = lunkeeper::validate::check(&desired, &text);
        if !findings.is_empty() {
            for e in &findings {
                eprintln!("lunkeeper: invalid configuration: {e}");
            }
            return ExitCode::from(BAD_CONFIG);
        }
        if desired.volumes.is_empty() {
            outln!(
                "{}: ok, no volumes declared (volumes = \"none\"): nothing to manage yet",
                cli.config.display()
            );
        } else {
            outln!(
                "{}: ok, {}",
                cli.config.display(),
                count(desired.volumes.len(), "volume")
            );
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let local = tokio::task::LocalSet::new();
    let result = runtime.block_on(local.run_until(run(cli, &desired)));
    drop(local);
    runtime.shutdown_timeout(SHUTDOWN_WAIT);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lunkeeper: {e:#}");
            ExitCode::from(CANNOT_RUN)
        }
    }
}

/// How long the end of a run waits for blocking threads still running (an observation that
/// a stuck device holds up); dropping a runtime would wait for them without limit. Threads
/// stuck in the kernel past their deadline are detached and not waited for at all.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

async fn run(cli: &Cli, desired: &Desired) -> anyhow::Result<ExitCode> {
    let host = Rc::new(RealHost::new(RealHostConfig {
        root: cli.root.clone(),
        ..RealHostConfig::default()
    }));
    let store = OwnedStore::new(&cli.state_dir);
    match cli.command {
        Command::Validate
        | Command::Run
        | Command::Doctor
        | Command::Completions { .. }
        | Command::Man { .. } => Ok(ExitCode::SUCCESS),
        Command::Plan { json } => {
            let observed = host.observe(desired).await?;
            let owned = store.load()?;
            let plan = plan::plan(desired, &observed, &owned);
            if json {
                let versioned = lunkeeper::status::Versioned::new(&plan);
                outln!("{}", serde_json::to_string_pretty(&versioned)?);
            } else {
                print_plan(&plan);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, wide } => {
            let (observed, owned) = match observe_for_status(host.as_ref(), desired, &store).await {
                Ok(seen) => seen,
                Err(e) if permission_denied(&e) => {
                    eprintln!("lunkeeper: {e}; {NEEDS_ROOT}");
                    return Ok(ExitCode::from(CANNOT_RUN));
                }
                Err(e) => return Err(e),
            };
            let plan = plan::plan(desired, &observed, &owned);
            let results = plan
                .volumes
                .into_iter()
                .map(|(name, verdict)| {
                    let r = VolumeResult {
                        verdict,
                        error: None,
                        failed: false,
                    };
                    (name, r)
                })
                .collect();
            let status = Status::build(desired, &observed, &results);
            print_status(&status, json, wide)?;
            Ok(status_code(status.as_wanted()))
        }
        Command::Resize {
            ref volumes,
            timeout,
            json,
        } => resize(host.as_ref(), desired, &store, volumes, timeout, json).await,
        Command::Apply {
            timeout,
            json,
            allow_mass_detach,
        } => {
            // One planner per host: refused while the daemon runs (see src/lock.rs).
            let _lock = lunkeeper::lock::for_apply(&cli.state_dir, &cli.runtime_dir)?;
            tracing::debug!("planner lock taken");
            host.sweep_leftovers().await;
            tracing::debug!("node database swept");
            // Subscribed before the first look, so no change after it goes unnoticed.
            let mut udev = match UdevMonitor::new() {
                Ok(monitor) => Some(monitor),
                Err(error) => {
                    tracing::warn!(%error, "no udev events; polling instead");
                    None
                }
            };
            let defaults = ApplyOptions::default();
            let opts = ApplyOptions {
                timeout: Duration::from_secs(timeout),
                poll: if udev.is_some() {
                    Duration::from_millis(500)
                } else {
                    defaults.poll
                },
                allow_mass_detach,
                ..defaults
            };
            let report =
                match apply::apply(Rc::clone(&host), desired, &store, &opts, &mut udev).await {
                    Ok(report) => report,
                    Err(e @ apply::ApplyError::MassDetach(_)) => {
                        eprintln!("lunkeeper: {e}");
                        return Ok(ExitCode::from(NOT_CONVERGED));
                    }
                    Err(e) => return Err(e.into()),
                };
            let status = Status::build(desired, &report.observed, &report.volumes);
            tracing::debug!("printing the report");
            if !json {
                let changed = report
                    .executed
                    .iter()
                    .filter(|e| e.changed && !e.action.is_bookkeeping())
                    .count();
                outln!("{} taken", count(changed, "action"));
                for note in &report.notes {
                    outln!("note: {note}");
                }
            }
            print_status(&status, json, false)?;
            if report.converged {
                Ok(ExitCode::SUCCESS)
            } else {
                if !json {
                    eprintln!("lunkeeper: not converged: {}", status.summary());
                }
                Ok(ExitCode::from(NOT_CONVERGED))
            }
        }
    }
}

/// `lunkeeper resize`: no planner lock (it only rescans and resizes maps, which are
/// idempotent; see `lunkeeper::apply::resize`), so it works beside the daemon.
async fn resize(
    host: &RealHost,
    desired: &Desired,
    store: &OwnedStore,
    volumes: &[String],
    timeout: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use lunkeeper::apply::resize::{self, ResizeError, ResizeOptions};
    let owned = store.load()?;
    let opts = ResizeOptions {
        timeout: Duration::from_secs(timeout),
        ..ResizeOptions::default()
    };
    let report = match resize::resize(host, desired, &owned, volumes, &opts).await {
        Ok(report) => report,
        Err(e @ ResizeError::Unknown(_)) => {
            eprintln!("lunkeeper: {e} ({})", cli_config_hint(desired));
            return Ok(ExitCode::from(USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    let ok = report.volumes.values().all(|r| r.is_ok());
    if json {
        let versioned = lunkeeper::status::Versioned::new(&report);
        outln!("{}", serde_json::to_string_pretty(&versioned)?);
    } else {
        for (name, result) in &report.volumes {
            let device = report
                .status
                .iter()
                .find(|s| &s.name == name)
                .and_then(|s| s.device.clone());
            match (result, device) {
                (resize::Resized::Grown { .. }, Some(device)) => outln!(
                    "{name}: {result} ({device}); grow the file system on it yourself \
                     (resize2fs, xfs_growfs, pvresize)"
                ),
                _ => outln!("{name}: {result}"),
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_CONVERGED)
    })
}

fn cli_config_hint(desired: &Desired) -> String {
    format!(
        "{} names {}",
        desired.source.display(),
        count(desired.volumes.len(), "volume")
    )
}

fn run_daemon(cli: &Cli) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let host = Rc::new(RealHost::new(RealHostConfig {
        root: cli.root.clone(),
        ..RealHostConfig::default()
    }));
    let opts = DaemonOptions::new(
        cli.config.clone(),
        cli.state_dir.clone(),
        cli.runtime_dir.clone(),
    );
    let local = tokio::task::LocalSet::new();
    let result = runtime.block_on(local.run_until(async {
        host.sweep_leftovers().await;
        lunkeeper::daemon::run(host, opts).await
    }));
    drop(local);
    runtime.shutdown_timeout(SHUTDOWN_WAIT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lunkeeper: {e}");
            ExitCode::from(CANNOT_RUN)
        }
    }
}

/// `lunkeeper doctor`: every finding, with the fix of each problem; exit 1 on any problem.
/// An unreadable or invalid file is a problem too, and the checks that need it are skipped.
fn doctor(cli: &Cli) -> ExitCode {
    use lunkeeper::doctor::{self, DoctorConfig, Finding, Severity, Wants};
    let (wants, config_finding) = match desired::load(&cli.config) {
        Ok(d) => (
            Some(Wants::of(&d)),
            Finding {
                severity: Severity::Ok,
                what: format!("{}: {} volumes", cli.config.display(), d.volumes.len()),
                fix: None,
            },
        ),
        Err(e) => (
            None,
            Finding {
                severity: Severity::Problem,
                what: format!("{e}; the checks of managed targets are skipped"),
                fix: Some(format!(
                    "lunkeeper validate --config {}",
                    cli.config.display()
                )),
            },
        ),
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let cfg = DoctorConfig {
        root: cli.root.clone(),
        ..DoctorConfig::default()
    };
    let mut findings = vec![config_finding];
    findings.extend(runtime.block_on(doctor::run(&cfg, wants.as_ref())));
    runtime.shutdown_timeout(SHUTDOWN_WAIT);
    for f in &findings {
        outln!("{f}");
    }
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    if problems == 0 {
        outln!("no problem found");
        ExitCode::SUCCESS
    } else {
        outln!("{} found", count(problems, "problem"));
        ExitCode::from(NOT_CONVERGED)
    }
}

/// What a user who may not read the host's state is told (the daemon's status.json is
/// world-readable; sysfs, /etc/lunkeeper and /var/lib/lunkeeper may not be).
const NEEDS_ROOT: &str = "without the daemon running, `lunkeeper status` reads the host's \
     state itself and needs root (run it as root, or start the daemon with `systemctl start \
     lunkeeper`: any user can read its status)";

/// Exit code of `status`: 0 when every volume is as the file wants it, 1 otherwise.
fn status_code(as_wanted: bool) -> ExitCode {
    if as_wanted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_CONVERGED)
    }
}

/// What `status` reads when no daemon runs: the host and the ownership records.
async fn observe_for_status(
    host: &RealHost,
    desired: &Desired,
    store: &OwnedStore,
) -> anyhow::Result<(lunkeeper::observe::Observed, lunkeeper::owned::Owned)> {
    let observed = host.observe(desired).await?;
    let owned = store.load()?;
    Ok((observed, owned))
}

/// Whether an error comes from a file this user may not read.
fn permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

/// The daemon's own view, so `status` agrees with it (including a rejected config).
fn daemon_status(runtime_dir: &Path, json: bool, wide: bool) -> ExitCode {
    let path = runtime_dir.join(lunkeeper::daemon::STATUS_FILE);
    let status: DaemonStatus = match std::fs::read(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "{e}; it is written mode 0644 in a 0755 directory, so check the modes of {} \
                 and of the file",
                runtime_dir.display()
            ),
            _ => e.to_string(),
        })
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "lunkeeper: the daemon runs but {} is unreadable: {e}",
                path.display()
            );
            return ExitCode::from(CANNOT_RUN);
        }
    };
    let code = status_code(status.config.ok && lunkeeper::status::all_as_wanted(&status.volumes));
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(s) => outln!("{s}"),
            Err(e) => {
                eprintln!("lunkeeper: {e}");
                return ExitCode::from(CANNOT_RUN);
            }
        }
        return code;
    }
    if let Some(e) = &status.config.error {
        outln!("config REJECTED (the last good one is in force): {e}");
    }
    if let Some(w) = &status.waiting {
        outln!("{w}");
    }
    match print_status(
        &Status {
            schema: status.schema,
            volumes: status.volumes,
            awaiting_link: Vec::new(),
        },
        false,
        wide,
    ) {
        Ok(()) => code,
        Err(e) => {
            eprintln!("lunkeeper: {e}");
            ExitCode::from(CANNOT_RUN)
        }
    }
}

/// Logging: every change to the host at info, which is the default for `apply` and the daemon
/// (`status`, `plan` and `validate` print their answer and log only warnings). Under systemd
/// (stderr is the journal, see `journal::stderr_is_journal`) entries go to journald with native
/// fields (VOLUME, TARGET, PORTAL, WWID, ACTION, RESULT, ...); otherwise readable text on stderr.
fn init_logging(command: &Command) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default_level = if matches!(command, Command::Apply { .. } | Command::Run) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LUNKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    if lunkeeper::journal::stderr_is_journal() {
        let socket = Path::new(lunkeeper::journal::JOURNAL_SOCKET);
        if let Ok(sink) = lunkeeper::journal::Socket::connect(socket) {
            tracing_subscriber::registry()
                .with(filter)
                .with(lunkeeper::journal::JournalLayer::new(sink))
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// One thread: lanes are local tasks; observations go to tokio's blocking pool, and calls that
/// can block in the kernel to detached threads under a deadline (`act::offload`).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("lunkeeper: cannot start the runtime: {e}");
            ExitCode::from(CANNOT_RUN)
        })
}

fn print_plan(plan: &plan::Plan) {
    if plan.is_empty() {
        outln!("nothing to do");
    }
    for lane in &plan.lanes {
        let subject = match &lane.subject {
            plan::Subject::Volume(v) => format!("volume {v}"),
            plan::Subject::Session(s) => format!("session {s}"),
        };
        outln!("{subject}:");
        for a in &lane.actions {
            outln!("  - {a}");
        }
    }
    for (name, verdict) in &plan.volumes {
        match verdict.reason() {
            Some(r) => outln!("{name}: {} ({r})", verdict.name()),
            None => outln!("{name}: {}", verdict.name()),
        }
    }
    for note in &plan.notes {
        outln!("note: {note}");
    }
}

fn print_status(status: &Status, json: bool, wide: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    out!("{}", lunkeeper::status::render(&status.volumes, wide));
    outln!("{}", status.summary());
    Ok(())
}

/// lunkeeper(8) with the sections clap cannot know (exit status, files, environment), and one
/// page per visible subcommand, all in section 8 since lunkeeper administers the host.
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let page = |cmd: clap::Command| {
        clap_mangen::Man::new(cmd)
            .section("8")
            .manual("System Administration")
    };
    let main = page(cli.clone());
    let mut text = Vec::new();
    main.render_title(&mut text)?;
    main.render_name_section(&mut text)?;
    main.render_synopsis_section(&mut text)?;
    main.render_description_section(&mut text)?;
    main.render_options_section(&mut text)?;
    main.render_subcommands_section(&mut text)?;
    text.extend_from_slice(man_extra_sections(&cli).as_bytes());
    main.render_version_section(&mut text)?;
    std::fs::write(dir.join(main.get_filename()), text)?;
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub = sub
            .clone()
            .after_help("See lunkeeper(8) for exit codes and files.");
        page(sub).generate_to(dir)?;
    }
    Ok(())
}

fn man_extra_sections(cli: &clap::Command) -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in EXIT_CODES {
        roff.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff_escape(meaning)));
    }
    roff.push_str(
        ".SH FILES\n\
         .TP\n/etc/lunkeeper/volumes.toml\nThe desired-state file; see \\fBlunkeeper-volumes.toml\\fR(5).\n\
         .TP\n/var/lib/lunkeeper\nWhat lunkeeper attached and therefore owns; removed on purge.\n\
         .TP\n/run/lunkeeper\nThe daemon's status.json and lock.\n\
         .TP\n/usr/share/doc/lunkeeper/examples/volumes.example.toml\nA commented example.\n\
         .SH ENVIRONMENT\n",
    );
    for arg in cli.get_arguments() {
        if let (Some(env), false) = (arg.get_env(), arg.is_hide_set()) {
            roff.push_str(&format!(
                ".TP\n\\fB{}\\fR\nThe same as \\fB\\-\\-{}\\fR.\n",
                env.to_string_lossy(),
                arg.get_long().unwrap_or_default()
            ));
        }
    }
    roff.push_str(
        ".TP\n\\fBLUNKEEPER_LOG\\fR\nA tracing filter for the log on stderr \
         (for example \\fBinfo\\fR or \\fBlunkeeper=debug\\fR).\n\
         .SH \"SEE ALSO\"\n\\fBlunkeeper-volumes.toml\\fR(5), \\fBiscsiadm\\fR(8), \
         \\fBmultipathd\\fR(8), \\fBsystemctl\\fR(1)\n",
    );
    roff
}

/// Text for a roff paragraph: a backslash or a leading dot or quote would be read as markup.
fn roff_escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option and argument of every subcommand explains itself in --help.
    #[test]
    fn every_option_has_help() {
        fn check(cmd: &clap::Command, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {}", cmd.get_name(), arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{} (subcommand)", sub.get_name()));
                }
                check(sub, missing);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        check(&cli, &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }

    #[test]
    fn exit_codes_are_distinct() {
        let mut codes: Vec<u8> = EXIT_CODES.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), EXIT_CODES.len());
        assert_ne!(USAGE, BAD_CONFIG);
    }
}
