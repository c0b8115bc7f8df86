//! Realistic mixed XMPP traffic for benchmarks and chunking tests: chat messages,
//! presence with entity capabilities, a 200-item roster, MAM results forwarding
//! messages, OMEMO messages with 2-8 KiB payloads, and white space keep-alives.
#![allow(dead_code)]

/// The stream header the traffic follows.
pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='capulet.lit' from='juliet@capulet.lit' \
    version='1.0' xml:lang='en' id='++TR84Sm6A3hnt3Q065SnAbbk3Y='>";

const WORDS: &[&str] = &[
    "wherefore",
    "art",
    "thou",
    "Romeo",
    "&amp;",
    "deny",
    "thy",
    "father",
    "and",
    "refuse",
    "name",
    "or",
    "if",
    "wilt",
    "not",
    "be",
    "but",
    "sworn",
    "my",
    "love",
    "I'll",
    "no",
    "longer",
    "a",
    "Capulet",
    "caf\u{e9}",
    "\u{1F600}",
    "&lt;3",
    "\u{441}\u{43b}\u{43e}\u{432}\u{43e}",
    "&#x2764;",
];

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A small deterministic generator, so every run sees the same bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn words(rng: &mut Rng, n: usize, out: &mut String) {
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
    }
}

fn base64(rng: &mut Rng, n: usize, out: &mut String) {
    for _ in 0..n {
        out.push(BASE64[rng.below(64)] as char);
    }
}

fn chat(rng: &mut Rng, id: usize, out: &mut String) {
    out.push_str(&format!(
        "<message from='romeo@montague.lit/orchard' to='juliet@capulet.lit/balcony' type='chat' \
         id='msg-{id}' xmlns='jabber:client'><body>"
    ));
    let n = 5 + rng.below(40);
    words(rng, n, out);
    out.push_str(&format!(
        "</body><active xmlns='http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/>\
         <origin-id xmlns='urn:xmpp:sid:0' id='{:016x}'/></message>",
        rng.next()
    ));
}

fn presence(rng: &mut Rng, out: &mut String) {
    out.push_str(&format!(
        "<presence from='contact{}@example.net/{:08x}' to='juliet@capulet.lit'>\
         <show>away</show><status>",
        rng.below(200),
        rng.next() as u32
    ));
    words(rng, 3, out);
    out.push_str(
        "</status><priority>0</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='https://conversations.im' ver='",
    );
    base64(rng, 27, out);
    out.push_str("='/><x xmlns='vcard-temp:x:update'><photo>");
    for _ in 0..5 {
        out.push_str(&format!("{:08x}", rng.next() as u32));
    }
    out.push_str("</photo></x></presence>");
}

fn roster(rng: &mut Rng, out: &mut String) {
    out.push_str(
        "<iq type='result' id='roster_1' to='juliet@capulet.lit/balcony'>\
         <query xmlns='jabber:iq:roster' ver='ver7'>",
    );
    for n in 0..200 {
        out.push_str(&format!(
            "<item jid='contact{n}@example.net' name='Contact {n}' subscription='both'><group>"
        ));
        words(rng, 1, out);
        out.push_str("</group></item>");
    }
    out.push_str("</query></iq>");
}

fn mam(rng: &mut Rng, id: usize, out: &mut String) {
    out.push_str(&format!(
        "<message to='juliet@capulet.lit/balcony' from='juliet@capulet.lit'>\
         <result xmlns='urn:xmpp:mam:2' queryid='f27' id='28482-98726-{id}'>\
         <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>"
    ));
    chat(rng, id, out);
    out.push_str("</forwarded></result></message>");
}

fn omemo(rng: &mut Rng, id: usize, out: &mut String) {
    out.push_str(&format!(
        "<message to='juliet@capulet.lit' from='romeo@montague.lit/orchard' id='omemo-{id}' type='chat'>\
         <encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='27183'>"
    ));
    for rid in 0..3 {
        out.push_str(&format!("<key rid='3141{rid}'>"));
        base64(rng, 200, out);
        out.push_str("</key>");
    }
    out.push_str("<iv>");
    base64(rng, 16, out);
    out.push_str("</iv></header><payload>");
    let n = 2048 + rng.below(6144);
    base64(rng, n, out);
    out.push_str("</payload></encrypted><store xmlns='urn:xmpp:hints'/></message>");
}

/// About `target` bytes of top-level elements and keep-alives (no stream header).
pub fn stanzas(seed: u64, target: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(target + 64 * 1024);
    let mut id = 0;
    while out.len() < target {
        id += 1;
        match rng.below(100) {
            0..=39 => chat(&mut rng, id, &mut out),
            40..=69 => presence(&mut rng, &mut out),
            70..=84 => mam(&mut rng, id, &mut out),
            85..=94 => omemo(&mut rng, id, &mut out),
            95..=96 => roster(&mut rng, &mut out),
            _ => out.push(' '),
        }
    }
    out.into_bytes()
}

/// A whole stream: header, about `target` bytes of stanzas, end tag.
pub fn stream(seed: u64, target: usize) -> Vec<u8> {
    let mut out = HEADER.as_bytes().to_vec();
    out.extend(stanzas(seed, target));
    out.extend_from_slice(b"</stream:stream>");
    out
}
