//! Scale without a VM (issue 4, item 5): one steady-state observe + plan pass over synthetic
//! hosts of 100, 1,000 and 10,000 paths, timed and weighed, with how the cost grows per step.
//!
//! ```sh
//! cargo bench --bench scale
//! ```
//!
//! Each host is a [`FixtureTree`] laid out as the kernel lays out sysfs: targets with two
//! portals each (one session per portal), [`LUNS_PER_TARGET`] LUNs per target seen through
//! both sessions, every LUN a two-path multipath map, so paths = sessions × LUNs per session
//! and maps = paths / 2. Node records, `/etc/multipath/wwids`, lunkeeper's udev name mappings
//! and mountinfo are written too, so observe reads everything it reads on a real host. The
//! desired file lists every LUN as a present volume and the ownership records are filled as
//! after an apply, so the plan is the steady state: no action, every volume ready. The bench
//! asserts that, so what it times is the pass a daemon makes on every resync of a converged
//! host.
//!
//! Timing: the tree is built once per size, outside the timed part; one warm-up pass, then
//! [`REPEATS`] passes, each timed as observe, plan and their sum (min and median printed).
//! Memory: `VmHWM` of `/proc/self/status`, the process-wide high-water mark, read before and
//! after the passes of each size (sizes run in increasing order, so the delta is what the
//! larger pass added); and, where the kernel allows resetting it (`5` to
//! `/proc/self/clear_refs`), the peak of one pass above the resident set it started from.
//!
//! Run without `--bench` (as `cargo test --benches` does) it does the smallest size only.
//! `LUNKEEPER_BENCH_SIZES=10000` picks the sizes (increasing; for profiling one of them). The
//! trees go to `/dev/shm` (tmpfs, in memory as sysfs is), or where `TMPDIR` says when it is set.

// A benchmark report for a person at a terminal: a failed stdout may panic here.
#![allow(clippy::disallowed_macros)]

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lunkeeper::desired::{self, Desired, Lun};
use lunkeeper::observe::fixture::{sd_name, FixtureTree};
use lunkeeper::observe::names::NAMES_DIR;
use lunkeeper::observe::{self, BlockDev, Observed, Wwid};
use lunkeeper::owned::{Owned, OwnedVolume, SessionKey};
use lunkeeper::plan::{self, Plan, Verdict};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Paths per host, in increasing order (the memory deltas rely on it).
const SIZES: [usize; 3] = [100, 1_000, 10_000];
/// Sessions per target: one per portal.
const PORTALS_PER_TARGET: usize = 2;
/// LUNs each target exports (5 divides every size evenly: 10, 100, 1,000 targets).
const LUNS_PER_TARGET: usize = 5;
/// Timed passes per size, after one warm-up pass.
const REPEATS: usize = 10;
/// The target the issue sets for 10,000 paths (reported, not asserted).
const TARGET_10K: Duration = Duration::from_millis(100);

fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = match std::env::var("LUNKEEPER_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().replace('_', "").parse::<usize>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("LUNKEEPER_BENCH_SIZES={list}: {e}"))?,
        Err(_) if full => SIZES.to_vec(),
        Err(_) => SIZES[..1].to_vec(),
    };
    println!(
        "lunkeeper scale bench: {PORTALS_PER_TARGET} portals (sessions) per target, \
         {LUNS_PER_TARGET} LUNs per target, every LUN a {PORTALS_PER_TARGET}-path multipath map; \
         {REPEATS} timed passes per size after one warm-up; {} CPU(s) available; trees in {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        tree_parent().display()
    );
    let mut rows = Vec::new();
    for &paths in &sizes {
        rows.push(run_size(paths)?);
    }
    print_report(&rows);
    Ok(())
}

/// The shape of a host of `paths` paths.
#[derive(Debug, Clone, Copy)]
struct Shape {
    targets: usize,
    sessions: usize,
    luns: usize,
    paths: usize,
}

impl Shape {
    fn for_paths(paths: usize) -> Shape {
        let per_target = PORTALS_PER_TARGET * LUNS_PER_TARGET;
        assert!(
            paths % per_target == 0,
            "{paths} paths is not a whole number of targets of {per_target} paths"
        );
        let targets = paths / per_target;
        Shape {
            targets,
            sessions: targets * PORTALS_PER_TARGET,
            luns: targets * LUNS_PER_TARGET,
            paths,
        }
    }
}

