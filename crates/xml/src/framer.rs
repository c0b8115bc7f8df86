//! Incremental, sans-IO framing of an XMPP XML stream.
//!
//! CONTRACT (the proxy depends on exactly this):
//! - The caller keeps every unconsumed byte in one buffer and calls
//!   [`Framer::next`] with the whole of it. `Ok(None)` means "need more bytes".
//! - `Ok(Some(frame))` says the first `frame.len` bytes of the buffer are one
//!   token; the caller must remove exactly those bytes from the front before
//!   calling again. The framer remembers how far it scanned so a large element
//!   arriving in many reads is not rescanned from its start.
//! - After an error the framer is poisoned: every later call returns the same error.
//! - [`Framer::reset`] starts a new stream (after STARTTLS or SASL success,
//!   RFC 6120 §5.4.3.3 and §6.4.6); any scanning progress is dropped.
//!
//! What a stream may hold, in order: an XML declaration (first byte of the stream
//! only), white space (only after a declaration), the stream header, then
//! top-level elements and white space, then the stream's end tag, then white space
//! only. A white space run is returned as soon as it is seen, so one keep-alive is
//! never held back; a long run may come as several `Whitespace` frames (each at
//! most `max_element_bytes`), and one run split across reads as several frames.
//!
//! The framer reads XML 1.0 restricted as RFC 6120 §11 says, and must never accept
//! what a strict XML parser rejects. It also rejects a few legal things that XMPP
//! never uses, so that it can stay simple and fast, or because rxml (the strict
//! parser it is fuzzed against) rejects them:
//! - an XML declaration with `standalone='no'` or an encoding other than UTF-8;
//! - white space before the stream header when no XML declaration precedes it;
//! - a carriage return in an attribute value that a line feed does not follow;
//! - a reference longer than 32 bytes (e.g. `&#x0000…0041;` with many zeros);
//! - names with characters of `[#xFDF0-#xFFFD]` at their start;
//! - `<![CDATA[` directly inside the stream root (it is character data there:
//!   [`Error::TextAtStreamLevel`]);
//! - a stream header that closes itself (`<stream:stream/>`).
//!
//! Speed: most start tags lie whole in the buffer and hold nothing unusual, so
//! they are first read in one pass with no state kept per byte
//! (`start_tag_whole`). That pass gives up on anything else (the end of the
//! buffer, non-ASCII names, prefixed namespace declarations, any fault), and the
//! resumable state machine then reads the tag again from its name: it alone
//! decides which error a stream gets, so the answer cannot depend on the path.
//! Character data is treated the same way: a run with references or other
//! scripts in it is checked in bulk up to the next `<` (`text_whole`: one scan for
//! the bytes that need a look, sixteen at a time, and `simdutf8` for the UTF-8),
//! and at a fault or the end of the buffer the exact way takes over.
//!
//! Everything the framer keeps across calls is either an offset from the start of
//! the token being scanned (which stays at the front of the caller's buffer until
//! its frame is returned) or a copy in a buffer reused from token to token: the
//! stream header's name, and the namespace prefixes in scope.

use std::ops::Range;

use crate::chars::{self, Decoded};
use crate::escape;
use crate::scope::{Scope, UriRange};

/// RFC 6120 §11.2: the namespace of the stream header and of stream-level elements.
pub const STREAMS_NS: &str = "http://etherx.jabber.org/streams";
/// Namespaces in XML 1.0 §3: bound to the prefix `xml`, and to nothing else.
const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
/// Namespaces in XML 1.0 §3: bound to the prefix `xmlns`; must never be declared.
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// References longer than this are rejected (see the module documentation).
const MAX_REFERENCE_BYTES: usize = 32;

/// Hard limits, checked on every byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element (or stream header), in bytes.
    pub max_element_bytes: usize,
    /// Deepest nesting below the stream root; a stanza is at depth 1.
    pub max_depth: usize,
    /// Most attributes (namespace declarations included) on one start tag.
    pub max_attributes: usize,
    /// Longest element or attribute name, prefix included, in bytes.
    pub max_name_bytes: usize,
    /// Longest attribute value as written (before unescaping), in bytes.
    pub max_attribute_value_bytes: usize,
    /// Most elements (start tags, the stanza's own included) in one top-level
    /// element: a stanza of many tiny elements costs a server's parser more than its
    /// size suggests (XEP-0205 §2.5).
    pub max_elements: usize,
}

/// Which limit an input broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    ElementBytes,
    Elements,
    Depth,
    Attributes,
    NameBytes,
    AttributeValueBytes,
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// `<?xml ...?>`, only before the stream header.
    XmlDeclaration,
    /// The stream's opening tag `<stream:stream ...>` (any prefix, or none).
    StreamOpen,
    /// One complete child of the stream root: a stanza or a nonza.
    Element,
    /// Whitespace between top-level elements (a keep-alive, RFC 6120 §4.6.1).
    Whitespace,
    /// The stream's closing tag.
    StreamClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub token: Token,
    pub len: usize,
}

/// Where the parts of a top-level element's start tag lie, as the framer read them:
/// offsets from the start of the element's frame. See [`Framer::head`].
///
/// A reader of stanzas needs the name, the end of the start tag and a few attributes
/// (RFC 6120 §8.1: `to`, `from`, `type`, and the namespace); taking them from here
/// spares it reading the start tag a second time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    /// Where the name ends (it starts after the `<`).
    pub name_end: u32,
    /// Where the attributes end: before `/>` or `>`.
    pub attributes_end: u32,
    /// The length of the start tag, `<` through `>`.
    pub len: u32,
    pub self_closing: bool,
    /// The values as written (between the quotes) of the unprefixed attributes
    /// `xmlns`, `to`, `from` and `type`, each as start and end offsets.
    pub xmlns: Option<(u32, u32)>,
    pub to: Option<(u32, u32)>,
    pub from: Option<(u32, u32)>,
    pub ty: Option<(u32, u32)>,
    /// The namespace declarations (`xmlns`, `xmlns:p`) anywhere in the element.
    pub namespaces: Namespaces,
}

/// The namespace declarations of an element and all it holds, in document order:
/// where the values of the first [`Namespaces::KEPT`] lie, and how many there are.
/// A reader that looks for a namespace (XEP-0205 §2.8 payload rules) can compare
/// these values instead of searching the element's bytes for `xmlns`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Namespaces {
    first: [(u32, u32); Namespaces::KEPT],
    /// How many declarations there are, up to `u8::MAX`.
    count: u8,
    /// Whether a value is written other than as its namespace name (with a
    /// reference, tab, line feed or carriage return).
    escaped: bool,
}

impl Namespaces {
    /// How many declarations' values are kept.
    pub const KEPT: usize = 2;

    /// The value ranges (offsets from the start of the frame) of all the
    /// declarations, each written as its namespace name; `None` when there are
    /// more than [`Self::KEPT`] or one is written otherwise, and the reader must
    /// look for itself.
    pub fn all(&self) -> Option<&[(u32, u32)]> {
        let count = usize::from(self.count);
        (count <= Self::KEPT && !self.escaped).then(|| &self.first[..count])
    }

    /// Notes one more declaration, whose value lies at `value` and is `escaped`
    /// (see [`Self::all`]).
    pub fn push(&mut self, value: (u32, u32), escaped: bool) {
        if let Some(slot) = self.first.get_mut(usize::from(self.count)) {
            *slot = value;
        }
        self.count = self.count.saturating_add(1);
        self.escaped |= escaped;
    }
}

