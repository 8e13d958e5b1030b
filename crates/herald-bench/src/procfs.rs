//! Server cost read from `/proc/<pid>`: resident memory and CPU time.
//!
//! CPU seconds per million deliveries is the fairest figure on a shared machine: unlike a
//! rate, it does not depend on how much of the CPU the generator left to the server.

use std::fs;

/// `/proc` reports CPU times in clock ticks of `USER_HZ`, which Linux fixes at 100 for
/// every userspace ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Summed resident set size, in KiB.
    pub rss_kb: u64,
    /// Summed user + system CPU time, in seconds.
    pub cpu_secs: f64,
}

/// Reads the summed RSS and CPU time of `pids`; a pid that cannot be read counts as zero
/// (it may have exited) and is reported through the `Err` list.
pub fn sample(pids: &[u32]) -> (Sample, Vec<u32>) {
    let mut total = Sample::default();
    let mut missing = Vec::new();
    for &pid in pids {
        match read(&pid.to_string()) {
            Some(s) => {
                total.rss_kb += s.rss_kb;
                total.cpu_secs += s.cpu_secs;
            }
            None => missing.push(pid),
        }
    }
    (total, missing)
}

/// This process's own reading.
pub fn own() -> Sample {
    read("self").unwrap_or_default()
}

fn read(pid: &str) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        rss_kb: rss_kb(&status)?,
        cpu_secs: cpu_secs(&stat)?,
    })
}

/// `VmRSS:   12345 kB` from `/proc/<pid>/status`.
fn rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15) from `/proc/<pid>/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_secs(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(cpu_secs(stat), Some(3.0));
        assert_eq!(rss_kb("Name:\tx\nVmRSS:\t   2048 kB\n"), Some(2048));
    }

    #[test]
    fn reads_itself() {
        let (s, missing) = sample(&[std::process::id()]);
        assert!(missing.is_empty());
        assert!(s.rss_kb > 0);
    }
}
