//! The `turnstile` command: specs, batch runs, resuming, sharding, and the binary's behaviour on
//! hostile input, on SIGKILL and on Ctrl-C (bounded in time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agent_runtime::cli::spec::SpecError;
use agent_runtime::cli::{
    BatchControl, InputTask, ResultsFile, Shard, TaskRecord, Team, TeamSpec, estimate, read_tasks,
    run_batch,
};
use agent_runtime::mock::MockServer;
use agent_runtime::provider::SimConfig;

const SIM_SPEC: &str = r#"
providers:
  sim:
    kind: simulated
    model: gpt-4o-mini
    quota: { requests: 60, period_seconds: 6 }
agents:
  - { name: writer, provider: sim, system_message: "Write one line.", max_completion_tokens: 32 }
  - { name: critic, provider: sim, system_message: "Improve it.", max_completion_tokens: 32 }
team:
  max_messages: 4
budget:
  per_task: { calls: 10 }
run:
  concurrency: 8
"#;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("turnstile-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tasks_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"id\": \"t{i}\", \"task\": \"Task number {i}\"}}\n"))
        .collect()
}

fn records(path: &Path) -> Vec<TaskRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn or foreign line {l:?}: {e}"))
        })
        .collect()
}

// ---------- the spec ----------

#[test]
fn yaml_toml_and_json_specs_read_the_same() {
    let yaml = TeamSpec::from_yaml(SIM_SPEC).unwrap();
    let json = serde_json::to_string(&yaml).unwrap();
    assert_eq!(TeamSpec::from_json(&json).unwrap(), yaml);
    let toml = r#"
[providers.sim]
kind = "simulated"
model = "gpt-4o-mini"
quota = { requests = 60, period_seconds = 6 }

[[agents]]
name = "writer"
provider = "sim"
system_message = "Write one line."
max_completion_tokens = 32

[[agents]]
name = "critic"
provider = "sim"
system_message = "Improve it."
max_completion_tokens = 32

[team]
max_messages = 4

[budget.per_task]
calls = 10

[run]
concurrency = 8
"#;
    assert_eq!(TeamSpec::from_toml(toml).unwrap(), yaml);
    yaml.validate().unwrap();
    assert_eq!(yaml.max_calls_per_task(), 3);
}

#[test]
fn an_unknown_field_names_the_field_and_the_line() {
    let spec = SIM_SPEC.replace(
        "system_message: \"Improve it.\"",
        "sytem_message: \"Improve it.\"",
    );
    let err = TeamSpec::from_yaml(&spec).unwrap_err();
    let SpecError::Parse {
        field,
        line,
        message,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(field, "agents[1].sytem_message");
    assert_eq!(*line, Some(9));
    assert!(
        message.contains("unknown field `sytem_message`"),
        "{message}"
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with("line 9: agents[1].sytem_message: unknown field"),
        "{shown}"
    );

    let toml_err = TeamSpec::from_toml("[team]\nmax_turns = \"many\"\n").unwrap_err();
    let SpecError::Parse { field, line, .. } = &toml_err else {
        panic!("{toml_err:?}")
    };
    assert_eq!(
        (field.as_str(), *line),
        ("team.max_turns", Some(2)),
        "{toml_err}"
    );
}

#[test]
fn semantic_errors_name_the_field() {
    let cases = [
        (
            SIM_SPEC.replace(
                "provider: sim, system_message: \"Improve",
                "provider: gpt, system_message: \"Improve",
            ),
            "agents[1].provider: no provider named 'gpt'; the providers are: sim",
        ),
        (
            SIM_SPEC.replace("name: critic", "name: writer"),
            "agents[1].name: 'writer' names two agents",
        ),
        (
            SIM_SPEC.replace(
                "  max_messages: 4\n",
                "  termination: { text_mention: DONE }\n",
            ),
            "team: set max_turns or max_messages",
        ),
        (
            SIM_SPEC.replace("period_seconds: 6", "period_seconds: 1e30"),
            "providers.sim.quota.period_seconds: must be a number of seconds above 0",
        ),
        (
            SIM_SPEC.replace("requests: 60", "requests: 0"),
            "providers.sim.quota.requests: must be at least 1",
        ),
        (
            SIM_SPEC.replace("concurrency: 8", "concurrency: 0"),
            "run.concurrency: must be at least 1",
        ),
        (
            SIM_SPEC.replace(
                "  max_messages: 4\n",
                "  max_messages: 4\n  kind: selector\n",
            ),
            "team.selector: a selector team names the provider",
        ),
        (
            format!("{SIM_SPEC}cache: {{ dir: c, max_age_seconds: 0 }}\n"),
            "cache.max_age_seconds: must be at least 1",
        ),
        (
            format!("{SIM_SPEC}cache: {{ dir: c, namespace: \" \" }}\n"),
            "cache.namespace: must not be empty",
        ),
        (
            format!("{SIM_SPEC}cache: {{ dir: \"\" }}\n"),
            "cache.dir: must not be empty",
        ),
    ];
    for (text, expected) in cases {
        let err = TeamSpec::from_yaml(&text)
            .and_then(|s| s.validate())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(expected),
            "expected {expected:?}, got {err:?}"
        );
    }
    // A hostile nesting depth is refused, not recursed into without end.
    let mut cond = "{ text_mention: DONE }".to_owned();
    for _ in 0..40 {
        cond = format!("{{ any: [ {cond} ] }}");
    }
    let deep = SIM_SPEC.replace(
        "  max_messages: 4\n",
        &format!("  max_messages: 4\n  termination: {cond}\n"),
    );
    let err = TeamSpec::from_yaml(&deep)
        .and_then(|s| s.validate())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nested more than 32 levels"), "{err}");
}

