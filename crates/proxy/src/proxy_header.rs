//! The PROXY protocol header (v1 text, v2 binary) xmppwall sends first on each
//! server connection, so the server's own logs and limits see the client's address.
//!
//! Owns only the bytes of the header; the `ppp` crate writes them.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};

use crate::config::ProxyProtocol;

/// The header announcing a connection from `client` to xmppwall's `local` address,
/// or nothing for [`ProxyProtocol::None`].
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyProtocol::None => Vec::new(),
        ProxyProtocol::V1 => v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        ProxyProtocol::V2 => {
            let built = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (client, local),
            )
            .build();
            // Building writes into a Vec and cannot fail for a fixed-size address
            // block; should it ever, the LOCAL command tells the server to use the
            // connection's own addresses, which is still a valid header.
            built.unwrap_or_else(|_| {
                v2::Builder::new(
                    v2::Version::Two | v2::Command::Local,
                    v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
                )
                .build()
                .unwrap_or_default()
            })
        }
    }
}

/// Both addresses in one family, as both header versions require: IPv4-mapped IPv6
/// addresses (a dual-stack listener's view of IPv4 clients) become IPv4, and a
/// remaining mix is expressed in IPv6.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (client, local) = (canon(client), canon(local));
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        (v6(client), v6(local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_header_names_client_then_local() {
        let h = header(
            ProxyProtocol::V1,
            addr("203.0.113.7:40000"),
            addr("127.0.0.1:5222"),
        );
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5222\r\n");
    }

    #[test]
    fn v1_header_unmaps_ipv4_clients_of_dual_stack_listeners() {
        let h = header(
            ProxyProtocol::V1,
            addr("[::ffff:203.0.113.7]:40000"),
            addr("[::ffff:127.0.0.1]:5222"),
        );
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5222\r\n");
    }

    #[test]
    fn v2_header_is_binary_with_signature_and_ipv6_block() {
        let h = header(
            ProxyProtocol::V2,
            addr("[2001:db8::1]:40000"),
            addr("[::1]:5222"),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21, "version 2, PROXY command");
        assert_eq!(h[13], 0x21, "AF_INET6, STREAM");
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(
            &h[16..32],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(u16::from_be_bytes([h[48], h[49]]), 40000);
        assert_eq!(h.len(), 16 + 36);
    }

    #[test]
    fn no_header_when_disabled() {
        assert!(header(ProxyProtocol::None, addr("1.2.3.4:1"), addr("5.6.7.8:2")).is_empty());
    }
}
