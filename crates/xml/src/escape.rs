//! References and escaping: XML 1.0 §4.1 (character and entity references),
//! §4.6 (the five predefined entities), §3.3.3 (attribute-value normalization)
//! and §2.11 (end-of-line handling).
//!
//! Reading assumes input the framer has validated; it never panics on other
//! input, it just gives a best-effort answer.

use std::borrow::Cow;

/// Decodes the reference at the start of `raw` (`raw[0] == b'&'`): the
/// character it stands for and its length, `&` and `;` included.
pub(crate) fn reference(raw: &[u8]) -> Option<(char, usize)> {
    // The longest reference worth looking at: the framer accepts any number of
    // leading zeros in a character reference, so do not bound the search.
    let semi = memchr::memchr(b';', raw)?;
    let body = raw.get(1..semi)?;
    let c = match body {
        b"amp" => '&',
        b"lt" => '<',
        b"gt" => '>',
        b"apos" => '\'',
        b"quot" => '"',
        [b'#', b'x', hex @ ..] => char_ref(hex, 16)?,
        [b'#', dec @ ..] => char_ref(dec, 10)?,
        _ => return None,
    };
    Some((c, semi + 1))
}

fn char_ref(digits: &[u8], radix: u32) -> Option<char> {
    if digits.is_empty() {
        return None;
    }
    let mut value: u32 = 0;
    for &d in digits {
        let digit = char::from(d).to_digit(radix)?;
        value = value.saturating_mul(radix).saturating_add(digit);
    }
    char::from_u32(value).filter(|&c| crate::chars::is_char(c as u32))
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut utf8 = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
}

/// Whether an attribute value as written differs from its normalized value.
pub(crate) fn attribute_needs_normalizing(raw: &[u8]) -> bool {
    // No early exit: the loop is vectorized, and values are short.
    raw.iter().fold(false, |found, &b| {
        found | matches!(b, b'&' | b'\t' | b'\n' | b'\r')
    })
}

/// Appends the normalized value of an attribute value as written (XML 1.0
/// §3.3.3 for CDATA attributes): references resolved, each literal tab, line
/// feed, carriage return or CR LF pair becomes one space.
pub(crate) fn push_attribute_value(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(rel) = raw.get(i..).and_then(|rest| {
        rest.iter()
            .position(|&b| matches!(b, b'&' | b'\t' | b'\n' | b'\r'))
    }) {
        let at = i + rel;
        out.extend_from_slice(&raw[i..at]);
        i = at + 1;
        match raw[at] {
            b'&' => match reference(&raw[at..]) {
                Some((c, n)) => {
                    push_char(out, c);
                    i = at + n;
                }
                None => out.push(b'&'),
            },
            b'\r' => {
                out.push(b' ');
                if raw.get(i) == Some(&b'\n') {
                    i += 1;
                }
            }
            _ => out.push(b' '),
        }
    }
    out.extend_from_slice(raw.get(i..).unwrap_or_default());
}

/// Whether character data as written differs from what it denotes.
pub(crate) fn text_needs_unescaping(raw: &[u8]) -> bool {
    memchr::memchr2(b'&', b'\r', raw).is_some()
}

/// Appends the character data that `raw` denotes: references resolved, CR LF
/// and lone CR turned into LF (XML 1.0 §2.11).
pub(crate) fn push_text(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(rel) = raw
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'&', b'\r', rest))
    {
        let at = i + rel;
        out.extend_from_slice(&raw[i..at]);
        i = at + 1;
        if raw[at] == b'&' {
            match reference(&raw[at..]) {
                Some((c, n)) => {
                    push_char(out, c);
                    i = at + n;
                }
                None => out.push(b'&'),
            }
        } else {
            out.push(b'\n');
            if raw.get(i) == Some(&b'\n') {
                i += 1;
            }
        }
    }
    out.extend_from_slice(raw.get(i..).unwrap_or_default());
}

/// Appends the character data of a CDATA section's content: no references, only
/// CR LF and lone CR turned into LF (XML 1.0 §2.11).
pub(crate) fn push_cdata(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(rel) = raw.get(i..).and_then(|rest| memchr::memchr(b'\r', rest)) {
        let at = i + rel;
        out.extend_from_slice(&raw[i..at]);
        out.push(b'\n');
        i = at + 1;
        if raw.get(i) == Some(&b'\n') {
            i += 1;
        }
    }
    out.extend_from_slice(raw.get(i..).unwrap_or_default());
}

/// Turns bytes built from validated input back into a string.
pub(crate) fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A character XML 1.0 §2.2 cannot carry at all, not even as a reference.
fn is_unrepresentable(c: char) -> bool {
    !crate::chars::is_char(c as u32)
}

/// Escapes `value` with `replace` deciding each character's replacement;
/// borrowed when nothing changes.
fn escape_with(value: &str, replace: impl Fn(char) -> Option<&'static str>) -> Cow<'_, str> {
    let Some(first) = value.char_indices().find(|&(_, c)| replace(c).is_some()) else {
        return Cow::Borrowed(value);
    };
    let mut out = String::with_capacity(value.len() + 16);
    out.push_str(&value[..first.0]);
    for c in value[first.0..].chars() {
        match replace(c) {
            Some(r) => out.push_str(r),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes text for an attribute value quoted with `'` or `"`. Tab, LF and CR
/// become character references so that attribute-value normalization (XML 1.0
/// §3.3.3) does not turn them into spaces; characters XML cannot carry at all
/// become U+FFFD.
pub(crate) fn escape_attribute(value: &str) -> Cow<'_, str> {
    escape_with(value, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&apos;"),
        '\t' => Some("&#9;"),
        '\n' => Some("&#10;"),
        '\r' => Some("&#13;"),
        c if is_unrepresentable(c) => Some("\u{FFFD}"),
        _ => None,
    })
}

/// Escapes character data. `>` is escaped too, so `]]>` can never appear; CR
/// becomes a reference so that end-of-line handling (XML 1.0 §2.11) keeps it;
/// characters XML cannot carry at all become U+FFFD.
pub(crate) fn escape_text(value: &str) -> Cow<'_, str> {
    escape_with(value, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '\r' => Some("&#13;"),
        c if is_unrepresentable(c) => Some("\u{FFFD}"),
        _ => None,
    })
}
