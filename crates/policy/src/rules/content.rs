//! Content detectors over message text: keyword lists (Aho–Corasick), URL
//! extraction, and data-leak detectors (payment card numbers with the Luhn check,
//! IBANs with the ISO 13616 / ISO 7064 mod-97 check).
//!
//! Every detector is linear in the text and allocates nothing unless it finds
//! something; regular expressions are compiled by the rules into one `RegexSet`.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use memchr::memmem::Finder;
use regex::{RegexSet, RegexSetBuilder};
use regex_automata::meta;
use regex_automata::util::prefilter::Prefilter;
use rustc_hash::FxHashSet;

/// A keyword list matched case-insensitively on whole words.
///
/// Keywords that are one word (letters, digits, `_`, non-ASCII) are kept in a hash
/// set and looked up once per word of the text: a whole-word match of such a keyword
/// is exactly a word of the text. Only keywords with spaces or punctuation ("free
/// money", "c.i.a.l.i.s") go into an Aho–Corasick automaton. With 10,000 keywords the
/// automaton for all of them is megabytes of DFA and costs a cache miss a byte; the
/// set costs a hash a word (BENCHMARKS.md, "Operator policy per stanza").
#[derive(Debug, Clone)]
pub struct Keywords {
    /// One-word keywords, lowercased.
    words: FxHashSet<Box<[u8]>>,
    /// The shortest and longest one-word keyword, in bytes: other words are not looked up.
    word_lengths: (usize, usize),
    /// Keywords of several words or with punctuation.
    phrases: Option<AhoCorasick>,
}

impl Keywords {
    pub fn new<I, S>(words: I) -> Result<Keywords, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keywords: Vec<String> = words
            .into_iter()
            .map(|w| w.as_ref().trim().to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        let (single, phrases): (Vec<String>, Vec<String>) = keywords
            .into_iter()
            .partition(|w| w.bytes().all(is_word_byte));
        let word_lengths = single.iter().fold((usize::MAX, 0), |(lo, hi), w| {
            (lo.min(w.len()), hi.max(w.len()))
        });
        let words = single
            .into_iter()
            .map(|w| w.into_bytes().into_boxed_slice())
            .collect();
        let phrases = if phrases.is_empty() {
            None
        } else {
            // A DFA: the most memory, the fastest search; phrase lists are short.
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    // Overlapping search: a phrase inside a longer match that fails
                    // the word test ("xa b c" for "a b c") may still stand alone
                    // ("b c").
                    .match_kind(MatchKind::Standard)
                    .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                    .build(&phrases)
                    .map_err(|e| format!("cannot build the keyword matcher: {e}"))?,
            )
        };
        Ok(Keywords {
            words,
            word_lengths,
            phrases,
        })
    }

    /// Whether `text` holds one of the words, not as part of a longer word
    /// ("ass" does not match "class").
    pub fn find_in(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        if !self.words.is_empty() && self.has_word(bytes) {
            return true;
        }
        self.phrases.as_ref().is_some_and(|automaton| {
            automaton.find_overlapping_iter(bytes).any(|m| {
                let before = m.start().checked_sub(1).map(|i| bytes[i]);
                let after = bytes.get(m.end()).copied();
                !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte)
            })
        })
    }

    fn has_word(&self, bytes: &[u8]) -> bool {
        let (shortest, longest) = self.word_lengths;
        let mut lowered = [0u8; 64];
        let mut i = 0;
        while i < bytes.len() {
            if !is_word_byte(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && is_word_byte(bytes[i]) {
                i += 1;
            }
            let word = &bytes[start..i];
            if word.len() < shortest || word.len() > longest {
                continue;
            }
            let found = if word.len() <= lowered.len() {
                let lowered = &mut lowered[..word.len()];
                lowered.copy_from_slice(word);
                lowered.make_ascii_lowercase();
                self.words.contains(&*lowered)
            } else {
                self.words.contains(&*word.to_ascii_lowercase())
            };
            if found {
                return true;
            }
        }
        false
    }
}

/// Every rule's regular expressions for one text field, asked as one set.
#[derive(Debug)]
pub struct Patterns {
    set: RegexSet,
    /// The same patterns without a prefilter, asked about ASCII texts when the only
    /// prefilter the set can have is not a fast one.
    ///
    /// A prefilter finds where a match could start before the regex engine runs. Many
    /// case-insensitive patterns give hundreds of literal prefixes, which only an
    /// Aho–Corasick automaton can search, a byte at a time and with false starts; on
    /// ASCII text the lazy DFA alone is cheaper (50 `(?i)\b… …\b` patterns over a chat
    /// message: about 700 instructions against 2,650 with the prefilter). Other text
    /// keeps the prefilter: there the lazy DFA cannot decide Unicode word boundaries
    /// and the engine it falls back to would have to read all of it.
    ascii: Option<meta::Regex>,
}

