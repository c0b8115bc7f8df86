//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3) as xmppwall writes them.
//!
//! Owns the exact bytes a peer receives when xmppwall refuses something. It never
//! copies a refused payload into an error (XEP-0205 §2.5), and it never builds an
//! error in answer to an error (RFC 6120 §8.3.1): callers ask [`StanzaError::reply_to`],
//! which returns `None` where no reply is allowed.

use std::fmt::Write as _;

use xmppwall_xml::view::{escape_attribute, escape_text, StartTag};

const STREAMS_NS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Application-specific conditions of XEP-0182, registered by XEP-0205 §5.
pub const ERRORS_NS: &str = "urn:xmpp:errors";

/// Defined stream error conditions (RFC 6120 §4.9.3) that xmppwall sends. Every
/// condition of §4.9.3 is here except `see-other-host` (§4.9.3.19), which needs a
/// host as content and which xmppwall never sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamCondition {
    pub const ALL: [StreamCondition; 24] = [
        StreamCondition::BadFormat,
        StreamCondition::BadNamespacePrefix,
        StreamCondition::Conflict,
        StreamCondition::ConnectionTimeout,
        StreamCondition::HostGone,
        StreamCondition::HostUnknown,
        StreamCondition::ImproperAddressing,
        StreamCondition::InternalServerError,
        StreamCondition::InvalidFrom,
        StreamCondition::InvalidNamespace,
        StreamCondition::InvalidXml,
        StreamCondition::NotAuthorized,
        StreamCondition::NotWellFormed,
        StreamCondition::PolicyViolation,
        StreamCondition::RemoteConnectionFailed,
        StreamCondition::Reset,
        StreamCondition::ResourceConstraint,
        StreamCondition::RestrictedXml,
        StreamCondition::SystemShutdown,
        StreamCondition::UndefinedCondition,
        StreamCondition::UnsupportedEncoding,
        StreamCondition::UnsupportedFeature,
        StreamCondition::UnsupportedStanzaType,
        StreamCondition::UnsupportedVersion,
    ];

    /// The condition with this element name (`policy-violation`, ...).
    pub fn from_name(name: &str) -> Option<StreamCondition> {
        StreamCondition::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            StreamCondition::BadFormat => "bad-format",
            StreamCondition::BadNamespacePrefix => "bad-namespace-prefix",
            StreamCondition::Conflict => "conflict",
            StreamCondition::ConnectionTimeout => "connection-timeout",
            StreamCondition::HostGone => "host-gone",
            StreamCondition::HostUnknown => "host-unknown",
            StreamCondition::ImproperAddressing => "improper-addressing",
            StreamCondition::InternalServerError => "internal-server-error",
            StreamCondition::InvalidFrom => "invalid-from",
            StreamCondition::InvalidNamespace => "invalid-namespace",
            StreamCondition::InvalidXml => "invalid-xml",
            StreamCondition::NotAuthorized => "not-authorized",
            StreamCondition::NotWellFormed => "not-well-formed",
            StreamCondition::PolicyViolation => "policy-violation",
            StreamCondition::RemoteConnectionFailed => "remote-connection-failed",
            StreamCondition::Reset => "reset",
            StreamCondition::ResourceConstraint => "resource-constraint",
            StreamCondition::RestrictedXml => "restricted-xml",
            StreamCondition::SystemShutdown => "system-shutdown",
            StreamCondition::UndefinedCondition => "undefined-condition",
            StreamCondition::UnsupportedEncoding => "unsupported-encoding",
            StreamCondition::UnsupportedFeature => "unsupported-feature",
            StreamCondition::UnsupportedStanzaType => "unsupported-stanza-type",
            StreamCondition::UnsupportedVersion => "unsupported-version",
        }
    }
}

/// A stream error: the condition, a human-readable text, and optionally an
/// application-specific condition element in `urn:xmpp:errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamCondition,
    pub text: Option<String>,
    /// Local name of an application-specific condition, e.g. `stanza-too-big`.
    pub app_condition: Option<&'static str>,
}

