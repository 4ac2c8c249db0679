//! How much memory the machine, or the container the process runs in, has available: the
//! figure the CPU's default budget and its guard are shares of.

use std::path::Path;

use super::capacity::CapacitySource;
use super::counting::CountingAllocator;
use crate::error::Error;

/// The most heap this process can reach without exhausting the machine or its container, and
/// where that figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineLimit {
    /// The memory available at start (the smaller of the machine's and the cgroup's) plus what
    /// the process already holds.
    pub bytes: u64,
    /// [`CapacitySource::MemAvailable`] or [`CapacitySource::Cgroup`].
    pub source: CapacitySource,
}

/// The memory available now (the smaller of the machine's and the cgroup's) plus what the
/// process already holds.
pub(crate) fn machine_limit() -> Result<MachineLimit, Error> {
    let held = CountingAllocator::current_bytes();
    #[cfg(feature = "test-hooks")]
    if let Some(bytes) = std::env::var("MAXBATCH_TEST_AVAILABLE_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Tests inject a small machine to exercise the default budget and the guard.
        return Ok(MachineLimit {
            bytes: bytes + held,
            source: CapacitySource::MemAvailable,
        });
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| Error::MemInfo(format!("/proc/meminfo: {e}")))?;
    let available = mem_available(&meminfo)
        .ok_or_else(|| Error::MemInfo("/proc/meminfo has no MemAvailable line".into()))?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_room(Path::new("/sys/fs/cgroup"), &text));
    Ok(match cgroup {
        Some(room) if room < available => MachineLimit {
            bytes: room + held,
            source: CapacitySource::Cgroup,
        },
        _ => MachineLimit {
            bytes: available + held,
            source: CapacitySource::MemAvailable,
        },
    })
}

/// The `MemAvailable` figure of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Bytes the process's memory cgroup still lets it allocate: the limit minus the usage, the
/// least over the cgroup and its ancestors (a limit set on a parent binds too). `root` is the
/// cgroup filesystem (`/sys/fs/cgroup`) and `self_cgroup` the text of `/proc/self/cgroup`.
/// cgroup v2 reads `memory.max` and `memory.current`; v1 the memory controller's
/// `memory.limit_in_bytes` and `memory.usage_in_bytes`. `None` without a limit.
///
/// Read by hand rather than through a crate: sysinfo reads the same files, but only at the
/// fixed system path, so it cannot be tested against fake cgroup trees.
pub fn cgroup_room(root: &Path, self_cgroup: &str) -> Option<u64> {
    // v2: the unified hierarchy, "0::/path".
    let v2 = self_cgroup.lines().find_map(|l| l.strip_prefix("0::"));
    // v1: "N:memory[,…]:/path" (the memory controller's own hierarchy).
    let v1 = self_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let (base, path, limit_file, usage_file) = match (v1, v2) {
        (Some(path), _) => (
            root.join("memory"),
            path,
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        ),
        (None, Some(path)) => (root.to_path_buf(), path, "memory.max", "memory.current"),
        (None, None) => return None,
    };
    let read = |dir: &Path, file: &str| -> Option<u64> {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        // "max" (v2) or a huge page-rounded number (v1, ~2^63) means no limit.
        text.trim().parse::<u64>().ok().filter(|&v| v < 1 << 60)
    };
    let mut dir = base.join(path.trim_start_matches('/'));
    let mut room: Option<u64> = None;
    loop {
        if let Some(limit) = read(&dir, limit_file) {
            let usage = read(&dir, usage_file).unwrap_or(0);
            let here = limit.saturating_sub(usage);
            room = Some(room.map_or(here, |r| r.min(here)));
        }
        if dir == base || !dir.pop() || !dir.starts_with(&base) {
            return room;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_in_kibibytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(mem_available(text), Some(23_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
    }

    fn tree(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let root =
            std::env::temp_dir().join(format!("maxbatch-cgroup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        root
    }

    #[test]
    fn a_cgroup_v2_limit_leaves_the_limit_minus_the_usage() {
        let root = tree(
            "v2",
            &[
                ("memory.max", "max\n"),
                ("job/memory.max", "4294967296\n"),
                ("job/memory.current", "1073741824\n"),
            ],
        );
        assert_eq!(cgroup_room(&root, "0::/job\n"), Some(3 << 30));
        // A tighter limit on a parent binds the child.
        std::fs::write(root.join("memory.max"), "2147483648").unwrap();
        std::fs::write(root.join("memory.current"), "1610612736").unwrap();
        assert_eq!(cgroup_room(&root, "0::/job\n"), Some(512 << 20));
        // No limit anywhere: none.
        std::fs::write(root.join("memory.max"), "max").unwrap();
        std::fs::write(root.join("job/memory.max"), "max").unwrap();
        assert_eq!(cgroup_room(&root, "0::/job\n"), None);
        // A container's namespace shows its own cgroup as the root.
        std::fs::write(root.join("memory.max"), "1073741824").unwrap();
        std::fs::write(root.join("memory.current"), "0").unwrap();
        assert_eq!(cgroup_room(&root, "0::/\n"), Some(1 << 30));
    }

    #[test]
    fn a_cgroup_v1_limit_is_read_from_the_memory_controller() {
        let root = tree(
            "v1",
            &[
                ("memory/docker/abc/memory.limit_in_bytes", "8589934592\n"),
                ("memory/docker/abc/memory.usage_in_bytes", "2147483648\n"),
                ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ],
        );
        let text = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_room(&root, text), Some(6 << 30));
        assert_eq!(cgroup_room(&root, "4:cpu:/x\n"), None);
    }
}
