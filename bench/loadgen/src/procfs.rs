//! What the kernel says about the processes under test: memory and CPU time.

use std::collections::{HashMap, HashSet};
use std::fs;

use anyhow::Context as _;

/// Memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// `VmRSS` from /proc/PID/status: resident pages, shared ones counted in full.
    pub rss: u64,
    /// `RssAnon`: resident anonymous memory (heap, stacks), what connections cost.
    pub rss_anon: u64,
    /// `Pss` from smaps_rollup: shared pages divided among their users.
    pub pss: u64,
    /// `Private_Clean + Private_Dirty` from smaps_rollup.
    pub private: u64,
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub fn mem(pid: u32) -> anyhow::Result<Mem> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("cannot read /proc/{pid}/smaps_rollup"))?;
    let get = |text: &str, name: &str| {
        field(text, name).with_context(|| format!("no {name} for process {pid}"))
    };
    Ok(Mem {
        rss: get(&status, "VmRSS")?,
        rss_anon: get(&status, "RssAnon")?,
        pss: get(&rollup, "Pss")?,
        private: get(&rollup, "Private_Clean")? + get(&rollup, "Private_Dirty")?,
    })
}

/// Open file descriptors of a process.
pub fn fds(pid: u32) -> anyhow::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?
        .count())
}

/// CPU time in nanoseconds used so far by `root` and every process descended from
/// it (socat forks one process per connection), summed over their threads.
///
/// Threads and processes that already exited are not counted, so sample while the
/// connections are open.
pub fn cpu_ns(root: u32) -> u64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    let mut total = 0;
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        total += threads_cpu_ns(pid);
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
    }
    total
}

fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields follow the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The first field of schedstat is time spent on the CPU, in nanoseconds.
fn threads_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
