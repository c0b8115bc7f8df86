//! Evaluates the benchmark's 200-rule policy over its traffic a fixed number of times,
//! so that an instruction counter (`valgrind --tool=callgrind`) gives a repeatable cost
//! per stanza on a machine too noisy for timings:
//!
//! ```text
//! cargo build --release -p xmppwall-policy --example policy_cost
//! valgrind --tool=callgrind target/release/examples/policy_cost large 50
//! ```
//!
//! Arguments: `large` (default), `nothing` or `none`, then the number of rounds over
//! the 400 stanzas (default 50). Prints stanzas, seconds and stanzas per second.

use std::time::{Instant, SystemTime};

use xmppwall_policy::rules::{Hook, Marks, Policy};
use xmppwall_policy::stanza::Stanza;

#[path = "../benches/support/policy200.rs"]
mod policy200;

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "large".into());
    let rounds: usize = args
        .next()
        .map_or(50, |n| n.parse().expect("rounds: a number"));
    let policy = match which.as_str() {
        "large" => policy200::load(&policy200::large_policy()),
        "nothing" => policy200::load(&policy200::matching_nothing()),
        "none" => Policy::default(),
        other => panic!("unknown policy {other}: large, nothing or none"),
    };
    let traffic = policy200::traffic();
    let marks = Marks::default();
    let subject = policy200::subject(&marks);
    let started = Instant::now();
    let mut decisive = 0usize;
    for _ in 0..rounds {
        let now = Instant::now();
        let wall = SystemTime::now();
        for xml in &traffic {
            let Some(stanza) = Stanza::parse(xml.as_bytes()) else {
                continue;
            };
            let verdict = policy.evaluate(Hook::ToServer, Some(&stanza), &subject, now, wall);
            decisive += usize::from(std::hint::black_box(verdict).action.is_some());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let stanzas = rounds * traffic.len();
    println!(
        "{which}: {stanzas} stanzas, {decisive} decisive, {seconds:.3} s, {:.0} stanzas/s",
        stanzas as f64 / seconds
    );
}
