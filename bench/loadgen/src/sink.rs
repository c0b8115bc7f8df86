//! The scripted XMPP server at the far end of every measured path.
//!
//! Per connection: it answers the stream header with features offering PLAIN,
//! any `<auth/>` with `<success/>`, the restarted header with bind, the bind iq
//! with a result; then it counts every element and discards it, answering only
//! XEP-0199 pings. The answer to a ping whose id starts with `end-` carries the
//! counts of what came before it, so the client can check that every byte it sent
//! arrived, in order, through whatever is in between.
//!
//! It is a measuring instrument, not a server: no real authentication, no routing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::net::{TcpListener, TcpStream};

use crate::scan::{self, Token};
use crate::xmpp::{self, Framed, BENCH_NS, BIND_NS, DOMAIN, PING_NS, SASL_NS};

/// Errors printed in full before the sink only counts them: a broken set-up with
/// 10,000 connections should say what is wrong without flooding the terminal.
const ERRORS_SHOWN: u64 = 20;

#[derive(Default)]
struct Totals {
    connections: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("sink: listening on {}", listener.local_addr()?);
    let totals = Arc::new(Totals::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors: say so, and keep the open connections served.
                eprintln!("sink: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let totals = totals.clone();
        tokio::spawn(async move {
            let n = totals.connections.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = serve(tcp, n).await {
                let errors = totals.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if errors <= ERRORS_SHOWN || errors % 1000 == 0 {
                    eprintln!("sink: connection from {peer}: {e:#} ({errors} errors so far)");
                }
            }
        });
    }
}

fn stream_header(id: u64) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream from='{DOMAIN}' id='sink-{id}' version='1.0' \
         xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

#[derive(PartialEq, Eq)]
enum Phase {
    Sasl,
    Bind,
    Established,
}

async fn serve(tcp: TcpStream, n: u64) -> anyhow::Result<()> {
    // Answers go out at once: the latency test measures the relay, not Nagle.
    tcp.set_nodelay(true)?;
    let mut f = Framed::new(tcp);
    let mut phase = Phase::Sasl;
    let mut stanzas = 0u64;
    let mut bytes = 0u64;
    let mut reply = Vec::with_capacity(256);
    while let Some((token, range)) = f.next().await? {
        let len = range.len() as u64;
        let element = f.bytes(range);
        reply.clear();
        match token {
            Token::Declaration => {}
            Token::StreamClose => {
                f.send(b"</stream:stream>").await?;
                return Ok(());
            }
            Token::StreamOpen => {
                reply.extend_from_slice(stream_header(n).as_bytes());
                let features = match phase {
                    Phase::Sasl => format!(
                        "<stream:features><mechanisms xmlns='{SASL_NS}'>\
                         <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
                    ),
                    _ => format!("<stream:features><bind xmlns='{BIND_NS}'/></stream:features>"),
                };
                reply.extend_from_slice(features.as_bytes());
            }
            Token::Element => match phase {
                Phase::Sasl => {
                    if scan::tag_name(element) != b"auth" {
                        bail!("expected <auth/>, got {}", xmpp::excerpt(element));
                    }
                    reply.extend_from_slice(format!("<success xmlns='{SASL_NS}'/>").as_bytes());
                    phase = Phase::Bind;
                }
                Phase::Bind => {
                    if scan::tag_name(element) != b"iq"
                        || !scan::contains(element, BIND_NS.as_bytes())
                    {
                        bail!("expected a bind iq, got {}", xmpp::excerpt(element));
                    }
                    let id = attribute_str(element, "id")?;
                    reply.extend_from_slice(
                        format!(
                            "<iq type='result' id='{id}'><bind xmlns='{BIND_NS}'>\
                             <jid>bench{n}@{DOMAIN}/bench</jid></bind></iq>"
                        )
                        .as_bytes(),
                    );
                    phase = Phase::Established;
                }
                Phase::Established => {
                    let is_ping = scan::tag_name(element) == b"iq"
                        && scan::attribute(element, "type") == Some(b"get")
                        && scan::contains(element, PING_NS.as_bytes());
                    if is_ping {
                        let id = attribute_str(element, "id")?;
                        if id.starts_with("end-") {
                            reply.extend_from_slice(
                                format!(
                                    "<iq type='result' id='{id}' from='{DOMAIN}'>\
                                     <counts xmlns='{BENCH_NS}' stanzas='{stanzas}' \
                                     bytes='{bytes}'/></iq>"
                                )
                                .as_bytes(),
                            );
                        } else {
                            reply.extend_from_slice(
                                format!("<iq type='result' id='{id}' from='{DOMAIN}'/>").as_bytes(),
                            );
                        }
                    }
                    stanzas += 1;
                    bytes += len;
                }
            },
        }
        if !reply.is_empty() {
            let out = std::mem::take(&mut reply);
            f.send(&out).await?;
            reply = out;
        }
    }
    Ok(())
}

/// An attribute that is echoed back inside a quoted value, so it must be a plain token.
fn attribute_str<'a>(element: &'a [u8], name: &str) -> anyhow::Result<&'a str> {
    let raw = scan::attribute(element, name)
        .with_context(|| format!("no {name} in {}", xmpp::excerpt(element)))?;
    match std::str::from_utf8(raw) {
        Ok(s) if !s.contains(['\'', '<', '&']) => Ok(s),
        _ => bail!("unusable {name} in {}", xmpp::excerpt(element)),
    }
}