/// A graph team: fan-out to two writers, fan-in at the editor (all parents), every call charged.
#[tokio::test(start_paused = true)]
async fn a_graph_team_runs_its_edges() {
    let spec = r#"
providers:
  sim: { kind: simulated, model: gpt-4o-mini, quota: { requests: 60, period_seconds: 6 } }
agents:
  - { name: researcher, provider: sim, max_completion_tokens: 16 }
  - { name: writer_a, provider: sim, max_completion_tokens: 16 }
  - { name: writer_b, provider: sim, max_completion_tokens: 16 }
  - { name: editor, provider: sim, max_completion_tokens: 16 }
team:
  kind: graph
  edges:
    - { from: researcher, to: writer_a }
    - { from: researcher, to: writer_b }
    - { from: writer_a, to: editor }
    - { from: writer_b, to: editor }
  max_turns: 10
"#;
    let d = dir("graph");
    let out = d.join("results.jsonl");
    run_into(spec, &tasks_jsonl(3), &out, None).await;
    let recs = records(&out);
    assert_eq!(recs.len(), 3);
    for r in &recs {
        assert_eq!(r.error, None, "{r:?}");
        assert_eq!(r.calls, 4, "one call per node: {r:?}");
        let speakers: Vec<&str> = r
            .transcript
            .iter()
            .filter_map(|m| m.source.as_deref())
            .collect();
        assert_eq!(speakers.first(), Some(&"user"));
        assert_eq!(speakers.last(), Some(&"editor"), "{speakers:?}");
    }
    // Edges naming no agent, and a graph that cannot finish, are refused with the field named.
    let bad = spec.replace(
        "to: editor }\n    - { from: writer_b",
        "to: nobody }\n    - { from: writer_b",
    );
    let err = TeamSpec::from_yaml(&bad)
        .and_then(|s| s.validate())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("team.edges[2].to: no agent named 'nobody'"),
        "{err}"
    );
    let cycle = spec.replace(
        "    - { from: writer_b, to: editor }\n",
        "    - { from: writer_b, to: editor }\n    - { from: editor, to: writer_a }\n",
    );
    let team = Team::build(TeamSpec::from_yaml(&cycle).unwrap(), &|_| None, None).unwrap();
    let err = team.chat("x").unwrap_err().to_string();
    // The graph's own checks (here: no leaf left) surface under the spec's field.
    assert!(
        err.starts_with("team.edges: the graph has no leaf"),
        "{err}"
    );
}

#[test]
fn a_missing_key_variable_names_the_provider_and_the_variable() {
    let spec = TeamSpec::from_yaml(
        r#"
providers:
  openai: { model: gpt-4o-mini, api_key_env: TURNSTILE_TEST_NO_SUCH_KEY }
agents: [ { name: a, provider: openai } ]
team: { max_turns: 1 }
"#,
    )
    .unwrap();
    let err = Team::build(spec, &|_| None, None).unwrap_err().to_string();
    assert_eq!(
        err,
        "providers.openai.api_key_env: the environment variable TURNSTILE_TEST_NO_SUCH_KEY is not set; export it with the API key"
    );
}

