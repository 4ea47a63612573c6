//! Saturation gauges of the process, read at scrape time (on the
//! scrape's blocking thread): free bytes of the data dir's file system
//! (statvfs), open file descriptors (`/proc/self/fd`), resident memory
//! (`/proc/self/statm`). A value that cannot be read is left out of that
//! scrape rather than reported as 0.

use std::path::{Path, PathBuf};

use opentelemetry::metrics::Meter;

/// Registers the gauges on `meter`.
pub(super) fn observe(meter: &Meter, data_dir: PathBuf) {
    meter
        .u64_observable_gauge("proglog_data_dir_free_bytes")
        .with_description("Bytes available to the agent on the file system of its data dir")
        .with_callback(move |o| {
            if let Some(free) = free_bytes(&data_dir) {
                o.observe(free, &[]);
            }
        })
        .build();
    meter
        .u64_observable_gauge("proglog_process_open_fds")
        .with_description("File descriptors the agent has open")
        .with_callback(|o| {
            if let Some(n) = open_fds() {
                o.observe(n, &[]);
            }
        })
        .build();
    meter
        .u64_observable_gauge("proglog_process_resident_memory_bytes")
        .with_description("Resident set size of the agent")
        .with_callback(|o| {
            if let Some(rss) = resident_bytes() {
                o.observe(rss, &[]);
            }
        })
        .build();
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Open fds, not counting the one that lists them.
fn open_fds() -> Option<u64> {
    let listed = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(listed.saturating_sub(1))
}

/// Resident pages (second field of `/proc/self/statm`) times the page size.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(rustix::param::page_size() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_readings_are_plausible() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let _held = std::fs::File::open(dir.path()).unwrap();
        assert!(open_fds().unwrap() >= 1);
        assert!(resident_bytes().unwrap() > 1 << 20);
        assert!(free_bytes(&dir.path().join("missing")).is_none());
    }
}
