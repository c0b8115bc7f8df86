//! Turns a results file into the markdown tables of BENCHMARKS.md, with the ratios
//! the targets are stated in.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use crate::record::Record;

pub fn print(path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records: Vec<Record> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(Record::parse)
        .collect();
    let of = |kind: &str| -> Vec<&Record> {
        records
            .iter()
            .filter(|r| r.get("kind") == Some(kind))
            .collect()
    };
    throughput(&of("throughput"));
    latency(&of("latency"));
    idle(&of("idle"));
    Ok(())
}

fn f(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// Mean of a field over the records with the same label and K (repeated runs).
fn mean(rows: &[&Record], key: &str) -> f64 {
    rows.iter().map(|r| r.num(key)).sum::<f64>() / rows.len() as f64
}

fn throughput(records: &[&Record]) {
    if records.is_empty() {
        return;
    }
    // Keyed by K, then by label in the order the script ran them.
    let mut by_k: BTreeMap<u64, Vec<(String, Vec<&Record>)>> = BTreeMap::new();
    for r in records {
        let k = r.num("k") as u64;
        let label = r.get("label").unwrap_or("?").to_owned();
        let rows = by_k.entry(k).or_default();
        match rows.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push(r),
            None => rows.push((label, vec![r])),
        }
    }
    println!("### Relay throughput\n");
    println!(
        "| path | K | runs | MB/s | stanzas/s | × direct | × haproxy | proxy CPU (% of a core) \
         | proxy CPU µs per MB | loadgen CPU % | sink CPU % |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for (k, rows) in &by_k {
        let find = |name: &str| {
            rows.iter()
                .find(|(l, _)| l == name)
                .map(|(_, v)| mean(v, "mb_per_s"))
                .unwrap_or(f64::NAN)
        };
        let direct = find("direct");
        let haproxy = find("haproxy");
        for (label, runs) in rows {
            let mbps = mean(runs, "mb_per_s");
            println!(
                "| {label} | {k} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                runs.len(),
                f(mbps, 1),
                f(mean(runs, "stanzas_per_s"), 0),
                f(mbps / direct, 2),
                f(mbps / haproxy, 2),
                f(mean(runs, "proxy_cpu_pct"), 0),
                f(mean(runs, "proxy_cpu_us_per_mb"), 0),
                f(mean(runs, "loadgen_cpu_pct"), 0),
                f(mean(runs, "sink_cpu_pct"), 0),
            );
        }
        let xmppwall = find("xmppwall");
        let verdict = if xmppwall / haproxy >= 0.8 {
            "meets"
        } else {
            "MISSES"
        };
        summary.push(format!(
            "- K={k}: xmppwall / haproxy = **{}** ({verdict} the ≥ 0.8 target)",
            f(xmppwall / haproxy, 2)
        ));
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    println!();
}

fn latency(records: &[&Record]) {
    if records.is_empty() {
        return;
    }
    // A label "path/variant" is compared with "direct/variant" (e.g. pinned or not).
    let base = |label: &str| -> Option<&&Record> {
        let want = match label.split_once('/') {
            Some((_, variant)) => format!("direct/{variant}"),
            None => "direct".to_owned(),
        };
        records
            .iter()
            .find(|r| r.get("label") == Some(want.as_str()))
    };
    println!("### Round-trip latency (one client, one ping in flight)\n");
    println!(
        "| path | samples | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | added p50 µs \
         | added p99 µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for r in records {
        let label = r.get("label").unwrap_or("?");
        let direct = base(label);
        let added = |key: &str| direct.map(|d| r.num(key) - d.num(key)).unwrap_or(f64::NAN);
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.get("samples").unwrap_or("–"),
            f(r.num("p50_us"), 1),
            f(r.num("p90_us"), 1),
            f(r.num("p99_us"), 1),
            f(r.num("p999_us"), 1),
            f(r.num("max_us"), 1),
            f(added("p50_us"), 1),
            f(added("p99_us"), 1),
        );
        if label.starts_with("xmppwall") {
            let p99 = added("p99_us");
            let verdict = if p99 <= 100.0 { "meets" } else { "MISSES" };
            summary.push(format!(
                "- {label}: added p99 = **{} µs** ({verdict} the ≤ 100 µs target)",
                f(p99, 1)
            ));
        }
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    println!();
}

fn idle(records: &[&Record]) {
    if records.is_empty() {
        return;
    }
    println!("### Memory per idle authenticated connection\n");
    println!(
        "| process / front | connections | VmRSS before → after (MiB) | VmRSS / conn (KiB) \
         | RssAnon / conn | Pss / conn | Private / conn | slope between stages (KiB) \
         | VmRSS after closing all (MiB) | opening + settling (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for r in records {
        let label = r.get("label").unwrap_or("?");
        let mib = |key: &str| f(r.num(key) / 1024.0, 1);
        println!(
            "| {label} | {} | {} → {} | {} | {} | {} | {} | {} | {} | {} |",
            r.get("connections").unwrap_or("–"),
            mib("rss_before_kib"),
            mib("rss_after_kib"),
            f(r.num("rss_per_conn_kib"), 1),
            f(r.num("anon_per_conn_kib"), 1),
            f(r.num("pss_per_conn_kib"), 1),
            f(r.num("private_per_conn_kib"), 1),
            f(r.num("rss_slope_kib"), 1),
            mib("rss_closed_kib"),
            f(r.num("open_seconds"), 1),
        );
        let target = match label {
            "xmppwall-plain" => Some(16.0),
            "xmppwall-tls" => Some(48.0),
            _ => None,
        };
        if let Some(t) = target {
            let v = r.num("rss_per_conn_kib");
            let verdict = if v <= t { "meets" } else { "MISSES" };
            summary.push(format!(
                "- {label}: **{} KiB** VmRSS per connection ({verdict} the ≤ {t} KiB target)",
                f(v, 1)
            ));
        }
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    println!();
}
