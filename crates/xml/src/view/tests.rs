use super::*;

const MESSAGE: &[u8] = b"<message from='a@b/c' to='d@e' type=\"chat\" id='x&amp;y'>\
    <body>Hi &lt;there&gt; &#x1F600;</body><thread/>\
    <x xmlns='urn:x'><body>not direct</body></x></message>";

#[test]
fn start_tag_reads_name_length_and_self_closing() {
    let tag = StartTag::parse(MESSAGE).unwrap();
    assert_eq!(tag.name, b"message");
    assert!(!tag.self_closing);
    assert_eq!(
        &MESSAGE[..tag.len],
        b"<message from='a@b/c' to='d@e' type=\"chat\" id='x&amp;y'>"
    );

    let empty = StartTag::parse(b"<r xmlns='urn:xmpp:sm:3'/>").unwrap();
    assert!(empty.self_closing);
    assert_eq!(empty.len, 26);
    assert_eq!(empty.attribute(b"xmlns").as_deref(), Some("urn:xmpp:sm:3"));

    let bare = StartTag::parse(b"<a/>").unwrap();
    assert!(bare.self_closing);
    assert_eq!(bare.attributes().count(), 0);
}

#[test]
fn start_tag_skips_greater_than_inside_values() {
    let tag = StartTag::parse(b"<a x='>' y=\"/>\"><b/></a>").unwrap();
    assert_eq!(tag.len, 16);
    assert!(!tag.self_closing);
    assert_eq!(tag.attribute(b"y").as_deref(), Some("/>"));
}

#[test]
fn start_tag_of_garbage_is_none() {
    for bad in [&b""[..], b"a", b"<", b"<>", b"< a>", b"<a x='1", b"<a"] {
        assert!(StartTag::parse(bad).is_none(), "{bad:?}");
    }
}

#[test]
fn local_name_and_prefix() {
    let tag = StartTag::parse(b"<stream:features>").unwrap();
    assert_eq!(tag.local_name(), b"features");
    assert_eq!(tag.prefix(), Some(&b"stream"[..]));
    let tag = StartTag::parse(b"<iq>").unwrap();
    assert_eq!(tag.local_name(), b"iq");
    assert_eq!(tag.prefix(), None);
}

#[test]
fn attribute_is_borrowed_when_nothing_needs_unescaping() {
    let tag = StartTag::parse(MESSAGE).unwrap();
    assert!(matches!(tag.attribute(b"to"), Some(Cow::Borrowed("d@e"))));
    assert_eq!(tag.attribute(b"type").as_deref(), Some("chat"));
    assert_eq!(tag.attribute(b"missing"), None);
}

#[test]
fn attribute_unescapes_entities_and_character_references() {
    let tag = StartTag::parse(MESSAGE).unwrap();
    assert!(matches!(tag.attribute(b"id"), Some(Cow::Owned(v)) if v == "x&y"));
    let tag = StartTag::parse(b"<a v='&lt;&gt;&amp;&apos;&quot;&#65;&#x42;&#x1F600;'/>").unwrap();
    assert_eq!(tag.attribute(b"v").as_deref(), Some("<>&'\"AB\u{1F600}"));
}

#[test]
fn attribute_values_are_normalized() {
    let tag = StartTag::parse(b"<a v='a\tb\nc\r\nd&#9;e'/>").unwrap();
    assert_eq!(tag.attribute(b"v").as_deref(), Some("a b c d\te"));
}

#[test]
fn attributes_lists_raw_values_in_order() {
    let tag = StartTag::parse(b"<a x = '1' y=\"&amp;\"\n z=''/>").unwrap();
    let all: Vec<_> = tag.attributes().collect();
    assert_eq!(all, [(&b"x"[..], &b"1"[..]), (b"y", b"&amp;"), (b"z", b"")]);
}

#[test]
fn attribute_matches_the_qualified_name() {
    let tag = StartTag::parse(b"<a xml:lang='en' lang='de' xmlns:p='urn:p'/>").unwrap();
    assert_eq!(tag.attribute(b"xml:lang").as_deref(), Some("en"));
    assert_eq!(tag.attribute(b"lang").as_deref(), Some("de"));
    assert_eq!(tag.attribute(b"xmlns:p").as_deref(), Some("urn:p"));
}

#[test]
fn children_are_direct_children_with_ranges() {
    let kids: Vec<_> = children(MESSAGE).collect();
    let names: Vec<_> = kids.iter().map(|c| c.start.name).collect();
    assert_eq!(names, [&b"body"[..], b"thread", b"x"]);
    assert_eq!(
        &MESSAGE[kids[0].range.clone()],
        b"<body>Hi &lt;there&gt; &#x1F600;</body>"
    );
    assert_eq!(&MESSAGE[kids[1].range.clone()], b"<thread/>");
    assert_eq!(
        &MESSAGE[kids[2].range.clone()],
        b"<x xmlns='urn:x'><body>not direct</body></x>"
    );
}

#[test]
fn children_skip_text_and_cdata() {
    let element = b"<a>text<![CDATA[<fake/>]]><b/>more<c>x</c></a>";
    let names: Vec<_> = children(element).map(|c| c.start.name).collect();
    assert_eq!(names, [&b"b"[..], b"c"]);
}

#[test]
fn children_after_a_read_start_tag_are_the_same_children() {
    for element in [
        MESSAGE,
        &b"<a>text<![CDATA[<fake/>]]><b/>more<c>x</c></a>"[..],
        b"<a/>",
        b"<a></a>",
        b"<a x='>'><b y=\"/>\"/></a>",
    ] {
        let start = StartTag::parse(element).unwrap();
        let after: Vec<_> = children_after(element, &start)
            .map(|c| (c.start.name, c.range))
            .collect();
        let all: Vec<_> = children(element).map(|c| (c.start.name, c.range)).collect();
        assert_eq!(after, all);
    }
}

