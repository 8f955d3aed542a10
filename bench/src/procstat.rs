//! CPU time and memory of processes and threads, read from /proc and getrusage.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};

/// Clock ticks per second used by /proc/*/stat times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime from the text of a /proc/.../stat file.
fn parse_stat_cpu(stat: &str) -> Result<Duration> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("malformed stat: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).ok_or_else(|| anyhow!("stat has no utime"))?.parse()?;
    let stime: u64 = fields.get(12).ok_or_else(|| anyhow!("stat has no stime"))?.parse()?;
    let ticks = utime + stime;
    let hz = clock_ticks();
    Ok(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text)
}

/// CPU time used so far by this process's threads whose name starts with `prefix` (how an
/// in-process broker's runtime threads are told apart from the load generator's).
pub fn self_threads_cpu(prefix: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let dir = entry?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        // A thread may exit between listing and reading: skip it.
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            total += parse_stat_cpu(&stat)?;
        }
    }
    Ok(total)
}

/// CPU time (user + system) this whole process has used so far, with microsecond resolution.
pub fn self_cpu() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// CPU time of this process's children that have ended and been waited for (the servers).
pub fn children_cpu() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

/// User + system CPU time of the whole machine so far (all cores), from /proc/stat. Interrupt
/// time is left out: it is not charged to processes either.
pub fn machine_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user, nice, system
    let ticks = v.first()? + v.get(1)? + v.get(2)?;
    let hz = clock_ticks();
    Some(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

fn rusage(who: libc::c_int) -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer we pass; `who` is RUSAGE_SELF or
    // RUSAGE_CHILDREN, both always valid.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Resident set size in bytes (VmRSS) of a process.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The 1-minute load average, from /proc/loadavg.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let parts: Vec<&str> = text.split_whitespace().take(3).collect();
    (parts.len() == 3).then(|| parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let hz = clock_ticks();
        let stat = format!("1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 {} {} 0 0 20 0", 3 * hz, hz / 2);
        assert_eq!(parse_stat_cpu(&stat).unwrap(), Duration::from_millis(3500));
    }

    #[test]
    fn parses_vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   2048 kB\nVmData: 1 kB\n"), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        process_cpu(pid).unwrap();
        self_threads_cpu("no-such-thread").unwrap();
        let _ = self_cpu() + children_cpu();
        assert!(machine_cpu().is_some());
    }
}
