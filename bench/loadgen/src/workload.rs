//! The stanza mix the throughput test sends, generated once and shared by every
//! connection.
//!
//! Mix by count: 70 % chat messages with a body of 50–2000 bytes (uniform), 20 %
//! presence, 10 % iq. Bodies are mostly ASCII words with some escaped characters
//! and multi-byte UTF-8, as chat text is. The generator is seeded, so every run and
//! every target sends the same bytes.

/// Concatenated stanzas and where each ends.
pub struct Workload {
    pub bytes: Vec<u8>,
    /// `ends[i]` is the offset just past stanza `i`.
    pub ends: Vec<usize>,
}

/// splitmix64: a tiny, good enough PRNG; no dependency needed for a fixed mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

const WORDS: &[&str] = &[
    "hello",
    "meeting",
    "tomorrow",
    "the",
    "build",
    "is",
    "green",
    "again",
    "can",
    "you",
    "review",
    "my",
    "patch",
    "please",
    "lunch",
    "at",
    "noon",
    "&apos;",
    "ok",
    "&amp;",
    "thanks",
    "café",
    "déjà",
    "vu",
    "—",
    "😀",
    "see",
    "https://example.org/a?b=1&amp;c=2",
    "&lt;3",
    "release",
    "notes",
    "firewall",
    "stanza",
    "roster",
];

fn body(rng: &mut Rng, target: usize) -> String {
    let mut s = String::with_capacity(target + 16);
    while s.len() < target {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
    }
    s
}

pub fn generate(seed: u64, count: usize) -> Workload {
    let mut rng = Rng(seed);
    let mut bytes = Vec::new();
    let mut ends = Vec::with_capacity(count);
    for i in 0..count {
        let peer = rng.range(1, 500);
        let stanza = match rng.next() % 10 {
            0..=6 => {
                let len = rng.range(50, 2000) as usize;
                format!(
                    "<message to='user{peer}@localhost' id='m{i}' type='chat'><body>{}</body>\
                     <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                    body(&mut rng, len)
                )
            }
            7 | 8 => {
                if rng.next() % 2 == 0 {
                    "<presence/>".to_owned()
                } else {
                    format!(
                        "<presence><show>away</show><status>{}</status>\
                         <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
                         node='https://example.org/client' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/>\
                         </presence>",
                        body(&mut rng, 20)
                    )
                }
            }
            _ => {
                if rng.next() % 2 == 0 {
                    format!(
                        "<iq type='get' id='q{i}' to='user{peer}@localhost/phone'>\
                         <query xmlns='jabber:iq:version'/></iq>"
                    )
                } else {
                    format!(
                        "<iq type='set' id='q{i}'><query xmlns='jabber:iq:roster'>\
                         <item jid='user{peer}@localhost' name='User {peer}'>\
                         <group>Friends</group></item></query></iq>"
                    )
                }
            }
        };
        bytes.extend_from_slice(stanza.as_bytes());
        ends.push(bytes.len());
    }
    Workload { bytes, ends }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{self, Token};

    #[test]
    fn every_stanza_scans_as_one_element() {
        let w = generate(7, 500);
        let mut start = 0;
        for &end in &w.ends {
            let one = &w.bytes[start..end];
            assert_eq!(
                scan::next(one).expect("scan"),
                Some((Token::Element, 0, one.len()))
            );
            start = end;
        }
    }

    #[test]
    fn message_bodies_are_in_range() {
        let w = generate(1, 2000);
        let text = String::from_utf8(w.bytes).expect("utf-8");
        for part in text.split("<body>").skip(1) {
            let body = &part[..part.find("</body>").expect("closed")];
            assert!((50..2100).contains(&body.len()), "{}", body.len());
        }
    }
}
