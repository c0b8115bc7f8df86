//! PROXY protocol headers (HAProxy's spec, versions 1 and 2), written here from the spec
//! rather than with the crate xmppwall uses, so the harness can check a server's PROXY
//! support independently and tests can compare xmppwall's header with a reference.

use std::net::SocketAddr;

/// The version 1 (text) header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
pub fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => panic!("PROXY v1 needs both addresses in one family: {source} {destination}"),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The version 2 (binary) header for a proxied TCP connection (command PROXY, no TLVs).
pub fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    // High nibble: version 2; low nibble: command PROXY (1).
    header.push(0x21);
    let mut addresses = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            // AF_INET (1) over STREAM (1).
            header.push(0x11);
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            // AF_INET6 (2) over STREAM (1).
            header.push(0x21);
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("PROXY v2 needs both addresses in one family: {source} {destination}"),
    }
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    let length = u16::try_from(addresses.len()).expect("address block fits in 16 bits");
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}
