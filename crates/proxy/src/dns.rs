//! Where the egress connects for a remote domain: DNS SRV records (RFC 6120 §3.2,
//! XEP-0368), ordered per RFC 2782.
//!
//! Both `_xmpps-server._tcp.DOMAIN` (direct TLS, XEP-0368) and
//! `_xmpp-server._tcp.DOMAIN` (STARTTLS, RFC 6120 §3.2.1) are looked up; their
//! records are merged into one list and ordered by priority, then by RFC 2782's
//! weighted random selection within a priority (XEP-0368 §3). A record whose
//! target is `.` says the service is decidedly not available (RFC 2782); when no
//! usable record remains, the domain has no XMPP service. Only when neither name
//! has any record does the egress fall back to the domain itself on port 5269
//! (RFC 6120 §3.2.2). Answers are cached for their TTL by the resolver, in a cache
//! of bounded size.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};

/// Which nameserver the egress asks (`[s2s] resolver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResolverSetting {
    /// The system's resolver configuration (`/etc/resolv.conf`).
    #[default]
    System,
    /// One nameserver, over UDP with TCP for truncated answers.
    Nameserver(SocketAddr),
}

/// How many answers the resolver keeps (each for at most its TTL).
const CACHE_SIZE: usize = 1024;

/// One place to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (`_xmpps-server`, XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// What DNS says about a domain's server-to-server service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// SRV records, in the order to try them.
    Records(Vec<Hop>),
    /// SRV records exist but all have the target `.`: no service (RFC 2782).
    Unavailable,
    /// No SRV record at all: the domain itself on port 5269 (RFC 6120 §3.2.2).
    Fallback,
}

