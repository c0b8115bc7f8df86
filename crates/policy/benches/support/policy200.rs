//! The 200-rule policy and the traffic the policy benchmark and the `policy_cost`
//! example share.

use std::fmt::Write as _;
use std::path::Path;

use xmppwall_policy::limits::UserClass;
use xmppwall_policy::rules::config::RulesFile;
use xmppwall_policy::rules::{Marks, Policy, StreamFront, Subject};

pub fn load(text: &str) -> Policy {
    let file: RulesFile = toml::from_str(text).expect("valid TOML");
    file.compile(Path::new("."), &mut |_, m| panic!("bench policy: {m}"))
}

/// A pseudo-random word generator (deterministic, no dependency).
struct Words(u64);

impl Words {
    fn next(&mut self) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let len = 5 + (self.0 % 7) as usize;
        (0..len)
            .map(|i| (b'a' + ((self.0 >> (i * 5)) % 26) as u8) as char)
            .collect()
    }
}

pub fn large_policy() -> String {
    let mut w = Words(0x2545_f491_4f6c_dd1d);
    let mut text = String::new();
    let keywords: Vec<String> = (0..10_000).map(|_| format!("\"{}\"", w.next())).collect();
    let domains: Vec<String> = (0..1_000)
        .map(|_| format!("\"{}.example\"", w.next()))
        .collect();
    let _ = writeln!(text, "[lists.words]\nkeywords = [{}]", keywords.join(","));
    let _ = writeln!(text, "[lists.domains]\ndomains = [{}]", domains.join(","));
    // 50 regular expressions over 10 rules.
    for r in 0..10 {
        let patterns: Vec<String> = (0..5)
            .map(|_| format!("\"(?i)\\\\b{}\\\\s+{}\\\\b\"", w.next(), w.next()))
            .collect();
        let _ = writeln!(
            text,
            "[[rule]]\nname = \"regex-{r}\"\naction = \"drop\"\n[rule.match]\nkind = [\"message\"]\nregex = [{}]\ntext = \"any\"",
            patterns.join(",")
        );
    }
    let _ = writeln!(
        text,
        "[[rule]]\nname = \"keywords\"\naction = \"bounce\"\n[rule.match]\nkind = [\"message\"]\nkeywords = \"list:words\"\n\
         [[rule]]\nname = \"url-domains\"\naction = \"drop\"\n[rule.match]\nurl_domains = \"list:domains\"\n\
         [[rule]]\nname = \"subject-normal\"\naction = \"drop\"\n[rule.match]\nkind = [\"message\"]\ntype = [\"normal\"]\nhas = [\"subject\"]\n\
         [[rule]]\nname = \"cards\"\naction = \"bounce\"\n[rule.match]\nkind = [\"message\"]\ndata_leak = [\"card\", \"iban\"]"
    );
    // The rest: address, sender, recipient, payload and type rules that mostly do not match.
    for r in 0..186 {
        let body = match r % 6 {
            0 => format!("from = [\"*@{}.example\"]", w.next()),
            1 => format!("to_domain = [\"{}.example\"]", w.next()),
            2 => format!("payload = [\"urn:example:{}\"]", w.next()),
            3 => format!("address = [\"198.51.{}.0/24\"]", r % 250),
            4 => format!(
                "kind = [\"iq\"]\ntype = [\"set\"]\nhas = [\"urn:example:{} query\"]",
                w.next()
            ),
            _ => format!("mark = \"{}\"", w.next()),
        };
        let _ = writeln!(
            text,
            "[[rule]]\nname = \"rule-{r}\"\naction = \"drop\"\n[rule.match]\n{body}"
        );
    }
    text
}

pub fn traffic() -> Vec<String> {
    let mut w = Words(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    for i in 0..400 {
        let to = format!("{}@example.org", w.next());
        let stanza = match i % 8 {
            0..=2 => format!(
                "<message to='{to}' id='m{i}' type='chat'><body>{} {} {} {} how are you today?</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                w.next(), w.next(), w.next(), w.next()
            ),
            3 => format!(
                "<message to='{to}' id='m{i}' type='chat'><body>have a look at https://www.{}.org/page and tell me</body></message>",
                w.next()
            ),
            4 => "<presence><show>away</show><status>lunch</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org' ver='abc='/></presence>".to_string(),
            5 => format!("<iq type='get' id='p{i}' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>"),
            6 => format!("<message to='{to}' id='r{i}' type='chat'><received xmlns='urn:xmpp:receipts' id='x{i}'/></message>"),
            _ => format!("<iq type='get' id='r{i}'><query xmlns='jabber:iq:roster'/></iq>"),
        };
        out.push(stanza);
    }
    out
}

/// 200 rules that look only at the `to` address of messages to domains nobody writes to.
pub fn matching_nothing() -> String {
    let mut nothing = String::new();
    for r in 0..200 {
        let _ = writeln!(
            nothing,
            "[[rule]]\nname = \"nobody-{r}\"\naction = \"drop\"\n[rule.match]\nto_domain = [\"nobody-{r}.invalid\"]"
        );
    }
    nothing
}

/// The sender the traffic comes from: a registered account on a client stream.
pub fn subject(marks: &Marks) -> Subject<'_> {
    Subject {
        ip: "192.0.2.7".parse().expect("address"),
        class: UserClass::Registered,
        mechanism: Some("SCRAM-SHA-1"),
        account: Some("alice@example.org"),
        marks,
        stranger: None,
        front: StreamFront::C2s,
        peer_domain: None,
        peer_auth: None,
    }
}
