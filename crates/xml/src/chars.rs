//! Character classes of XML 1.0 (Fifth Edition) §2.2 (Char) and §2.3 (names,
//! white space), and fast checks over runs of bytes.
//!
//! Name characters follow the Fifth Edition ranges, minus `[#xFDF0-#xFFFD]` in
//! `NameStartChar`, which the strict parser we are fuzzed against (rxml) does not
//! accept: rejecting a few exotic but legal names is the price of never accepting
//! what it rejects.

use wide::u8x16;

/// XML 1.0 §2.3 [3] `S`: space, tab, line feed, carriage return.
#[inline(always)]
pub(crate) const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

const NAME_START: u8 = 1;
const NAME: u8 = 2;

/// Classes of ASCII bytes in names, colon excluded (Namespaces in XML §3: the
/// colon only separates prefix and local part, which are NCNames).
static ASCII_NAME: [u8; 256] = ascii_name_table();

const fn ascii_name_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        if c.is_ascii_alphabetic() || c == b'_' {
            t[b] = NAME_START | NAME;
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            t[b] = NAME;
        }
        b += 1;
    }
    t
}

/// An ASCII byte that may start an NCName (XML 1.0 §2.3 [4] minus `:`).
#[inline(always)]
pub(crate) fn is_ascii_name_start(b: u8) -> bool {
    ASCII_NAME[b as usize] & NAME_START != 0
}

/// An ASCII byte that may continue an NCName (XML 1.0 §2.3 [4a] minus `:`).
#[inline(always)]
pub(crate) fn is_ascii_name_char(b: u8) -> bool {
    ASCII_NAME[b as usize] & NAME != 0
}

/// Non-ASCII `NameStartChar` (XML 1.0 §2.3 [4]), see the module note on `#xFDF0-#xFFFD`.
pub(crate) fn is_name_start_char(c: char) -> bool {
    matches!(c as u32,
        0xC0..=0xD6
        | 0xD8..=0xF6
        | 0xF8..=0x2FF
        | 0x370..=0x37D
        | 0x37F..=0x1FFF
        | 0x200C..=0x200D
        | 0x2070..=0x218F
        | 0x2C00..=0x2FEF
        | 0x3001..=0xD7FF
        | 0xF900..=0xFDCF
        | 0x10000..=0xEFFFF)
}

/// Non-ASCII `NameChar` (XML 1.0 §2.3 [4a]).
pub(crate) fn is_name_char(c: char) -> bool {
    is_name_start_char(c) || matches!(c as u32, 0xB7 | 0x300..=0x36F | 0x203F..=0x2040)
}

/// XML 1.0 §2.2 [2] `Char`.
#[inline]
pub(crate) fn is_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// One UTF-8 sequence at the start of a buffer.
pub(crate) enum Decoded {
    Char(char, usize),
    /// The buffer ends inside a sequence that may still turn out valid.
    Incomplete,
    Invalid,
}

/// Decodes the character at the start of `b`, whose first byte is not ASCII.
pub(crate) fn decode(b: &[u8]) -> Decoded {
    let need = match b.first() {
        Some(0xC2..=0xDF) => 2,
        Some(0xE0..=0xEF) => 3,
        Some(0xF0..=0xF4) => 4,
        _ => return Decoded::Invalid,
    };
    match b.get(..need) {
        Some(seq) => match std::str::from_utf8(seq).ok().and_then(|s| s.chars().next()) {
            Some(c) => Decoded::Char(c, need),
            None => Decoded::Invalid,
        },
        None => match std::str::from_utf8(b) {
            Err(e) if e.error_len().is_none() => Decoded::Incomplete,
            _ => Decoded::Invalid,
        },
    }
}

