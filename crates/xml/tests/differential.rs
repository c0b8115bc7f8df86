//! The framer must never accept what a strict XML parser (rxml) rejects: whatever
//! prefix of an input it returns as frames, rxml must accept as a document prefix,
//! and a stream the framer saw closed must be a complete document for rxml.
#![allow(clippy::unwrap_used)]

mod support;

use proptest::prelude::*;
use support::corpus::{corpus, HEADER};
use support::{disagreement, feed, message_with_text, rxml, Strict};

#[test]
fn framer_never_accepts_what_rxml_rejects_on_the_corpus() {
    let failures: Vec<String> = corpus()
        .iter()
        .filter_map(|input| disagreement(input))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bytes worth putting anywhere: markup, quotes, references, bad UTF-8.
const INTERESTING: &[&[u8]] = &[
    b"<",
    b">",
    b"/",
    b"'",
    b"\"",
    b"&",
    b";",
    b"=",
    b" ",
    b"\t",
    b":",
    b"]",
    b"!",
    b"?",
    b"#",
    b"x",
    b"-",
    b"\0",
    b"\x0b",
    b"\xc3",
    b"\xff",
    b"\xef\xbf\xbf",
    b"\xc3\xa9",
    b"</a>",
    b"<a>",
    b"]]>",
    b"&amp;",
    b"&#",
    b"xmlns",
    b"xmlns:",
    b"<![CDATA[",
    b"stream:",
];

#[test]
fn framer_never_accepts_what_rxml_rejects_after_one_edit() {
    let mut failures = Vec::new();
    for input in corpus() {
        // Only short inputs: every edit at every position is quadratic.
        if input.len() > 260 {
            continue;
        }
        // Edits inside the shared stream header are tried on the inputs without it.
        let from = if input.starts_with(HEADER.as_bytes()) {
            HEADER.len()
        } else {
            0
        };
        for at in from..=input.len() {
            let mut deleted = input.clone();
            if at < input.len() {
                deleted.remove(at);
                failures.extend(disagreement(&deleted));
            }
            for piece in INTERESTING {
                let mut inserted = input.clone();
                inserted.splice(at..at, piece.iter().copied());
                failures.extend(disagreement(&inserted));
                if at < input.len() {
                    let mut replaced = input.clone();
                    replaced.splice(at..at + 1, piece.iter().copied());
                    failures.extend(disagreement(&replaced));
                }
            }
        }
        if failures.len() > 20 {
            break;
        }
    }
    failures.sort();
    failures.dedup();
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn framer_accepts_the_valid_streams_rxml_accepts() {
    // The other direction is not a hard rule (the framer may be stricter), but the
    // realistic streams of the corpus must pass both.
    for body in [
        "<message to='a@b' type='chat' id='1'><body>hi &amp; bye &#x1F600;</body></message>",
        "<iq type='result' id='r'><query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>",
        "<message><body><![CDATA[<x> & ]]></body></message> \n",
    ] {
        let input = format!("{HEADER}{body}</stream:stream>");
        assert_eq!(rxml(input.as_bytes(), true), Strict::Complete, "{input}");
        let outcome = feed(input.as_bytes());
        assert_eq!(outcome.error, None, "{input}");
        assert!(outcome.closed());
    }
}

/// Fragments that random streams are built from.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"<a>".to_vec()),
        Just(b"</a>".to_vec()),
        Just(b"<b x='1'>".to_vec()),
        Just(b"</b>".to_vec()),
        Just(b"<c/>".to_vec()),
        Just(b"<p:d xmlns:p='u'>".to_vec()),
        Just(b"</p:d>".to_vec()),
        Just(b"<e p:y='2'/>".to_vec()),
        Just(b"text".to_vec()),
        Just(b" ".to_vec()),
        Just(b"&amp;".to_vec()),
        Just(b"&#x41;".to_vec()),
        Just(b"<![CDATA[x]]>".to_vec()),
        Just(b"]]>".to_vec()),
        Just(b"</stream:stream>".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..4),
        proptest::sample::select(INTERESTING).prop_map(|p| p.to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn framer_never_accepts_what_rxml_rejects_on_random_streams(
        parts in proptest::collection::vec(fragment(), 0..24)
    ) {
        let mut input = HEADER.as_bytes().to_vec();
        for part in parts {
            input.extend(part);
        }
        let verdict = disagreement(&input);
        prop_assert!(verdict.is_none(), "{}", verdict.unwrap_or_default());
    }

    /// Long texts with references, other scripts and faults anywhere: what the
    /// framer accepts of them (checked in bulk, see `text_whole`), rxml accepts.
    #[test]
    fn framer_never_accepts_text_rxml_rejects(
        pieces in proptest::collection::vec(any::<usize>(), 0..48),
    ) {
        let input = message_with_text(&pieces);
        let verdict = disagreement(&input);
        prop_assert!(verdict.is_none(), "{}", verdict.unwrap_or_default());
    }
}
