//! Where the time goes, without `perf`: CPU time of this process (client and
//! servers share it) and of the SQLite writer thread, from `/proc`, around
//! each scenario. A writer thread near 100 % of one core means the single
//! writer is the limit; a process near 100 % of all cores means CPU is; both
//! low while the rate is low means waiting (fsync, locks, another process).

use std::time::Instant;

/// Kernel clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Prefix of the writer thread's name as `/proc` shows it (15 characters at most).
const WRITER_THREAD: &str = "tollgate-sqlite";

/// CPU ticks consumed so far.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    at: Instant,
    process: u64,
    writer: u64,
    postgres: u64,
}

/// `utime + stime` of a `/proc/.../stat` line (fields 14 and 15, after the command name).
fn ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn writer_ticks() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(WRITER_THREAD))
        })
        .filter_map(|task| ticks(&std::fs::read_to_string(task.path().join("stat")).ok()?))
        .sum()
}

/// All `postgres` server processes on this machine (other users of the
/// server, such as a concurrent test run, are counted too).
fn postgres_ticks() -> u64 {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    processes
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|byte| byte.is_ascii_digit())
        })
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|name| name.trim() == "postgres")
        })
        .filter_map(|entry| ticks(&std::fs::read_to_string(entry.path().join("stat")).ok()?))
        .sum()
}

/// Which threads besides the whole process to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// Nothing else.
    Process,
    /// The SQLite writer thread.
    SqliteWriter,
    /// The PostgreSQL server processes.
    Postgres,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot {
            at: Instant::now(),
            process: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|stat| ticks(&stat))
                .unwrap_or(0),
            writer: writer_ticks(),
            postgres: postgres_ticks(),
        }
    }

    /// Since `self`: cores used by this process, share of one core used by
    /// the SQLite writer thread(s), and CPU microseconds per request.
    pub fn describe_since(&self, requests: u64, focus: Focus) -> String {
        let now = Snapshot::take();
        let wall = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let process = now.process.saturating_sub(self.process) as f64 / TICKS_PER_SECOND;
        let writer = now.writer.saturating_sub(self.writer) as f64 / TICKS_PER_SECOND;
        let mut text = format!(
            "CPU: this process {:.2} cores busy, {:.0} µs CPU/request",
            process / wall,
            process * 1e6 / requests.max(1) as f64
        );
        match focus {
            Focus::Process => {}
            Focus::SqliteWriter => {
                text.push_str(&format!(
                    ", SQLite writer thread {:.0}% of a core",
                    writer / wall * 100.0
                ));
            }
            Focus::Postgres => {
                let postgres = now.postgres.saturating_sub(self.postgres) as f64 / TICKS_PER_SECOND;
                text.push_str(&format!(
                    ", postgres processes {:.2} cores ({:.0} µs/request)",
                    postgres / wall,
                    postgres * 1e6 / requests.max(1) as f64
                ));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0";
        assert_eq!(ticks(stat), Some(280));
    }
}