/// The egress's resolver.
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    pub fn new(setting: ResolverSetting) -> Result<Resolver, String> {
        let provider = TokioConnectionProvider::default();
        let mut builder = match setting {
            ResolverSetting::System => TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
            ResolverSetting::Nameserver(address) => {
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], servers),
                    provider,
                )
            }
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.cache_size = CACHE_SIZE;
        Ok(Resolver {
            inner: builder.build(),
        })
    }

    /// The SRV records of `domain`'s s2s service, in the order to try them.
    pub async fn service(&self, domain: &str) -> Result<Service, String> {
        let direct = self.srv(&format!("_xmpps-server._tcp.{domain}.")).await;
        let starttls = self.srv(&format!("_xmpp-server._tcp.{domain}.")).await;
        let mut records = Vec::new();
        let mut any = false;
        let mut failure = None;
        for (answer, direct_tls) in [(direct, true), (starttls, false)] {
            match answer {
                Ok(list) => {
                    any |= !list.is_empty();
                    records.extend(
                        list.into_iter()
                            .filter_map(|r| (r.host != ".").then_some(Record { direct_tls, ..r })),
                    );
                }
                Err(e) => failure = Some(e),
            }
        }
        if !records.is_empty() {
            let mut rng = SmallRng::from_entropy();
            return Ok(Service::Records(order(records, &mut rng)));
        }
        if let Some(e) = failure {
            return Err(format!("DNS lookup for {domain} failed: {e}"));
        }
        Ok(if any {
            Service::Unavailable
        } else {
            Service::Fallback
        })
    }

    /// The records of one SRV name; none when the name or its records do not exist.
    async fn srv(&self, name: &str) -> Result<Vec<Record>, ResolveError> {
        match self.inner.srv_lookup(name).await {
            Ok(lookup) => Ok(lookup
                .iter()
                .map(|srv| {
                    let target = srv.target().to_ascii();
                    let host = if srv.target().is_root() {
                        ".".to_owned()
                    } else {
                        target.trim_end_matches('.').to_owned()
                    };
                    Record {
                        priority: srv.priority(),
                        weight: srv.weight(),
                        host,
                        port: srv.port(),
                        direct_tls: false,
                    }
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The addresses of `host` (A and AAAA).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = format!("{}.", host.trim_end_matches('.'));
        match self.inner.lookup_ip(name).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(format!("{host} has no address"))
            }
            Err(e) => Err(format!("DNS lookup for {host} failed: {e}")),
        }
    }
}

/// The egress's resolver for `setting`, kept while the setting stays the same
/// (so its cache survives reloads that do not change it).
#[derive(Debug, Default)]
pub struct ResolverSlot {
    current: std::sync::Mutex<Option<(ResolverSetting, Arc<Resolver>)>>,
}

impl ResolverSlot {
    pub fn get(&self, setting: ResolverSetting) -> Result<Arc<Resolver>, String> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((s, r)) = current.as_ref() {
            if *s == setting {
                return Ok(r.clone());
            }
        }
        let resolver = Arc::new(Resolver::new(setting)?);
        *current = Some((setting, resolver.clone()));
        Ok(resolver)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    priority: u16,
    weight: u16,
    host: String,
    port: u16,
    direct_tls: bool,
}

/// A small seeded generator (SplitMix64): enough for spreading load by weight.
#[derive(Debug)]
pub(crate) struct SmallRng(u64);

impl SmallRng {
    #[cfg(test)]
    fn seeded(seed: u64) -> SmallRng {
        SmallRng(seed)
    }

    fn from_entropy() -> SmallRng {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        SmallRng(u64::from_le_bytes(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u32) -> u32 {
        (self.next_u64() % (u64::from(max) + 1)) as u32
    }
}

/// RFC 2782's order: ascending priority; within a priority, repeatedly pick a
/// record at random with probability proportional to its weight (zero-weight
/// records first in the running sum, so they are picked rarely but can be).
fn order(mut records: Vec<Record>, rng: &mut SmallRng) -> Vec<Hop> {
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let end = records
            .iter()
            .position(|r| r.priority != priority)
            .unwrap_or(records.len());
        let mut group: Vec<Record> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.up_to(total);
            let mut running = 0u32;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            let r = group.remove(index);
            out.push(Hop {
                host: r.host,
                port: r.port,
                direct_tls: r.direct_tls,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(priority: u16, weight: u16, host: &str) -> Record {
        Record {
            priority,
            weight,
            host: host.into(),
            port: 5269,
            direct_tls: false,
        }
    }

    fn hosts(hops: &[Hop]) -> Vec<&str> {
        hops.iter().map(|h| h.host.as_str()).collect()
    }

    #[test]
    fn lower_priority_value_comes_first_whatever_the_weights() {
        let records = vec![
            record(20, 100, "c"),
            record(10, 0, "a"),
            record(30, 65535, "d"),
            record(10, 0, "b"),
        ];
        for seed in 0..50 {
            let hops = order(records.clone(), &mut SmallRng::seeded(seed));
            let h = hosts(&hops);
            assert_eq!(&h[2..], ["c", "d"], "seed {seed}");
            assert!(
                h[..2].contains(&"a") && h[..2].contains(&"b"),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn weights_share_the_first_place_in_proportion() {
        // RFC 2782's selection: a number drawn in 0..=sum (inclusive of 0), the first
        // record whose running sum reaches it. With weights 1 then 3 (sum 4), draws 0
        // and 1 pick "light", 2, 3 and 4 "heavy": heavy first 3 times in 5.
        let records = vec![record(10, 1, "light"), record(10, 3, "heavy")];
        let mut rng = SmallRng::seeded(7);
        let mut heavy_first = 0;
        let runs = 4000;
        for _ in 0..runs {
            let hops = order(records.clone(), &mut rng);
            assert_eq!(hosts(&hops).len(), 2);
            if hops[0].host == "heavy" {
                heavy_first += 1;
            }
        }
        // Expected 2400, standard deviation 31: the bounds are six of them wide.
        assert!((2215..=2585).contains(&heavy_first), "{heavy_first}");
        // Equal weights: either first about half the time.
        let records = vec![record(10, 5, "a"), record(10, 5, "b")];
        let a_first = (0..runs)
            .filter(|_| order(records.clone(), &mut rng)[0].host == "a")
            .count();
        // Draws 0..=5 of 0..=10 pick "a": 6 in 11, expected 2182, deviation 31.
        assert!((1995..=2370).contains(&a_first), "{a_first}");
    }

    #[test]
    fn zero_weight_records_are_rarely_but_possibly_first() {
        let records = vec![record(10, 0, "zero"), record(10, 10, "ten")];
        let mut rng = SmallRng::seeded(1);
        let firsts: Vec<String> = (0..2000)
            .map(|_| order(records.clone(), &mut rng)[0].host.clone())
            .collect();
        let zero = firsts.iter().filter(|h| *h == "zero").count();
        // Only a pick of exactly 0 out of 0..=10 selects it: 1 in 11.
        assert!(zero > 0 && zero < 400, "{zero}");
    }

    #[test]
    fn the_same_seed_gives_the_same_order() {
        let records: Vec<Record> = (0..8).map(|i| record(5, 1 + i, &i.to_string())).collect();
        let a = order(records.clone(), &mut SmallRng::seeded(42));
        let b = order(records.clone(), &mut SmallRng::seeded(42));
        assert_eq!(a, b);
        let mut sorted = hosts(&a);
        sorted.sort();
        assert_eq!(sorted, ["0", "1", "2", "3", "4", "5", "6", "7"]);
    }

    #[test]
    fn direct_tls_and_starttls_records_merge_by_priority() {
        let mut direct = record(20, 0, "direct");
        direct.direct_tls = true;
        let records = vec![direct, record(10, 0, "starttls")];
        let hops = order(records, &mut SmallRng::seeded(3));
        assert_eq!(hosts(&hops), ["starttls", "direct"]);
        assert!(!hops[0].direct_tls && hops[1].direct_tls);
    }
}