/// What one size measured.
struct Row {
    shape: Shape,
    build: Duration,
    observe: Stats,
    plan: Stats,
    total: Stats,
    /// CPU time (user + system, every thread) of one pass, averaged over the repeats.
    cpu_per_pass: Option<Duration>,
    hwm_before_kib: Option<u64>,
    hwm_after_kib: Option<u64>,
    /// Peak of one pass above the resident set it started from (needs a resettable VmHWM).
    pass_peak_kib: Option<u64>,
    census: Census,
    actions: usize,
    ready: usize,
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    min: Duration,
    median: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        assert!(!samples.is_empty(), "no samples taken");
        samples.sort();
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2
        };
        Stats {
            min: samples[0],
            median,
        }
    }
}

fn run_size(paths: usize) -> Result<Row> {
    let shape = Shape::for_paths(paths);
    let dir = tempfile::Builder::new()
        .prefix("lunkeeper-scale-")
        .tempdir_in(tree_parent())?;
    let root = dir.path();

    let started = Instant::now();
    let (desired_text, owned) = build_host(root, shape)?;
    let build = started.elapsed();
    let desired = desired::parse(&root.join("etc/lunkeeper/volumes.toml"), &desired_text)
        .map_err(|e| format!("the generated desired file does not parse: {e}"))?;
    drop(desired_text);
    println!(
        "\n## {paths} paths: {} targets, {} sessions, {} LUNs/maps; tree built in {:.2} s",
        shape.targets,
        shape.sessions,
        shape.luns,
        build.as_secs_f64()
    );

    let hwm_before_kib = proc_status_kib("VmHWM");
    // Warm-up pass, which is also the memory pass and the steady-state check.
    let reset = reset_hwm();
    let rss_before = proc_status_kib("VmRSS");
    let (observed, result) = pass(root, &desired, &owned)?;
    let pass_peak_kib = match (reset, rss_before, proc_status_kib("VmHWM")) {
        (true, Some(before), Some(peak)) => Some(peak.saturating_sub(before)),
        _ => None,
    };
    let census = Census::of(&observed);
    let actions = result.actions().count();
    let ready = result
        .volumes
        .values()
        .filter(|v| **v == Verdict::Ready)
        .count();
    check_steady_state(shape, &census, &result, actions, ready);
    println!(
        "steady state: {actions} actions, {ready} of {} volumes ready, {} notes",
        result.volumes.len(),
        result.notes.len()
    );
    drop((observed, result));

    let mut observe_t = Vec::with_capacity(REPEATS);
    let mut plan_t = Vec::with_capacity(REPEATS);
    let mut total_t = Vec::with_capacity(REPEATS);
    let cpu_before = process_cpu_time();
    for _ in 0..REPEATS {
        let t0 = Instant::now();
        let observed = observe::observe(root)?;
        let t1 = Instant::now();
        let result = plan::plan(&desired, &observed, &owned);
        let t2 = Instant::now();
        assert!(result.is_empty(), "a repeated pass planned actions");
        drop((observed, result));
        observe_t.push(t1 - t0);
        plan_t.push(t2 - t1);
        total_t.push(t2 - t0);
    }
    let cpu_per_pass = match (cpu_before, process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) / REPEATS as u32),
        _ => None,
    };
    let row = Row {
        shape,
        build,
        observe: Stats::of(observe_t),
        plan: Stats::of(plan_t),
        total: Stats::of(total_t),
        cpu_per_pass,
        hwm_before_kib,
        hwm_after_kib: proc_status_kib("VmHWM"),
        pass_peak_kib,
        census,
        actions,
        ready,
    };
    println!(
        "observe {} / {} ms, plan {} / {} ms, total {} / {} ms (min / median); CPU {} ms per pass",
        ms(row.observe.min),
        ms(row.observe.median),
        ms(row.plan.min),
        ms(row.plan.median),
        ms(row.total.min),
        ms(row.total.median),
        row.cpu_per_pass.map_or_else(|| "n/a".to_string(), ms)
    );
    dir.close()?;
    Ok(row)
}

/// Where the trees go: `TMPDIR` when set, else `/dev/shm` (tmpfs: in memory, as sysfs is, and
/// several times quicker to build and remove than a disk file system), else the temp dir.
fn tree_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none() && shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// One observe + plan pass.
fn pass(root: &Path, desired: &Desired, owned: &Owned) -> Result<(Observed, Plan)> {
    let observed = observe::observe(root)?;
    let result = plan::plan(desired, &observed, owned);
    Ok((observed, result))
}