impl StreamError {
    pub fn new(condition: StreamCondition) -> Self {
        StreamError {
            condition,
            text: None,
            app_condition: None,
        }
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub fn with_app_condition(mut self, name: &'static str) -> Self {
        self.app_condition = Some(name);
        self
    }

    /// `<stream:error>…</stream:error></stream:stream>` with the stream's prefix
    /// (`None` when the stream namespace is the default one).
    pub fn to_bytes(&self, stream_prefix: Option<&str>) -> Vec<u8> {
        let p = match stream_prefix {
            Some(p) => format!("{p}:"),
            None => String::new(),
        };
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            "<{p}error><{} xmlns='{STREAMS_NS}'/>",
            self.condition.name()
        );
        if let Some(text) = &self.text {
            let _ = write!(
                s,
                "<text xmlns='{STREAMS_NS}' xml:lang='en'>{}</text>",
                escape_text(text)
            );
        }
        if let Some(app) = self.app_condition {
            let _ = write!(s, "<{app} xmlns='{ERRORS_NS}'/>");
        }
        let _ = write!(s, "</{p}error></{p}stream>");
        s.into_bytes()
    }
}

/// Error types of RFC 6120 §8.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// A stanza error to send back to the sender of a refused stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    pub error_type: ErrorType,
    /// A defined condition of RFC 6120 §8.3.3, e.g. `not-allowed`.
    pub condition: &'static str,
    /// Local name of an application-specific condition in `urn:xmpp:errors`.
    pub app_condition: Option<&'static str>,
    pub text: Option<String>,
}

impl StanzaError {
    /// XEP-0205 §2.5: `modify` + `<not-allowed/>` + `<stanza-too-big/>`.
    pub fn stanza_too_big(limit: usize) -> Self {
        StanzaError {
            error_type: ErrorType::Modify,
            condition: "not-allowed",
            app_condition: Some("stanza-too-big"),
            text: Some(format!("stanza larger than {limit} bytes")),
        }
    }

    /// The `<error>…</error>` element alone.
    pub fn error_element(&self) -> String {
        let mut s = String::with_capacity(200);
        let _ = write!(
            s,
            "<error type='{}'><{} xmlns='{STANZAS_NS}'/>",
            self.error_type.name(),
            self.condition
        );
        if let Some(text) = &self.text {
            let _ = write!(
                s,
                "<text xmlns='{STANZAS_NS}' xml:lang='en'>{}</text>",
                escape_text(text)
            );
        }
        if let Some(app) = self.app_condition {
            let _ = write!(s, "<{app} xmlns='{ERRORS_NS}'/>");
        }
        s.push_str("</error>");
        s
    }

    /// The error stanza answering the stanza whose start tag is `stanza`, sent to
    /// its sender, or `None` where RFC 6120 forbids answering: errors (§8.3.1) and
    /// IQ results (§8.2.3). `sender` is the address to send to (the sender's full
    /// JID, when known); the refused stanza's `to` becomes the error's `from`.
    pub fn reply_to(&self, stanza: &StartTag<'_>, sender: Option<&str>) -> Option<Vec<u8>> {
        let kind = stanza.local_name();
        if !matches!(kind, b"message" | b"presence" | b"iq") {
            return None;
        }
        let ty = stanza.attribute(b"type");
        match (kind, ty.as_deref()) {
            (_, Some("error")) => return None,
            (b"iq", Some("result")) => return None,
            _ => {}
        }
        let kind = std::str::from_utf8(kind).ok()?;
        let mut s = String::with_capacity(320);
        let _ = write!(s, "<{kind} type='error'");
        if let Some(id) = stanza.attribute(b"id") {
            let _ = write!(s, " id='{}'", escape_attribute(&id));
        }
        if let Some(to) = stanza.attribute(b"to") {
            let _ = write!(s, " from='{}'", escape_attribute(&to));
        }
        if let Some(sender) = sender {
            let _ = write!(s, " to='{}'", escape_attribute(sender));
        }
        s.push('>');
        s.push_str(&self.error_element());
        let _ = write!(s, "</{kind}>");
        Some(s.into_bytes())
    }
}