/// The length of the UTF-8 sequence at the start of `s` when it is complete,
/// valid and an XML `Char` (every non-ASCII scalar value is one but U+FFFE and
/// U+FFFF); `None` when it is not, or when `s` starts with an ASCII byte.
#[inline(always)]
pub(crate) fn valid_char_len(s: &[u8]) -> Option<usize> {
    let cont = |i: usize| s.get(i).is_some_and(|&c| c & 0xC0 == 0x80);
    match *s.first()? {
        0xC2..=0xDF if cont(1) => Some(2),
        lead @ 0xE0..=0xEF => {
            let second = *s.get(1)?;
            let ok = match lead {
                0xE0 => (0xA0..=0xBF).contains(&second),
                // Surrogates (U+D800-U+DFFF) are not scalar values.
                0xED => (0x80..=0x9F).contains(&second),
                // U+FFFE and U+FFFF (EF BF BE, EF BF BF) are not `Char`s.
                0xEF if second == 0xBF => s.get(2).is_some_and(|&c| (0x80..=0xBD).contains(&c)),
                _ => second & 0xC0 == 0x80,
            };
            (ok && cont(2)).then_some(3)
        }
        lead @ 0xF0..=0xF4 => {
            let second = *s.get(1)?;
            let ok = match lead {
                0xF0 => (0x90..=0xBF).contains(&second),
                0xF4 => (0x80..=0x8F).contains(&second),
                _ => second & 0xC0 == 0x80,
            };
            (ok && cont(2) && cont(3)).then_some(4)
        }
        _ => None,
    }
}

/// A control character that XML 1.0 §2.2 excludes from `Char`. Written with
/// non-short-circuit operators so that loops over it vectorise.
#[inline(always)]
fn is_forbidden_control(b: u8) -> bool {
    (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r')
}

/// Where the first control character XML forbids is in `run`, if anywhere.
fn first_forbidden_control(run: &[u8]) -> Option<usize> {
    let mut chunks = run.chunks_exact(32);
    let mut offset = 0;
    for chunk in &mut chunks {
        if chunk
            .iter()
            .fold(false, |acc, &b| acc | is_forbidden_control(b))
        {
            return chunk
                .iter()
                .position(|&b| is_forbidden_control(b))
                .map(|i| offset + i);
        }
        offset += 32;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| is_forbidden_control(b))
        .map(|i| offset + i)
}

/// U+FFFE and U+FFFF are valid UTF-8 (EF BF BE, EF BF BF) but not XML `Char`s.
/// Surrogates and values above U+10FFFF are already excluded by UTF-8 itself.
fn has_noncharacter(valid_utf8: &[u8]) -> bool {
    memchr::memchr_iter(0xEF, valid_utf8).any(|i| {
        valid_utf8.get(i + 1) == Some(&0xBF) && matches!(valid_utf8.get(i + 2), Some(0xBE | 0xBF))
    })
}

const CONTROL: &str = "a control character that XML 1.0 forbids";
const INVALID_UTF8: &str = "invalid UTF-8";
const NONCHARACTER: &str = "U+FFFE or U+FFFF, which XML 1.0 forbids";

/// Checks that `run` is UTF-8 made of XML `Char`s. Returns how many of its bytes
/// are complete characters: all of them, or fewer when `run` stops inside a
/// multi-byte sequence that more bytes may complete. Of several faults, the first
/// in the run is reported, so that the answer does not depend on where reads split.
pub(crate) fn check_chars(run: &[u8]) -> Result<usize, &'static str> {
    let control = first_forbidden_control(run);
    let head = &run[..control.unwrap_or(run.len())];
    let mut valid = head.len();
    if !head.is_ascii() {
        if let Err(e) = std::str::from_utf8(head) {
            valid = e.valid_up_to();
            if has_noncharacter(&head[..valid]) {
                return Err(NONCHARACTER);
            }
            // A sequence cut short by the end of the run may still complete; one
            // cut short by a control character, or a wrong byte, may not.
            if e.error_len().is_some() || control.is_some() {
                return Err(INVALID_UTF8);
            }
            return Ok(valid);
        }
        if has_noncharacter(head) {
            return Err(NONCHARACTER);
        }
    }
    match control {
        Some(_) => Err(CONTROL),
        None => Ok(valid),
    }
}