impl Patterns {
    pub fn new(patterns: &[String], size_limit: usize) -> Result<Patterns, String> {
        let set = RegexSetBuilder::new(patterns)
            .size_limit(size_limit)
            .build()
            .map_err(|e| e.to_string())?;
        let ascii = if only_slow_prefilter(patterns) {
            let config = meta::Config::new()
                .match_kind(regex_automata::MatchKind::All)
                .auto_prefilter(false)
                .nfa_size_limit(Some(size_limit));
            meta::Builder::new()
                .configure(config)
                .build_many(patterns)
                .ok()
        } else {
            None
        };
        Ok(Patterns { set, ascii })
    }

    /// Whether any pattern matches `text`.
    pub fn is_match(&self, text: &str) -> bool {
        match &self.ascii {
            Some(regex) if text.is_ascii() => regex.is_match(text),
            _ => self.set.is_match(text),
        }
    }

    /// Which patterns match `text`, by position.
    pub fn matches(&self, text: &str) -> impl Iterator<Item = usize> {
        self.set.matches(text).into_iter()
    }

    /// Whether ASCII texts are asked without a prefilter.
    pub fn skips_prefilter_on_ascii(&self) -> bool {
        self.ascii.is_some()
    }
}

/// Whether the patterns' literal prefixes give a prefilter, but no fast one (one that
/// is not SIMD: `regex-automata`'s own judgement, [`Prefilter::is_fast`]).
fn only_slow_prefilter(patterns: &[String]) -> bool {
    let mut hirs = Vec::with_capacity(patterns.len());
    for p in patterns {
        match regex_syntax::parse(p) {
            Ok(hir) => hirs.push(hir),
            Err(_) => return false,
        }
    }
    Prefilter::from_hirs_prefix(regex_automata::MatchKind::All, &hirs).is_some_and(|p| !p.is_fast())
}

fn is_word_byte(b: u8) -> bool {
    WORD_BYTES[usize::from(b)]
}

/// Which bytes make up words: ASCII letters and digits, `_`, and every byte of a
/// multi-byte character (a table: one load instead of five comparisons per byte).
static WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        b += 1;
    }
    table
};

/// The host of each URL in `text`: `http://`, `https://`, `ftp://` and bare
/// `www.` forms, lowercased, without port or user info.
///
/// Candidates are found with two substring searches (`://` and `www.`, SIMD-fast), so
/// text without links costs two scans and no allocation.
pub fn url_hosts(text: &str) -> impl Iterator<Item = String> + '_ {
    // The searchers are built once: building one costs about as much as a search
    // through a chat message.
    static SCHEME: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("://"));
    static WWW: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("www."));
    static WWW_UPPER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("WWW."));
    let bytes = text.as_bytes();
    let scheme = SCHEME.find_iter(bytes).filter_map(move |i| {
        // Which scheme ends here: http, https or ftp, any case, at a word start.
        let before = &bytes[..i];
        let name_start = before
            .iter()
            .rposition(|b| !b.is_ascii_alphabetic())
            .map_or(0, |p| p + 1);
        let name = &before[name_start..];
        let known = [&b"http"[..], b"https", b"ftp"]
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s));
        known.then_some((name_start, i + 3))
    });
    let www = WWW
        .find_iter(bytes)
        .chain(WWW_UPPER.find_iter(bytes))
        .filter(move |&i| {
            // At a word start, and not the host of a URL with a scheme.
            (i == 0 || !is_word_byte(bytes[i - 1])) && !(i >= 3 && &bytes[i - 3..i] == b"://")
        })
        .map(|i| (i, i));
    let mut starts: Vec<(usize, usize)> = scheme.chain(www).collect();
    starts.sort_unstable();
    // A host that starts inside a host already read is part of it
    // ("www.www.example"): reading it again would read a text of such starts a
    // quadratic number of times. (A scheme's host starts after its `://`, past
    // the '/' that ended any host before it.)
    let mut read_up_to = 0;
    starts.into_iter().filter_map(move |(_, host_start)| {
        if host_start < read_up_to {
            return None;
        }
        let end = text[host_start..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>')
            })
            .map_or(text.len(), |e| host_start + e);
        read_up_to = end;
        let authority = &text[host_start..end];
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host
            .trim_end_matches(['.', ',', ';', ')', ']', '!'])
            .to_ascii_lowercase();
        (!host.is_empty()).then_some(host)
    })
}

