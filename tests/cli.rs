//! The `lunkeeper` command line as a script sees it: exit codes, output that cannot be written,
//! counted nouns. Only commands that leave the host alone run here (validate, plan and status
//! against an empty sysfs tree, man, completions), with every path in a temporary directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ONE_VOLUME: &str = r#"[[volume]]
name = "db"
target = "iqn.2026-11.com.example:db"
portals = ["192.0.2.10"]
lun = 0
"#;

const TWO_VOLUMES: &str = r#"[[volume]]
name = "db"
target = "iqn.2026-11.com.example:db"
portals = ["192.0.2.10"]
lun = 0

[[volume]]
name = "logs"
target = "iqn.2026-11.com.example:db"
portals = ["192.0.2.10"]
lun = 1
"#;

/// A temporary config, state and runtime directory and an empty sysfs to read the host from.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(config: &str) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("volumes.toml"), config).unwrap();
        for sub in ["state", "run", "root/sys/class"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lunkeeper"));
        cmd.args(args)
            .arg("--root")
            .arg(self.path("root"))
            .env("LUNKEEPER_CONFIG", self.path("volumes.toml"))
            .env("LUNKEEPER_STATE_DIR", self.path("state"))
            .env("LUNKEEPER_RUNTIME_DIR", self.path("run"))
            .env_remove("LUNKEEPER_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_panic(out: &Output) {
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
}

#[test]
fn usage_errors_exit_64_not_the_config_code() {
    let sandbox = Sandbox::new(ONE_VOLUME);
    for args in [
        &["no-such-command"][..],
        &["validate", "--no-such-option"],
        &["apply", "--timeout", "soon"],
        &[],
    ] {
        let out = sandbox.run(args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("--help"), "{args:?}");
    }
    for args in [&["--help"][..], &["--version"], &["plan", "--help"]] {
        let out = sandbox.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn an_invalid_config_exits_2() {
    let sandbox = Sandbox::new("[[volume]]\nname = \"db\"\n");
    let out = sandbox.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("invalid configuration"));
}

#[test]
fn an_empty_file_is_refused_but_volumes_none_is_accepted() {
    let empty = Sandbox::new("");
    let out = empty.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("volumes = \"none\""),
        "the error names the way out"
    );

    let none = Sandbox::new("# nothing to manage yet\nvolumes = \"none\"\n");
    let out = none.run(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no volumes declared"));
    let out = none.run(&["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "nothing to do\n");
}

#[test]
fn volumes_are_counted_in_the_singular_and_plural() {
    let out = Sandbox::new(ONE_VOLUME).run(&["validate"]);
    assert!(
        text(&out.stdout).ends_with(": ok, 1 volume\n"),
        "{}",
        text(&out.stdout)
    );
    let out = Sandbox::new(TWO_VOLUMES).run(&["validate"]);
    assert!(
        text(&out.stdout).ends_with(": ok, 2 volumes\n"),
        "{}",
        text(&out.stdout)
    );
}

/// Runs `args` with stdout a pipe whose reading end is already closed, as after
/// `lunkeeper status | head -n1` read its line; returns that run and one to /dev/null.
fn with_closed_pipe(sandbox: &Sandbox, args: &[&str]) -> (Output, Output) {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let closed = sandbox
        .command(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let normal = sandbox
        .command(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (closed, normal)
}

#[test]
fn a_closed_pipe_ends_quietly_with_the_commands_own_exit_code() {
    let sandbox = Sandbox::new(TWO_VOLUMES);
    for args in [
        &["plan"][..],
        &["plan", "--json"],
        &["status"],
        &["status", "--json"],
        &["validate"],
        &["--help"],
        &["completions", "bash"],
    ] {
        let (closed, normal) = with_closed_pipe(&sandbox, args);
        assert_no_panic(&closed);
        assert_eq!(closed.status.code(), normal.status.code(), "{args:?}");
        assert_eq!(
            text(&closed.stderr),
            text(&normal.stderr),
            "{args:?}: quiet"
        );
    }
}

#[test]
fn a_full_disk_on_stdout_is_an_error_not_a_panic() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let sandbox = Sandbox::new(TWO_VOLUMES);
    for args in [
        &["validate"][..],
        &["plan"],
        &["status", "--json"],
        &["--help"],
    ] {
        let out = sandbox
            .command(args)
            .stdout(File::options().write(true).open("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(74), "{args:?}");
        assert!(
            text(&out.stderr).contains("cannot write to stdout"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn man_pages_and_completions_are_generated() {
    let sandbox = Sandbox::new(ONE_VOLUME);
    let dir = sandbox.path("man");
    std::fs::create_dir(&dir).unwrap();
    let out = sandbox.run(&["man", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(dir.join("lunkeeper.8")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH lunkeeper 8"),
        "{page}"
    );
    for section in ["EXIT STATUS", "FILES", "ENVIRONMENT", "SEE ALSO"] {
        assert!(page.contains(section), "lunkeeper.8 lacks {section}");
    }
    for code in ["64", "74"] {
        assert!(
            page.contains(&format!("\\fB{code}\\fR")),
            "exit code {code}"
        );
    }
    for sub in ["validate", "plan", "apply", "status", "run"] {
        assert!(dir.join(format!("lunkeeper-{sub}.8")).exists(), "{sub}");
    }
    assert!(
        !dir.join("lunkeeper-man.8").exists(),
        "hidden commands get no page"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = sandbox.run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("validate"), "{shell}");
    }
}
