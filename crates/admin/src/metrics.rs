//! Prometheus exposition of what the proxy counts.
//!
//! Owns the metric names and their mapping from the proxy's own counters: every
//! value is read at scrape time from the atomics the relay already keeps, so
//! exposition adds nothing to the per-stanza path. Names follow
//! `xmppwall_<name>_<unit>_total` for counters (the `_total` suffix is added by the
//! encoder); gauges and the histogram carry their unit.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use xmppwall_policy::bans::BAN_KINDS;
use xmppwall_proxy::config::Front;
use xmppwall_proxy::server::Shared;
use xmppwall_proxy::stats::{Outcome, Stats, PROCESSING_BUCKETS_NS};

/// Every metric name the exposition can contain (the dashboard test checks
/// against a scrape; this list documents them in one place).
pub const METRIC_NAMES: &[&str] = &[
    "xmppwall_connections_total",
    "xmppwall_connections_open",
    "xmppwall_sessions_live",
    "xmppwall_sasl_total",
    "xmppwall_stanzas_total",
    "xmppwall_relayed_bytes_total",
    "xmppwall_rule_hits_total",
    "xmppwall_limit_hits_total",
    "xmppwall_bans_total",
    "xmppwall_ban_refusals_total",
    "xmppwall_bans_active",
    "xmppwall_table_entries",
    "xmppwall_table_capacity",
    "xmppwall_table_evictions_total",
    "xmppwall_upstream_errors_total",
    "xmppwall_streams_answered_before_connect_total",
    "xmppwall_tls_handshake_failures_total",
    "xmppwall_stanza_processing_seconds",
    "xmppwall_redis_up",
    "xmppwall_redis_outages_total",
    "xmppwall_redis_errors_total",
    "xmppwall_shared_rule_rate_events_total",
];

/// Reads [`Shared`] at every scrape.
struct ProxyCollector {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyCollector")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels<'_>, u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, i64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for ProxyCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let shared = &self.shared;
        let s = &shared.stats;
        let n = Stats::get;

