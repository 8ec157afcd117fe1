//! What the goodput and overhead benches share: the machine description, Markdown tables, the
//! statistics both report (percentiles, Jain's index), CPU time, and writing tables into
//! `docs/benchmarks.md` between markers.
#![allow(dead_code)] // each bench uses part of it

pub(crate) mod instant;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line options common to the benches (`cargo bench … -- --quick --write-docs`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// Smaller sizes, for a smoke run; the numbers are not the documented ones.
    pub(crate) quick: bool,
    /// Replace the tables in `docs/benchmarks.md` with this run's.
    pub(crate) write_docs: bool,
}

impl Options {
    pub(crate) fn from_args() -> Self {
        let mut options = Self::default();
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--write-docs" => options.write_docs = true,
                // cargo passes `--bench`; other harness flags mean nothing here.
                _ => {}
            }
        }
        options
    }
}

/// A Markdown table, built row by row.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    header: Vec<String>,
    align_right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns whose name starts with `<` are left-aligned (the `<` is dropped); the others are
    /// numbers, right-aligned.
    pub(crate) fn new(columns: &[&str]) -> Self {
        Self {
            header: columns
                .iter()
                .map(|c| c.trim_start_matches('<').to_owned())
                .collect(),
            align_right: columns.iter().map(|c| !c.starts_with('<')).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "row width");
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let rule: Vec<&str> = self
            .align_right
            .iter()
            .map(|r| if *r { "---:" } else { ":---" })
            .collect();
        let _ = writeln!(out, "|{}|", rule.join("|"));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// The machine and the moment, for the record next to the numbers.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(
            || "?".to_owned(),
            |kb| format!("{:.0}", kb / 1024.0 / 1024.0),
        );
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned());
    format!(
        "{cores} cores ({cpu}), {memory_gib} GiB RAM, {} UTC, load average at start {load}",
        utc_now()
    )
}

/// The current UTC date and time, `YYYY-MM-DD HH:MM`.
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

/// The 1-minute load average now.
pub(crate) fn load_now() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// User and system CPU time of this process so far.
///
/// Read from `/proc/self/stat` (the same counters `getrusage(RUSAGE_SELF)` returns): calling
/// `getrusage` needs `libc` and `unsafe`, which the workspace forbids. Resolution is one clock
/// tick (10 ms); the benches run for seconds, so that is under 1 %.
pub(crate) fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    const TICKS_PER_SECOND: u64 = 100; // USER_HZ on Linux
    Duration::from_millis((ticks(11) + ticks(12)) * 1_000 / TICKS_PER_SECOND)
}

/// The `q`-quantile (0..=1) of `values` by nearest rank; 0 for none.
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Jain's fairness index `(Σx)² / (n·Σx²)`: 1 when every `x` is equal, `1/n` when one takes all.
pub(crate) fn jain(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (n * squares)
}

/// `docs/benchmarks.md` in this workspace.
pub(crate) fn docs_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md")
}

/// Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` in
/// `docs/benchmarks.md` with `content`. Fails if the markers are missing, so a renamed section
/// is noticed instead of silently skipped.
pub(crate) fn write_section(name: &str, content: &str) -> Result<(), String> {
    let path = docs_path();
    let doc = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        return Err(format!("{} has no {begin} … {end} markers", path.display()));
    };
    if e < b {
        return Err(format!("{end} comes before {begin} in {}", path.display()));
    }
    let updated = format!(
        "{}{begin}\n{}{}",
        &doc[..b],
        content.trim_end_matches('\n').to_owned() + "\n",
        &doc[e..]
    );
    std::fs::write(&path, updated).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `n` with thousands separators: `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