#[test]
fn children_of_empty_or_self_closing_elements_are_none() {
    assert_eq!(children(b"<a/>").count(), 0);
    assert_eq!(children(b"<a></a>").count(), 0);
    assert_eq!(children(b"<a>text</a>").count(), 0);
    assert_eq!(children(b"").count(), 0);
}

#[test]
fn children_of_nested_same_name_elements_end_at_the_right_tag() {
    let element = b"<a><x><x/><x></x></x><y/></a>";
    let kids: Vec<_> = children(element).collect();
    assert_eq!(kids.len(), 2);
    assert_eq!(&element[kids[0].range.clone()], b"<x><x/><x></x></x>");
}

#[test]
fn text_is_borrowed_for_plain_content() {
    assert!(matches!(
        text(b"<body>hello</body>"),
        Cow::Borrowed("hello")
    ));
    assert!(matches!(text(b"<a/>"), Cow::Borrowed("")));
    assert!(matches!(text(b"<a></a>"), Cow::Borrowed("")));
}

#[test]
fn text_unescapes_and_skips_children() {
    let body = &MESSAGE[children(MESSAGE).next().unwrap().range];
    assert_eq!(text(body), "Hi <there> \u{1F600}");
    assert_eq!(text(b"<a>x<b>not</b>y<c/>z</a>"), "xyz");
}

#[test]
fn text_includes_cdata_content_and_normalizes_line_ends() {
    assert_eq!(text(b"<a>1<![CDATA[<2> & ]]>3</a>"), "1<2> & 3");
    assert_eq!(text(b"<a>x\r\ny\rz</a>"), "x\ny\nz");
    assert_eq!(text(b"<a><![CDATA[x\r\ny]]></a>"), "x\ny");
}

#[test]
fn escape_text_escapes_markup_and_keeps_plain_text_borrowed() {
    assert!(matches!(escape_text("plain text"), Cow::Borrowed(_)));
    assert_eq!(escape_text("a<b>&c]]>\r"), "a&lt;b&gt;&amp;c]]&gt;&#13;");
    assert_eq!(escape_text("nul\u{0}here"), "nul\u{fffd}here");
}

#[test]
fn escape_attribute_escapes_quotes_and_whitespace() {
    assert!(matches!(escape_attribute("example.org"), Cow::Borrowed(_)));
    assert_eq!(
        escape_attribute("'\"<>&\t\n\r"),
        "&apos;&quot;&lt;&gt;&amp;&#9;&#10;&#13;"
    );
}

#[test]
fn escaped_values_read_back_unchanged() {
    let value = "a'b\"c<d>e&f\tg\nh\ri \u{1F600}";
    let element = format!(
        "<a v='{}'>{}</a>",
        escape_attribute(value),
        escape_text(value)
    );
    let tag = StartTag::parse(element.as_bytes()).unwrap();
    assert_eq!(tag.attribute(b"v").as_deref(), Some(value));
    assert_eq!(text(element.as_bytes()), value);
}

#[test]
fn text_after_a_read_start_tag_is_the_same_text() {
    let elements: [&[u8]; 3] = [
        MESSAGE,
        b"<message><body>a<![CDATA[<b>]]>c</body><x/><body/></message>",
        b"<presence to='a@b'>\n<show>away</show> <c xmlns='urn:c' ver='>'/></presence>",
    ];
    for element in elements {
        for child in children(element) {
            let bytes = &element[child.range.clone()];
            let content = if child.start.self_closing {
                bytes.len()
            } else {
                child.start.len
            };
            assert_eq!(text_from(bytes, content), text(bytes));
        }
    }
}

/// The attribute splitter as first written: name up to `=` or white space, then
/// white space, `=`, white space and a quoted value.
fn reference_parse_attribute(s: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let skip_ws = |s: &[u8], i: usize| {
        i + s
            .get(i..)
            .map_or(0, |r| r.iter().take_while(|&&c| is_ws(c)).count())
    };
    let start = skip_ws(s, 0);
    let name_len = s
        .get(start..)?
        .iter()
        .position(|&c| c == b'=' || is_ws(c))?;
    let name = &s[start..start + name_len];
    let eq = skip_ws(s, start + name_len);
    if s.get(eq) != Some(&b'=') {
        return None;
    }
    let open = skip_ws(s, eq + 1);
    let quote = *s.get(open).filter(|&&q| q == b'"' || q == b'\'')?;
    let close = open + 1 + memchr::memchr(quote, s.get(open + 1..)?)?;
    Some((name, &s[open + 1..close], &s[close + 1..]))
}

#[test]
fn attribute_splitting_agrees_with_the_reference_on_every_short_input() {
    const ALPHABET: &[u8] = b"a =\"'\t>";
    let mut input = Vec::new();
    for len in 0..=6u32 {
        for mut n in 0..ALPHABET.len().pow(len) {
            input.clear();
            for _ in 0..len {
                input.push(ALPHABET[n % ALPHABET.len()]);
                n /= ALPHABET.len();
            }
            assert_eq!(
                parse_attribute(&input),
                reference_parse_attribute(&input),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
    let long =
        b" xmlns='http://jabber.org/protocol/chatstates-and-a-long-tail-of-more-bytes' b='2'";
    assert_eq!(parse_attribute(long), reference_parse_attribute(long));
}
