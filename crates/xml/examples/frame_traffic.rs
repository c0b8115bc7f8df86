//! Frames generated mixed traffic in 4 KiB reads and prints the throughput:
//! `cargo run --release -p xmppwall-xml --example frame_traffic [MiB] [rounds] [FILE]`.
//! For profiling (`perf record`) and quick comparisons without criterion.
//!
//! With FILE, the traffic is that file's stanzas (repeated up to MiB) inside a stream
//! header instead: `xmppwall-bench workload > mix.xml` gives the relay benchmark's mix.

use std::time::Instant;
use xmppwall_xml::{Framer, Limits};

#[path = "../tests/support/traffic.rs"]
mod traffic;

const LIMITS: Limits = Limits {
    max_element_bytes: 256 * 1024,
    max_depth: 32,
    max_elements: 100_000,
    max_attributes: 64,
    max_name_bytes: 256,
    max_attribute_value_bytes: 16 * 1024,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let input = match args.next() {
        Some(path) => {
            let stanzas = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let mut input = traffic::HEADER.as_bytes().to_vec();
            while input.len() < mib << 20 {
                input.extend_from_slice(&stanzas);
            }
            input.extend_from_slice(b"</stream:stream>");
            input
        }
        None => traffic::stream(7, mib << 20),
    };
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        let mut framer = Framer::new(LIMITS);
        let mut buf: Vec<u8> = Vec::with_capacity(LIMITS.max_element_bytes + 4096);
        let mut frames = 0usize;
        for read in input.chunks(4096) {
            buf.extend_from_slice(read);
            let mut head = 0;
            while let Some(frame) = framer
                .next(&buf[head..])
                .unwrap_or_else(|e| panic!("rejected: {e}"))
            {
                head += frame.len;
                frames += 1;
            }
            buf.drain(..head);
        }
        best = best.min(started.elapsed().as_secs_f64());
        std::hint::black_box(frames);
    }
    println!(
        "{} bytes, best {:.3} ms, {:.2} GB/s",
        input.len(),
        best * 1e3,
        input.len() as f64 / best / 1e9
    );
}