/// The bench is only meaningful if it measures the converged host: everything observed, no
/// action planned, every volume ready.
fn check_steady_state(shape: Shape, census: &Census, result: &Plan, actions: usize, ready: usize) {
    assert_eq!(census.sessions, shape.sessions, "sessions observed");
    assert_eq!(census.devices, shape.paths, "SCSI devices observed");
    assert_eq!(census.disks, shape.paths, "disks observed");
    assert_eq!(census.maps, shape.luns, "maps observed");
    assert_eq!(census.node_records, shape.sessions, "node records observed");
    assert_eq!(census.wwids, shape.luns, "registered WWIDs observed");
    assert_eq!(census.names, shape.luns, "name mappings observed");
    assert_eq!(
        actions,
        0,
        "the steady state planned actions: {:?}",
        result.actions().take(5).collect::<Vec<_>>()
    );
    assert!(result.is_empty(), "the steady state planned actions");
    let not_ready: Vec<_> = result
        .volumes
        .iter()
        .filter(|(_, v)| **v != Verdict::Ready)
        .take(5)
        .collect();
    assert_eq!(
        ready, shape.luns,
        "every volume should be ready; some are not: {not_ready:?}"
    );
}

/// Writes the host and returns the desired file's text and the ownership records an apply
/// would have left.
fn build_host(root: &Path, shape: Shape) -> Result<(String, Owned)> {
    let mut tree = FixtureTree::new(root)?;
    let names_dir = root.join(NAMES_DIR);
    fs::create_dir_all(&names_dir)?;
    let mut desired = String::from(
        "# generated by benches/scale.rs\n[defaults]\nmultipath = true\nreplacement_timeout = 5\n",
    );
    let mut owned = Owned::default();
    let mut session_id = 0u32;
    let mut disk_index = 0usize;
    for t in 0..shape.targets {
        let target = format!("iqn.2026-11.test.lunkeeper.bench:t{t:05}");
        let portals: Vec<SocketAddr> = (0..PORTALS_PER_TARGET).map(|p| portal(t, p)).collect();
        let mut sessions = Vec::with_capacity(portals.len());
        for &portal in &portals {
            session_id += 1;
            tree.session(session_id, &target, portal, "LOGGED_IN")?;
            tree.node_record(&target, portal, 1)?;
            sessions.push(session_id);
            let key = SessionKey {
                target: target.clone(),
                portal,
            };
            owned.sessions.insert(key.clone());
            owned.nodes.insert(key);
        }
        for l in 0..LUNS_PER_TARGET {
            let serial = t * LUNS_PER_TARGET + l;
            let naa = format!("naa.6001405{serial:025x}");
            let wwid = Wwid::from_sysfs(&naa)?;
            let mut disks = Vec::with_capacity(sessions.len());
            for &session in &sessions {
                let disk = sd_name(disk_index);
                disk_index += 1;
                tree.lun(session, l as u64, Some(&disk), Some(&naa), "running")?;
                disks.push(disk);
            }
            let slaves: Vec<&str> = disks.iter().map(String::as_str).collect();
            tree.map(wwid.as_str(), &format!("dm-{serial}"), &slaves)?;
            tree.registered_wwid(wwid.as_str())?;

            let name = format!("t{t:05}-lun{l}");
            fs::write(
                names_dir.join(format!("mpath-{wwid}")),
                format!("LUNKEEPER_VOLUME={name}\n"),
            )?;
            let portal_list: Vec<String> = portals.iter().map(|p| format!("\"{p}\"")).collect();
            write!(
                desired,
                "\n[[volume]]\nname = \"{name}\"\ntarget = \"{target}\"\nportals = [{}]\nlun = {l}\nstate = \"present\"\n",
                portal_list.join(", ")
            )?;
            owned.wwids.insert(wwid.clone());
            owned.volumes.insert(
                name,
                OwnedVolume {
                    target: target.clone(),
                    lun: Lun(u32::try_from(l)?),
                    wwid: Some(wwid),
                    attached: true,
                    ..Default::default()
                },
            );
        }
    }
    Ok((desired, owned))
}

/// Portal `p` of target `t`: one address per target and portal, as separate arrays would have.
fn portal(t: usize, p: usize) -> SocketAddr {
    let [_, _, hi, lo] = u32::try_from(t).unwrap_or(u32::MAX).to_be_bytes();
    let net = u8::try_from(p + 1).unwrap_or(u8::MAX);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, net, hi, lo)), 3260)
}

/// How big an [`Observed`] is: entries, and an estimate of its heap bytes (struct sizes times
/// vector capacities plus string lengths; set entries at their element size).
#[derive(Debug, Default, Clone, Copy)]
struct Census {
    sessions: usize,
    devices: usize,
    disks: usize,
    maps: usize,
    node_records: usize,
    wwids: usize,
    names: usize,
    heap_bytes: usize,
}