/// Whether `host` is `domain` or one of its subdomains.
pub fn host_in_domain(host: &str, domain: &str) -> bool {
    host == domain
        || (host.len() > domain.len()
            && host.ends_with(domain)
            && host.as_bytes()[host.len() - domain.len() - 1] == b'.')
}

/// A payment card number (13–19 digits, spaces or dashes between groups) that
/// passes the Luhn check (ISO/IEC 7812-1).
pub fn has_card_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    if ascii_digits(bytes) < 13 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        let mut digits = [0u8; 19];
        let mut n = 0;
        let mut j = i;
        while j < bytes.len() {
            match bytes[j] {
                d @ b'0'..=b'9' => {
                    if n == 19 {
                        n = 20;
                        break;
                    }
                    digits[n] = d - b'0';
                    n += 1;
                }
                b' ' | b'-' if j + 1 < bytes.len() && bytes[j + 1].is_ascii_digit() && n > 0 => {}
                _ => break,
            }
            j += 1;
        }
        if (13..=19).contains(&n) && luhn(&digits[..n]) {
            return true;
        }
        i = j.max(i + 1);
    }
    false
}

/// How many ASCII digits `bytes` holds: a vectorised count, the cheap test that
/// lets text without enough digits skip the card and IBAN scans.
fn ascii_digits(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| b.is_ascii_digit()).count()
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// An IBAN (two letters, two check digits, 11–30 alphanumerics, spaces allowed in
/// groups of four) whose mod-97 check (ISO 7064) holds.
pub fn has_iban(text: &str) -> bool {
    let bytes = text.as_bytes();
    // The two check digits at least; most chat text has none.
    if ascii_digits(bytes) < 2 {
        return false;
    }
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let starts = bytes[i].is_ascii_alphabetic()
            && bytes[i + 1].is_ascii_alphabetic()
            && bytes[i + 2].is_ascii_digit()
            && bytes[i + 3].is_ascii_digit()
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if starts {
            let mut chars = Vec::with_capacity(34);
            let mut j = i;
            while j < bytes.len() && chars.len() < 34 {
                match bytes[j] {
                    c if c.is_ascii_alphanumeric() => chars.push(c.to_ascii_uppercase()),
                    b' ' if j + 1 < bytes.len() && bytes[j + 1].is_ascii_alphanumeric() => {}
                    _ => break,
                }
                j += 1;
            }
            // Try the longest candidate first, then shorter ones (text may follow).
            for len in (15..=chars.len()).rev() {
                if iban_valid(&chars[..len]) {
                    return true;
                }
            }
        }
        i += 1;
    }
    false
}