// ---------- batches on the simulator (paused clock) ----------

async fn run_into(spec: &str, input: &str, out: &Path, shard: Option<Shard>) -> (usize, usize) {
    let team = Arc::new(Team::build(TeamSpec::from_yaml(spec).unwrap(), &|_| None, None).unwrap());
    let tasks = read_tasks(input.as_bytes()).unwrap();
    let mut file = ResultsFile::open(out).unwrap();
    let done = file.done().clone();
    let pending: Vec<InputTask> = agent_runtime::cli::tasks::pending(&tasks, shard, &done)
        .cloned()
        .collect();
    let n = pending.len();
    let summary = run_batch(
        team,
        pending,
        &mut file,
        8,
        &BatchControl::default(),
        |_| {},
    )
    .await
    .unwrap();
    (n, summary.progress.done)
}

#[tokio::test(start_paused = true)]
async fn a_batch_writes_one_result_per_task_and_a_rerun_skips_them() {
    let d = dir("rerun");
    let out = d.join("results.jsonl");
    let input = tasks_jsonl(20);
    let (ran, done) = run_into(SIM_SPEC, &input, &out, None).await;
    assert_eq!((ran, done), (20, 20));
    let first = records(&out);
    assert_eq!(first.len(), 20);
    for r in &first {
        assert_eq!(r.error, None, "{r:?}");
        // max_messages 4: the task and three replies, each one call.
        assert_eq!(r.transcript.len(), 4, "{r:?}");
        assert_eq!(r.calls, 3);
        assert!(
            r.stop_reason
                .as_deref()
                .is_some_and(|s| s.contains("Maximum number of messages")),
            "{r:?}"
        );
    }
    let (ran, _) = run_into(SIM_SPEC, &input, &out, None).await;
    assert_eq!(ran, 0, "every id was done");
    assert_eq!(records(&out).len(), 20);
    // Five more tasks: only they run.
    let (ran, _) = run_into(SIM_SPEC, &tasks_jsonl(25), &out, None).await;
    assert_eq!(ran, 5);
    let ids: HashSet<String> = records(&out).into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 25);
}

#[tokio::test(start_paused = true)]
async fn shards_run_every_task_exactly_once() {
    let d = dir("shards");
    let out = d.join("results.jsonl");
    let input = tasks_jsonl(30);
    let mut total = 0;
    for i in 0..3 {
        let (ran, _) = run_into(
            SIM_SPEC,
            &input,
            &out,
            Some(format!("{i}/3").parse().unwrap()),
        )
        .await;
        assert!(ran > 0 && ran < 30, "shard {i} ran {ran}");
        total += ran;
    }
    assert_eq!(total, 30);
    let recs = records(&out);
    let ids: HashSet<&str> = recs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!((recs.len(), ids.len()), (30, 30));
}

#[tokio::test(start_paused = true)]
async fn a_bad_input_line_is_a_per_task_error_while_the_rest_run() {
    let d = dir("badline");
    let out = d.join("results.jsonl");
    let input = format!(
        "{}{{\"id\": \"bad\", \"task\": 42}}\nnot json at all\n",
        tasks_jsonl(3)
    );
    run_into(SIM_SPEC, &input, &out, None).await;
    let recs: BTreeMap<String, TaskRecord> = records(&out)
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    assert_eq!(recs.len(), 5);
    assert!(
        recs["bad"]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("\"task\" must be a string"))
    );
    assert!(
        recs["line:5"]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("line 5: not a task object"))
    );
    assert_eq!(recs["bad"].calls, 0);
    assert!(
        ["t0", "t1", "t2"]
            .iter()
            .all(|id| recs[*id].error.is_none())
    );
}

