//! Reading XMPP streams with quick-xml, an XML reader independent of xmppwall's framer, so
//! the tests never judge the framer with itself.
//!
//! [`next_item`] cuts a byte buffer into stream-level items: the stream header (with the
//! XML declaration before it), one complete top-level element, or the stream's closing tag.
//! The other functions look into one complete element for assertions.

use quick_xml::events::Event;
use quick_xml::Reader;

/// What a stream-level item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// `<?xml ...?>` (optional) and `<stream:stream ...>`.
    StreamHeader,
    /// One complete top-level element (a stanza, features, a SASL or TLS element, ...).
    Element,
    /// `</stream:stream>`.
    StreamClose,
}

/// The first complete item in `buf`: its kind and the byte range it occupies (whitespace
/// before it is skipped). `None` when `buf` holds no complete item yet, which includes
/// malformed input: a caller waiting for more bytes then times out and shows the buffer.
pub fn next_item(buf: &[u8]) -> Option<(ItemKind, std::ops::Range<usize>)> {
    let mut reader = Reader::from_reader(buf);
    let config = reader.config_mut();
    // We start inside the stream root, so the stream's end tag has no start tag here.
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    config.trim_text(false);

    let mut depth = 0usize;
    let mut start: Option<usize> = None;
    loop {
        let before = position(&reader);
        let event = reader.read_event().ok()?;
        let after = position(&reader);
        match event {
            Event::Eof => return None,
            Event::Decl(_) if depth == 0 => {
                start.get_or_insert(before);
            }
            Event::Start(e) => {
                if depth == 0 && is_stream_root(e.name().as_ref()) {
                    return Some((ItemKind::StreamHeader, start.unwrap_or(before)..after));
                }
                if depth == 0 {
                    start.get_or_insert(before);
                }
                depth += 1;
            }
            Event::Empty(_) if depth == 0 => {
                return Some((ItemKind::Element, start.unwrap_or(before)..after));
            }
            Event::End(_) => {
                if depth == 0 {
                    return Some((ItemKind::StreamClose, before..after));
                }
                depth -= 1;
                if depth == 0 {
                    return Some((ItemKind::Element, start.unwrap_or(before)..after));
                }
            }
            // Whitespace between top-level elements (keep-alives) and everything inside an
            // element is part of no item or of the enclosing one.
            _ => {}
        }
    }
}

fn position(reader: &Reader<&[u8]>) -> usize {
    usize::try_from(reader.buffer_position()).expect("buffer position fits in usize")
}

fn is_stream_root(qname: &[u8]) -> bool {
    qname == b"stream" || qname.ends_with(b":stream")
}

fn local_name(qname: &[u8]) -> &[u8] {
    match qname.iter().rposition(|&b| b == b':') {
        Some(colon) => &qname[colon + 1..],
        None => qname,
    }
}

fn reader_for(xml: &str) -> Reader<&[u8]> {
    let mut reader = Reader::from_str(xml);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    reader
}

/// The qualified name of the first element in `xml` (`message`, `stream:error`, ...).
pub fn root_name(xml: &str) -> String {
    let mut reader = reader_for(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                return String::from_utf8_lossy(e.name().as_ref()).into_owned()
            }
            Ok(Event::Eof) | Err(_) => panic!("no element in {xml:?}"),
            Ok(_) => {}
        }
    }
}

/// The value of attribute `name` (qualified, e.g. `type` or `xml:lang`) on the first
/// element in `xml`.
pub fn root_attr(xml: &str, name: &str) -> Option<String> {
    let mut reader = reader_for(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                return e.attributes().flatten().find_map(|a| {
                    (a.key.as_ref() == name.as_bytes()).then(|| {
                        a.unescape_value()
                            .unwrap_or_else(|err| panic!("bad attribute value in {xml:?}: {err}"))
                            .into_owned()
                    })
                });
            }
            Ok(Event::Eof) | Err(_) => panic!("no element in {xml:?}"),
            Ok(_) => {}
        }
    }
}

/// Whether `xml` contains an element (at any depth, the root included) with this local
/// name.
pub fn has_element(xml: &str, local: &str) -> bool {
    let mut reader = reader_for(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                if local_name(e.name().as_ref()) == local.as_bytes() {
                    return true;
                }
            }
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// The text content of every element in `xml` with this local name, in document order
/// (e.g. `texts(features, "mechanism")` → `["PLAIN", "SCRAM-SHA-1"]`).
pub fn texts(xml: &str, local: &str) -> Vec<String> {
    let mut reader = reader_for(xml);
    let mut found = Vec::new();
    // Depth inside the element being collected, and its text so far.
    let mut collecting: Option<(usize, String)> = None;
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(err) => panic!("malformed XML {xml:?}: {err}"),
        };
        match event {
            Event::Start(e) => match &mut collecting {
                Some((depth, _)) => *depth += 1,
                None if local_name(e.name().as_ref()) == local.as_bytes() => {
                    collecting = Some((0, String::new()))
                }
                None => {}
            },
            Event::Empty(e)
                if collecting.is_none() && local_name(e.name().as_ref()) == local.as_bytes() =>
            {
                found.push(String::new());
            }
            Event::End(_) => match collecting.take() {
                Some((0, text)) => found.push(text),
                Some((depth, text)) => collecting = Some((depth - 1, text)),
                None => {}
            },
            Event::Text(t) => {
                if let Some((_, text)) = &mut collecting {
                    text.push_str(&t.decode().expect("UTF-8 text"));
                }
            }
            Event::CData(t) => {
                if let Some((_, text)) = &mut collecting {
                    text.push_str(&t.decode().expect("UTF-8 CDATA"));
                }
            }
            Event::GeneralRef(r) => {
                if let Some((_, text)) = &mut collecting {
                    text.push_str(&resolve_reference(&r));
                }
            }
            Event::Eof => return found,
            _ => {}
        }
    }
}

/// The first of [`texts`], if any.
pub fn text(xml: &str, local: &str) -> Option<String> {
    texts(xml, local).into_iter().next()
}

fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> String {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        return c.to_string();
    }
    match r.decode().expect("UTF-8 entity name").as_ref() {
        "amp" => "&".into(),
        "lt" => "<".into(),
        "gt" => ">".into(),
        "quot" => "\"".into(),
        "apos" => "'".into(),
        other => {
            panic!("undefined entity &{other}; (restricted XML allows only the five predefined)")
        }
    }
}

/// Escapes text for use in element content or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
