//! Differential fuzzing of the framer against rxml, a strict XML parser.
//!
//! The first input byte picks where the rest is split in two reads. Whatever
//! prefix the framer returns as frames must be a prefix rxml accepts, and a
//! stream the framer saw closed must be a complete document for rxml. Feeding in
//! two reads must give the same frames as feeding whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxml::error::EndOrError;
use rxml::{Options, Parse, Parser, WithOptions};
use xmppwall_xml::{Error, Framer, Limits, Token};

const LIMITS: Limits = Limits {
    max_element_bytes: 1 << 16,
    max_depth: 32,
    max_elements: 100_000,
    max_attributes: 32,
    max_name_bytes: 256,
    max_attribute_value_bytes: 4096,
};

/// Frames (white space runs merged) and the error, feeding `input` in reads ending at `cuts`.
fn frame(input: &[u8], cuts: &[usize]) -> (Vec<(Token, Vec<u8>)>, Option<Error>) {
    let mut framer = Framer::new(LIMITS);
    let mut buf = Vec::new();
    let mut frames: Vec<(Token, Vec<u8>)> = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match framer.next(&buf) {
                Ok(Some(f)) => {
                    let bytes = buf.drain(..f.len).collect::<Vec<u8>>();
                    match frames.last_mut() {
                        Some((Token::Whitespace, last)) if f.token == Token::Whitespace => {
                            last.extend(bytes)
                        }
                        _ => frames.push((f.token, bytes)),
                    }
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

#[derive(Debug, PartialEq)]
enum Strict {
    Complete,
    Incomplete,
    Rejected,
}

fn rxml(input: &[u8], at_eof: bool) -> Strict {
    let mut options = Options::default();
    options.max_token_length = 1 << 17;
    let mut parser = Parser::with_options(options);
    let mut rest = input;
    loop {
        match parser.parse(&mut rest, at_eof) {
            Ok(Some(_)) => {}
            Ok(None) => return Strict::Complete,
            Err(EndOrError::NeedMoreData) => return Strict::Incomplete,
            Err(EndOrError::Error(_)) => return Strict::Rejected,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = frame(input, &[]);
    let cut = if input.is_empty() {
        0
    } else {
        usize::from(split) * input.len() / 255
    };
    let split = frame(input, &[cut]);
    assert_eq!(
        whole, split,
        "feeding in two reads (cut at {cut}) changed the outcome"
    );

    let accepted: Vec<u8> = whole
        .0
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    if accepted.is_empty() {
        return;
    }
    assert_ne!(
        rxml(&accepted, false),
        Strict::Rejected,
        "framer accepted what rxml rejects: {:?}",
        String::from_utf8_lossy(&accepted)
    );
    if whole.0.iter().any(|(t, _)| *t == Token::StreamClose) {
        // XML 1.0 §2.11 reads a lone carriage return as a line feed, so white
        // space after the root may end in one; rxml rejects a document whose last
        // byte is `\r` (it waits for a `\n`), so it is given the `\n` it stands for.
        let mut document = accepted.clone();
        if let Some(last @ b'\r') = document.last_mut() {
            *last = b'\n';
        }
        assert_eq!(
            rxml(&document, true),
            Strict::Complete,
            "framer accepted a complete stream that rxml does not: {:?}",
            String::from_utf8_lossy(&accepted)
        );
    }
});