/// Whether `run`, which has no control character XML forbids (the caller has
/// looked), is UTF-8 made of XML `Char`s (XML 1.0 §2.2), as
/// [`check_complete_chars`] would accept it: `simdutf8` for the UTF-8, then
/// U+FFFE/U+FFFF. No position for a fault: callers fall back to the exact checks
/// when it says no.
pub(crate) fn is_complete_utf8_chars(run: &[u8]) -> bool {
    debug_assert!(first_forbidden_control(run).is_none());
    simdutf8::basic::from_utf8(run).is_ok() && !has_noncharacter(run)
}

/// A byte that a bulk check of character data must look at: the `<` that ends
/// it, `&` and `]` (references, `]]>`), and every byte below 0x20 (the three
/// white-space controls are allowed, the others are not). Lane by lane, as
/// [`marks16`] wants it.
#[inline(always)]
fn text_marks(x: u8x16) -> u8x16 {
    x.cmp_eq(u8x16::splat(b'<'))
        | x.cmp_eq(u8x16::splat(b'&'))
        | x.cmp_eq(u8x16::splat(b']'))
        | x.min(u8x16::splat(0x1F)).cmp_eq(x)
}

/// The index of the first byte from `i` that [`text_marks`] marks, or `None` when
/// there is none in `s`. Sixteen bytes at a time; other scripts do not stop it,
/// unlike [`skip_text`].
#[inline(always)]
pub(crate) fn next_text_mark(s: &[u8], mut i: usize) -> Option<usize> {
    while let Some(block) = s.get(i..i + 16) {
        let marks = marks16(block, text_marks);
        if marks != 0 {
            return Some(i + marks.trailing_zeros() as usize);
        }
        i += 16;
    }
    s[i..]
        .iter()
        .position(|&x| (x < 0x20) | (x == b'<') | (x == b'&') | (x == b']'))
        .map(|k| i + k)
}

/// Like [`check_chars`] for a run that a delimiter ends: it must be complete.
pub(crate) fn check_complete_chars(run: &[u8]) -> Result<(), &'static str> {
    if check_chars(run)? == run.len() {
        Ok(())
    } else {
        Err("invalid UTF-8")
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` equals `b` (the classic SWAR zero-byte test).
#[inline(always)]
fn has_byte(w: u64, b: u8) -> u64 {
    let x = w ^ (LO * u64::from(b));
    x.wrapping_sub(LO) & !x & HI
}

/// Bytes that stop a run of plain character data: anything outside printable
/// ASCII (0x20..=0x7F), and three delimiters.
pub(crate) struct Plain {
    delimiters: [u8; 3],
    stop: [bool; 256],
}

impl Plain {
    const fn new(delimiters: [u8; 3]) -> Plain {
        let mut stop = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            stop[b] = c < 0x20
                || c >= 0x80
                || c == delimiters[0]
                || c == delimiters[1]
                || c == delimiters[2];
            b += 1;
        }
        Plain { delimiters, stop }
    }
}

/// Character data: `<` starts markup, `&` a reference, `]` may start `]]>`.
pub(crate) static TEXT: Plain = Plain::new([b'<', b'&', b']']);
/// Attribute values quoted with `'` and with `"`.
pub(crate) static APOS_VALUE: Plain = Plain::new([b'\'', b'<', b'&']);
pub(crate) static QUOT_VALUE: Plain = Plain::new([b'"', b'<', b'&']);

#[inline(always)]
fn load(s: &[u8], i: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&s[i..i + 8]);
    u64::from_le_bytes(word)
}

/// Whether some byte of `w` is outside printable ASCII: below 0x20 (it borrows in
/// `w - 0x20..`) or 0x80 and above (its high bit is set).
#[inline(always)]
fn has_unprintable(w: u64) -> bool {
    ((w.wrapping_sub(LO * 0x20) & !w) | w) & HI != 0
}