/// Why the stream cannot go on. Each maps to one stream error of RFC 6120 §4.9.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Comment, processing instruction, DTD, or entity other than the five
    /// predefined ones (RFC 6120 §11.1): `<restricted-xml/>`.
    #[error("restricted XML: {0}")]
    RestrictedXml(&'static str),
    /// Not well-formed XML or not namespace-well-formed: `<not-well-formed/>`.
    #[error("not well-formed: {0}")]
    NotWellFormed(&'static str),
    /// Non-whitespace character data directly inside the stream root: `<bad-format/>`.
    #[error("character data at stream level")]
    TextAtStreamLevel,
    /// A hard limit was exceeded: `<policy-violation/>`.
    #[error("limit exceeded: {0:?}")]
    LimitExceeded(Limit),
    /// The stream header is a `stream` element outside the namespace
    /// `http://etherx.jabber.org/streams` (RFC 6120 §4.8.1): `<invalid-namespace/>`
    /// (§4.9.3.10).
    #[error("the stream header is not in the namespace {STREAMS_NS}")]
    InvalidNamespace,
}

impl Error {
    /// The defined condition of RFC 6120 §4.9.3 that this error closes the stream with.
    pub fn stream_condition(&self) -> &'static str {
        match self {
            Error::RestrictedXml(_) => "restricted-xml",
            Error::NotWellFormed(_) => "not-well-formed",
            Error::TextAtStreamLevel => "bad-format",
            Error::LimitExceeded(_) => "policy-violation",
            Error::InvalidNamespace => "invalid-namespace",
        }
    }
}

/// Where the stream is, between tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the stream header: XML declaration and white space.
    Prolog,
    /// Inside the stream root.
    Stream,
    /// After the stream's end tag: white space only.
    Closed,
}

/// Where the scan is, inside a token. Each state can stop at any byte and resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing of the next token seen yet.
    Boundary,
    /// After `<?xml` and a space, looking for `?>`.
    XmlDecl,
    /// After `<`.
    Lt,
    /// After `<!`.
    Bang,
    /// After `<![`; how many bytes of `[CDATA[` matched.
    CdataOpen(u8),
    /// In an element name.
    StartName,
    /// In a start tag after its name or an attribute; whether white space followed.
    InTag {
        space: bool,
    },
    AttrName,
    /// After an attribute name, before `=`.
    AttrEq,
    /// After `=`, before the quote.
    AttrQuote,
    AttrValue {
        quote: u8,
    },
    /// After `/` in a start tag.
    Slash,
    /// After `</`.
    EndName,
    /// After an end tag's name, before `>`.
    EndSpace,
    /// Character data inside an element.
    Text,
    /// After `]` in character data; how many in a row (at most 2 counted).
    TextBracket(u8),
    /// Inside a CDATA section.
    Cdata,
    /// After `]` in a CDATA section; how many in a row (at most 2 counted).
    CdataBracket(u8),
    /// After `&`, in character data (`None`) or in an attribute value with this quote.
    Reference {
        quote: Option<u8>,
    },
}

/// Progress inside a reference (XML 1.0 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefKind {
    /// Right after `&`.
    Start,
    /// After `&#`.
    Hash,
    Decimal,
    Hex,
    /// An entity name; only the five predefined ones pass (RFC 6120 §11.1).
    Entity,
}

#[derive(Debug, Clone, Copy)]
struct Reference {
    kind: RefKind,
    /// Bytes after `&` so far.
    len: usize,
    /// Character reference: value so far (saturating) and whether a digit was seen.
    value: u32,
    digits: bool,
    /// Entity reference: the name so far (the predefined ones have at most 4 bytes).
    name: [u8; 4],
}

impl Reference {
    const START: Reference = Reference {
        kind: RefKind::Start,
        len: 0,
        value: 0,
        digits: false,
        name: [0; 4],
    };
}

/// An attribute of the start tag being scanned, by offsets into the token.
#[derive(Debug, Clone)]
struct Attribute {
    start: usize,
    end: usize,
    /// Offset of the colon, or 0 when the name has no prefix.
    colon: usize,
    /// The namespace of a prefixed attribute, once resolved at the end of the tag.
    uri: Option<UriRange>,
}

/// What a step of the scan leads to.
enum Flow {
    /// Go on in this state from this offset.
    Next(State, usize),
    /// The bytes ran out: resume in this state from this offset.
    Suspend(State, usize),
    /// A token is complete.
    Frame(Frame),
}

/// The outcome of scanning a name.
enum NameScan {
    /// The buffer ends inside the name; resume here.
    Partial(usize),
    /// The name ends here.
    End(usize),
}

/// An incremental XMPP stream framer. See the module contract.
#[derive(Debug, Clone)]
pub struct Framer {
    limits: Limits,
    poisoned: Option<Error>,
    phase: Phase,
    /// No byte of the current stream has been framed: an XML declaration may come.
    at_stream_start: bool,
    /// The current stream began with an XML declaration.
    declared: bool,
    state: State,
    /// How far into the current token the scan went.
    pos: usize,

    /// Offset of the colon in the name being scanned, 0 for none (a name never
    /// starts at offset 0, nor with a colon).
    colon: usize,
    /// The element name of the start or end tag being scanned.
    name_start: usize,
    name_end: usize,
    name_colon: usize,
    /// Depth of the element whose start tag is being scanned (0: stream header).
    tag_depth: usize,
    /// Start tags seen in the current top-level element.
    elements: usize,
    attr_start: usize,
    attr_end: usize,
    attr_colon: usize,
    value_start: usize,
    attributes: Vec<Attribute>,
    /// The start tag of the current (or last) top-level element.
    head: Head,
    /// A 64-bit filter over attribute names that spares most duplicate checks.
    attribute_filter: u64,
    /// Whether the stream header declared the streams namespace as its default.
    default_ns_is_streams: bool,
    reference: Reference,

    /// The names of the open elements inside the current top-level element.
    open: Vec<Range<usize>>,
    /// The stream header's qualified name, which the stream's end tag must repeat.
    root_name: Vec<u8>,
    scope: Scope,
    scratch: Vec<u8>,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            poisoned: None,
            phase: Phase::Prolog,
            at_stream_start: true,
            declared: false,
            state: State::Boundary,
            pos: 0,
            colon: 0,
            name_start: 0,
            name_end: 0,
            name_colon: 0,
            tag_depth: 0,
            elements: 0,
            attr_start: 0,
            attr_end: 0,
            attr_colon: 0,
            value_start: 0,
            attributes: Vec::new(),
            head: Head::default(),
            attribute_filter: 0,
            default_ns_is_streams: false,
            reference: Reference::START,
            open: Vec::new(),
            root_name: Vec::new(),
            scope: Scope::default(),
            scratch: Vec::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the limits from the next byte on (e.g. looser after authentication).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Starts a new stream: the next token must be an XML declaration or a stream header.
    ///
    /// Namespace declarations of the old stream header are forgotten. A poisoned
    /// framer stays poisoned: an error has ended the connection's XML for good.
    pub fn reset(&mut self) {
        self.phase = Phase::Prolog;
        self.at_stream_start = true;
        self.declared = false;
        self.state = State::Boundary;
        self.pos = 0;
        self.open.clear();
        self.root_name.clear();
        self.scope.clear();
    }

    /// How many bytes of the token in progress have been scanned already: they are
    /// at the front of the caller's buffer and will be part of the next frame.
    pub fn scanned(&self) -> usize {
        self.pos
    }

    /// The error that poisoned the framer, if any.
    pub fn error(&self) -> Option<Error> {
        self.poisoned
    }

    /// Where the name, attributes and end of the start tag of the element last framed
    /// lie, and the values of its `xmlns`, `to`, `from` and `type` attributes: valid
    /// for the bytes of a frame [`Token::Element`] just returned, until the next call
    /// of [`Framer::next`].
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Whether the stream header has been read and the stream's end tag not yet.
    pub fn in_stream(&self) -> bool {
        self.phase == Phase::Stream
    }

