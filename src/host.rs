//! What the host machine has to give: the memory a large allocation may count on.

/// The host memory available to new allocations (Linux's `MemAvailable` in `/proc/meminfo`),
/// where the system says; `None` elsewhere, and then callers check nothing.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&meminfo)
}

/// This process's resident set size in bytes (Linux's `/proc/self/statm`), where the system
/// says; for soak tests, which check that it stays flat.
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every Linux resgraph's CI and users run (x86-64, aarch64's
    // default); statm counts pages.
    pages.checked_mul(4096)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_kibibytes() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(available_memory().is_some_and(|bytes| bytes > 0));
    }
}
