//! A lazy, allocation-light view of one element the framer has already validated.
//!
//! Input is always the bytes of one frame the [`crate::Framer`] returned as
//! `Token::Element` or `Token::StreamOpen`, so this module may assume
//! well-formedness and never re-validates. Only what is asked for is read.
//! On other input it does not panic; it answers `None`, nothing, or its best guess.

use std::borrow::Cow;
use std::ops::Range;

use memchr::memmem;

use crate::chars::{find_byte, find_byte3, is_ws};
use crate::escape;

/// The start tag of an element.
#[derive(Debug, Clone, Copy)]
pub struct StartTag<'a> {
    /// The qualified name as written, e.g. `message` or `stream:stream`.
    pub name: &'a [u8],
    /// The raw bytes between the name and `>` / `/>`.
    attributes: &'a [u8],
    /// `<x/>`: the element has no content.
    pub self_closing: bool,
    /// Length in bytes of the start tag, `<` through `>`.
    pub len: usize,
}

impl<'a> StartTag<'a> {
    /// Reads the start tag at the beginning of `element`.
    pub fn parse(element: &'a [u8]) -> Option<StartTag<'a>> {
        let rest = element.strip_prefix(b"<")?;
        let name_len = rest
            .iter()
            .position(|&c| is_ws(c) || c == b'/' || c == b'>')?;
        if name_len == 0 {
            return None;
        }
        let attributes_start = 1 + name_len;
        let mut i = attributes_start;
        loop {
            // Quoted values may hold '>' (never '<'): skip them whole.
            let at = i + find_byte3(b'>', b'"', b'\'', element.get(i..)?)?;
            match element[at] {
                b'>' => {
                    let self_closing = at > attributes_start && element[at - 1] == b'/';
                    let attributes_end = if self_closing { at - 1 } else { at };
                    return Some(StartTag {
                        name: &rest[..name_len],
                        attributes: &element[attributes_start..attributes_end],
                        self_closing,
                        len: at + 1,
                    });
                }
                quote => i = at + 1 + find_byte(quote, element.get(at + 1..)?)? + 1,
            }
        }
    }

    /// The start tag of a top-level element as the framer read it ([`crate::Framer::head`]),
    /// without reading it again; `None` if `head` does not fit `element`.
    pub fn framed(element: &'a [u8], head: &crate::Head) -> Option<StartTag<'a>> {
        let (name_end, attributes_end, len) = (
            head.name_end as usize,
            head.attributes_end as usize,
            head.len as usize,
        );
        if !(1 <= name_end && name_end <= attributes_end && attributes_end < len) {
            return None;
        }
        Some(StartTag {
            name: element.get(1..name_end)?,
            attributes: element.get(name_end..attributes_end)?,
            self_closing: head.self_closing,
            len: element.get(..len)?.len(),
        })
    }

    /// The local part of the name (after any `prefix:`).
    pub fn local_name(&self) -> &'a [u8] {
        match self.name.iter().position(|&b| b == b':') {
            Some(i) => &self.name[i + 1..],
            None => self.name,
        }
    }

    /// The prefix of the name (before `:`), if it has one.
    pub fn prefix(&self) -> Option<&'a [u8]> {
        self.name
            .iter()
            .position(|&b| b == b':')
            .map(|i| &self.name[..i])
    }

    /// The value of the attribute with this qualified name, unescaped.
    ///
    /// The value is the normalized one of XML 1.0 §3.3.3: references resolved, and
    /// a literal tab, line feed or carriage return read as a space.
    pub fn attribute(&self, name: &[u8]) -> Option<Cow<'a, str>> {
        self.attributes()
            .find(|&(n, _)| n == name)
            .map(|(_, raw)| attribute_value(raw))
    }

    /// Every attribute as (qualified name, raw value as written, without quotes).
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            rest: self.attributes,
        }
    }
}

