//! What limits read of a stanza: its kind, type, addresses and first-level payload
//! namespaces, read lazily from the framed bytes and at most once.

use std::borrow::Cow;

use xmppwall_xml::view::{self, StartTag};

/// The three stanza kinds of RFC 6120 §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

/// Which way a stanza travels through xmppwall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connected client (or peer) towards the protected server.
    ToServer,
    /// From the protected server towards the connected client.
    ToClient,
}

/// The namespace of a first-level child that declares none (RFC 6120 §4.8.3).
const DEFAULT_NS: &str = "jabber:client";

/// A first-level child of a stanza.
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    /// Its local name.
    pub local: &'a [u8],
    /// Its namespace.
    pub ns: Cow<'a, str>,
    /// Where it lies in the stanza's bytes.
    pub range: std::ops::Range<usize>,
    /// Where its content begins, from the start of `range` (its start tag's length;
    /// the whole range when it is self-closing).
    pub content: usize,
}

/// A lazily read stanza.
///
/// Its start tag's `to`, `from` and `type` are found in the one pass over the
/// attributes that checks its namespace; everything else is read when asked for.
#[derive(Debug)]
pub struct Stanza<'a> {
    pub kind: Kind,
    pub bytes: &'a [u8],
    pub start: StartTag<'a>,
    /// The raw (as written) values of `to`, `from` and `type`.
    to: Option<&'a [u8]>,
    from: Option<&'a [u8]>,
    ty: Option<&'a [u8]>,
    declared: Option<Declared<'a>>,
}

/// The attributes of a start tag that tell what an element is and, for a stanza,
/// where it goes: read in one pass, before it is known whether it is a stanza.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub start: StartTag<'a>,
    /// The raw value of the first `xmlns` attribute.
    xmlns: Option<&'a [u8]>,
    /// Whether every `xmlns` attribute is `jabber:client` or `jabber:server`.
    stanza_ns: bool,
    /// The raw (as written) values of the first `to`, `from` and `type`.
    to: Option<&'a [u8]>,
    from: Option<&'a [u8]>,
    ty: Option<&'a [u8]>,
    /// Every namespace declared in the element, when the framer has noted them.
    declared: Option<Declared<'a>>,
}

/// The namespace names an element declares (`xmlns`, `xmlns:p`, at any depth),
/// each written as itself, as the framer noted them ([`xmppwall_xml::Namespaces`]).
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    names: [&'a [u8]; xmppwall_xml::Namespaces::KEPT],
    len: usize,
}

impl<'a> Declared<'a> {
    pub fn names(&self) -> &[&'a [u8]] {
        &self.names[..self.len]
    }
}

impl<'a> Head<'a> {
    pub fn read(start: StartTag<'a>) -> Head<'a> {
        let mut head = Head {
            start,
            xmlns: None,
            stanza_ns: true,
            to: None,
            from: None,
            ty: None,
            declared: None,
        };
        for (name, raw) in start.attributes() {
            match name {
                b"to" => head.to = head.to.or(Some(raw)),
                b"from" => head.from = head.from.or(Some(raw)),
                b"type" => head.ty = head.ty.or(Some(raw)),
                b"xmlns" => {
                    head.xmlns = head.xmlns.or(Some(raw));
                    let ns = view::attribute_value(raw);
                    if ns != "jabber:client" && ns != "jabber:server" {
                        head.stanza_ns = false;
                    }
                }
                _ => {}
            }
        }
        head
    }

    /// The head of a top-level element from what the framer read of its start tag
    /// (`framed`, offsets into `element`): nothing is read again. `None` if `framed`
    /// does not fit `element`.
    pub fn framed(element: &'a [u8], framed: &xmppwall_xml::Head) -> Option<Head<'a>> {
        let start = StartTag::framed(element, framed)?;
        let value = |range: Option<(u32, u32)>| -> Option<Option<&'a [u8]>> {
            match range {
                None => Some(None),
                Some((from, to)) => element.get(from as usize..to as usize).map(Some),
            }
        };
        let xmlns = value(framed.xmlns)?;
        let stanza_ns = xmlns.is_none_or(|raw| {
            let ns = view::attribute_value(raw);
            ns == "jabber:client" || ns == "jabber:server"
        });
        let declared = match framed.namespaces.all() {
            Some(ranges) => {
                let mut declared = Declared {
                    names: [&[]; xmppwall_xml::Namespaces::KEPT],
                    len: ranges.len(),
                };
                for (name, &range) in declared.names.iter_mut().zip(ranges) {
                    *name = value(Some(range))??;
                }
                Some(declared)
            }
            None => None,
        };
        Some(Head {
            start,
            xmlns,
            stanza_ns,
            to: value(framed.to)?,
            from: value(framed.from)?,
            ty: value(framed.ty)?,
            declared,
        })
    }

    /// The value of the (first) `xmlns` attribute, as [`StartTag::attribute`] reads it.
    pub fn xmlns(&self) -> Option<Cow<'a, str>> {
        self.xmlns.map(view::attribute_value)
    }

