//! How long this machine's disk takes to make a small write durable: the floor under every
//! submission that is acknowledged only once it is on disk (gearfleet's `--durability fsync`).
//!
//! Measured the way the broker's journal writes: a record-sized write into preallocated space of
//! a file, then `fdatasync`. A client that waits for each acknowledgement can never submit faster
//! than one job per (this latency + a network round trip).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Write + fdatasync latency of a disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncLatency {
    pub median: Duration,
    pub p90: Duration,
    pub samples: usize,
}

impl SyncLatency {
    /// The most acknowledgements per second one client waiting for each can get from this disk.
    pub fn max_per_second(&self) -> f64 {
        1.0 / self.median.as_secs_f64().max(1e-9)
    }
}

/// Times `n` (at least 1) 100-byte writes, each followed by `fdatasync`, in a temporary file
/// under `dir`.
pub fn sync_latency(dir: &Path, n: usize) -> io::Result<SyncLatency> {
    let n = n.max(1);
    let path = dir.join(format!("gearfleet-bench-sync-{}.tmp", std::process::id()));
    let result = (|| {
        let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
        let len = (n as i64 + 1) * 4096;
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file`.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
            // No preallocation here: measure appends instead.
            file.set_len(0)?;
        }
        file.sync_all()?;
        let record = [0x5au8; 100];
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            file.write_all_at(&record, (i * record.len()) as u64)?;
            file.sync_data()?;
            times.push(t.elapsed());
        }
        times.sort_unstable();
        Ok(SyncLatency { median: times[n / 2], p90: times[(n * 9 / 10).min(n - 1)], samples: n })
    })();
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_positive_latency() {
        let dir = std::env::temp_dir().join(format!("gearfleet-bench-disk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = sync_latency(&dir, 5).unwrap();
        assert_eq!(l.samples, 5);
        assert!(l.median > Duration::ZERO && l.p90 >= l.median, "{l:?}");
        assert!(l.max_per_second() > 0.0);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "temporary file removed");
        std::fs::remove_dir(&dir).unwrap();
    }
}