/// The normalized value of an attribute value as written (see [`StartTag::attribute`]).
pub fn attribute_value(raw: &[u8]) -> Cow<'_, str> {
    if !escape::attribute_needs_normalizing(raw) {
        return utf8(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    escape::push_attribute_value(raw, &mut out);
    Cow::Owned(escape::into_string(out))
}

/// `bytes` as text: borrowed when it is UTF-8, as the framer guarantees for what it
/// passes (the standard library's check is the fast one); invalid sequences become
/// U+FFFD otherwise.
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Iterator over the attributes of a start tag.
pub struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let item = parse_attribute(self.rest);
        match item {
            Some((name, value, rest)) => {
                self.rest = rest;
                Some((name, value))
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

/// Splits `S? name S? = S? quote value quote` off the front of `s`.
///
/// The `=` is found first (a block search, see [`find_byte`]); the name is what comes
/// before it up to any white space, and only white space may follow the name.
fn parse_attribute(s: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let skip_ws = |mut i: usize| {
        while i < s.len() && is_ws(s[i]) {
            i += 1;
        }
        i
    };
    let start = skip_ws(0);
    let eq = start + find_byte(b'=', &s[start..])?;
    let mut name_end = start;
    while name_end < eq && !is_ws(s[name_end]) {
        name_end += 1;
    }
    if !s[name_end..eq].iter().all(|&c| is_ws(c)) {
        return None;
    }
    let open = skip_ws(eq + 1);
    let quote = *s.get(open).filter(|&&q| q == b'"' || q == b'\'')?;
    let close = open + 1 + find_byte(quote, &s[open + 1..])?;
    Some((&s[start..name_end], &s[open + 1..close], &s[close + 1..]))
}

/// One child element: its start tag and where its bytes lie within the parent.
#[derive(Debug, Clone)]
pub struct Child<'a> {
    pub start: StartTag<'a>,
    pub range: Range<usize>,
}

/// The direct child elements of `element`, in order (text between them skipped).
pub fn children(element: &[u8]) -> Children<'_> {
    Children { element, pos: 0 }
}

/// Like [`children`] for a caller that has read `element`'s start tag already (it
/// is not read again).
pub fn children_after<'a>(element: &'a [u8], start: &StartTag<'_>) -> Children<'a> {
    let pos = if start.self_closing {
        element.len()
    } else {
        start.len
    };
    Children { element, pos }
}

pub struct Children<'a> {
    element: &'a [u8],
    /// Where reading goes on; 0 before the parent's start tag was read.
    pos: usize,
}

/// What comes at a `<` inside an element's content.
enum Markup<'a> {
    Start(StartTag<'a>),
    /// An end tag; where it ends.
    End(usize),
    /// A CDATA section: its content and where it ends.
    Cdata(Range<usize>, usize),
}

/// Reads the markup at `element[lt] == b'<'`.
fn markup_at(element: &[u8], lt: usize) -> Option<Markup<'_>> {
    let rest = element.get(lt..)?;
    match rest.get(1)? {
        b'/' => Some(Markup::End(lt + find_byte(b'>', rest)? + 1)),
        // The framer lets no comment or processing instruction through: `<!` is CDATA.
        b'!' => {
            let close = lt + memmem::find(rest, b"]]>")?;
            let open = lt + b"<![CDATA[".len();
            Some(Markup::Cdata(open.min(close)..close, close + 3))
        }
        _ => StartTag::parse(rest).map(Markup::Start),
    }
}

/// Where the content of `element` begins, or `None` if it has none.
fn content_start(element: &[u8]) -> Option<usize> {
    let tag = StartTag::parse(element)?;
    (!tag.self_closing).then_some(tag.len)
}

