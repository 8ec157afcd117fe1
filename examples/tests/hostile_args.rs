//! Every example binary run with hostile command lines: each is refused up front with one line
//! on stderr (`NAME: …`), a non-zero exit code, nothing on stdout, and never a panic, an abort or
//! a Debug form. Builds the examples first (`cargo build --examples`); skips with a message when
//! that fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Far above any refusal (the slowest, an unreachable Redis, takes the 500 ms command timeout):
/// a binary still running then is hanging.
const HANG: Duration = Duration::from_secs(30);

/// Example `name`, built now (`cargo build --examples`, once per test binary: building this
/// package's tests only checks its examples, and a binary left by an earlier build may be
/// stale). `None`, after saying why, when it cannot be built.
fn example(name: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<bool> = OnceLock::new();
    let built = *BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "turnstile-examples", "--examples"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        matches!(status, Ok(s) if s.success())
    });
    // target/<profile>/deps/hostile_args-HASH → target/<profile>/examples/NAME
    let path = std::env::current_exe()
        .ok()?
        .parent()?
        .parent()?
        .join("examples")
        .join(name);
    if !built || !path.exists() {
        eprintln!("skipping: could not build the {name} example");
        return None;
    }
    Some(path)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(path: &PathBuf, args: &[&str]) -> Run {
    let mut child = Command::new(path)
        .args(args)
        // No endpoint and no log filter from the environment: the simulator, default logging.
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_MODEL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > HANG {
            let _ = child.kill();
            panic!("{} {args:?} still running after {HANG:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts `name args` is refused in one clear line and returns that line.
fn refused(name: &str, path: &PathBuf, args: &[&str]) -> String {
    let r = run(path, args);
    let what = format!("{name} {}", args.join(" "));
    // A signal (abort) leaves no code; a panic exits 101.
    assert!(
        matches!(r.code, Some(c) if c != 0 && c != 101),
        "{what}: exit {:?}\n{}",
        r.code,
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{what}: printed {:?}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{}", r.stderr);
    let line = lines[0];
    assert!(line.starts_with(&format!("{name}: ")), "{what}: {line}");
    for debug in ["panicked", "Error:", "{ ", "Some(", "Err("] {
        assert!(
            !line.contains(debug),
            "{what}: a Debug form or a panic: {line}"
        );
    }
    line.to_owned()
}

#[test]
fn fanout_refuses_hostile_arguments_in_one_line() {
    let Some(fanout) = example("fanout") else {
        eprintln!("skipping: the fanout example is not built");
        return;
    };
    let max = u64::MAX.to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--conversations", &max], "conversations"),
        (&["--agents", &max], "agents"),
        (&["--max-messages", &max], "max_messages"),
        (&["--conversations", "0"], "conversations"),
        (&["--conversations", "-1"], "-1"),
        (&["--conversations", "many"], "many"),
        (&["--concurrency", "0"], "concurrency"),
        (&["--max-messages", "1"], "max_messages"),
        (&["--max-completion-tokens", "0"], "max_completion_tokens"),
        (&["--max-completion-tokens", &max], "max-completion-tokens"),
        (&["--rpm", "-5"], "-5"),
        (&["--period-seconds", "1e30"], "period-seconds"),
        (&["--period-seconds", "0"], "period-seconds"),
        (&["--period-seconds", "-1"], "-1"),
        (&["--period-seconds", "nan"], "period-seconds"),
        (&["--period-seconds", "inf"], "period-seconds"),
        (
            &["--attempt-deadline-seconds", "0"],
            "attempt-deadline-seconds",
        ),
        (
            &["--attempt-deadline-seconds", "1e300"],
            "attempt-deadline-seconds",
        ),
        (&["--bogus"], "--bogus"),
        (&["--limiter", "window"], "sliding-window"),
        (&["--base-url", "not a url"], "not a url"),
        (&["--redis-url", "http://example.invalid"], "Redis URL"),
        (
            &["--redis-url", "redis://user:hunter2@127.0.0.1:1"],
            "127.0.0.1:1",
        ),
    ];
    for (args, mentions) in cases {
        let line = refused("fanout", &fanout, args);
        assert!(line.contains(mentions), "fanout {args:?}: {line}");
        assert!(!line.contains("hunter2"), "the password leaked: {line}");
    }
}

#[test]
fn examples_without_arguments_refuse_any() {
    for name in ["quickstart", "two_agent", "nested", "tools", "graph"] {
        let Some(path) = example(name) else {
            eprintln!("skipping: the {name} example is not built");
            continue;
        };
        let line = refused(name, &path, &["--conversations", "18446744073709551615"]);
        assert!(line.contains("--conversations"), "{line}");
        refused(name, &path, &["extra"]);
    }
}