        let outcomes: Vec<(Labels<'_>, u64)> = Front::ALL
            .iter()
            .flat_map(|f| {
                Outcome::ALL.iter().map(move |o| {
                    (
                        vec![("front", f.name()), ("outcome", o.name())],
                        n(&s.outcomes[f.index()][*o as usize]),
                    )
                })
            })
            .collect();
        counter(
            &mut e,
            "xmppwall_connections",
            "Connections that ended, by front and how they ended (on s2s, s2s-egress and component, client is the remote server or the component).",
            None,
            &outcomes,
        )?;
        let open: Vec<(Labels<'_>, i64)> = Front::ALL
            .iter()
            .map(|f| (vec![("front", f.name())], s.open_on(*f) as i64))
            .collect();
        gauge(
            &mut e,
            "xmppwall_connections_open",
            "Connections open now (accepted, not yet ended), by front.",
            &open,
        )?;
        let live: Vec<(Labels<'_>, i64)> = Front::ALL
            .iter()
            .map(|f| {
                (
                    vec![("front", f.name())],
                    count(shared.sessions.count_front(f.name())),
                )
            })
            .collect();
        gauge(
            &mut e,
            "xmppwall_sessions_live",
            "Relayed streams in the session registry, by front.",
            &live,
        )?;
        counter(
            &mut e,
            "xmppwall_sasl",
            "SASL outcomes the server sent.",
            None,
            &[
                (vec![("outcome", "success")], n(&s.sasl_successes)),
                (vec![("outcome", "failure")], n(&s.sasl_failures)),
            ],
        )?;
        counter(
            &mut e,
            "xmppwall_stanzas",
            "Top-level elements by direction and verdict (pass: forwarded, rewritten included).",
            None,
            &[
                (
                    vec![("direction", "to_server"), ("verdict", "pass")],
                    n(&s.stanzas_to_server),
                ),
                (
                    vec![("direction", "to_server"), ("verdict", "bounce")],
                    n(&s.stanzas_bounced),
                ),
                (
                    vec![("direction", "to_server"), ("verdict", "drop")],
                    n(&s.to_server_dropped),
                ),
                (
                    vec![("direction", "to_server"), ("verdict", "close")],
                    n(&s.to_server_closed),
                ),
                (
                    vec![("direction", "to_client"), ("verdict", "pass")],
                    n(&s.stanzas_to_client),
                ),
                (
                    vec![("direction", "to_client"), ("verdict", "drop")],
                    n(&s.to_client_dropped),
                ),
            ],
        )?;
        counter(
            &mut e,
            "xmppwall_relayed",
            "Bytes read on relayed streams, by direction.",
            Some(&Unit::Bytes),
            &[
                (vec![("direction", "to_server")], n(&s.bytes_from_client)),
                (vec![("direction", "to_client")], n(&s.bytes_from_server)),
            ],
        )?;

        let policy = shared.policy.load();
        let rule_hits: Vec<(Labels<'_>, u64)> = policy
            .rule_hits()
            .into_iter()
            .flat_map(|(chain, rule, hits, shadow)| {
                [
                    (
                        vec![("chain", chain), ("rule", rule), ("mode", "enforce")],
                        hits,
                    ),
                    (
                        vec![("chain", chain), ("rule", rule), ("mode", "shadow")],
                        shadow,
                    ),
                ]
            })
            .collect();
        counter(
            &mut e,
            "xmppwall_rule_hits",
            "Rule matches by chain and rule (shadow: matched in shadow mode, changed nothing). Counts restart when a reload changes the rules.",
            None,
            &rule_hits,
        )?;

        let limits = shared.limiter.load().state.snapshot();
        let limit_hits: Vec<(Labels<'_>, u64)> = limits
            .hits
            .iter()
            .map(|(k, v)| (vec![("limit", k.name())], *v))
            .collect();
        counter(
            &mut e,
            "xmppwall_limit_hits",
            "Built-in (XEP-0205) limit hits by limit.",
            None,
            &limit_hits,
        )?;

        let added = shared.bans.added();
        let enforced = shared.bans.enforced();
        let sizes = shared.bans.sizes();
        let bans: Vec<(Labels<'_>, u64)> = BAN_KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| (vec![("kind", *k)], added[i]))
            .collect();
        counter(
            &mut e,
            "xmppwall_bans",
            "Bans the operator added, by kind.",
            None,
            &bans,
        )?;
        let refusals: Vec<(Labels<'_>, u64)> = BAN_KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| (vec![("kind", *k)], enforced[i]))
            .collect();
        counter(
            &mut e,
            "xmppwall_ban_refusals",
            "Connections, logins and stanzas refused because of an operator's ban, by kind.",
            None,
            &refusals,
        )?;
        let active: Vec<(Labels<'_>, i64)> = BAN_KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| (vec![("kind", *k)], count(sizes[i])))
            .collect();
        gauge(
            &mut e,
            "xmppwall_bans_active",
            "Operator's bans in force, by kind.",
            &active,
        )?;

        gauge(
            &mut e,
            "xmppwall_table_entries",
            "Entries in the bounded shared tables.",
            &[
                (vec![("table", "addresses")], count(limits.addresses)),
                (vec![("table", "accounts")], count(limits.accounts)),
                (
                    vec![("table", "peer_domains")],
                    count(limits.peer_domains.0),
                ),
                (
                    vec![("table", "peer_senders")],
                    count(limits.peer_senders.0),
                ),
                (vec![("table", "sessions")], count(shared.sessions.len())),
            ],
        )?;
        gauge(
            &mut e,
            "xmppwall_table_capacity",
            "Caps of the bounded shared tables.",
            &[
                (vec![("table", "addresses")], count(limits.address_cap)),
                (vec![("table", "accounts")], count(limits.account_cap)),
                (
                    vec![("table", "peer_domains")],
                    count(limits.peer_domains.1),
                ),
                (
                    vec![("table", "peer_senders")],
                    count(limits.peer_senders.1),
                ),
            ],
        )?;
        counter(
            &mut e,
            "xmppwall_table_evictions",
            "Entries evicted from a full table.",
            None,
            &[
                (vec![("table", "addresses")], limits.address_evictions),
                (vec![("table", "accounts")], limits.account_evictions),
                (vec![("table", "peer_domains")], limits.peer_domains.2),
                (vec![("table", "peer_senders")], limits.peer_senders.2),
            ],
        )?;
        counter(
            &mut e,
            "xmppwall_upstream_errors",
            "Errors talking to the XMPP server.",
            None,
            &[
                (vec![("kind", "connect")], n(&s.upstream_connect_failures)),
                (vec![("kind", "io")], n(&s.upstream_io_errors)),
            ],
        )?;
        counter(
            &mut e,
            "xmppwall_streams_answered_before_connect",
            "Client streams xmppwall answered (header and features) before connecting to the server.",
            None,
            &[(vec![], n(&s.streams_answered_before_connect))],
        )?;
        counter(
            &mut e,
            "xmppwall_tls_handshake_failures",
            "TLS handshakes with clients that failed or timed out.",
            None,
            &[(vec![], n(&s.tls_handshake_failures))],
        )?;

        // Shared state (`[store] shared = "redis"`): only when it is on.
        if let Some(cluster) = shared.cluster.get() {
            gauge(
                &mut e,
                "xmppwall_redis_up",
                "1 while Redis answers (state is shared with the other instances), 0 while this instance enforces with its own state only.",
                &[(vec![], i64::from(cluster.redis_up()))],
            )?;
            counter(
                &mut e,
                "xmppwall_redis_outages",
                "Times Redis went away since start.",
                None,
                &[(vec![], cluster.redis_outages())],
            )?;
            counter(
                &mut e,
                "xmppwall_redis_errors",
                "Redis calls at accept or at a bind request that failed or timed out (the local decision stood).",
                None,
                &[(vec![], cluster.redis_errors())],
            )?;
            counter(
                &mut e,
                "xmppwall_shared_rule_rate_events",
                "Events the other instances admitted under rule rate limits, added to the buckets here.",
                None,
                &[(vec![], cluster.rate_uses_received())],
            )?;
        }

        let (sum, total, counts) = s.processing.read();
        let mut buckets: Vec<(f64, u64)> = PROCESSING_BUCKETS_NS
            .iter()
            .zip(&counts)
            .map(|(ns, c)| (*ns as f64 / 1e9, *c))
            .collect();
        buckets.push((f64::MAX, counts.last().copied().unwrap_or(0)));
        let mut family = e.encode_descriptor(
            "xmppwall_stanza_processing",
            "Time xmppwall takes to decide on one client frame (framing excluded), sampled one frame in 64.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        family.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)?;
        Ok(())
    }
}

/// The text exposition of every metric.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector {
        shared: shared.clone(),
    }));
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
