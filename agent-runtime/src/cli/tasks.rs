//! The input of a batch: one JSON object a line, `{"id": …, "task": …}`, and which of them this
//! process runs (`--shard i/N`).

use std::collections::HashSet;
use std::io::BufRead;

use serde::Deserialize;

/// One line of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputTask {
    /// A task to run.
    Task {
        /// Its id (a JSON string, or a number written as text).
        id: String,
        /// The task message.
        task: String,
    },
    /// A line that is not a task: it gets an error record of its own while the rest run.
    Invalid {
        /// Its id: the line's `id` when one could be read, else `line:N`.
        id: String,
        /// What is wrong with it.
        error: String,
    },
}

impl InputTask {
    /// The id the output records it under.
    pub fn id(&self) -> &str {
        match self {
            InputTask::Task { id, .. } | InputTask::Invalid { id, .. } => id,
        }
    }
}

/// The longest task text read (1 MiB): longer is refused as that line's error, not loaded.
pub const MAX_TASK_BYTES: usize = 1 << 20;

/// Input that cannot be run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The file could not be read.
    #[error("cannot read the input: {0}")]
    Read(String),
    /// Two lines share an id: results are keyed by id, so the run would be ambiguous.
    #[error(
        "line {second}: id '{id}' is already used on line {first}; ids must be unique (they key the results and resuming)"
    )]
    DuplicateId {
        /// The id.
        id: String,
        /// Its first line.
        first: usize,
        /// The repeat.
        second: usize,
    },
    /// `--shard` is not `i/N` with `0 ≤ i < N`.
    #[error("--shard must be i/N with 0 <= i < N and N >= 1 (e.g. 0/4), not '{0}'")]
    Shard(String),
}

#[derive(Deserialize)]
struct Line {
    id: serde_json::Value,
    task: serde_json::Value,
}

fn id_text(id: &serde_json::Value) -> Option<String> {
    match id {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the input: every non-empty line becomes a task or an invalid task, in order. Two lines
/// with one id are an error for the whole input.
pub fn read_tasks(input: impl BufRead) -> Result<Vec<InputTask>, InputError> {
    let mut tasks = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| InputError::Read(format!("line {n}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let task = parse_line(n, &line);
        if let Some(&first) = seen.get(task.id()) {
            return Err(InputError::DuplicateId {
                id: task.id().to_owned(),
                first,
                second: n,
            });
        }
        seen.insert(task.id().to_owned(), n);
        tasks.push(task);
    }
    Ok(tasks)
}

fn parse_line(n: usize, line: &str) -> InputTask {
    let fallback = format!("line:{n}");
    let parsed: Line = match serde_json::from_str(line) {
        Ok(l) => l,
        Err(e) => {
            // Keep the id when the object has one, so the error lands under it.
            let id = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id").and_then(id_text))
                .unwrap_or(fallback);
            return InputTask::Invalid {
                id,
                error: format!("line {n}: not a task object {{\"id\": …, \"task\": …}}: {e}"),
            };
        }
    };
    let Some(id) = id_text(&parsed.id) else {
        return InputTask::Invalid {
            id: fallback,
            error: format!("line {n}: \"id\" must be a non-empty string or a number"),
        };
    };
    match parsed.task {
        serde_json::Value::String(task) if task.trim().is_empty() => InputTask::Invalid {
            id,
            error: format!("line {n}: \"task\" is empty"),
        },
        serde_json::Value::String(task) if task.len() > MAX_TASK_BYTES => InputTask::Invalid {
            id,
            error: format!("line {n}: \"task\" is longer than {MAX_TASK_BYTES} bytes"),
        },
        serde_json::Value::String(task) => InputTask::Task { id, task },
        _ => InputTask::Invalid {
            id,
            error: format!("line {n}: \"task\" must be a string"),
        },
    }
}

/// One shard of N: the tasks whose id hashes to `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: u32,
    /// How many shards.
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Shard, InputError> {
        let bad = || InputError::Shard(s.chars().take(40).collect());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// True when this shard runs `id`. Every id belongs to exactly one shard of N, whatever the
    /// order of the input and on every machine.
    pub fn owns(&self, id: &str) -> bool {
        fnv1a(id.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }
}

/// FNV-1a, 64-bit. Written here because shards must agree across processes, machines and Rust
/// versions, which `std`'s `DefaultHasher` does not promise; ten lines beat a dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The tasks still to run: in this shard and not already done.
pub fn pending<'a>(
    tasks: &'a [InputTask],
    shard: Option<Shard>,
    done: &'a HashSet<String>,
) -> impl Iterator<Item = &'a InputTask> + 'a {
    tasks
        .iter()
        .filter(move |t| shard.is_none_or(|s| s.owns(t.id())) && !done.contains(t.id()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn lines_become_tasks_or_per_line_errors() {
        let input = "{\"id\": \"a\", \"task\": \"one\"}\n\n{\"id\": 7, \"task\": \"two\"}\nnot json\n{\"id\": \"c\", \"task\": 5}\n{\"id\": \"d\"}\n";
        let tasks = read_tasks(input.as_bytes()).unwrap();
        let ids: Vec<&str> = tasks.iter().map(InputTask::id).collect();
        assert_eq!(ids, ["a", "7", "line:4", "c", "d"]);
        assert!(matches!(&tasks[1], InputTask::Task { task, .. } if task == "two"));
        assert!(
            matches!(&tasks[2], InputTask::Invalid { error, .. } if error.starts_with("line 4:"))
        );
        assert!(
            matches!(&tasks[3], InputTask::Invalid { error, .. } if error.contains("must be a string"))
        );
        assert!(
            matches!(&tasks[4], InputTask::Invalid { error, .. } if error.contains("missing field `task`"))
        );
    }

    #[test]
    fn duplicate_ids_are_refused_with_both_lines() {
        let input = "{\"id\": \"a\", \"task\": \"x\"}\n{\"id\": \"b\", \"task\": \"y\"}\n{\"id\": \"a\", \"task\": \"z\"}\n";
        let err = read_tasks(input.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            InputError::DuplicateId {
                id: "a".into(),
                first: 1,
                second: 3
            }
        );
    }

    #[test]
    fn shards_partition_the_ids() {
        let shards: Vec<Shard> = (0..4).map(|i| format!("{i}/4").parse().unwrap()).collect();
        for n in 0..1000 {
            let id = format!("task-{n}");
            assert_eq!(shards.iter().filter(|s| s.owns(&id)).count(), 1, "{id}");
        }
        // Not all in one shard.
        assert!(
            shards
                .iter()
                .all(|s| (0..1000).any(|n| s.owns(&format!("task-{n}"))))
        );
        for bad in ["4/4", "1/0", "x/2", "1", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
