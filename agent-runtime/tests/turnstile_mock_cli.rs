//! `turnstile-mock` with hostile command lines: every one is refused before anything starts, with
//! one line on stderr (no panic, no Debug form) and exit code 2, within a bounded time.
#![cfg(feature = "mock-server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args`; kills it if it has not exited within 20 s.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnstile-mock"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start turnstile-mock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("turnstile-mock {args:?} did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stdout, stderr)
}

#[test]
fn hostile_arguments_get_one_line_and_exit_code_2() {
    let max = "18446744073709551615";
    let over = "18446744073709551616";
    let cases: &[(&[&str], &str)] = &[
        (&["--period-seconds", "1e30"], "--period-seconds"),
        (&["--period-seconds", "0"], "--period-seconds"),
        (&["--period-seconds", "NaN"], "--period-seconds"),
        (&["--period-seconds", "inf"], "--period-seconds"),
        (&["--period-seconds", "-1"], "-1"),
        (&["--period-seconds", max], "--period-seconds"),
        (&["--rpm", "0"], "requests limit is zero"),
        (&["--tpm", "0"], "tokens limit is zero"),
        (&["--rpm", over], "--rpm"),
        (&["--rpm", "-5"], "-5"),
        (&["--latency-ms", max], "latency"),
        (&["--ms-per-token", "NaN"], "--ms-per-token"),
        (&["--ms-per-token", "1e300"], "--ms-per-token"),
        (&["--reply-tokens", "4294967295"], "reply_tokens"),
        (&["--max-concurrency", "0"], "max_concurrency"),
        (&["--fail-every", "0"], "fail_every"),
        (&["--port", "70000"], "--port"),
        (&["--host", "not-an-ip"], "--host"),
        (&["--limiter", "bogus"], "bogus"),
        (&["--dialect", "bogus"], "bogus"),
        (&["--frobnicate"], "--frobnicate"),
        (
            &["--limiter", "fixed", "--window-phase-seconds", "60"],
            "phase",
        ),
        (
            &["--limiter", "fixed", "--window-phase-seconds", "-1"],
            "--window-phase-seconds",
        ),
        (
            &["--request-period-seconds", "0"],
            "--request-period-seconds",
        ),
        (
            &["--request-period-seconds", "1e30"],
            "--request-period-seconds",
        ),
    ];
    for (args, mentions) in cases {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: stderr {stderr:?}");
        assert!(stdout.is_empty(), "{args:?}: stdout {stdout:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr:?}");
        let line = lines[0];
        assert!(line.starts_with("turnstile-mock: "), "{args:?}: {line}");
        assert!(
            line.contains(mentions),
            "{args:?}: {line} lacks {mentions:?}"
        );
        for debug_form in ["panicked", "Error: ", " { ", "TooLarge", "ZeroPeriod"] {
            assert!(!line.contains(debug_form), "{args:?}: {line}");
        }
    }
}

#[test]
fn help_goes_to_stdout_with_every_limiter_flag() {
    let (code, stdout, stderr) = run(&["--help"]);
    assert_eq!(code, Some(0), "{stderr}");
    for flag in [
        "--limiter",
        "--request-limiter",
        "--token-limiter",
        "--window-phase-seconds",
        "--request-period-seconds",
        "--dialect",
        "--no-reset-headers",
        "--no-retry-after",
        "--off-by-one",
        "--litellm",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}
