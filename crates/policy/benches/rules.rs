//! Per-stanza cost of the operator's policy.
//!
//! - `large_policy`: 200 rules with 10,000 keywords, 1,000 URL domains and 50 regular
//!   expressions, on realistic traffic (chat with and without links, presence, iq).
//! - `matching_nothing`: 200 rules that look only at the `to` address of messages to
//!   a domain nobody writes to: the cost of a policy that never matches should be
//!   close to zero, because only what rules need is read from a stanza.
//! - `no_policy`: an empty policy, the floor.
//!
//! Before each criterion run the benchmark prints the variant's rate in stanzas per
//! CPU-second (the thread's on-CPU time, from Linux's schedstat, which leaves out the
//! time it waited for a CPU or that the hypervisor gave to another guest).

use std::time::{Instant, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use xmppwall_policy::rules::{Hook, Marks, Policy};
use xmppwall_policy::stanza::Stanza;

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/policy200.rs"]
mod policy200;
use policy200::{large_policy, load, matching_nothing, traffic};

fn run(c: &mut Criterion, name: &str, policy: &Policy, traffic: &[String]) {
    let marks = Marks::default();
    let subject = policy200::subject(&marks);
    let pass = || {
        let now = Instant::now();
        let wall = SystemTime::now();
        for xml in traffic {
            let Some(stanza) = Stanza::parse(xml.as_bytes()) else {
                continue;
            };
            black_box(policy.evaluate(Hook::ToServer, Some(&stanza), &subject, now, wall));
        }
    };
    // About two seconds of the large policy.
    cpu::cpu_rate(name, traffic.len(), 2_000, &pass);
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(traffic.len() as u64));
    group.bench_function(name, |b| b.iter(pass));
    group.finish();
}

fn bench(c: &mut Criterion) {
    let traffic = traffic();
    let large = load(&large_policy());
    run(c, "large_policy_200_rules", &large, &traffic);

    run(
        c,
        "matching_nothing_200_rules",
        &load(&matching_nothing()),
        &traffic,
    );
    run(c, "no_policy", &Policy::default(), &traffic);
}

criterion_group!(benches, bench);
criterion_main!(benches);
