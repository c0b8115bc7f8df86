//! Client addresses as limits see them.
//!
//! Owns two things: grouping an address into the key a per-address limit counts
//! under ([`AddressKey`]: IPv6 by a prefix, default /64, so one host cannot rotate
//! through its subnet), and CIDR lists ([`CidrList`]) matched in O(log n).

use std::net::IpAddr;

use ipnet::IpNet;

/// The key per-address limits count under: the address with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// Groups `ip`: IPv4 by `v4_prefix` bits, IPv6 by `v6_prefix` bits. IPv4-mapped
    /// IPv6 addresses count as the IPv4 address they carry.
    pub fn new(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> AddressKey {
        let key = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask32(v4_prefix);
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & mask128(v6_prefix);
                IpAddr::V6(bits.into())
            }
        };
        AddressKey(key)
    }

    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn mask32(prefix: u8) -> u32 {
    match prefix.min(32) {
        0 => 0,
        p => u32::MAX << (32 - p),
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix.min(128) {
        0 => 0,
        p => u128::MAX << (128 - p),
    }
}

/// A set of CIDR ranges, as sorted, merged intervals per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrList {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> CidrList {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        CidrList {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Parses `"10.0.0.0/8"`, `"2001:db8::/32"` or a bare address (a /32 or /128).
    pub fn parse_entry(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(net.trunc());
        }
        text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!("{text:?} is neither an address nor a CIDR range like \"192.0.2.0/24\"")
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Every range as inclusive bounds in one 128-bit space, IPv4 as IPv4-mapped
    /// IPv6 (`::ffff:a.b.c.d`), the form [`CidrList::key`] gives an address.
    pub fn ranges(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        let mapped = |a: u32| (0xffffu128 << 32) | u128::from(a);
        self.v4
            .iter()
            .map(move |&(s, e)| (mapped(s), mapped(e)))
            .chain(self.v6.iter().copied())
    }

    /// An address in the space of [`CidrList::ranges`].
    pub fn key(ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            IpAddr::V4(a) => (0xffffu128 << 32) | u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// Number of disjoint ranges after merging.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// The set as CIDR ranges, smallest number of them, IPv4 first (overlapping
    /// and adjacent entries appear merged).
    pub fn nets(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(start, end) in &self.v4 {
            out.extend(ipnet::Ipv4Subnets::new(start.into(), end.into(), 0).map(IpNet::V4));
        }
        for &(start, end) in &self.v6 {
            out.extend(ipnet::Ipv6Subnets::new(start.into(), end.into(), 0).map(IpNet::V6));
        }
        out
    }
}

fn merge<T: Ord + Copy + num_step::Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_next() => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only one that can hold it.
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_step {
    /// Adjacent ranges (…-9, 10-…) merge too.
    pub trait Step {
        fn saturating_next(self) -> Self;
    }
    impl Step for u32 {
        fn saturating_next(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Step for u128 {
        fn saturating_next(self) -> Self {
            self.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(entries: &[&str]) -> CidrList {
        CidrList::new(entries.iter().map(|e| CidrList::parse_entry(e).unwrap()))
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_key() {
        let a = AddressKey::new(ip("2001:db8:1:2:aaaa::1"), 32, 64);
        let b = AddressKey::new(ip("2001:db8:1:2:ffff::9"), 32, 64);
        let c = AddressKey::new(ip("2001:db8:1:3::1"), 32, 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::");
    }

    #[test]
    fn ipv4_addresses_are_their_own_key_by_default_and_mapped_ones_unmapped() {
        let a = AddressKey::new(ip("192.0.2.1"), 32, 64);
        let b = AddressKey::new(ip("::ffff:192.0.2.1"), 32, 64);
        assert_eq!(a, b);
        assert_ne!(a, AddressKey::new(ip("192.0.2.2"), 32, 64));
        assert_eq!(
            AddressKey::new(ip("192.0.2.77"), 24, 64),
            AddressKey::new(ip("192.0.2.1"), 24, 64)
        );
    }

    #[test]
    fn cidr_list_matches_ranges_and_single_addresses() {
        let l = list(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "127.0.0.0/8"]);
        assert!(l.contains(ip("10.255.0.1")));
        assert!(l.contains(ip("192.0.2.7")));
        assert!(!l.contains(ip("192.0.2.8")));
        assert!(l.contains(ip("2001:db8:ffff::1")));
        assert!(!l.contains(ip("2001:db9::1")));
        assert!(l.contains(ip("::ffff:10.1.2.3")));
        assert!(!l.contains(ip("11.0.0.0")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_are_merged() {
        let l = list(&["10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/16"]);
        assert_eq!(l.len(), 1);
        assert!(l.contains(ip("10.200.0.1")));
    }

    #[test]
    fn bad_entries_say_what_is_expected() {
        let e = CidrList::parse_entry("10.0.0.0/33").unwrap_err();
        assert!(e.contains("CIDR"), "{e}");
        assert_eq!(
            CidrList::parse_entry("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }
}
