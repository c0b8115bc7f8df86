//! What the integration tests share: a caller that follows the framer's contract,
//! and the strict parser the framer is checked against.
#![allow(dead_code)]

pub mod corpus;
pub mod traffic;

use rxml::error::EndOrError;
use rxml::{Options, Parse, Parser, WithOptions};
use xmppwall_xml::view::StartTag;
use xmppwall_xml::{Error, Framer, Head, Limits, Namespaces, Token};

/// Generous limits, so that only the XML itself decides.
pub const LIMITS: Limits = Limits {
    max_element_bytes: 1 << 20,
    max_depth: 64,
    max_elements: 100_000,
    max_attributes: 64,
    max_name_bytes: 1024,
    max_attribute_value_bytes: 1 << 16,
};

/// What a framer made of an input: the frames, and the error that stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub frames: Vec<(Token, Vec<u8>)>,
    pub error: Option<Error>,
    /// Bytes left over, not yet framed, when the input ran out.
    pub pending: usize,
}

impl Outcome {
    /// The bytes the framer accepted, frame after frame.
    pub fn accepted(&self) -> Vec<u8> {
        self.frames
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }

    pub fn closed(&self) -> bool {
        self.frames.iter().any(|(t, _)| *t == Token::StreamClose)
    }
}

/// Feeds `input` to a new framer in chunks ending at `cuts` (ascending), the way
/// the proxy does: one buffer, frames removed from its front.
pub fn feed_with_cuts(limits: Limits, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut framer = Framer::new(limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        let to = to.clamp(from, input.len());
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match framer.next(&buf) {
                Ok(Some(frame)) => {
                    if frame.token == Token::Element {
                        let bytes = &buf[..frame.len];
                        assert_eq!(
                            *framer.head(),
                            head_as_the_view_reads_it(bytes),
                            "the framer's head of {:?}",
                            String::from_utf8_lossy(bytes)
                        );
                    }
                    frames.push((frame.token, buf[..frame.len].to_vec()));
                    buf.drain(..frame.len);
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some(e),
                        pending: buf.len(),
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
        pending: buf.len(),
    }
}

/// What [`Framer::head`] must say of an element: its start tag read again with the
/// view, and the values of its unprefixed `xmlns`, `to`, `from` and `type`.
pub fn head_as_the_view_reads_it(element: &[u8]) -> Head {
    let tag = StartTag::parse(element).expect("a framed element has a start tag");
    let at = |n: usize| u32::try_from(n).expect("small");
    let mut head = Head {
        name_end: at(1 + tag.name.len()),
        attributes_end: at(tag.len - 1 - usize::from(tag.self_closing)),
        len: at(tag.len),
        self_closing: tag.self_closing,
        ..Head::default()
    };
    for (name, raw) in tag.attributes() {
        let start = raw.as_ptr() as usize - element.as_ptr() as usize;
        let value = Some((at(start), at(start + raw.len())));
        match name {
            b"xmlns" => head.xmlns = value,
            b"to" => head.to = value,
            b"from" => head.from = value,
            b"type" => head.ty = value,
            _ => {}
        }
    }
    declarations(element, element, &mut head.namespaces);
    head
}

/// The namespace declarations of `element` and of all it holds, in document
/// order, as offsets from the start of `frame`.
fn declarations(frame: &[u8], element: &[u8], namespaces: &mut Namespaces) {
    let tag = StartTag::parse(element).expect("an element has a start tag");
    for (name, raw) in tag.attributes() {
        if name == b"xmlns" || name.starts_with(b"xmlns:") {
            let start = raw.as_ptr() as usize - frame.as_ptr() as usize;
            let at = |n: usize| u32::try_from(n).expect("small");
            let escaped = raw
                .iter()
                .any(|c| matches!(c, b'&' | b'\t' | b'\n' | b'\r'));
            namespaces.push((at(start), at(start + raw.len())), escaped);
        }
    }
    for child in xmppwall_xml::view::children(element) {
        declarations(frame, &element[child.range], namespaces);
    }
}

pub fn feed(input: &[u8]) -> Outcome {
    feed_with_cuts(LIMITS, input, &[])
}

/// What the strict parser says of a document prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strict {
    /// A complete, well-formed document (only when asked with `at_eof`).
    Complete,
    /// No error so far; more bytes are needed.
    Incomplete,
    Rejected,
}

pub fn rxml(input: &[u8], at_eof: bool) -> Strict {
    let options = Options {
        max_token_length: 1 << 16,
        ..Options::default()
    };
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

/// A complete document as rxml should be asked about it at its end. XML 1.0 §2.11
/// reads a carriage return not followed by a line feed as a line feed, so white
/// space after the root element may end in one (`Misc ::= S`); rxml rejects a
/// document whose very last byte is `\r` (it waits for a `\n` that cannot come),
/// so that byte is given to it as the `\n` it stands for.
fn at_eof(document: &[u8]) -> Vec<u8> {
    let mut document = document.to_vec();
    if let Some(last @ b'\r') = document.last_mut() {
        *last = b'\n';
    }
    document
}

/// The differential property: what the framer accepted, rxml accepts too.
/// Returns a description of the disagreement, if any.
pub fn disagreement(input: &[u8]) -> Option<String> {
    let outcome = feed(input);
    let accepted = outcome.accepted();
    if accepted.is_empty() {
        return None;
    }
    let strict = rxml(&accepted, false);
    if strict == Strict::Rejected {
        return Some(format!(
            "framer accepted {:?} as {:?}, rxml rejects it",
            String::from_utf8_lossy(&accepted),
            outcome.frames.iter().map(|f| f.0).collect::<Vec<_>>()
        ));
    }
    if outcome.closed() && rxml(&at_eof(&accepted), true) != Strict::Complete {
        return Some(format!(
            "framer accepted the complete stream {:?}, rxml does not",
            String::from_utf8_lossy(&accepted)
        ));
    }
    None
}

/// Pieces of character data, valid and not, for texts long enough that the framer
/// checks them in bulk: words, other scripts, references good and bad, brackets,
/// white space and other control characters, broken and forbidden UTF-8.
pub const TEXT_PIECES: &[&[u8]] = &[
    b"hello ",
    b"see you at noon, ",
    b"caf\xc3\xa9 ",
    b"\xf0\x9f\x98\x80",
    b"\xe2\x80\x94",
    b"\xef\xbf\xbd",
    b"&amp;",
    b"&lt;3 ",
    b"&apos;",
    b"&#x1F600;",
    b"&#233;",
    b"]",
    b"]]",
    b">",
    b"\t",
    b"\r\n",
    // Faults: each must close the stream the same way however it is read.
    b"]]>",
    b"&nbsp;",
    b"&#0;",
    b"&#xFFFE;",
    b"&amp",
    b"&",
    b"\x01",
    b"\x7f",
    b"\xef\xbf\xbe",
    b"\xef\xbf\xbf",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xc3",
    b"\xff",
];

/// A message whose body is `pieces` of [`TEXT_PIECES`], in a stream.
pub fn message_with_text(pieces: &[usize]) -> Vec<u8> {
    let mut input = corpus::HEADER.as_bytes().to_vec();
    input.extend_from_slice(b"<message><body>");
    for &i in pieces {
        input.extend_from_slice(TEXT_PIECES[i % TEXT_PIECES.len()]);
    }
    input.extend_from_slice(b"</body></message>");
    input
}
