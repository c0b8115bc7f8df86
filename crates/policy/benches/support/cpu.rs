//! A benchmark's rate in stanzas per second of the thread's own CPU time, which the
//! benchmarks print beside criterion's wall-clock figures.

use std::time::{Duration, Instant};

/// Time this thread has spent on a CPU, from Linux's `/proc/thread-self/schedstat`.
/// Criterion measures wall time, which other processes on a shared machine inflate;
/// this does not count the time the thread waited for a CPU.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Prints stanzas per second of CPU time over `passes` calls of `pass`, each of which
/// handles `per_pass` stanzas (nothing off Linux).
///
/// Only when benchmarking (`cargo bench` passes `--bench`): `cargo test` runs the
/// benchmarks once each in a debug build, where the rate would mean nothing.
pub fn cpu_rate(name: &str, per_pass: usize, passes: usize, mut pass: impl FnMut()) {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (Some(cpu0), wall0) = (thread_cpu_time(), Instant::now()) else {
        return;
    };
    for _ in 0..passes {
        pass();
    }
    let (Some(cpu1), wall) = (thread_cpu_time(), wall0.elapsed()) else {
        return;
    };
    let cpu = (cpu1 - cpu0).as_secs_f64();
    let stanzas = (passes * per_pass) as f64;
    eprintln!(
        "{name}: {:.0} stanzas per CPU-second ({:.0} ns per stanza; on a CPU {:.0}% of the wall time)",
        stanzas / cpu,
        cpu * 1e9 / stanzas,
        100.0 * cpu / wall.as_secs_f64()
    );
}
