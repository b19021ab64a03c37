//! Memory and CPU time of a process, read from `/proc` (Linux only).

use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// Resident set size (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// User + system CPU time of all its threads so far.
    pub cpu: Duration,
}

/// A process to read: a pid, or this process.
#[derive(Debug, Clone, Copy)]
pub enum Proc {
    Pid(u32),
    Myself,
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}"),
            Proc::Myself => "/proc/self".to_owned(),
        }
    }

    pub fn sample(self) -> io::Result<Sample> {
        let dir = self.dir();
        let status = std::fs::read_to_string(format!("{dir}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| io::Error::other("no VmRSS in status"))?;
        let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
        // Fields after the command name (which may hold spaces) start at
        // field 3 (`state`); utime and stime are fields 14 and 15.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| io::Error::other("unreadable stat"))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |index: usize| -> io::Result<u64> {
            fields
                .get(index)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| io::Error::other("unreadable stat field"))
        };
        let total_ticks = ticks(11)? + ticks(12)?;
        Ok(Sample {
            at: Instant::now(),
            rss_bytes: rss_kib * 1024,
            cpu: Duration::from_nanos(total_ticks * 1_000_000_000 / clock_ticks_per_sec()),
        })
    }
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (no `unsafe` here);
/// 100 when that fails, which is what Linux uses everywhere.
fn clock_ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// CPU used between two samples as a share of one core (1.0 = one core busy).
pub fn cores_used(from: &Sample, to: &Sample) -> f64 {
    let wall = to.at.duration_since(from.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    to.cpu.saturating_sub(from.cpu).as_secs_f64() / wall
}