fn iban_valid(chars: &[u8]) -> bool {
    if chars.len() < 15 || chars.len() > 34 {
        return false;
    }
    let rearranged = chars[4..].iter().chain(&chars[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, checked naively: some keyword occurs (ASCII case-insensitively)
    /// with no word byte right before or after it.
    fn naive(keywords: &[&str], text: &str) -> bool {
        let t = text.to_ascii_lowercase().into_bytes();
        keywords.iter().any(|k| {
            let k = k.to_lowercase().into_bytes();
            (0..t.len()).any(|i| {
                t[i..].starts_with(&k)
                    && !(i > 0 && is_word_byte(t[i - 1]))
                    && !t.get(i + k.len()).is_some_and(|&b| is_word_byte(b))
            })
        })
    }

    #[test]
    fn keywords_agree_with_the_naive_definition() {
        let keywords = ["ab", "abc", "b c", "c.d", "Ünï", "x_y", "a b c"];
        let k = Keywords::new(keywords).unwrap();
        let alphabet = [
            "a", "b", "c", "d", " ", ".", "_", "x", "y", "Ü", "n", "ï", "B", "!",
        ];
        // Every text of up to five symbols from the alphabet.
        let mut texts = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |a| format!("{t}{a}")))
                .collect();
            for t in &longer {
                assert_eq!(k.find_in(t), naive(&keywords, t), "text {t:?}");
            }
            texts = longer;
        }
        // Longer texts over the symbols that make phrases overlap.
        let mut texts = vec![String::new()];
        for _ in 0..8 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| ["a", "b", "c", " ", "x"].map(|a| format!("{t}{a}")))
                .collect();
            for t in &longer {
                assert_eq!(k.find_in(t), naive(&keywords, t), "text {t:?}");
            }
            texts = longer;
        }
    }

    #[test]
    fn keywords_match_whole_words_case_insensitively() {
        let k = Keywords::new(["viagra", "free money"]).unwrap();
        assert!(k.find_in("Get VIAGRA now"));
        assert!(k.find_in("here is free money!"));
        assert!(!k.find_in("viagras are not words we list"));
        assert!(!k.find_in("nothing to see"));
        assert!(!k.find_in("free moneys"));
        assert!(k.find_in("(Viagra)"));
        assert!(k.find_in("viagra"));
        assert!(!k.find_in("xviagra"));
    }

    #[test]
    fn url_hosts_are_extracted_without_port_path_or_user() {
        let hosts: Vec<String> =
            url_hosts("see https://User@Bad.Example:8443/x?y and www.spam.test, ftp://f.test.")
                .collect();
        assert_eq!(hosts, vec!["bad.example", "www.spam.test", "f.test"]);
        assert_eq!(url_hosts("no links in awww.here").count(), 0);
    }

    #[test]
    fn a_host_is_read_once_even_when_it_holds_more_starts() {
        // Each "www." starts a URL; read from each, the hosts of one 64 KiB body
        // would add up to half a gigabyte.
        let text = "www.".repeat(16 * 1024);
        let hosts: Vec<String> = url_hosts(&text).collect();
        assert_eq!(hosts.len(), 1);
        assert!(hosts.iter().map(String::len).sum::<usize>() <= text.len());
        let hosts: Vec<String> =
            url_hosts("http://http://a.test www.www.b.test c www.c.test").collect();
        assert_eq!(
            hosts,
            vec!["http", "a.test", "www.www.b.test", "www.c.test"]
        );
    }

    #[test]
    fn subdomains_belong_to_their_domain() {
        assert!(host_in_domain("a.bad.example", "bad.example"));
        assert!(host_in_domain("bad.example", "bad.example"));
        assert!(!host_in_domain("notbad.example", "bad.example"));
    }

    #[test]
    fn card_numbers_pass_only_with_a_valid_luhn_digit() {
        assert!(has_card_number("card 4111 1111 1111 1111 exp 12/29"));
        assert!(has_card_number("5500-0000-0000-0004"));
        assert!(!has_card_number("4111 1111 1111 1112"));
        assert!(!has_card_number("call 555 1234 please"));
        assert!(!has_card_number("order 12345678901234567890123 shipped"));
    }

    #[test]
    fn ibans_pass_only_with_valid_check_digits() {
        assert!(has_iban("pay to DE89 3704 0044 0532 0130 00 today"));
        assert!(has_iban("GB82WEST12345698765432"));
        assert!(!has_iban("DE88 3704 0044 0532 0130 00"));
        assert!(!has_iban("AB12 is not an iban"));
    }

    #[test]
    fn patterns_without_a_prefilter_on_ascii_text_give_the_sets_answers() {
        let words = [
            "free", "money", "cheap", "pills", "click", "here", "viagra", "bitcoin", "casino",
            "bonus", "winner", "prize", "urgent", "offer", "crypto", "wallet",
        ];
        let patterns: Vec<String> = words
            .chunks(2)
            .map(|w| format!(r"(?i)\b{}\s+{}\b", w[0], w[1]))
            .chain(words.iter().map(|w| format!(r"(?i)\b{w}\d+\b")))
            .collect();
        let p = Patterns::new(&patterns, 64 << 20).unwrap();
        // Case-insensitive prefixes: many literals, an Aho–Corasick prefilter.
        assert!(p.skips_prefilter_on_ascii());
        let set = RegexSet::new(&patterns).unwrap();
        let texts = [
            "nothing to see here",
            "get FREE   Money now",
            "free moneyz",
            "casino77 tonight",
            "xcasino77",
            "Bonus winner",
            "a Free money with a non-ASCII word: café",
            "ﬁne free\u{a0}money",
            "free money, ça va",
            "ſree money",
            "",
        ];
        for t in texts {
            assert_eq!(p.is_match(t), set.is_match(t), "{t:?}");
            assert_eq!(
                p.matches(t).collect::<Vec<_>>(),
                set.matches(t).into_iter().collect::<Vec<_>>()
            );
        }
        assert!(p.is_match("get FREE   Money now"));
        assert!(!p.is_match("free moneyz"));
        assert!(p.is_match("a Free money with a non-ASCII word: café"));
    }

    #[test]
    fn patterns_with_a_fast_prefilter_keep_it() {
        let patterns = vec!["viagra".to_string(), "c[i1]alis".to_string()];
        let p = Patterns::new(&patterns, 64 << 20).unwrap();
        assert!(!p.skips_prefilter_on_ascii());
        assert!(p.is_match("buy viagra"));
        assert!(!p.is_match("hello"));
    }
}
