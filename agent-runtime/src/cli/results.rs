//! The output of a batch: one JSON result a line, appended as tasks finish, and read back on a
//! rerun so finished ids are skipped.
//!
//! A line is written with one `write` of the whole line and its newline, from one writer, so
//! lines never interleave. A process killed in the middle of that write can still leave a torn
//! last line (the kernel may stop a large write part way for a fatal signal): on open, a last
//! line without its newline is cut off before anything is appended, and that task runs again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use agent_core::Message;
use serde::{Deserialize, Serialize};

/// What one task produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task's id.
    pub id: String,
    /// Why the chat stopped (absent when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// What failed (absent when the chat stopped normally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The messages, the task first (for a failed chat, those up to the failure).
    #[serde(default)]
    pub transcript: Vec<Message>,
    /// Model calls made (every provider attempt).
    #[serde(default)]
    pub calls: u64,
    /// Prompt tokens reported.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens reported.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Dollars, priced with the spec's prices.
    #[serde(default)]
    pub cost_usd: f64,
    /// Seconds from the task's start to its end.
    #[serde(default)]
    pub wall_s: f64,
}

impl TaskRecord {
    /// An empty record for task `id`: no stop reason, no error, nothing spent yet.
    pub fn new(id: impl Into<String>) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            stop_reason: None,
            error: None,
            transcript: Vec::new(),
            calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            wall_s: 0.0,
        }
    }

    /// A task that never ran (its input line was invalid).
    pub fn invalid(id: impl Into<String>, error: impl Into<String>) -> TaskRecord {
        TaskRecord {
            error: Some(error.into()),
            ..TaskRecord::new(id)
        }
    }

    /// True when the task failed.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }
}

/// The output file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultsError {
    /// Opening, reading, repairing or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// Another process (or another handle in this one) is writing the file.
    #[error(
        "{path} is being written by another turnstile run; wait for it to end, or give this run another --output"
    )]
    Locked {
        /// The file.
        path: String,
    },
    /// A complete line is not a result: the file is not this tool's output, or was edited.
    #[error(
        "{path}: line {line} is not a result line ({message}); point --output at a new file or fix that line"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// The 1-based line.
        line: usize,
        /// Why.
        message: String,
    },
}

/// The output file, opened for appending after its finished ids were read.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    file: File,
    done: HashSet<String>,
    repaired: bool,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl ResultsFile {
    /// Opens (creating) `path`, locks it for this writer, cuts a torn last line, and reads the
    /// ids already done.
    ///
    /// The lock is an exclusive advisory lock held while the `ResultsFile` lives: a second run
    /// on the same output fails at once with [`ResultsError::Locked`] instead of interleaving
    /// lines and running tasks twice. The system releases it when the process dies, so a killed
    /// run leaves no stale lock behind.
    pub fn open(path: &Path) -> Result<ResultsFile, ResultsError> {
        let shown = path.display().to_string();
        let io = |source| ResultsError::Io {
            path: shown.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ResultsError::Locked { path: shown });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let repaired = whole < text.len();
        if repaired {
            file.set_len(whole as u64).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
        }
        let mut done = HashSet::new();
        for (i, line) in text[..whole].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record: IdOnly =
                serde_json::from_slice(line).map_err(|e| ResultsError::Corrupt {
                    path: shown.clone(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
            done.insert(record.id);
        }
        Ok(ResultsFile {
            path: path.to_owned(),
            file,
            done,
            repaired,
        })
    }

    /// The ids already in the file.
    pub fn done(&self) -> &HashSet<String> {
        &self.done
    }

    /// True when a torn last line was cut on open.
    pub fn repaired(&self) -> bool {
        self.repaired
    }

    /// Appends one record as one line, in one write.
    pub fn append(&mut self, record: &TaskRecord) -> Result<(), ResultsError> {
        let mut line = serde_json::to_vec(record).map_err(|e| ResultsError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|source| ResultsError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        self.done.insert(record.id.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("turnstile-results-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn a_torn_last_line_is_cut_and_its_task_not_counted_done() {
        let path = temp("torn");
        let a = serde_json::to_string(&TaskRecord::invalid("a", "x")).unwrap();
        std::fs::write(&path, format!("{a}\n{{\"id\":\"b\",\"stop_re")).unwrap();
        let mut out = ResultsFile::open(&path).unwrap();
        assert!(out.repaired());
        assert_eq!(out.done().len(), 1);
        assert!(out.done().contains("a"));
        out.append(&TaskRecord::invalid("b", "y")).unwrap();
        drop(out);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            let _: TaskRecord = serde_json::from_str(line).unwrap();
        }
        let again = ResultsFile::open(&path).unwrap();
        assert!(!again.repaired());
        assert_eq!(again.done().len(), 2);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_is_gone() {
        let path = temp("locked");
        let first = ResultsFile::open(&path).unwrap();
        let err = ResultsFile::open(&path).unwrap_err();
        assert!(matches!(err, ResultsError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another turnstile run"), "{err}");
        drop(first);
        ResultsFile::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_foreign_line_is_a_clear_error() {
        let path = temp("corrupt");
        std::fs::write(&path, "{\"id\":\"a\"}\nhello\n").unwrap();
        let err = ResultsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 2 is not a result line"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
