//! Throughput of the framer on realistic mixed XMPP traffic fed in 4 KiB reads,
//! and of the lazy view on a typical stanza.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use xmppwall_xml::view::{self, StartTag};
use xmppwall_xml::{Framer, Limits, Token};

#[path = "../tests/support/traffic.rs"]
mod traffic;

const LIMITS: Limits = Limits {
    max_element_bytes: 256 * 1024,
    max_depth: 32,
    max_elements: 100_000,
    max_attributes: 64,
    max_name_bytes: 256,
    max_attribute_value_bytes: 16 * 1024,
};

const READ: usize = 4096;

/// Feeds `input` the way the proxy does: 4 KiB reads appended to one buffer,
/// frames taken from its front, the rest moved down once per read.
fn frame_all(input: &[u8]) -> usize {
    let mut framer = Framer::new(LIMITS);
    let mut buf: Vec<u8> = Vec::with_capacity(LIMITS.max_element_bytes + READ);
    let mut elements = 0;
    for read in input.chunks(READ) {
        buf.extend_from_slice(read);
        let mut head = 0;
        loop {
            match framer.next(&buf[head..]) {
                Ok(Some(frame)) => {
                    if frame.token == Token::Element {
                        elements += 1;
                    }
                    head += frame.len;
                }
                Ok(None) => break,
                Err(e) => panic!("benchmark traffic rejected: {e}"),
            }
        }
        buf.drain(..head);
    }
    elements
}

fn framer(c: &mut Criterion) {
    let input = traffic::stream(7, 8 << 20);
    let mut group = c.benchmark_group("framer");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.sample_size(20);
    group.bench_function("mixed_traffic_4k_reads", |b| {
        b.iter(|| frame_all(black_box(&input)))
    });
    group.finish();
}

fn view(c: &mut Criterion) {
    let message: &[u8] =
        b"<message from='romeo@montague.lit/orchard' to='juliet@capulet.lit/balcony' \
        type='chat' id='msg-1' xmlns='jabber:client'><body>Wherefore art thou, Romeo?</body>\
        <active xmlns='http://jabber.org/protocol/chatstates'/></message>";
    let mut group = c.benchmark_group("view");
    group.throughput(Throughput::Elements(1));
    group.bench_function("start_tag_parse_and_to", |b| {
        b.iter(|| {
            let tag = StartTag::parse(black_box(message)).expect("a start tag");
            tag.attribute(b"to").map(|to| to.len())
        })
    });
    group.bench_function("children_and_text", |b| {
        b.iter(|| {
            view::children(black_box(message))
                .map(|child| view::text(&message[child.range]).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, framer, view);
criterion_main!(benches);