    pub fn stanza_type(&self) -> Option<Cow<'a, str>> {
        self.ty.map(view::attribute_value)
    }
}

impl<'a> Stanza<'a> {
    /// `None` for anything that is not a `jabber:client`/`jabber:server` stanza.
    pub fn parse(bytes: &'a [u8]) -> Option<Stanza<'a>> {
        Stanza::with_start(StartTag::parse(bytes)?, bytes)
    }

    /// For a caller that has read the start tag already (it is not read again).
    pub fn with_start(start: StartTag<'a>, bytes: &'a [u8]) -> Option<Stanza<'a>> {
        Stanza::with_head(Head::read(start), bytes)
    }

    /// For a caller that has read the start tag's attributes already (they are not
    /// read again).
    pub fn with_head(head: Head<'a>, bytes: &'a [u8]) -> Option<Stanza<'a>> {
        let kind = match head.start.name {
            b"message" => Kind::Message,
            b"presence" => Kind::Presence,
            b"iq" => Kind::Iq,
            _ => return None,
        };
        if !head.stanza_ns {
            return None;
        }
        Some(Stanza {
            kind,
            bytes,
            start: head.start,
            to: head.to,
            from: head.from,
            ty: head.ty,
            declared: head.declared,
        })
    }

    /// Every namespace name the stanza declares (`xmlns`, `xmlns:p`, at any
    /// depth), when the framer noted them all; `None` when the caller must look
    /// for itself.
    pub fn declared_namespaces(&self) -> Option<&[&'a [u8]]> {
        self.declared.as_ref().map(Declared::names)
    }

    pub fn stanza_type(&self) -> Option<Cow<'a, str>> {
        self.ty.map(view::attribute_value)
    }

    pub fn to(&self) -> Option<Cow<'a, str>> {
        self.to.map(view::attribute_value)
    }

    pub fn from(&self) -> Option<Cow<'a, str>> {
        self.from.map(view::attribute_value)
    }

    /// Each first-level child's local name and namespace (its own `xmlns`, or the
    /// stanza's content namespace when it declares none).
    pub fn payloads(&self) -> impl Iterator<Item = (&'a [u8], Cow<'a, str>)> + 'a {
        self.children().map(|p| (p.local, p.ns))
    }

    /// Each first-level child with its namespace and where it lies in the stanza.
    pub fn children(&self) -> impl Iterator<Item = Payload<'a>> + 'a {
        let stanza = self.start;
        view::children_after(self.bytes, &stanza).map(move |c| {
            let ns = match c.start.prefix() {
                // `<a:query xmlns:a='…'/>`: the prefix is declared on the child or,
                // failing that, on the stanza.
                Some(prefix) => {
                    let mut attr = Vec::with_capacity(6 + prefix.len());
                    attr.extend_from_slice(b"xmlns:");
                    attr.extend_from_slice(prefix);
                    c.start
                        .attribute(&attr)
                        .or_else(|| stanza.attribute(&attr))
                        .unwrap_or(Cow::Borrowed(""))
                }
                None => c
                    .start
                    .attribute(b"xmlns")
                    .unwrap_or(Cow::Borrowed(DEFAULT_NS)),
            };
            Payload {
                local: c.start.local_name(),
                ns,
                content: if c.start.self_closing {
                    c.range.len()
                } else {
                    c.start.len
                },
                range: c.range,
            }
        })
    }

    /// Whether a first-level child is `local` in `ns`.
    ///
    /// A namespace other than the default one (which a child without `xmlns`
    /// inherits) must be declared somewhere in the stanza for a child to be in it:
    /// when the framer noted every declaration and none is `ns`, the children are
    /// not walked.
    pub fn has_payload(&self, local: &[u8], ns: &str) -> bool {
        if ns != DEFAULT_NS {
            if let Some(declared) = self.declared_namespaces() {
                if !declared.contains(&ns.as_bytes()) {
                    return false;
                }
            }
        }
        self.payloads().any(|(l, n)| l == local && n == ns)
    }
}