impl Census {
    fn of(o: &Observed) -> Census {
        let mut c = Census {
            sessions: o.sessions.len(),
            maps: o.maps.len(),
            node_records: o.node_records.len(),
            wwids: o.registered_wwids.len(),
            names: o.names.len(),
            ..Census::default()
        };
        let mut bytes = o.sessions.capacity() * size_of::<observe::Session>();
        for s in &o.sessions {
            bytes += s.target.capacity() + s.devices.capacity() * size_of::<observe::LunDevice>();
            for d in &s.devices {
                c.devices += 1;
                bytes += d.state.capacity() + d.wwid.as_ref().map_or(0, |w| w.as_str().len());
                if let Some(disk) = &d.disk {
                    c.disks += 1;
                    bytes += block_dev_bytes(disk);
                }
            }
        }
        bytes += o.maps.capacity() * size_of::<observe::Map>();
        for m in &o.maps {
            bytes += m.name.capacity()
                + m.wwid.as_str().len()
                + block_dev_bytes(&m.dev)
                + m.slaves.capacity() * size_of::<String>()
                + m.slaves.iter().map(String::capacity).sum::<usize>();
        }
        bytes += o.node_records.capacity() * size_of::<observe::NodeRecord>();
        for n in &o.node_records {
            bytes += n.target.capacity() + n.path.as_os_str().len();
        }
        bytes += o
            .registered_wwids
            .iter()
            .map(|w| size_of::<Wwid>() + w.as_str().len())
            .sum::<usize>();
        bytes += o.mounted.len() * size_of::<observe::DevNum>();
        bytes += o
            .names
            .iter()
            .map(|(k, v)| 2 * size_of::<String>() + k.capacity() + v.capacity())
            .sum::<usize>();
        c.heap_bytes = bytes;
        c
    }
}

fn block_dev_bytes(b: &BlockDev) -> usize {
    b.name.capacity()
        + b.holders.capacity() * size_of::<String>()
        + b.holders.iter().map(String::capacity).sum::<usize>()
        + b.partitions.capacity() * size_of::<BlockDev>()
        + b.partitions.iter().map(block_dev_bytes).sum::<usize>()
}

/// A `kB` field of `/proc/self/status`.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// User + system time of the whole process, threads that have ended included, from
/// `/proc/self/stat` (fields 14 and 15, in USER_HZ ticks: 100 per second on Linux).
fn process_cpu_time() -> Option<Duration> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its `)`.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resets VmHWM to the current RSS (Linux 4.0+); false where the kernel refuses.
fn reset_hwm() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_string(),
        |k| format!("{:.1}", k as f64 / 1024.0),
    )
}

fn print_report(rows: &[Row]) {
    println!("\n## Results (times in ms, min / median of {REPEATS} passes)\n");
    println!(
        "| paths | sessions | maps | build s | observe | plan | observe + plan | µs/path (median) \
         | CPU ms/pass | VmHWM before → after MiB | ΔVmHWM MiB | pass peak above RSS MiB | Observed ≈ MiB | actions | ready |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let delta = match (r.hwm_before_kib, r.hwm_after_kib) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        println!(
            "| {} | {} | {} | {:.2} | {} / {} | {} / {} | {} / {} | {:.1} | {} | {} → {} | {} | {} | {:.2} | {} | {}/{} |",
            r.shape.paths,
            r.census.sessions,
            r.census.maps,
            r.build.as_secs_f64(),
            ms(r.observe.min),
            ms(r.observe.median),
            ms(r.plan.min),
            ms(r.plan.median),
            ms(r.total.min),
            ms(r.total.median),
            r.total.median.as_secs_f64() * 1e6 / r.shape.paths as f64,
            r.cpu_per_pass.map_or_else(|| "n/a".to_string(), ms),
            mib(r.hwm_before_kib),
            mib(r.hwm_after_kib),
            mib(delta),
            mib(r.pass_peak_kib),
            r.census.heap_bytes as f64 / (1024.0 * 1024.0),
            r.actions,
            r.ready,
            r.shape.luns,
        );
    }

    println!("\n## Growth per step (median; linear = the same factor as paths)\n");
    println!("| step | paths × | observe × | plan × | observe + plan × |");
    println!("|---|---:|---:|---:|---:|");
    if rows.len() < 2 {
        println!("| (one size only) | | | | |");
    }
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let f = |x: Duration, y: Duration| y.as_secs_f64() / x.as_secs_f64().max(1e-9);
        println!(
            "| {} → {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            a.shape.paths,
            b.shape.paths,
            b.shape.paths as f64 / a.shape.paths as f64,
            f(a.observe.median, b.observe.median),
            f(a.plan.median, b.plan.median),
            f(a.total.median, b.total.median),
        );
    }

    if let Some(r) = rows.iter().find(|r| r.shape.paths == 10_000) {
        let verdict = if r.total.median < TARGET_10K {
            "meets"
        } else {
            "misses"
        };
        println!(
            "\n10,000 paths: observe + plan median {} ms (min {} ms): {verdict} the < {} ms target.",
            ms(r.total.median),
            ms(r.total.min),
            TARGET_10K.as_millis()
        );
    }
}