/// Skips plain bytes of `class` from `i`, up to `end`: returns the index of the
/// first byte that stops the run, or `end`. Made for short runs (attribute values):
/// eight bytes at a time, then a table.
#[inline(always)]
pub(crate) fn skip_plain(s: &[u8], mut i: usize, end: usize, class: &Plain) -> usize {
    let end = end.min(s.len());
    let [a, b, c] = class.delimiters;
    while i + 8 <= end {
        let w = load(s, i);
        if has_unprintable(w) || (has_byte(w, a) | has_byte(w, b) | has_byte(w, c)) != 0 {
            break;
        }
        i += 8;
    }
    while i < end && !class.stop[s[i] as usize] {
        i += 1;
    }
    i
}

/// Skips the bytes of an attribute value that need no closer look, from `i`:
/// returns the index of the first byte below `(` (control characters, white
/// space, both quotes and `&` are all there), of `<`, or of a byte of 0x80 and
/// above, or `s.len()`. A few harmless bytes stop it too (space, `!`, `#`, `$`,
/// `%` and the other quote): one range test costs less than a test per delimiter,
/// and the caller steps over them. Eight bytes at a time: in each word the lowest
/// flagged byte is exact (a borrow only runs upward, from a byte that is flagged).
#[inline(always)]
pub(crate) fn skip_value_run(s: &[u8], mut i: usize) -> usize {
    while i + 8 <= s.len() {
        let w = load(s, i);
        let lt = w ^ (LO * u64::from(b'<'));
        let stop = ((w.wrapping_sub(LO * 0x28) & !w) | w | (lt.wrapping_sub(LO) & !lt)) & HI;
        if stop != 0 {
            return i + (stop.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = s.get(i) {
        if !(0x28..0x80).contains(&c) || c == b'<' {
            break;
        }
        i += 1;
    }
    i
}

/// The end of the run of ASCII name characters (colon excluded) from `i`.
///
/// Eight bytes at a time: with bit 5 set, letters of both cases become
/// `a..=z`, and every other name character (digits, `-`, `.`, `_`) falls outside
/// it, as every byte that ends a name does. So the first byte outside `a..=z`
/// after that mapping is the end of the name, or a name character that the table
/// steps over. In each word the lowest flagged byte is exact: borrows and carries
/// only run upward, from a byte that is flagged itself.
#[inline(always)]
pub(crate) fn skip_ascii_name_chars(s: &[u8], mut i: usize) -> usize {
    loop {
        while i + 8 <= s.len() {
            let w = load(s, i) | (LO * 0x20);
            let below = w.wrapping_sub(LO * 0x61) & !w;
            let above = w.wrapping_add(LO * (0x7F - 0x7A)) | w;
            let stop = (below | above) & HI;
            if stop != 0 {
                i += (stop.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match s.get(i) {
            Some(&c) if is_ascii_name_char(c) => i += 1,
            _ => return i,
        }
    }
}

/// Which bytes of a 16-byte block `mark` marks (it sets every bit of a lane it
/// marks), as a bit mask: bit `k` for byte `k`, so the first one is at
/// `trailing_zeros()`. One vector load, the compares `mark` makes, one mask move
/// (SSE2, which every x86-64 has; `wide` keeps it safe code, and portable).
#[inline(always)]
fn marks16(block: &[u8], mark: impl Fn(u8x16) -> u8x16) -> u32 {
    let x = u8x16::new(block.try_into().expect("16 bytes"));
    mark(x).move_mask() as u32
}

/// The bytes that stop a run of plain bytes of `class`, lane by lane (see [`Plain`]):
/// below 0x20, 0x80 and above, and the three delimiters.
#[inline(always)]
fn plain_stops(x: u8x16, class: &Plain) -> u8x16 {
    let [a, b, c] = class.delimiters;
    x.min(u8x16::splat(0x1F)).cmp_eq(x)
        | x.max(u8x16::splat(0x80)).cmp_eq(x)
        | x.cmp_eq(u8x16::splat(a))
        | x.cmp_eq(u8x16::splat(b))
        | x.cmp_eq(u8x16::splat(c))
}

/// Skips plain character data from `i`: returns the index of the first byte that
/// stops it (see [`TEXT`]), or `s.len()`. Sixteen bytes at a time (see [`marks16`])
/// for the short runs between tags and references; a run that goes on past 64
/// bytes (message bodies, base64 payloads) is likely long, and there `memchr3` finds
/// the next delimiter 32 bytes at a time and a vectorised pass checks that
/// everything before it is printable ASCII.
#[inline]
pub(crate) fn skip_text(s: &[u8], mut i: usize) -> usize {
    // Often there is no text at all: a tag follows a tag.
    if s.get(i).is_none_or(|&c| TEXT.stop[c as usize]) {
        return i;
    }
    let short_end = i + 64;
    while let Some(block) = s.get(i..i + 16) {
        let stops = marks16(block, |x| plain_stops(x, &TEXT));
        if stops != 0 {
            return i + stops.trailing_zeros() as usize;
        }
        i += 16;
        if i == short_end {
            let delimiter = memchr::memchr3(b'<', b'&', b']', &s[i..]).map_or(s.len(), |k| i + k);
            for chunk in s[i..delimiter].chunks_exact(32) {
                if chunk.iter().fold(false, |acc, &c| acc | ((c as i8) < 0x20)) {
                    break;
                }
                i += 32;
            }
        }
    }
    while i < s.len() && !TEXT.stop[s[i] as usize] {
        i += 1;
    }
    i
}

/// How far [`find_byte`] and [`find_byte3`] look sixteen bytes at a time before
/// handing the rest to `memchr`: setting up a library search costs about as much as
/// a few blocks, and the names, attribute values and end tags of a stanza are mostly
/// shorter.
const SHORT_SCAN: usize = 64;

/// The first position in `hay` where `hit` holds: sixteen bytes at a time up to
/// [`SHORT_SCAN`], then `far` (a `memchr` search) for the rest.
#[inline(always)]
fn find_short(
    hay: &[u8],
    hit: impl Fn(u8) -> bool,
    hits: impl Fn(u8x16) -> u8x16 + Copy,
    far: impl FnOnce(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let mut i = 0;
    while let Some(block) = hay.get(i..i + 16) {
        let marks = marks16(block, hits);
        if marks != 0 {
            return Some(i + marks.trailing_zeros() as usize);
        }
        i += 16;
        if i == SHORT_SCAN {
            return far(&hay[i..]).map(|k| i + k);
        }
    }
    hay[i..].iter().position(|&x| hit(x)).map(|k| i + k)
}

/// The position of the first `needle` in `hay`.
#[inline]
pub(crate) fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    find_short(
        hay,
        |x| x == needle,
        |x| x.cmp_eq(u8x16::splat(needle)),
        |rest| memchr::memchr(needle, rest),
    )
}

/// The position of the first of three bytes in `hay`.
#[inline]
pub(crate) fn find_byte3(a: u8, b: u8, c: u8, hay: &[u8]) -> Option<usize> {
    find_short(
        hay,
        |x| (x == a) | (x == b) | (x == c),
        |x| x.cmp_eq(u8x16::splat(a)) | x.cmp_eq(u8x16::splat(b)) | x.cmp_eq(u8x16::splat(c)),
        |rest| memchr::memchr3(a, b, c, rest),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_scans_agree_with_memchr_at_every_length_and_position() {
        for len in 0..150 {
            for at in 0..=len {
                let mut hay = vec![b'x'; len];
                if at < len {
                    hay[at] = b'>';
                }
                if at + 3 < len {
                    hay[at + 3] = b'>';
                }
                assert_eq!(find_byte(b'>', &hay), memchr::memchr(b'>', &hay));
                assert_eq!(
                    find_byte3(b'"', b'>', b'\'', &hay),
                    memchr::memchr3(b'"', b'>', b'\'', &hay)
                );
                assert_eq!(find_byte(b'<', &hay), None);
            }
        }
    }
}