/// The bare JID (`local@domain` or `domain`) of a JID, ASCII-lowercased. Full
/// PRECIS normalisation is the server's business; lowercasing makes the common
/// spellings of one address count as one.
pub fn bare_jid(jid: &str) -> String {
    let bare = jid.split_once('/').map_or(jid, |(b, _)| b);
    bare.to_ascii_lowercase()
}

/// [`bare_jid`] without a copy when the bare JID has no ASCII capital in it (the
/// usual spelling).
pub fn bare_jid_ref(jid: &str) -> Cow<'_, str> {
    // A byte search: `/` is ASCII, so the cut is at a character boundary.
    let bare = match memchr::memchr(b'/', jid.as_bytes()) {
        Some(at) => &jid[..at],
        None => jid,
    };
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(bare.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bare)
    }
}

/// The domain part of a JID.
pub fn domain_of(jid: &str) -> &str {
    let bare = jid.split_once('/').map_or(jid, |(b, _)| b);
    bare.rsplit_once('@').map_or(bare, |(_, d)| d)
}

/// Calls `f` with the stanza `xml` as the proxy sees it: framed in a stream, with
/// the head (and namespace declarations) the framer noted. For tests.
#[cfg(test)]
pub(crate) fn with_framed<R>(xml: &str, f: impl FnOnce(&Stanza<'_>) -> R) -> R {
    let stream = format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>{xml}"
    );
    let mut framer = xmppwall_xml::Framer::new(xmppwall_xml::Limits {
        max_element_bytes: 1 << 16,
        max_depth: 16,
        max_elements: 1000,
        max_attributes: 32,
        max_name_bytes: 256,
        max_attribute_value_bytes: 4096,
    });
    let bytes = stream.as_bytes();
    let mut pos = 0;
    loop {
        let frame = framer
            .next(&bytes[pos..])
            .expect("well-formed")
            .expect("a whole stanza");
        let element = &bytes[pos..pos + frame.len];
        if frame.token == xmppwall_xml::Token::Element {
            let head = Head::framed(element, framer.head()).expect("fits");
            return f(&Stanza::with_head(head, element).expect("a stanza"));
        }
        pos += frame.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kind_type_addresses_and_payloads() {
        let xml = b"<iq type='set' to='pubsub.example.org' id='1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'/></pubsub></iq>";
        let s = Stanza::parse(xml).unwrap();
        assert_eq!(s.kind, Kind::Iq);
        assert_eq!(s.stanza_type().as_deref(), Some("set"));
        assert_eq!(s.to().as_deref(), Some("pubsub.example.org"));
        assert!(s.has_payload(b"pubsub", "http://jabber.org/protocol/pubsub"));
        assert!(!s.has_payload(b"query", "jabber:iq:roster"));
    }

    #[test]
    fn prefixed_payloads_resolve_their_namespace() {
        let xml =
            b"<iq type='get' xmlns:b='urn:b'><a:query xmlns:a='jabber:iq:avatar'/><b:x/></iq>";
        let s = Stanza::parse(xml).unwrap();
        let p: Vec<(Vec<u8>, String)> = s
            .payloads()
            .map(|(l, n)| (l.to_vec(), n.into_owned()))
            .collect();
        assert_eq!(
            p,
            vec![
                (b"query".to_vec(), "jabber:iq:avatar".to_string()),
                (b"x".to_vec(), "urn:b".to_string())
            ]
        );
    }

    /// `has_payload` of `xml` framed in a stream (with the declarations the framer
    /// noted, if it noted them all) and of `xml` parsed on its own (children walked).
    fn has_payload_both_ways(xml: &str, local: &[u8], ns: &str) -> (bool, bool, bool) {
        with_framed(xml, |framed| {
            let parsed = Stanza::parse(xml.as_bytes()).expect("a stanza");
            (
                framed.has_payload(local, ns),
                parsed.has_payload(local, ns),
                framed.declared_namespaces().is_some(),
            )
        })
    }

    #[test]
    fn has_payload_from_the_framers_declarations_is_that_of_a_walk() {
        const ROSTER: &str = "jabber:iq:roster";
        // (stanza, local name, namespace, has it, all declarations noted)
        let cases = [
            ("<iq type='get' id='a'><query xmlns='jabber:iq:roster'/></iq>", &b"query"[..], ROSTER, true, true),
            ("<iq type='get' id='a'><query xmlns='jabber:iq:version'/></iq>", b"query", ROSTER, false, true),
            ("<iq type='get' id='a' xmlns:r='jabber:iq:roster'><r:query/></iq>", b"query", ROSTER, true, true),
            ("<iq type='get' id='a'><r:query xmlns:r='jabber:iq:roster'/></iq>", b"query", ROSTER, true, true),
            // Declared deeper, not on a first-level child: the walk decides.
            ("<iq type='set' id='a'><x xmlns='urn:x'><query xmlns='jabber:iq:roster'/></x></iq>", b"query", ROSTER, false, true),
            // Escaped, or more declarations than the framer keeps: not noted.
            ("<iq type='get' id='a'><query xmlns='jabber:iq:r&#x6f;ster'/></iq>", b"query", ROSTER, true, false),
            ("<iq type='get' id='a'><a xmlns='urn:a'/><b xmlns='urn:b'/><query xmlns='jabber:iq:roster'/></iq>", b"query", ROSTER, true, false),
            // The default namespace needs no declaration.
            ("<message to='b@example.test'><body>x</body></message>", b"body", "jabber:client", true, true),
            ("<message to='b@example.test'><body>xmlns='jabber:iq:roster'</body></message>", b"query", ROSTER, false, true),
        ];
        for (xml, local, ns, has, noted) in cases {
            assert_eq!(
                has_payload_both_ways(xml, local, ns),
                (has, has, noted),
                "{xml}"
            );
        }
    }

    #[test]
    fn nonzas_are_not_stanzas() {
        assert!(Stanza::parse(b"<r xmlns='urn:xmpp:sm:3'/>").is_none());
        assert!(Stanza::parse(b"<message xmlns='urn:other'/>").is_none());
    }

    #[test]
    fn bare_jid_drops_the_resource_and_lowercases() {
        assert_eq!(bare_jid("Alice@Example.org/Phone/x"), "alice@example.org");
        assert_eq!(bare_jid("example.org"), "example.org");
        assert_eq!(
            bare_jid_ref("Alice@Example.org/Phone/x"),
            "alice@example.org"
        );
        assert!(matches!(
            bare_jid_ref("alice@example.org/Phone"),
            Cow::Borrowed("alice@example.org")
        ));
        assert_eq!(domain_of("alice@example.org/res@x"), "example.org");
    }
}