impl<'a> Iterator for Children<'a> {
    type Item = Child<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        let element = self.element;
        if self.pos == 0 {
            self.pos = content_start(element).unwrap_or(element.len());
        }
        let mut depth = 0usize;
        let mut current: Option<(usize, StartTag<'a>)> = None;
        loop {
            let Some(lt) = element
                .get(self.pos..)
                .and_then(|r| find_byte(b'<', r))
                .map(|i| self.pos + i)
            else {
                self.pos = element.len();
                return None;
            };
            match markup_at(element, lt) {
                Some(Markup::Start(tag)) => {
                    self.pos = lt + tag.len;
                    if depth == 0 {
                        if tag.self_closing {
                            return Some(Child {
                                start: tag,
                                range: lt..self.pos,
                            });
                        }
                        current = Some((lt, tag));
                    }
                    if !tag.self_closing {
                        depth += 1;
                    }
                }
                Some(Markup::End(end)) => {
                    self.pos = end;
                    if depth == 0 {
                        // The parent's own end tag.
                        self.pos = element.len();
                        return None;
                    }
                    depth -= 1;
                    if depth == 0 {
                        if let Some((start, tag)) = current.take() {
                            return Some(Child {
                                start: tag,
                                range: start..end,
                            });
                        }
                    }
                }
                Some(Markup::Cdata(_, end)) => self.pos = end,
                None => {
                    self.pos = element.len();
                    return None;
                }
            }
        }
    }
}

/// The character data directly inside `element` (not in its children), unescaped
/// (predefined entities, character references and CDATA sections resolved).
/// Line ends are normalized to LF (XML 1.0 §2.11).
pub fn text(element: &[u8]) -> Cow<'_, str> {
    match content_start(element) {
        Some(pos) => text_from(element, pos),
        None => Cow::Borrowed(""),
    }
}

/// [`text`] of an element whose start tag the caller has read already: its content
/// begins at `pos` (the start tag's length; `element.len()` when it is self-closing).
pub fn text_from(element: &[u8], mut pos: usize) -> Cow<'_, str> {
    let mut text = TextBuilder::default();
    let mut depth = 0usize;
    while let Some(lt) = element
        .get(pos..)
        .and_then(|r| find_byte(b'<', r))
        .map(|i| pos + i)
    {
        if depth == 0 {
            text.add(&element[pos..lt], false);
        }
        match markup_at(element, lt) {
            Some(Markup::Start(tag)) => {
                pos = lt + tag.len;
                if !tag.self_closing {
                    depth += 1;
                }
            }
            Some(Markup::End(end)) => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
                pos = end;
            }
            Some(Markup::Cdata(content, end)) => {
                if depth == 0 {
                    text.add(&element[content], true);
                }
                pos = end;
            }
            None => break,
        }
    }
    text.finish()
}

/// Collects text segments, borrowing while there is a single one that needs no change.
#[derive(Default)]
struct TextBuilder<'a> {
    borrowed: Option<&'a [u8]>,
    owned: Option<Vec<u8>>,
}

impl<'a> TextBuilder<'a> {
    fn add(&mut self, segment: &'a [u8], cdata: bool) {
        if segment.is_empty() {
            return;
        }
        let needs_change = if cdata {
            memchr::memchr(b'\r', segment).is_some()
        } else {
            escape::text_needs_unescaping(segment)
        };
        if self.owned.is_none() && self.borrowed.is_none() && !needs_change {
            self.borrowed = Some(segment);
            return;
        }
        let out = self.owned.get_or_insert_with(Vec::new);
        if let Some(first) = self.borrowed.take() {
            out.extend_from_slice(first);
        }
        if cdata {
            escape::push_cdata(segment, out);
        } else {
            escape::push_text(segment, out);
        }
    }

    fn finish(self) -> Cow<'a, str> {
        match (self.owned, self.borrowed) {
            (Some(owned), _) => Cow::Owned(escape::into_string(owned)),
            (None, Some(borrowed)) => utf8(borrowed),
            (None, None) => Cow::Borrowed(""),
        }
    }
}

/// Escapes text for use in an attribute value quoted with `'` or `"`.
///
/// Tab, LF and CR become character references, so that they survive
/// attribute-value normalization; characters XML 1.0 cannot carry at all (most
/// C0 controls, U+FFFE, U+FFFF) become U+FFFD.
pub fn escape_attribute(value: &str) -> Cow<'_, str> {
    escape::escape_attribute(value)
}

/// Escapes character data: `&`, `<`, `>` and CR become references; characters
/// XML 1.0 cannot carry at all become U+FFFD.
pub fn escape_text(value: &str) -> Cow<'_, str> {
    escape::escape_text(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