#[tokio::test(start_paused = true)]
async fn stop_lets_running_tasks_finish_and_abort_writes_nothing_cancelled() {
    let team =
        Arc::new(Team::build(TeamSpec::from_yaml(SIM_SPEC).unwrap(), &|_| None, None).unwrap());
    let d = dir("stop");
    let out = d.join("results.jsonl");
    let tasks = read_tasks(tasks_jsonl(40).as_bytes()).unwrap();
    let mut file = ResultsFile::open(&out).unwrap();
    let control = BatchControl::default();
    let stopper = control.clone();
    // Stop as soon as the first task ends: the 7 others already running finish; none starts.
    let summary = run_batch(
        team.clone(),
        tasks.clone(),
        &mut file,
        8,
        &control,
        move |p| {
            if p.done == 1 {
                stopper.stop.cancel();
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(summary.progress.done, 8);
    assert_eq!(summary.not_started, 32);
    assert_eq!(summary.cancelled, 0);
    assert_eq!(records(&out).len(), 8);

    // Abort at once: the running tasks are cancelled and not written.
    let out2 = d.join("aborted.jsonl");
    let mut file = ResultsFile::open(&out2).unwrap();
    let control = BatchControl::default();
    control.stop.cancel();
    control.abort.cancel();
    let summary = run_batch(team, tasks, &mut file, 8, &control, |_| {})
        .await
        .unwrap();
    assert_eq!(summary.progress.done, 0);
    assert!(records(&out2).is_empty());
}

#[test]
fn dry_run_bounds_match_the_spec() {
    let spec = TeamSpec::from_yaml(SIM_SPEC).unwrap();
    let ids = BTreeMap::from([("sim".to_owned(), "sim/gpt-4o-mini".to_owned())]);
    let tasks: Vec<String> = (0..20).map(|i| format!("Task number {i}")).collect();
    let est = estimate(&spec, &ids, tasks.iter().map(String::as_str));
    assert_eq!(est.tasks, 20);
    assert_eq!(est.calls, 60);
    assert_eq!(est.completion_tokens, 60 * 32);
    // 60 requests fit the full bucket: the requests bound adds no wait; the chain of 3 calls does.
    assert_eq!(est.bound_by, "chain");
    let est = estimate(
        &spec,
        &ids,
        tasks.iter().chain(tasks.iter()).map(String::as_str),
    );
    // 120 requests at 60 per 6 s, bucket full at start: (120 − 60) · 6 / 60 = 6 s, plus a call.
    assert_eq!(est.bound_by, "requests");
    assert!(
        est.min_makespan_s > 6.0 && est.min_makespan_s < 6.2,
        "{est:?}"
    );
}

// ---------- the binary ----------

fn turnstile() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_turnstile"));
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

fn http_spec(base_url: &str, rpm: u64) -> String {
    format!(
        r#"
providers:
  mock:
    base_url: {base_url}
    model: gpt-4o-mini
    quota: {{ requests: {rpm}, period_seconds: 6 }}
agents:
  - {{ name: writer, provider: mock, max_completion_tokens: 16 }}
  - {{ name: critic, provider: mock, max_completion_tokens: 16 }}
team:
  max_messages: 3
run:
  concurrency: 16
"#
    )
}

/// A batch over HTTP: the mock at `rpm` requests per 6 s answering after `latency`, and in a
/// fresh directory `name` the spec (`http_spec`, then `extra` lines) and `n` tasks. Returns the
/// server, the directory, the spec's path and the input's.
async fn http_batch(
    name: &str,
    rpm: u64,
    latency: Duration,
    extra: &str,
    n: usize,
) -> (MockServer, PathBuf, PathBuf, PathBuf) {
    let (_, server) = MockServer::start(
        SimConfig::default()
            .with_rpm(rpm)
            .with_period(Duration::from_secs(6))
            .with_latency(latency, Duration::ZERO),
    )
    .await
    .unwrap();
    let d = dir(name);
    let spec = d.join("team.yaml");
    std::fs::write(&spec, http_spec(&server.base_url(), rpm) + extra).unwrap();
    let input = d.join("tasks.jsonl");
    std::fs::write(&input, tasks_jsonl(n)).unwrap();
    (server, d, spec, input)
}

/// Runs `cmd` to its end, or kills it after `limit` and fails the test: no hostile input may
/// make the command hang.
fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// One line on stderr, exit 2, for each kind of hostile input.
#[test]
fn hostile_input_is_one_line_and_exit_2() {
    let d = dir("hostile");
    let spec = d.join("team.yaml");
    std::fs::write(&spec, SIM_SPEC).unwrap();
    let input = d.join("tasks.jsonl");
    std::fs::write(&input, tasks_jsonl(2)).unwrap();
    let dup = d.join("dup.jsonl");
    std::fs::write(
        &dup,
        "{\"id\":\"a\",\"task\":\"x\"}\n{\"id\":\"a\",\"task\":\"y\"}\n",
    )
    .unwrap();
    let bad_spec = d.join("bad.yaml");
    std::fs::write(&bad_spec, "providers: [\n").unwrap();
    let unknown = d.join("unknown.yaml");
    std::fs::write(&unknown, SIM_SPEC.replace("run:\n", "runn:\n")).unwrap();
    let keyed = d.join("keyed.yaml");
    std::fs::write(
        &keyed,
        http_spec("http://127.0.0.1:9/v1", 60).replace(
            "model: gpt-4o-mini",
            "model: gpt-4o-mini\n    api_key_env: TURNSTILE_TEST_NO_SUCH_KEY",
        ),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["check".into(), s(&bad_spec)],
            "bad.yaml: line 1: providers: invalid type",
        ),
        (vec!["check".into(), s(&unknown)], "unknown field `runn`"),
        (
            vec!["check".into(), s(&d.join("missing.yaml"))],
            "cannot read",
        ),
        (vec!["check".into(), s(&input)], "unknown spec format"),
        (
            vec![
                "run".into(),
                s(&spec),
                "--input".into(),
                s(&dup),
                "--output".into(),
                s(&d.join("o.jsonl")),
            ],
            "id 'a' is already used on line 1",
        ),
        (
            vec!["run".into(), s(&spec), "--input".into(), s(&input)],
            "--output is required",
        ),
        (
            vec![
                "run".into(),
                s(&spec),
                "--input".into(),
                s(&input),
                "--output".into(),
                s(&d.join("o.jsonl")),
                "--shard".into(),
                "3/3".into(),
            ],
            "--shard must be i/N",
        ),
        (
            vec![
                "run".into(),
                s(&spec),
                "--input".into(),
                s(&input),
                "--output".into(),
                s(&d.join("o.jsonl")),
                "--concurrency".into(),
                "18446744073709551615".into(),
            ],
            "--concurrency must be 1 to",
        ),
        (
            vec![
                "run".into(),
                s(&keyed),
                "--input".into(),
                s(&input),
                "--output".into(),
                s(&d.join("o.jsonl")),
            ],
            "TURNSTILE_TEST_NO_SUCH_KEY is not set",
        ),
        (
            vec![
                "run".into(),
                s(&spec),
                "--input".into(),
                s(&input),
                "--output".into(),
                s(&d.join("o.jsonl")),
                "--redis-url".into(),
                "redis://127.0.0.1:1".into(),
            ],
            "Redis",
        ),
    ];
    for (args, expected) in cases {
        let out = output_within(turnstile().args(&args), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr:?}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() <= 3 && !stderr.contains("panicked") && !stderr.contains("Error {"),
            "{args:?}: {stderr}"
        );
    }
}

async fn wait_for_lines(path: &Path, n: usize, limit: Duration) -> usize {
    let start = std::time::Instant::now();
    loop {
        let count = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
        if count >= n || start.elapsed() > limit {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `limiter:` in a quota: the key counts the provider's way (a LiteLLM proxy's clock windows,
/// here), and a simulated provider enforces the same windows — every task completes and the
/// provider never answers 429 to the quota as configured.
#[tokio::test(start_paused = true)]
async fn a_quota_s_limiter_kind_reaches_the_key_and_the_simulator() {
    use agent_runtime::scheduler::{Limiter, WindowStart};
    let spec = SIM_SPEC.replace(
        "quota: { requests: 60, period_seconds: 6 }",
        "quota: { requests: 10, period_seconds: 6, limiter: fixed_window }",
    );
    let team = Arc::new(Team::build(TeamSpec::from_yaml(&spec).unwrap(), &|_| None, None).unwrap());
    let d = dir("limiter");
    let mut file = ResultsFile::open(&d.join("results.jsonl")).unwrap();
    let tasks = read_tasks(tasks_jsonl(8).as_bytes()).unwrap();
    let summary = run_batch(
        team.clone(),
        tasks,
        &mut file,
        8,
        &BatchControl::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.progress.done, 8);
    let snapshot = team.scheduler().snapshot();
    let key = &snapshot.keys[&team.model_ids()["sim"]];
    assert_eq!(
        key.limits.requests.map(|r| r.limiter),
        Some(Limiter::FixedWindow(WindowStart::Clock))
    );
    // 8 tasks × 3 calls at 10 a window: several windows, and never a 429.
    assert_eq!(key.succeeded, 24);
    assert_eq!(key.rate_limited.total(), 0);
}

/// `cache:` in the spec: the same tasks into a new output file reach the provider not once —
/// every answer is replayed, the records are the same — and the cache's relative directory is
/// the spec file's, whatever the working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_rerun_replays_every_answer_without_the_provider() {
    let n = 12;
    let cache = "cache: { dir: answers, namespace: claims-v1 }\n";
    let (server, d, spec, input) = http_batch("cache", 6_000, Duration::ZERO, cache, n).await;
    let run = |out: &Path| {
        let status = turnstile()
            .args(["run", spec.to_str().unwrap(), "--input"])
            .arg(&input)
            .arg("--output")
            .arg(out)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0));
        let mut recs = records(out);
        recs.sort_by(|a, b| a.id.cmp(&b.id));
        recs
    };
    let first = run(&d.join("first.jsonl"));
    let asked = server.stats().requests;
    assert_eq!(asked, 2 * n as u64, "max_messages 3: two calls a task");
    assert!(
        d.join("answers").is_dir(),
        "the cache lives beside the spec"
    );

    let second = run(&d.join("second.jsonl"));
    assert_eq!(
        server.stats().requests,
        asked,
        "the rerun asked the provider"
    );
    assert_eq!(second.len(), n);
    for (a, b) in first.iter().zip(&second) {
        assert_eq!((&a.id, &a.transcript), (&b.id, &b.transcript));
        assert_eq!(b.error, None);
    }
}

/// SIGKILL mid-run, then the same command again: every id once, no torn line, and the provider
/// received no more calls than the results account for plus those of the tasks that were in
/// flight when the process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_and_rerun_every_task_is_written_once() {
    let n = 400;
    let (server, d, spec, input) =
        http_batch("kill", 6_000, Duration::from_millis(50), "", n).await;
    let out = d.join("results.jsonl");
    let args = [
        "run",
        spec.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];

    let mut child = turnstile()
        .args(args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = wait_for_lines(&out, 50, Duration::from_secs(60)).await;
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    assert!(seen >= 50, "the first run wrote {seen} results in 60 s");
    let before = records(&out).len();
    assert!(
        before < n,
        "killed too late to test anything ({before} of {n})"
    );

    let status = turnstile()
        .args(args)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let recs = records(&out);
    let ids: HashSet<&str> = recs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!((recs.len(), ids.len()), (n, n), "every id exactly once");
    let calls: u64 = recs.iter().map(|r| r.calls).sum();
    assert_eq!(calls, 2 * n as u64, "max_messages 3: two calls a task");
    let requests = server.stats().requests;
    // Lost at the kill: at most the 16 tasks in flight, two calls each.
    assert!(
        requests >= calls && requests <= calls + 2 * 16,
        "provider saw {requests}, results {calls}"
    );
    server.shutdown().await.unwrap();
}

/// Ctrl-C: running tasks finish and are written, exit 130; a rerun finishes the rest.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_writes_what_is_done_and_a_rerun_finishes() {
    // 60 requests per 6 s: 100 tasks need about 14 s, so the interrupt lands mid-run.
    let (server, d, spec, input) = http_batch("ctrlc", 60, Duration::from_millis(5), "", 100).await;
    let out = d.join("results.jsonl");
    let args = [
        "run",
        spec.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    let child = turnstile()
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lines(&out, 5, Duration::from_secs(60)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopping: no new tasks"), "{stderr}");
    assert!(stderr.contains("rerun the same command"), "{stderr}");
    let first = records(&out).len();
    assert!(first > 0 && first < 100, "{first}");
    assert!(
        records(&out).iter().all(|r| r.error.is_none()),
        "finished tasks are whole"
    );

    let status = turnstile()
        .args(args)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let ids: HashSet<String> = records(&out).into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(records(&out).len(), 100);
    server.shutdown().await.unwrap();
}
