//! A deliberately small XML stream scanner for the bench sink and client.
//!
//! It cuts a byte buffer into the stream-level tokens XMPP needs (declaration,
//! stream header, stream close, top-level elements) and nothing more. It is not
//! xmppwall's framer on purpose: a benchmark that judged xmppwall with its own code
//! would hide the framer's bugs and its cost would be counted on both sides.
//!
//! It handles the subset of XML the load generator and the sink emit: start and
//! end tags, self-closing tags, quoted attribute values (which may hold `>`), and
//! escaped character data. Comments, CDATA sections and processing instructions
//! after the declaration are reported as errors rather than guessed at.

use memchr::memchr;

/// One stream-level token found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// `<?xml ...?>`
    Declaration,
    /// `<stream:stream ...>` (left open).
    StreamOpen,
    /// `</stream:stream>`
    StreamClose,
    /// A complete top-level element (a stanza or a nonza).
    Element,
}

/// Why the bytes could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError(pub &'static str);

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ScanError {}

/// Finds the first token in `buf`. Returns the token, the offset where it starts
/// (after top-level whitespace) and its length; `Ok(None)` when more bytes are needed.
///
/// It is stateless: an incomplete element is scanned again from its start after
/// the next read. Stanzas here are at most a few KiB, so that costs little and
/// keeps the scanner obviously correct.
pub fn next(buf: &[u8]) -> Result<Option<(Token, usize, usize)>, ScanError> {
    let start = match buf.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) => i,
        None => return Ok(None),
    };
    let rest = &buf[start..];
    if rest[0] != b'<' {
        return Err(ScanError("character data at stream level"));
    }
    if rest.len() < 2 {
        return Ok(None);
    }
    match rest[1] {
        b'?' => Ok(find(rest, b"?>").map(|end| (Token::Declaration, start, end + 2))),
        b'/' => Ok(memchr(b'>', rest).map(|end| (Token::StreamClose, start, end + 1))),
        b'!' => Err(ScanError("comments, CDATA and DTDs are not supported")),
        _ => {
            let Some(tag) = start_tag(rest)? else {
                return Ok(None);
            };
            if !tag.self_closing && tag_name(rest) == b"stream:stream" {
                return Ok(Some((Token::StreamOpen, start, tag.len)));
            }
            if tag.self_closing {
                return Ok(Some((Token::Element, start, tag.len)));
            }
            Ok(element_end(rest, tag.len)?.map(|len| (Token::Element, start, len)))
        }
    }
}

struct TagEnd {
    /// Bytes up to and including `>`.
    len: usize,
    self_closing: bool,
}

/// Scans the start tag at the beginning of `buf`, honouring quoted attribute values.
fn start_tag(buf: &[u8]) -> Result<Option<TagEnd>, ScanError> {
    let mut i = 1;
    while i < buf.len() {
        match buf[i] {
            b'>' => {
                return Ok(Some(TagEnd {
                    len: i + 1,
                    self_closing: buf[i - 1] == b'/',
                }))
            }
            q @ (b'\'' | b'"') => match memchr(q, &buf[i + 1..]) {
                Some(j) => i += j + 2,
                None => return Ok(None),
            },
            b'<' => return Err(ScanError("'<' inside a tag")),
            _ => i += 1,
        }
    }
    Ok(None)
}

/// The length of the element whose start tag (not self-closing) is `tag_len` bytes.
fn element_end(buf: &[u8], tag_len: usize) -> Result<Option<usize>, ScanError> {
    let mut depth = 1usize;
    let mut i = tag_len;
    loop {
        // Character data is skipped at memchr speed; a stray '>' in text is legal XML.
        let Some(j) = memchr(b'<', &buf[i..]) else {
            return Ok(None);
        };
        i += j;
        let rest = &buf[i..];
        if rest.len() < 2 {
            return Ok(None);
        }
        match rest[1] {
            b'/' => {
                let Some(end) = memchr(b'>', rest) else {
                    return Ok(None);
                };
                i += end + 1;
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i));
                }
            }
            b'!' | b'?' => return Err(ScanError("comments, CDATA and PIs are not supported")),
            _ => {
                let Some(tag) = start_tag(rest)? else {
                    return Ok(None);
                };
                i += tag.len;
                depth += usize::from(!tag.self_closing);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The qualified name of the tag that starts `element` (after `<`).
pub fn tag_name(element: &[u8]) -> &[u8] {
    let body = &element[1.min(element.len())..];
    let end = body
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .unwrap_or(body.len());
    &body[..end]
}

/// The value of attribute `name` on the start tag of `element`, without entity
/// decoding (the values the bench compares are plain tokens).
pub fn attribute<'a>(element: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let tag_end = memchr(b'>', element).unwrap_or(element.len());
    let tag = &element[..tag_end];
    let mut i = 0;
    while let Some(j) = find(&tag[i..], name.as_bytes()) {
        let at = i + j;
        let after = at + name.len();
        let preceded = at > 0 && tag[at - 1].is_ascii_whitespace();
        if preceded && tag.get(after) == Some(&b'=') {
            let quote = *tag.get(after + 1)?;
            if quote != b'\'' && quote != b'"' {
                return None;
            }
            let value = &tag[after + 2..];
            let close = memchr(quote, value)?;
            return Some(&value[..close]);
        }
        i = after;
    }
    None
}

/// Whether `element` contains the byte string `needle` (e.g. a namespace).
pub fn contains(element: &[u8], needle: &[u8]) -> bool {
    find(element, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut buf: &[u8]) -> Vec<(Token, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((t, start, len)) = next(buf).expect("scan") {
            out.push((t, buf[start..start + len].to_vec()));
            buf = &buf[start + len..];
        }
        out
    }

    #[test]
    fn cuts_a_stream_into_tokens() {
        let s = b"<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' to='x'>\
            <message to='a>b'><body>x &gt; y</body></message> <presence/>\
            <iq id='1'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>";
        let tokens: Vec<Token> = all(s).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            tokens,
            vec![
                Token::Declaration,
                Token::StreamOpen,
                Token::Element,
                Token::Element,
                Token::Element,
                Token::StreamClose
            ]
        );
    }

    #[test]
    fn waits_for_incomplete_elements() {
        let s = b"<message><body>hello</body></message>";
        for cut in 0..s.len() {
            assert_eq!(next(&s[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(next(s), Ok(Some((Token::Element, 0, s.len()))));
    }

    #[test]
    fn reads_attributes() {
        let e = b"<iq type='get' id=\"p-7\" xmlns:id='no'><ping/></iq>";
        assert_eq!(attribute(e, "id"), Some(&b"p-7"[..]));
        assert_eq!(attribute(e, "type"), Some(&b"get"[..]));
        assert_eq!(attribute(e, "to"), None);
        assert_eq!(tag_name(e), b"iq");
    }

    #[test]
    fn refuses_what_it_does_not_handle() {
        assert!(next(b"hello").is_err());
        assert!(next(b"<a><!-- c --></a>").is_err());
    }
}
