//! A SOCKS5 client (RFC 1928), for networks where only a proxy may connect out.
//!
//! Only what the egress needs: no authentication (method 0x00, §3), the CONNECT
//! command (§4) to a domain name (ATYP 0x03, the proxy resolves it) or an address,
//! and the reply (§6). Sans-IO helpers build the requests and read the replies; the
//! one async function runs the exchange on a stream.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where the proxy should connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Domain(String, u16),
    Address(SocketAddr),
}

/// RFC 1928 §3: version 5, one method, "no authentication required".
pub const GREETING: [u8; 3] = [0x05, 0x01, 0x00];

/// RFC 1928 §4: the CONNECT request for `target`.
pub fn connect_request(target: &Target) -> io::Result<Vec<u8>> {
    let mut out = vec![0x05, 0x01, 0x00];
    match target {
        Target::Domain(name, port) => {
            let len = u8::try_from(name.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "domain name too long"))?;
            out.push(0x03);
            out.push(len);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&port.to_be_bytes());
        }
        Target::Address(SocketAddr::V4(a)) => {
            out.push(0x01);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Target::Address(SocketAddr::V6(a)) => {
            out.push(0x04);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
    }
    Ok(out)
}

/// RFC 1928 §6: what a non-zero REP field means.
pub fn reply_error(code: u8) -> &'static str {
    match code {
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unknown SOCKS error",
    }
}

/// Runs the SOCKS5 exchange on `io` (a connection to the proxy): afterwards `io`
/// carries the connection to `target`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    target: &Target,
) -> io::Result<()> {
    let protocol = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    io.write_all(&GREETING).await?;
    let mut choice = [0u8; 2];
    io.read_exact(&mut choice).await?;
    if choice[0] != 0x05 {
        return Err(protocol("not a SOCKS5 proxy"));
    }
    if choice[1] != 0x00 {
        return Err(protocol("the SOCKS5 proxy requires authentication"));
    }
    io.write_all(&connect_request(target)?).await?;
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await?;
    if head[0] != 0x05 {
        return Err(protocol("not a SOCKS5 reply"));
    }
    if head[1] != 0x00 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("SOCKS5 proxy: {}", reply_error(head[1])),
        ));
    }
    // BND.ADDR and BND.PORT: read and ignore.
    let skip = match head[3] {
        0x01 => 4 + 2,
        0x04 => 16 + 2,
        0x03 => {
            let mut len = [0u8; 1];
            io.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        _ => return Err(protocol("unknown address type in the SOCKS5 reply")),
    };
    let mut rest = vec![0u8; skip];
    io.read_exact(&mut rest).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request_to_a_domain_carries_its_name_for_the_proxy_to_resolve() {
        let r = connect_request(&Target::Domain("xmpp.example".into(), 5269)).unwrap();
        assert_eq!(&r[..5], &[0x05, 0x01, 0x00, 0x03, 12]);
        assert_eq!(&r[5..17], b"xmpp.example");
        assert_eq!(&r[17..], &[0x14, 0x95]);
    }

    #[test]
    fn connect_request_to_an_address() {
        let r = connect_request(&Target::Address("127.0.0.1:5269".parse().unwrap())).unwrap();
        assert_eq!(r, [0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0x14, 0x95]);
    }

    #[tokio::test]
    async fn refused_connect_is_reported_with_the_rfc_reason() {
        let (mut client, mut proxy) = tokio::io::duplex(256);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let _ = proxy.read(&mut buf).await;
            proxy.write_all(&[0x05, 0x00]).await.unwrap();
            let _ = proxy.read(&mut buf).await;
            proxy
                .write_all(&[0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
                .await
                .unwrap();
        });
        let e = connect(&mut client, &Target::Domain("x.example".into(), 5269))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
        server.await.unwrap();
    }
}
