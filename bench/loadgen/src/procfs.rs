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
    tree_schedstat(root, 0)
}

/// Time in nanoseconds `root` and its descendants' threads spent runnable but waiting
/// for a CPU (the second field of schedstat): how much they were starved.
pub fn wait_ns(root: u32) -> u64 {
    tree_schedstat(root, 1)
}

/// CPU time and run-queue wait, in nanoseconds, of this process's threads named `name`.
pub fn threads_named(name: &str) -> (u64, u64) {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    let mut total = (0, 0);
    for t in tasks.flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let s = fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        total.0 += f.next().unwrap_or(0);
        total.1 += f.next().unwrap_or(0);
    }
    total
}

/// Field `field` of schedstat summed over `root`'s process tree and threads.
fn tree_schedstat(root: u32, field: usize) -> u64 {
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
        total += threads_schedstat(pid, field);
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

/// Field `field` of schedstat (0: time on the CPU, 1: time waiting for one), in
/// nanoseconds, summed over `pid`'s threads.
fn threads_schedstat(pid: u32, field: usize) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(field)?.parse::<u64>().ok())
        .sum()
}