    /// See the module contract.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<Frame>, Error> {
        if let Some(e) = self.poisoned {
            return Err(e);
        }
        let result = if buf.len() < self.pos {
            // The caller dropped bytes of the token in progress: everything the
            // framer knows about it is now wrong.
            debug_assert!(
                false,
                "Framer::next called without the bytes it already scanned"
            );
            Err(Error::NotWellFormed(
                "framer fed without the bytes it had already scanned",
            ))
        } else {
            self.scan(buf)
        };
        match result {
            Ok(Some(frame)) => {
                self.pos = 0;
                self.state = State::Boundary;
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.poisoned = Some(e);
                Err(e)
            }
        }
    }

    /// Runs the state machine from where it stopped over the token at the front of `buf`.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<Frame>, Error> {
        // No token may be longer than max_element_bytes: look at no more than that,
        // and when that is not enough, the token is too long.
        let end = buf.len().min(self.limits.max_element_bytes);
        if self.pos > end {
            return Err(Error::LimitExceeded(Limit::ElementBytes));
        }
        let b = &buf[..end];
        let mut pos = self.pos;
        let mut st = self.state;
        loop {
            let flow = match st {
                State::Boundary => self.boundary(b)?,
                State::XmlDecl => match memchr::memchr(b'>', &b[pos..]) {
                    Some(i) => {
                        let gt = pos + i;
                        if b[gt - 1] != b'?' {
                            return Err(Error::NotWellFormed("'>' inside the XML declaration"));
                        }
                        parse_xml_declaration(&b[5..gt - 1])?;
                        self.declared = true;
                        Flow::Frame(Frame {
                            token: Token::XmlDeclaration,
                            len: gt + 1,
                        })
                    }
                    None => Flow::Suspend(st, b.len()),
                },
                State::Lt => self.after_lt(b, pos)?,
                State::Bang => match b.get(pos) {
                    None => Flow::Suspend(st, pos),
                    Some(b'-') => return Err(Error::RestrictedXml("comment")),
                    Some(b'D') => return Err(Error::RestrictedXml("document type declaration")),
                    Some(b'[') if !self.open.is_empty() => Flow::Next(State::CdataOpen(1), pos + 1),
                    Some(b'[') if self.phase == Phase::Stream => {
                        return Err(Error::TextAtStreamLevel)
                    }
                    Some(_) => return Err(Error::NotWellFormed("malformed markup after '<!'")),
                },
                State::CdataOpen(matched) => {
                    const OPEN: &[u8] = b"[CDATA[";
                    let matched = usize::from(matched);
                    match b.get(pos) {
                        None => Flow::Suspend(st, pos),
                        Some(&c) if c != OPEN[matched] => {
                            return Err(Error::NotWellFormed("malformed CDATA section start"))
                        }
                        Some(_) if matched + 1 == OPEN.len() => Flow::Next(State::Cdata, pos + 1),
                        Some(_) => Flow::Next(State::CdataOpen(matched as u8 + 1), pos + 1),
                    }
                }
                State::StartName
                | State::InTag { .. }
                | State::AttrName
                | State::AttrEq
                | State::AttrQuote
                | State::AttrValue { .. } => self.start_tag(b, pos, st)?,
                State::Slash => match b.get(pos) {
                    None => Flow::Suspend(st, pos),
                    Some(b'>') => self.end_start_tag(b, pos + 1, true)?,
                    Some(_) => {
                        return Err(Error::NotWellFormed(
                            "expected '>' after '/' in a start tag",
                        ))
                    }
                },
                State::EndName | State::EndSpace => self.end_tag(b, pos, st)?,
                State::Text => self.content(b, pos)?,
                State::TextBracket(n) => match b.get(pos) {
                    // XML 1.0 §2.4: `]]>` must not appear in character data.
                    None => Flow::Suspend(st, pos),
                    Some(b']') => Flow::Next(State::TextBracket(2), pos + 1),
                    Some(b'>') if n >= 2 => {
                        return Err(Error::NotWellFormed("']]>' in character data"))
                    }
                    Some(_) => Flow::Next(State::Text, pos),
                },
                State::Cdata => match memchr::memchr(b']', &b[pos..]) {
                    Some(i) => {
                        let at = pos + i;
                        chars::check_complete_chars(&b[pos..at]).map_err(Error::NotWellFormed)?;
                        Flow::Next(State::CdataBracket(1), at + 1)
                    }
                    None => {
                        let valid = chars::check_chars(&b[pos..]).map_err(Error::NotWellFormed)?;
                        Flow::Suspend(st, pos + valid)
                    }
                },
                State::CdataBracket(n) => match b.get(pos) {
                    None => Flow::Suspend(st, pos),
                    Some(b']') => Flow::Next(State::CdataBracket(2), pos + 1),
                    Some(b'>') if n >= 2 => Flow::Next(State::Text, pos + 1),
                    Some(_) => Flow::Next(State::Cdata, pos),
                },
                State::Reference { quote } => match b.get(pos) {
                    None => Flow::Suspend(st, pos),
                    Some(&c) if self.reference_byte(c)? => match quote {
                        Some(quote) => Flow::Next(State::AttrValue { quote }, pos + 1),
                        None => Flow::Next(State::Text, pos + 1),
                    },
                    Some(_) => Flow::Next(st, pos + 1),
                },
            };
            match flow {
                Flow::Next(next, at) => {
                    st = next;
                    pos = at;
                }
                Flow::Frame(frame) => return Ok(Some(frame)),
                Flow::Suspend(next, at) => {
                    self.state = next;
                    self.pos = at;
                    return if buf.len() > end {
                        Err(Error::LimitExceeded(Limit::ElementBytes))
                    } else {
                        Ok(None)
                    };
                }
            }
        }
    }

    /// The first byte of a token.
    fn boundary(&mut self, b: &[u8]) -> Result<Flow, Error> {
        let Some(&c) = b.first() else {
            return Ok(Flow::Suspend(State::Boundary, 0));
        };
        if self.at_stream_start {
            // XML 1.0 §2.8: the declaration, if any, is the very first thing.
            const DECL: &[u8] = b"<?xml";
            let n = b.len().min(DECL.len());
            if b[..n] == DECL[..n] {
                match b.get(DECL.len()) {
                    None => return Ok(Flow::Suspend(State::Boundary, 0)),
                    Some(&w) if chars::is_ws(w) => {
                        self.at_stream_start = false;
                        return Ok(Flow::Next(State::XmlDecl, DECL.len() + 1));
                    }
                    Some(_) => {}
                }
            }
            self.at_stream_start = false;
        }
        if chars::is_ws(c) {
            if self.phase == Phase::Prolog && !self.declared {
                return Err(Error::NotWellFormed("white space before the stream header"));
            }
            let len = 1 + b[1..].iter().take_while(|&&c| chars::is_ws(c)).count();
            return Ok(Flow::Frame(Frame {
                token: Token::Whitespace,
                len,
            }));
        }
        if c != b'<' {
            if c >= 0x80 && matches!(chars::decode(b), Decoded::Incomplete) {
                // Whether it is bad UTF-8 or text depends on bytes still to come.
                return Ok(Flow::Suspend(State::Boundary, 0));
            }
            return Err(self.stray_text(b));
        }
        self.after_lt(b, 1)
    }

    /// After `<`: a start tag, an end tag, or a markup declaration.
    #[inline(always)]
    fn after_lt(&mut self, b: &[u8], pos: usize) -> Result<Flow, Error> {
        let Some(&c) = b.get(pos) else {
            return Ok(Flow::Suspend(State::Lt, pos));
        };
        if self.phase == Phase::Closed {
            return Err(Error::NotWellFormed("markup after the end of the stream"));
        }
        match c {
            b'/' => {
                if self.phase == Phase::Prolog {
                    return Err(Error::NotWellFormed("an end tag before the stream header"));
                }
                // The usual case: exactly the open element's name, then '>'. The
                // name was checked in its start tag; comparing is enough.
                if let Some(open) = self.open.last() {
                    let name_end = pos + 1 + open.len();
                    if b.get(name_end) == Some(&b'>')
                        && same_short(&b[pos + 1..name_end], &b[open.clone()])
                    {
                        self.open.pop();
                        return Ok(self.close_element(name_end + 1));
                    }
                }
                self.name_start = pos + 1;
                self.colon = 0;
                self.end_tag(b, pos + 1, State::EndName)
            }
            b'!' => Ok(Flow::Next(State::Bang, pos + 1)),
            b'?' => Err(Error::RestrictedXml("processing instruction")),
            _ => {
                self.tag_depth = match self.phase {
                    Phase::Prolog => 0,
                    _ => self.open.len() + 1,
                };
                if self.tag_depth > self.limits.max_depth {
                    return Err(Error::LimitExceeded(Limit::Depth));
                }
                if self.tag_depth == 1 {
                    self.elements = 0;
                    self.head = Head::default();
                }
                self.elements += 1;
                if self.elements > self.limits.max_elements {
                    return Err(Error::LimitExceeded(Limit::Elements));
                }
                self.name_start = pos;
                self.attributes.clear();
                self.attribute_filter = 0;
                self.default_ns_is_streams = false;
                // What the one-pass scan notes of the tag is noted again if it
                // gives up and the general way reads the tag.
                let namespaces = self.head.namespaces;
                if let Some((end, self_closing, prefixed)) = self.start_tag_whole(b, pos) {
                    if prefixed || self.phase != Phase::Stream {
                        return self.end_start_tag(b, end, self_closing);
                    }
                    // No prefix to resolve, and not the stream header.
                    return Ok(self.open_element(end, self_closing));
                }
                // Start over the general way, from a clean slate.
                self.head.namespaces = namespaces;
                self.colon = 0;
                self.attributes.clear();
                self.attribute_filter = 0;
                self.default_ns_is_streams = false;
                self.start_tag(b, pos, State::StartName)
            }
        }
    }

    /// The usual start tag, whose name begins at `pos`, in one pass without
    /// states: all of it in `b`, ASCII names, no prefixed namespace declaration,
    /// and no fault. Returns where it ends (after `>`), whether it closes itself
    /// and whether a name in it has a prefix, having recorded the name and
    /// attributes just as [`Self::start_tag`] does, for [`Self::end_start_tag`].
    ///
    /// `None` means "not here": at the end of `b`, on anything rare, and on every
    /// fault. The caller then scans the tag again with [`Self::start_tag`], which
    /// can stop at any byte and reports the first fault in byte order; so this
    /// path only has to accept nothing that one rejects, and to leave nothing
    /// behind that one does not set again (it declares no prefix, the only thing
    /// that would outlive a restart).
    #[inline]
    fn start_tag_whole(&mut self, b: &[u8], pos: usize) -> Option<(usize, bool, bool)> {
        let max_name = self.limits.max_name_bytes;
        let (mut p, colon) = ascii_qname(b, pos)?;
        if p - pos > max_name {
            return None;
        }
        self.name_end = p;
        self.name_colon = colon;
        let mut prefixed = colon != 0;
        let mut space = false;
        loop {
            let c = *b.get(p)?;
            if chars::is_ws(c) {
                space = true;
                p += 1;
                continue;
            }
            match c {
                b'>' => return Some((p + 1, false, prefixed)),
                b'/' => return (b.get(p + 1) == Some(&b'>')).then_some((p + 2, true, prefixed)),
                _ if !space || self.attributes.len() >= self.limits.max_attributes => return None,
                _ => {}
            }
            space = false;
            let start = p;
            let (end, colon) = ascii_qname(b, start)?;
            if end - start > max_name || self.is_repeated(b, start, end) {
                return None;
            }
            p = end;
            while chars::is_ws(*b.get(p)?) {
                p += 1;
            }
            if b[p] != b'=' {
                return None;
            }
            p += 1;
            while chars::is_ws(*b.get(p)?) {
                p += 1;
            }
            let quote = b[p];
            if quote != b'\'' && quote != b'"' {
                return None;
            }
            let value_start = p + 1;
            let (value_end, written_normalized) = value_whole(b, value_start, quote)?;
            if value_end - value_start > self.limits.max_attribute_value_bytes {
                return None;
            }
            self.attributes.push(Attribute {
                start,
                end,
                colon,
                uri: None,
            });
            if self.tag_depth == 1 && colon == 0 {
                self.note_head_attribute(&b[start..end], value_start, value_end);
            }
            if colon != 0 {
                if b[start..colon] == *b"xmlns" {
                    return None;
                }
                prefixed = true;
            } else if b[start..end] == *b"xmlns" {
                let value = &b[value_start..value_end];
                self.default_namespace(value, !written_normalized).ok()?;
                self.head.namespaces.push(
                    (offset(value_start), offset(value_end)),
                    !written_normalized,
                );
            }
            p = value_end + 1;
        }
    }

    /// A start tag from `st` on, to its end. The stages follow each other in the
    /// order of the usual `<name attr='value' ...>`, without a round through the
    /// dispatcher for each.
    fn start_tag(&mut self, b: &[u8], mut pos: usize, mut st: State) -> Result<Flow, Error> {
        loop {
            if st == State::StartName {
                match self.scan_name(b, pos, self.name_start)? {
                    NameScan::Partial(p) => return Ok(Flow::Suspend(st, p)),
                    NameScan::End(p) => {
                        pos = p;
                        self.name_end = p;
                        self.name_colon = self.colon;
                        st = State::InTag { space: false };
                    }
                }
            }
            if let State::InTag { mut space } = st {
                loop {
                    let Some(&c) = b.get(pos) else {
                        return Ok(Flow::Suspend(State::InTag { space }, pos));
                    };
                    match c {
                        b' ' | b'\t' | b'\n' | b'\r' => {
                            space = true;
                            pos += 1;
                        }
                        b'>' => return self.end_start_tag(b, pos + 1, false),
                        b'/' => return Ok(Flow::Next(State::Slash, pos + 1)),
                        _ => {
                            if !space {
                                return Err(Error::NotWellFormed(
                                    "an attribute not preceded by white space",
                                ));
                            }
                            if self.attributes.len() >= self.limits.max_attributes {
                                return Err(Error::LimitExceeded(Limit::Attributes));
                            }
                            self.attr_start = pos;
                            self.colon = 0;
                            st = State::AttrName;
                            break;
                        }
                    }
                }
            }
            if st == State::AttrName {
                match self.scan_name(b, pos, self.attr_start)? {
                    NameScan::Partial(p) => return Ok(Flow::Suspend(st, p)),
                    NameScan::End(p) => {
                        pos = p;
                        self.attr_end = p;
                        self.attr_colon = self.colon;
                        self.add_attribute(b)?;
                        st = State::AttrEq;
                    }
                }
            }
            if st == State::AttrEq {
                loop {
                    let Some(&c) = b.get(pos) else {
                        return Ok(Flow::Suspend(st, pos));
                    };
                    pos += 1;
                    match c {
                        b'=' => break,
                        b' ' | b'\t' | b'\n' | b'\r' => {}
                        _ => {
                            return Err(Error::NotWellFormed(
                                "expected '=' after an attribute name",
                            ))
                        }
                    }
                }
                st = State::AttrQuote;
            }
            if st == State::AttrQuote {
                loop {
                    let Some(&c) = b.get(pos) else {
                        return Ok(Flow::Suspend(st, pos));
                    };
                    pos += 1;
                    match c {
                        b'"' | b'\'' => {
                            self.value_start = pos;
                            st = State::AttrValue { quote: c };
                            break;
                        }
                        b' ' | b'\t' | b'\n' | b'\r' => {}
                        _ => return Err(Error::NotWellFormed("expected a quoted attribute value")),
                    }
                }
            }
            if let State::AttrValue { quote } = st {
                let max = self.limits.max_attribute_value_bytes;
                // Look at no more than one byte past the longest value allowed.
                let cap = self
                    .value_start
                    .saturating_add(max)
                    .saturating_add(1)
                    .min(b.len());
                let too_long = cap - self.value_start > max;
                loop {
                    if pos > cap {
                        return Err(Error::LimitExceeded(Limit::AttributeValueBytes));
                    }
                    let class = if quote == b'"' {
                        &chars::QUOT_VALUE
                    } else {
                        &chars::APOS_VALUE
                    };
                    pos = chars::skip_plain(b, pos, cap, class);
                    let c = match b[..cap].get(pos) {
                        Some(&c) => c,
                        None if too_long => {
                            return Err(Error::LimitExceeded(Limit::AttributeValueBytes))
                        }
                        None => return Ok(Flow::Suspend(st, pos)),
                    };
                    match c {
                        b'<' => return Err(Error::NotWellFormed("'<' in an attribute value")),
                        b'&' => {
                            self.reference = Reference::START;
                            return Ok(Flow::Next(
                                State::Reference { quote: Some(quote) },
                                pos + 1,
                            ));
                        }
                        b'\t' | b'\n' => pos += 1,
                        b'\r' => match b[..cap].get(pos + 1) {
                            Some(b'\n') => pos += 2,
                            Some(_) => return Err(LONE_CR_IN_VALUE),
                            None if too_long => {
                                return Err(Error::LimitExceeded(Limit::AttributeValueBytes))
                            }
                            None => return Ok(Flow::Suspend(st, pos)),
                        },
                        c if c == quote => {
                            if self.tag_depth == 1 && self.attr_colon == 0 {
                                self.note_head_attribute(
                                    &b[self.attr_start..self.attr_end],
                                    self.value_start,
                                    pos,
                                );
                            }
                            // Only namespace declarations need a closer look.
                            if self.attr_colon != 0
                                || b[self.attr_start..self.attr_end] == *b"xmlns"
                            {
                                self.end_attribute(b, pos)?;
                            }
                            pos += 1;
                            st = State::InTag { space: false };
                            break;
                        }
                        c if c < 0x80 => return Err(FORBIDDEN_CONTROL),
                        _ => {
                            let (p, complete) = skip_non_ascii(b, pos, cap)?;
                            pos = p;
                            if !complete {
                                return Ok(Flow::Suspend(st, pos));
                            }
                        }
                    }
                }
            }
        }
    }

    /// An end tag from `st` on, to its end (XML 1.0 §3.1 [42]: `</` Name S? `>`).
    fn end_tag(&mut self, b: &[u8], mut pos: usize, st: State) -> Result<Flow, Error> {
        if st == State::EndName {
            match self.scan_name(b, pos, self.name_start)? {
                NameScan::Partial(p) => return Ok(Flow::Suspend(st, p)),
                NameScan::End(p) => {
                    pos = p;
                    self.name_end = p;
                }
            }
        }
        loop {
            let Some(&c) = b.get(pos) else {
                return Ok(Flow::Suspend(State::EndSpace, pos));
            };
            pos += 1;
            match c {
                b'>' => return self.end_end_tag(b, pos),
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => return Err(Error::NotWellFormed("expected '>' after an end tag's name")),
            }
        }
    }

    /// Content inside an element: character data, and the tags met in it, until
    /// something rarer (a reference, `]`, CDATA) or the end of the bytes.
    fn content(&mut self, b: &[u8], mut pos: usize) -> Result<Flow, Error> {
        // Once a check in bulk has failed, a fault or the end of the bytes is
        // ahead: the exact way takes it from there.
        let mut bulk = true;
        loop {
            pos = chars::skip_text(b, pos);
            let Some(&c) = b.get(pos) else {
                return Ok(Flow::Suspend(State::Text, pos));
            };
            // Text with references or other scripts in it stops the plain scan
            // every few words; checked in bulk up to the next tag instead.
            if bulk && (c == b'&' || c == b']' || c >= 0x80) {
                match text_whole(b, pos) {
                    Some(lt) => {
                        pos = lt;
                        continue;
                    }
                    None => bulk = false,
                }
            }
            match c {
                b'<' => match self.after_lt(b, pos + 1)? {
                    Flow::Next(State::Text, p) => pos = p,
                    flow => return Ok(flow),
                },
                b'&' => {
                    if let Some(p) = reference_whole(b, pos + 1) {
                        pos = p;
                        continue;
                    }
                    // Cut by the end of the bytes, or a fault: byte by byte.
                    self.reference = Reference::START;
                    return Ok(Flow::Next(State::Reference { quote: None }, pos + 1));
                }
                b']' => return Ok(Flow::Next(State::TextBracket(1), pos + 1)),
                b'\t' | b'\n' | b'\r' => pos += 1,
                c if c < 0x80 => return Err(FORBIDDEN_CONTROL),
                _ => {
                    // Most often one character of another script in ASCII text
                    // ("café"): stepped over here, without a call.
                    if let Some(len) = chars::valid_char_len(&b[pos..]) {
                        if b.get(pos + len).is_some_and(|&c| c < 0x80) {
                            pos += len;
                            continue;
                        }
                    }
                    let (p, complete) = skip_non_ascii(b, pos, b.len())?;
                    pos = p;
                    if !complete {
                        return Ok(Flow::Suspend(State::Text, pos));
                    }
                }
            }
        }
    }

    /// Classifies a byte that cannot start a token where it stands.
    fn stray_text(&self, b: &[u8]) -> Error {
        match self.phase {
            Phase::Prolog => Error::NotWellFormed("character data before the stream header"),
            Phase::Closed => Error::NotWellFormed("character data after the end of the stream"),
            Phase::Stream => match b.first() {
                Some(&c) if c < 0x80 && chars::check_chars(&[c]).is_err() => {
                    Error::NotWellFormed("a control character that XML 1.0 forbids")
                }
                Some(&c) if c >= 0x80 && matches!(chars::decode(b), Decoded::Invalid) => {
                    Error::NotWellFormed("invalid UTF-8")
                }
                _ => Error::TextAtStreamLevel,
            },
        }
    }

    /// Scans a name (XML 1.0 §2.3 `Name`, restricted to a `QName` of Namespaces in
    /// XML 1.0 §4: at most one colon, and not at either end) from `pos`; the name
    /// began at `start`.
    #[inline]
    fn scan_name(&mut self, b: &[u8], pos: usize, start: usize) -> Result<NameScan, Error> {
        // The usual case, an ASCII name with at most one colon that ends inside `b`,
        // in one pass; anything else goes the general way from the start.
        if pos == start && b.get(pos).is_some_and(|&c| chars::is_ascii_name_start(c)) {
            let part = |mut p: usize| {
                while p < b.len() && chars::is_ascii_name_char(b[p]) {
                    p += 1;
                }
                p
            };
            let mut p = part(pos + 1);
            let mut colon = 0;
            if b.get(p) == Some(&b':')
                && b.get(p + 1).is_some_and(|&c| chars::is_ascii_name_start(c))
            {
                colon = p;
                p = part(p + 2);
            }
            if b.get(p).is_some_and(|&c| c < 0x80 && c != b':') {
                if p - start > self.limits.max_name_bytes {
                    return Err(Error::LimitExceeded(Limit::NameBytes));
                }
                self.colon = colon;
                return Ok(NameScan::End(p));
            }
        }
        self.scan_name_slowly(b, pos, start)
    }

    /// [`Self::scan_name`] for any name, one character at a time.
    fn scan_name_slowly(
        &mut self,
        b: &[u8],
        mut pos: usize,
        start: usize,
    ) -> Result<NameScan, Error> {
        let max = self.limits.max_name_bytes;
        // Look at no more than one byte past the longest name allowed.
        let stop = start.saturating_add(max).saturating_add(1).min(b.len());
        loop {
            let part_start = pos == start || (self.colon != 0 && pos == self.colon + 1);
            if !part_start {
                while pos < stop && chars::is_ascii_name_char(b[pos]) {
                    pos += 1;
                }
            }
            if pos - start > max {
                return Err(Error::LimitExceeded(Limit::NameBytes));
            }
            let Some(&c) = b.get(pos) else {
                return Ok(NameScan::Partial(pos));
            };
            if c < 0x80 {
                if c == b':' {
                    if part_start || self.colon != 0 {
                        return Err(Error::NotWellFormed(
                            "a name with an empty prefix, an empty local part or two colons",
                        ));
                    }
                    self.colon = pos;
                } else if chars::is_ascii_name_char(c) {
                    if part_start && !chars::is_ascii_name_start(c) {
                        return Err(Error::NotWellFormed(
                            "a name starting with a digit, '-' or '.'",
                        ));
                    }
                } else if part_start {
                    return Err(Error::NotWellFormed(if pos == start {
                        "expected a name"
                    } else {
                        "a name with an empty local part"
                    }));
                } else {
                    return Ok(NameScan::End(pos));
                }
                pos += 1;
            } else {
                match chars::decode(&b[pos..]) {
                    Decoded::Incomplete => return Ok(NameScan::Partial(pos)),
                    Decoded::Invalid => return Err(Error::NotWellFormed("invalid UTF-8")),
                    Decoded::Char(ch, len) => {
                        let allowed = if part_start {
                            chars::is_name_start_char(ch)
                        } else {
                            chars::is_name_char(ch)
                        };
                        if !allowed {
                            return Err(Error::NotWellFormed(
                                "a character XML 1.0 does not allow in names",
                            ));
                        }
                        pos += len;
                    }
                }
            }
        }
    }

    /// Records the attribute whose name just ended; rejects a repeated name
    /// (XML 1.0 §3.1, WFC: Unique Att Spec).
    fn add_attribute(&mut self, b: &[u8]) -> Result<(), Error> {
        if self.is_repeated(b, self.attr_start, self.attr_end) {
            return Err(Error::NotWellFormed("an attribute repeated on one element"));
        }
        self.attributes.push(Attribute {
            start: self.attr_start,
            end: self.attr_end,
            colon: self.attr_colon,
            uri: None,
        });
        Ok(())
    }

    /// Whether the attribute name `b[start..end]` is one of the tag's attributes
    /// already; if not, enters it in the filter (the caller records it).
    #[inline(always)]
    fn is_repeated(&mut self, b: &[u8], start: usize, end: usize) -> bool {
        let name = &b[start..end];
        let (first, last) = (
            name.first().copied().unwrap_or(0),
            name.last().copied().unwrap_or(0),
        );
        let hash =
            (name.len() as u64).wrapping_mul(0x9E37) ^ u64::from(first) ^ (u64::from(last) << 3);
        let bit = 1u64 << (hash % 64);
        if self.attribute_filter & bit != 0
            && self.attributes.iter().any(|a| &b[a.start..a.end] == name)
        {
            return true;
        }
        self.attribute_filter |= bit;
        false
    }

    /// Keeps where the value of an unprefixed attribute `name` of a top-level start tag
    /// lies, when it is one [`Head`] holds.
    #[inline(always)]
    fn note_head_attribute(&mut self, name: &[u8], value_start: usize, value_end: usize) {
        let slot = match name {
            b"to" => &mut self.head.to,
            b"from" => &mut self.head.from,
            b"type" => &mut self.head.ty,
            b"xmlns" => &mut self.head.xmlns,
            _ => return,
        };
        *slot = Some((offset(value_start), offset(value_end)));
    }

    /// Checks a namespace declaration (Namespaces in XML 1.0 §3) when its value ends
    /// at `value_end`, and brings a prefixed one into scope.
    fn end_attribute(&mut self, b: &[u8], value_end: usize) -> Result<(), Error> {
        let value = &b[self.value_start..value_end];
        let name = &b[self.attr_start..self.attr_end];
        if self.attr_colon == 0 {
            if name != b"xmlns" {
                return Ok(());
            }
            let escaped = escape::attribute_needs_normalizing(value);
            self.head
                .namespaces
                .push((offset(self.value_start), offset(value_end)), escaped);
            return self.default_namespace(value, escaped);
        }
        if &b[self.attr_start..self.attr_colon] != b"xmlns" {
            return Ok(());
        }
        self.head.namespaces.push(
            (offset(self.value_start), offset(value_end)),
            escape::attribute_needs_normalizing(value),
        );
        let prefix = &b[self.attr_colon + 1..self.attr_end];
        match prefix {
            b"xmlns" => Err(Error::NotWellFormed("the prefix xmlns declared")),
            b"xml" => {
                self.scratch.clear();
                escape::push_attribute_value(value, &mut self.scratch);
                if self.scratch != XML_NS {
                    return Err(Error::NotWellFormed(
                        "the prefix xml bound to another namespace",
                    ));
                }
                Ok(())
            }
            _ if value.is_empty() => Err(Error::NotWellFormed(
                "a namespace prefix undeclared (xmlns:p='')",
            )),
            _ => {
                self.scope.declare(prefix, self.tag_depth, |out| {
                    escape::push_attribute_value(value, out)
                });
                let uri = self.scope.last_uri();
                if uri == XML_NS || uri == XMLNS_NS {
                    return Err(Error::NotWellFormed(
                        "a prefix bound to a reserved namespace name",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks the value of a default namespace declaration `xmlns='...'` as written,
    /// which `needs_normalizing` when it holds a reference, tab, line feed or CR.
    fn default_namespace(&mut self, value: &[u8], needs_normalizing: bool) -> Result<(), Error> {
        let value: &[u8] = if needs_normalizing {
            self.scratch.clear();
            escape::push_attribute_value(value, &mut self.scratch);
            &self.scratch
        } else {
            value
        };
        if value == XML_NS || value == XMLNS_NS {
            return Err(Error::NotWellFormed(
                "a reserved namespace name declared as the default namespace",
            ));
        }
        if self.tag_depth == 0 {
            self.default_ns_is_streams = value == STREAMS_NS.as_bytes();
        }
        Ok(())
    }

    /// Finishes the start tag that ended just before `pos`: resolves its prefixes
    /// (Namespaces in XML 1.0 §5, NSC: Prefix Declared; §6.3 no two attributes with
    /// one expanded name), then returns the frame it completes, if any.
    fn end_start_tag(&mut self, b: &[u8], pos: usize, self_closing: bool) -> Result<Flow, Error> {
        let name = &b[self.name_start..self.name_end];
        let mut element_ns: Option<&[u8]> = None;
        if self.name_colon != 0 {
            let prefix = &b[self.name_start..self.name_colon];
            match prefix {
                b"xmlns" => {
                    return Err(Error::NotWellFormed(
                        "an element name with the prefix xmlns",
                    ))
                }
                b"xml" => element_ns = Some(XML_NS),
                _ => match self.scope.lookup(prefix) {
                    Some(uri) => element_ns = Some(self.scope.uri(uri)),
                    None => {
                        return Err(Error::NotWellFormed(
                            "an undeclared namespace prefix on an element",
                        ))
                    }
                },
            }
        }

        let mut resolved = 0;
        for a in self.attributes.iter_mut().filter(|a| a.colon != 0) {
            match &b[a.start..a.colon] {
                b"xmlns" | b"xml" => {}
                prefix => match self.scope.lookup(prefix) {
                    Some(uri) => {
                        a.uri = Some(uri);
                        resolved += 1;
                    }
                    None => {
                        return Err(Error::NotWellFormed(
                            "an undeclared namespace prefix on an attribute",
                        ));
                    }
                },
            }
        }
        if resolved >= 2 {
            let prefixed: &[Attribute] = &self.attributes;
            for (i, x) in prefixed.iter().enumerate() {
                let Some(xu) = &x.uri else { continue };
                for y in &prefixed[i + 1..] {
                    let Some(yu) = &y.uri else { continue };
                    if b[x.colon..x.end] == b[y.colon..y.end]
                        && self.scope.uri(xu.clone()) == self.scope.uri(yu.clone())
                    {
                        return Err(Error::NotWellFormed(
                            "two attributes with the same namespace and local name",
                        ));
                    }
                }
            }
        }

        if self.phase == Phase::Prolog {
            // RFC 6120 §4.8.1: the root is <stream> in the streams namespace.
            let local = if self.name_colon != 0 {
                &b[self.name_colon + 1..self.name_end]
            } else {
                name
            };
            if local != b"stream" {
                return Err(Error::NotWellFormed(
                    "the first element is not a stream header",
                ));
            }
            let is_streams = match element_ns {
                Some(ns) => ns == STREAMS_NS.as_bytes(),
                None => self.default_ns_is_streams,
            };
            if !is_streams {
                return Err(Error::InvalidNamespace);
            }
            if self_closing {
                return Err(Error::NotWellFormed("an empty stream header"));
            }
            self.root_name.clear();
            self.root_name.extend_from_slice(name);
            self.phase = Phase::Stream;
            return Ok(Flow::Frame(Frame {
                token: Token::StreamOpen,
                len: pos,
            }));
        }

        Ok(self.open_element(pos, self_closing))
    }

    /// After a start tag below the stream root, checked and resolved, which ended
    /// just before `pos`: its frame, if it closed itself at the top level.
    #[inline(always)]
    fn open_element(&mut self, pos: usize, self_closing: bool) -> Flow {
        if self.tag_depth == 1 {
            self.head.name_end = offset(self.name_end);
            self.head.len = offset(pos);
            self.head.attributes_end = offset(pos - 1 - usize::from(self_closing));
            self.head.self_closing = self_closing;
        }
        if self_closing {
            return self.close_element(pos);
        }
        self.open.push(self.name_start..self.name_end);
        Flow::Next(State::Text, pos)
    }

    /// Finishes the end tag that ended just before `pos` (XML 1.0 §3, WFC: Element
    /// Type Match), then returns the frame it completes, if any.
    fn end_end_tag(&mut self, b: &[u8], pos: usize) -> Result<Flow, Error> {
        let name = &b[self.name_start..self.name_end];
        match self.open.pop() {
            None => {
                if name != self.root_name.as_slice() {
                    return Err(Error::NotWellFormed(
                        "an end tag that does not match the stream header",
                    ));
                }
                self.phase = Phase::Closed;
                self.scope.clear();
                Ok(Flow::Frame(Frame {
                    token: Token::StreamClose,
                    len: pos,
                }))
            }
            Some(open) => {
                if b[open] != *name {
                    return Err(Error::NotWellFormed(
                        "an end tag that does not match its start tag",
                    ));
                }
                Ok(self.close_element(pos))
            }
        }
    }

    /// After the end of an element below the stream root, which ended just before
    /// `pos` and was taken off the open elements: its frame, if it was top-level.
    #[inline(always)]
    fn close_element(&mut self, pos: usize) -> Flow {
        self.scope.leave_deeper_than(self.open.len());
        if self.open.is_empty() {
            return Flow::Frame(Frame {
                token: Token::Element,
                len: pos,
            });
        }
        Flow::Next(State::Text, pos)
    }

    /// Takes one byte of the reference being scanned; see [`Reference::byte`].
    fn reference_byte(&mut self, c: u8) -> Result<bool, Error> {
        self.reference.byte(c)
    }
}

impl Reference {
    /// Takes one byte of a reference (XML 1.0 §4.1); true when the reference ended
    /// with it. Only the five predefined entities pass (RFC 6120 §11.1).
    fn byte(&mut self, c: u8) -> Result<bool, Error> {
        let r = self;
        r.len += 1;
        if r.len > MAX_REFERENCE_BYTES {
            return Err(Error::NotWellFormed("a reference longer than 32 bytes"));
        }
        const MALFORMED_CHAR_REF: Error = Error::NotWellFormed("malformed character reference");
        match r.kind {
            RefKind::Start => match c {
                b'#' => r.kind = RefKind::Hash,
                c if chars::is_ascii_name_start(c) => {
                    r.kind = RefKind::Entity;
                    r.name[0] = c;
                }
                c if c >= 0x80 || c == b':' => {
                    return Err(Error::RestrictedXml(
                        "an entity other than the five predefined ones",
                    ));
                }
                _ => return Err(Error::NotWellFormed("'&' that does not start a reference")),
            },
            RefKind::Hash => match c {
                b'x' => r.kind = RefKind::Hex,
                b'0'..=b'9' => {
                    r.kind = RefKind::Decimal;
                    r.value = u32::from(c - b'0');
                    r.digits = true;
                }
                _ => return Err(MALFORMED_CHAR_REF),
            },
            RefKind::Decimal | RefKind::Hex => {
                if c == b';' {
                    if !r.digits {
                        return Err(MALFORMED_CHAR_REF);
                    }
                    if !chars::is_char(r.value) {
                        return Err(Error::NotWellFormed(
                            "a character reference to a character XML 1.0 forbids",
                        ));
                    }
                    return Ok(true);
                }
                let radix = if r.kind == RefKind::Hex { 16 } else { 10 };
                let digit = char::from(c).to_digit(radix).ok_or(MALFORMED_CHAR_REF)?;
                r.value = r.value.saturating_mul(radix).saturating_add(digit);
                r.digits = true;
            }
            RefKind::Entity => {
                // Bytes after `&`, minus this one, are the name so far.
                let len = r.len - 1;
                if c == b';' {
                    return match &r.name[..len.min(4)] {
                        b"amp" | b"lt" | b"gt" | b"apos" | b"quot" => Ok(true),
                        _ => Err(Error::RestrictedXml(
                            "an entity other than the five predefined ones",
                        )),
                    };
                }
                if chars::is_ascii_name_char(c) && len < 4 {
                    r.name[len] = c;
                } else if chars::is_ascii_name_char(c) || c >= 0x80 || c == b':' {
                    return Err(Error::RestrictedXml(
                        "an entity other than the five predefined ones",
                    ));
                } else {
                    return Err(Error::NotWellFormed("an entity reference without ';'"));
                }
            }
        }
        Ok(false)
    }
}

const FORBIDDEN_CONTROL: Error = Error::NotWellFormed("a control character that XML 1.0 forbids");

/// Skips a run of non-ASCII bytes from `pos` (before `end`), checking that they are
/// UTF-8 made of XML `Char`s. Returns where the run stops, and false when it stops
/// inside a sequence that bytes past `end` may complete.
fn skip_non_ascii(b: &[u8], mut pos: usize, end: usize) -> Result<(usize, bool), Error> {
    // Runs in text are short (a word of another script, an emoji): step over
    // the characters that are plainly valid, and leave the rest (faults,
    // sequences cut by `end`) to the general check from the first of them, whose
    // answer cannot depend on the valid characters before it.
    let b_end = &b[..end];
    while let Some(len) = chars::valid_char_len(&b_end[pos..]) {
        pos += len;
        match b_end.get(pos) {
            Some(&c) if c >= 0x80 => {}
            _ => return Ok((pos, true)),
        }
    }
    let run_end = b[pos..end]
        .iter()
        .position(|&c| c < 0x80)
        .map_or(end, |i| pos + i);
    let valid = chars::check_chars(&b[pos..run_end]).map_err(Error::NotWellFormed)?;
    if pos + valid == run_end {
        Ok((run_end, true))
    } else if run_end < end {
        Err(Error::NotWellFormed("invalid UTF-8"))
    } else {
        Ok((pos + valid, false))
    }
}

/// Character data from `p` up to the next `<`, checked in bulk (XML 1.0 §2.4:
/// `Char`s, no `]]>`, every reference complete and valid): where the `<` is, when
/// all of it is in `b` and valid. `None` when it is not (a fault, or the end of
/// `b` first): the caller then checks it the exact way, which finds the fault or
/// the cut and says which. Accepts nothing the exact way rejects: the same
/// character check, the same reference check.
fn text_whole(b: &[u8], p: usize) -> Option<usize> {
    let mut i = p;
    loop {
        let k = chars::next_text_mark(b, i)?;
        match b[k] {
            b'<' => {
                let run = &b[p..k];
                return (run.is_ascii() || chars::is_complete_utf8_chars(run)).then_some(k);
            }
            b'&' => i = reference_whole(b, k + 1)?,
            b']' if b[k + 1..].starts_with(b"]>") => return None,
            b']' | b'\t' | b'\n' | b'\r' => i = k + 1,
            _ => return None,
        }
    }
}

/// An attribute value from `p` (after its opening quote) to its closing quote,
/// all in `b` and valid; returns where the quote is, and whether the value is
/// written as it is normalized (no reference, tab, line feed or carriage return).
#[inline(always)]
fn value_whole(b: &[u8], mut p: usize, quote: u8) -> Option<(usize, bool)> {
    let mut normalized = true;
    loop {
        p = chars::skip_value_run(b, p);
        let c = *b.get(p)?;
        match c {
            _ if c == quote => return Some((p, normalized)),
            b' ' | b'!' | b'"' | b'#' | b'$' | b'%' | b'\'' => p += 1,
            b'&' => {
                normalized = false;
                p = reference_whole(b, p + 1)?;
            }
            b'\t' | b'\n' => {
                normalized = false;
                p += 1;
            }
            b'\r' if b.get(p + 1) == Some(&b'\n') => {
                normalized = false;
                p += 2;
            }
            0x80.. => match skip_non_ascii(b, p, b.len()) {
                Ok((next, true)) => p = next,
                _ => return None,
            },
            _ => return None,
        }
    }
}

/// A reference from `p` (after `&`) that ends in `b` and is valid; returns
/// where it ends (after `;`). Checks what [`Reference::byte`] checks, the
/// predefined entities without a round per byte.
#[inline]
fn reference_whole(b: &[u8], p: usize) -> Option<usize> {
    let rest = b.get(p..)?;
    // The five predefined entities, each compared as one word.
    if let Some(word) = rest.get(..4) {
        let word = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        let three = word & 0x00FF_FFFF;
        if word == u32::from_le_bytes(*b"amp;")
            || three == u32::from_le_bytes(*b"lt;\0")
            || three == u32::from_le_bytes(*b"gt;\0")
        {
            return Some(
                p + if word == u32::from_le_bytes(*b"amp;") {
                    4
                } else {
                    3
                },
            );
        }
        if rest.get(4) == Some(&b';')
            && (word == u32::from_le_bytes(*b"apos") || word == u32::from_le_bytes(*b"quot"))
        {
            return Some(p + 5);
        }
    }
    let mut reference = Reference::START;
    for (i, &c) in rest.iter().enumerate() {
        if reference.byte(c).ok()? {
            return Some(p + i + 1);
        }
    }
    None
}

/// An offset into a frame as [`Head`] keeps it (frames are limited far below 4 GiB).
#[inline(always)]
fn offset(p: usize) -> u32 {
    u32::try_from(p).unwrap_or(u32::MAX)
}

/// `a == b` for short slices (names) without a call to `memcmp`: equal lengths,
/// then the bytes, as a head and a tail word that may overlap.
#[inline(always)]
fn same_short(a: &[u8], b: &[u8]) -> bool {
    fn u64_at(s: &[u8], i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i..i + 8]);
        u64::from_le_bytes(w)
    }
    fn u32_at(s: &[u8], i: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[i..i + 4]);
        u32::from_le_bytes(w)
    }
    let len = a.len();
    if len != b.len() {
        return false;
    }
    match len {
        17.. => a == b,
        8.. => u64_at(a, 0) == u64_at(b, 0) && u64_at(a, len - 8) == u64_at(b, len - 8),
        4.. => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, len - 4) == u32_at(b, len - 4),
        _ => a.iter().zip(b).all(|(x, y)| x == y),
    }
}

/// The usual name (see [`Framer::scan_name`]) from `start`: ASCII, at most one
/// colon, and followed in `b` by an ASCII byte other than a colon. Returns where it
/// ends and the offset of its colon (0 for none); `None` for anything else.
#[inline(always)]
fn ascii_qname(b: &[u8], start: usize) -> Option<(usize, usize)> {
    if !chars::is_ascii_name_start(*b.get(start)?) {
        return None;
    }
    let mut p = chars::skip_ascii_name_chars(b, start + 1);
    let mut c = *b.get(p)?;
    let mut colon = 0;
    if c == b':' {
        if !chars::is_ascii_name_start(*b.get(p + 1)?) {
            return None;
        }
        colon = p;
        p = chars::skip_ascii_name_chars(b, p + 2);
        c = *b.get(p)?;
    }
    (c < 0x80 && c != b':').then_some((p, colon))
}

/// A CR not followed by LF is legal in an attribute value, but rxml rejects it, and
/// XMPP has no use for it.
const LONE_CR_IN_VALUE: Error =
    Error::NotWellFormed("a carriage return not followed by a line feed in an attribute value");

/// Checks the inside of `<?xml ... ?>` (XML 1.0 §2.8 [23]-[26], §4.3.3 [80]-[81],
/// §2.9 [32]), from the white space after `<?xml` to before `?>`. Only version 1.0,
/// UTF-8 and standalone documents are accepted (RFC 6120 §11.6 requires UTF-8).
fn parse_xml_declaration(mut s: &[u8]) -> Result<(), Error> {
    const MALFORMED: Error = Error::NotWellFormed("malformed XML declaration");
    let version = pseudo_attribute(&mut s, b"version").ok_or(MALFORMED)?;
    if version != b"1.0" {
        return Err(Error::NotWellFormed("an XML version other than 1.0"));
    }
    if let Some(encoding) = pseudo_attribute(&mut s, b"encoding") {
        if !encoding.eq_ignore_ascii_case(b"utf-8") {
            return Err(Error::NotWellFormed("an encoding other than UTF-8"));
        }
    }
    if let Some(standalone) = pseudo_attribute(&mut s, b"standalone") {
        if standalone != b"yes" {
            return Err(Error::NotWellFormed("a document that is not standalone"));
        }
    }
    if s.iter().all(|&c| chars::is_ws(c)) {
        Ok(())
    } else {
        Err(MALFORMED)
    }
}

/// Reads `S name Eq quoted-value` from the front of `s`; on a mismatch leaves `s` as it was.
fn pseudo_attribute<'a>(s: &mut &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    fn trim(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|&&c| chars::is_ws(c)).count();
        &s[n..]
    }
    let rest = trim(s);
    if rest.len() == s.len() {
        return None;
    }
    let rest = trim(rest.strip_prefix(name)?);
    let rest = trim(rest.strip_prefix(b"=")?);
    let (&quote, rest) = rest.split_first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let close = memchr::memchr(quote, rest)?;
    *s = &rest[close + 1..];
    Some(&rest[..close])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
