//! The configuration file: its model, loading, and validation.
//!
//! Owns turning TOML text into a [`Config`] that the rest of the proxy can trust, and
//! reporting every problem as `FILE:LINE:COLUMN: what; what to do`. It reads the
//! certificate files only to check they exist and parse; loading them for use is
//! [`crate::tls`]'s job. It must not open sockets.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use xmppwall_policy::address::CidrList;
use xmppwall_policy::limits::{
    AuthLimits, Bandwidth, GateLimits, LimitsConfig, PayloadDirection, PayloadError, PayloadRule,
    PeerLimits, PerPeriod, StanzaLimits,
};
use xmppwall_policy::rules::config::{
    compile_sources, RawList, RawPolicy, RawRule, RulesFile, Source,
};
use xmppwall_policy::rules::Policy;

use crate::session::FramerBudgets;

mod antispam;
pub use antispam::Rtbl;
/// The store's file when `[store] path` is not set, beside the configuration file.
pub const DEFAULT_STORE_FILE: &str = "xmppwall.db";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration was read from; relative paths inside it are resolved
    /// against this file's directory.
    pub source: PathBuf,
    pub domains: Vec<String>,
    pub upstream: Upstream,
    pub listeners: Vec<Listener>,
    pub tls: TlsFiles,
    pub limits: Limits,
    /// The XEP-0205 limits beyond stream sizes: gate, authentication, tiers.
    pub policy_limits: LimitsConfig,
    /// The operator's rules, compiled.
    pub policy: std::sync::Arc<Policy>,
    /// Registration, directory, subscriptions, strangers and federation measures.
    pub antispam: std::sync::Arc<xmppwall_policy::antispam::AntispamConfig>,
    /// Real-time block lists to follow (fixed until restart).
    pub rtbl: Vec<Rtbl>,
    /// Where to record stanzas for `xmppwall replay`; `None`: no recording.
    pub record: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub log: Log,
    /// External components allowed through the component front; empty: any domain
    /// (the server decides).
    pub components: Vec<Component>,
    pub s2s: S2s,
    /// The durable store (`[store]`): fixed until restart.
    pub store: xmppwall_store::StoreConfig,
    /// The admin HTTP API; `None`: not served.
    pub admin: Option<Admin>,
    /// State shared with other instances (`[store] shared = "redis"`): fixed until
    /// restart.
    pub redis: Option<xmppwall_store::RedisConfig>,
    /// Address bans exported to an nftables set (`[store.nftables]`): fixed until
    /// restart.
    pub nftables: Option<crate::nftables::NftablesConfig>,
}

/// `[admin]`: the admin HTTP API and metrics (see `docs/admin.md`).
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token requests must carry; `None` only on a loopback address.
    pub token: Option<String>,
    /// `/metrics` without the token (for Prometheus scrapers).
    pub metrics_public: bool,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token never reaches a log line.
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

/// The admin API's address when `[admin]` names none.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:5380";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub address: SocketAddr,
    pub proxy_protocol: ProxyProtocol,
    pub connect_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    /// Answer a client's first stream header and features without the server (from
    /// the features the server last sent for that domain) and connect only when the
    /// client sends an element that passes: streams that never get that far (floods,
    /// malformed XML) never reach the server. `[upstream] defer_connect`.
    pub defer_connect: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent as SNI and checked against the server's certificate.
    pub server_name: String,
    /// PEM file of trusted roots; `None` uses the bundled web PKI roots.
    pub ca: Option<PathBuf>,
    /// Accept any certificate. For test set-ups only.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Front {
    /// Client-to-server (RFC 6120 with `jabber:client`).
    C2s,
    /// Remote servers connecting in (RFC 6120 with `jabber:server`, XEP-0220).
    S2s,
    /// The server's own outgoing server-to-server streams, sent on to remote servers.
    S2sEgress,
    /// External components (XEP-0114, `jabber:component:accept`).
    Component,
}

impl Front {
    /// The front as the policy's `front` condition names it.
    pub fn stream_front(self) -> xmppwall_policy::rules::StreamFront {
        use xmppwall_policy::rules::StreamFront;
        match self {
            Front::C2s => StreamFront::C2s,
            Front::S2s => StreamFront::S2s,
            Front::S2sEgress => StreamFront::S2sEgress,
            Front::Component => StreamFront::Component,
        }
    }
}

impl Front {
    pub const ALL: [Front; 4] = [Front::C2s, Front::S2s, Front::S2sEgress, Front::Component];

    /// The front's place in [`Front::ALL`] (per-front counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// As written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Front::C2s => "c2s",
            Front::S2s => "s2s",
            Front::S2sEgress => "s2s-egress",
            Front::Component => "component",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plaintext stream, TLS negotiated with STARTTLS (RFC 6120 §5).
    Starttls,
    /// TLS from the first byte (XEP-0368).
    Direct,
    /// No TLS at all; only for trusted networks and measurements.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub front: Front,
    pub tls: ListenerTls,
    pub address: SocketAddr,
    /// The server address for this listener's streams, when it is not
    /// `[upstream] address` (the server's s2s or component port).
    pub upstream: Option<SocketAddr>,
}

/// An external component xmppwall lets through (XEP-0114).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub domain: String,
    /// The shared secret: when set, xmppwall checks the handshake itself before the
    /// server sees it.
    pub secret: Option<String>,
}

/// Server-to-server options: who may federate, how peers prove who they are, and
/// how the egress reaches remote servers.
#[derive(Debug, Clone, Default)]
pub struct S2s {
    /// PEM roots that peer certificates are validated against; `None`: the bundled
    /// web PKI roots.
    pub ca: Option<PathBuf>,
    /// Refuse inbound domains not proven by a certificate (no dialback-only peers).
    pub require_certificate: bool,
    /// Static routes for the egress: domain → address, before any SRV lookup.
    pub routes: Vec<(String, SocketAddr)>,
    /// A SOCKS5 proxy (RFC 1928) the egress connects through.
    pub socks5: Option<SocketAddr>,
    /// Whether the egress requires TLS towards remote servers.
    pub egress_require_tls: bool,
    /// Accept any remote certificate on the egress. For test set-ups only.
    pub egress_insecure_skip_verify: bool,
    /// The nameserver the egress asks for SRV and address records.
    pub resolver: crate::dns::ResolverSetting,
    /// Certificate authentication passed to the server (`upstream_certificates`):
    /// `None` keeps the plaintext upstream and dialback only.
    pub upstream_certificates: Option<UpstreamCertificates>,
}

/// How a peer proven by its certificate reaches the server (docs/federation.md):
/// STARTTLS to the server, presenting a certificate for the peer's domain minted
/// by xmppwall's own upstream CA, which the server trusts for s2s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCertificates {
    /// PEM of the upstream CA's certificate: the file the server trusts.
    pub ca_cert: PathBuf,
    /// PEM (PKCS#8) of its key; only xmppwall reads it.
    pub ca_key: PathBuf,
    /// Create both files when neither exists (the default paths, in the state
    /// directory); with paths given in the configuration they must exist.
    pub generate: bool,
    /// The name checked in the server's own certificate (and sent as SNI);
    /// `None`: the domain the peer's stream is addressed to.
    pub server_name: Option<String>,
    /// PEM roots for the server's certificate; `None`: the bundled web PKI roots.
    pub server_ca: Option<PathBuf>,
    /// Accept any certificate from the server (only for a server on loopback).
    pub insecure_skip_verify: bool,
}

/// The upstream CA's files when `[s2s] upstream_ca_cert`/`upstream_ca_key` are not
/// set, in the state directory (beside the store).
pub const DEFAULT_UPSTREAM_CA_CERT: &str = "upstream-ca.crt";
pub const DEFAULT_UPSTREAM_CA_KEY: &str = "upstream-ca.key";

impl S2s {
    /// The static route for `domain`, if any.
    pub fn route(&self, domain: &str) -> Option<SocketAddr> {
        self.routes
            .iter()
            .find(|(d, _)| d == domain)
            .map(|(_, a)| *a)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub domains: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub default: Option<CertificateFiles>,
    pub certificates: Vec<CertificateFiles>,
}

/// Stream limits (XEP-0205 §2.5 and the framer's hard limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub stanza_bytes: usize,
    pub stanza_bytes_close: usize,
    pub preauth_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
    pub max_attributes: usize,
    pub max_name_bytes: usize,
    pub max_attribute_value_bytes: usize,
}

impl Limits {
    /// The framer's budgets before and after authentication.
    pub fn framer_budgets(&self) -> FramerBudgets {
        let after = xmppwall_xml::Limits {
            max_element_bytes: self.stanza_bytes_close,
            max_depth: self.max_depth,
            max_elements: self.max_elements,
            max_attributes: self.max_attributes,
            max_name_bytes: self.max_name_bytes,
            max_attribute_value_bytes: self.max_attribute_value_bytes,
        };
        let before = xmppwall_xml::Limits {
            max_element_bytes: self.preauth_stanza_bytes,
            max_attribute_value_bytes: self
                .max_attribute_value_bytes
                .min(self.preauth_stanza_bytes),
            ..after
        };
        FramerBudgets { before, after }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Prosody's c2s_stanza_size_limit and ejabberd's c2s max_stanza_size: 256 KiB.
            stanza_bytes: 256 * 1024,
            stanza_bytes_close: 1024 * 1024,
            // Prosody's limit for streams before authentication.
            preauth_stanza_bytes: 10_000,
            max_depth: 32,
            max_elements: 1000,
            max_attributes: 64,
            max_name_bytes: 256,
            max_attribute_value_bytes: 8192,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub preauth: Duration,
    pub idle: Duration,
    /// The longest a write to a peer (client, remote server, component, upstream
    /// server) may wait for it to read before the connection is closed.
    pub send: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            preauth: Duration::from_secs(30),
            idle: Duration::from_secs(600),
            send: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem {
                file: path.to_owned(),
                line: 0,
                column: 0,
                message: format!("cannot read the configuration file: {e}"),
            }],
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut check = Checker {
            file: path,
            text,
            problems: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                check.problem(span, e.message().trim_end().to_owned());
                return Err(check.finish());
            }
        };
        let config = check.validate(raw);
        if check.problems.is_empty() {
            Ok(config)
        } else {
            Err(check.finish())
        }
    }

    /// Reads a rules file alone (what `include` names), for `xmppwall replay --rules`.
    pub fn load_rules(path: &Path) -> Result<Policy, ConfigError> {
        let mut check = Checker {
            file: path,
            text: "",
            problems: Vec::new(),
        };
        let empty = HashMap::new();
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let include = [Spanned::new(0..0, absolute.display().to_string())];
        let policy = check.rules(None, &empty, &[], &include);
        if check.problems.is_empty() {
            Ok(policy)
        } else {
            Err(check.finish())
        }
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.source.parent().unwrap_or_else(|| Path::new("."))
    }
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, span: Range<usize>, message: String) {
        let (line, column) = line_column(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            column,
            message,
        });
    }

    fn finish(mut self) -> ConfigError {
        self.problems.sort_by_key(|p| (p.line, p.column));
        ConfigError {
            problems: self.problems,
        }
    }

    /// A [`Self::duration`] that is also no longer than the longest ban.
    fn ban_duration(&mut self, value: &Option<Spanned<String>>, default: Duration) -> Duration {
        let d = self.duration(value, default);
        match (value, xmppwall_policy::clock::check_ban_duration(d)) {
            (Some(value), Err(e)) => {
                self.problem(value.span(), e);
                default
            }
            _ => d,
        }
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(
                    value.span(),
                    "a duration of zero is not allowed; give a positive duration such as \"30s\""
                        .into(),
                );
                default
            }
            Err(e) => {
                self.problem(
                    value.span(),
                    format!(
                        "invalid duration {:?}: {e}; write a number with a unit, e.g. \"500ms\", \"30s\", \"10m\"",
                        value.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn address(&mut self, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    value.span(),
                    format!(
                        "invalid socket address {:?}; write IP:PORT, e.g. \"127.0.0.1:5222\" or \"[::]:5222\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.file.parent().unwrap_or_else(|| Path::new(".")).join(p)
        }
    }

    fn readable_file(&mut self, value: &Spanned<String>, what: &str) -> PathBuf {
        let path = self.path(value.get_ref());
        if let Err(e) = std::fs::metadata(&path) {
            self.problem(
                value.span(),
                format!(
                    "cannot read the {what} {}: {e}; check the path (relative paths are taken from the configuration file's directory)",
                    path.display()
                ),
            );
        }
        path
    }

    fn size(&mut self, value: &Option<Spanned<i64>>, default: usize, min: usize) -> usize {
        let Some(value) = value else { return default };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if n >= min => n,
            _ => {
                self.problem(
                    value.span(),
                    format!("must be a whole number of at least {min}"),
                );
                default
            }
        }
    }

    fn certificate(&mut self, raw: &RawCertificate) -> CertificateFiles {
        let cert = self.readable_file(&raw.cert, "certificate file");
        let key = self.readable_file(&raw.key, "private key file");
        CertificateFiles {
            domains: raw
                .domains
                .iter()
                .map(|d| d.get_ref().to_ascii_lowercase())
                .collect(),
            cert,
            key,
        }
    }

    fn validate(&mut self, raw: RawConfig) -> Config {
        let source = self.file.to_owned();
        let domains: Vec<String> = raw
            .domains
            .iter()
            .map(|d| d.get_ref().to_ascii_lowercase())
            .collect();
        for d in &raw.domains {
            if d.get_ref().is_empty() || d.get_ref().contains(['@', '/', ' ']) {
                self.problem(d.span(), format!("{:?} is not a domain name", d.get_ref()));
            }
        }

        let upstream = match &raw.upstream {
            None => {
                self.problem(
                    0..0,
                    "missing [upstream] section; add one with address = \"IP:PORT\" of the XMPP server to protect".into(),
                );
                None
            }
            Some(u) => {
                let address = self.address(&u.address);
                let connect_timeout = self.duration(&u.connect_timeout, Duration::from_secs(5));
                let tls = u.tls.as_ref().map(|t| UpstreamTls {
                    server_name: t.server_name.clone(),
                    ca: t.ca.as_ref().map(|ca| self.readable_file(ca, "CA file")),
                    insecure_skip_verify: t.insecure_skip_verify,
                });
                address.map(|address| Upstream {
                    address,
                    proxy_protocol: u.proxy_protocol.unwrap_or(ProxyProtocol::None),
                    connect_timeout,
                    tls,
                    defer_connect: u.defer_connect.unwrap_or(true),
                })
            }
        };

        let tls = TlsFiles {
            default: raw
                .tls
                .as_ref()
                .and_then(|t| t.default.as_ref())
                .map(|c| self.certificate(c)),
            certificates: raw
                .tls
                .as_ref()
                .map(|t| t.certificate.iter().map(|c| self.certificate(c)).collect())
                .unwrap_or_default(),
        };
        let have_cert = tls.default.is_some() || !tls.certificates.is_empty();

        let mut listeners = Vec::new();
        if raw.listen.is_empty() {
            self.problem(
                0..0,
                "no [[listen]] section; add at least one, e.g. front = \"c2s\", address = \"[::]:5222\"".into(),
            );
        }
        for l in &raw.listen {
            let tls_mode = l
                .tls
                .as_ref()
                .map_or(ListenerTls::Starttls, |t| *t.get_ref());
            if tls_mode != ListenerTls::None && !have_cert {
                self.problem(
                    l.address.span(),
                    "this listener uses TLS but no certificate is configured; add [tls] default = { cert = \"...\", key = \"...\" }".into(),
                );
            }
            if let Some(address) = self.address(&l.address) {
                if listeners.iter().any(|x: &Listener| x.address == address) {
                    self.problem(
                        l.address.span(),
                        format!("address {address} is used by two listeners"),
                    );
                }
                let upstream = l.upstream.as_ref().and_then(|u| self.address(u));
                if l.front == Front::S2sEgress && tls_mode != ListenerTls::None {
                    self.problem(
                        l.address.span(),
                        "the s2s-egress front takes the server's own outgoing streams in plaintext on loopback; set tls = \"none\" (TLS is done towards the remote server)".into(),
                    );
                }
                // XEP-0114 defines no STARTTLS: a component either speaks TLS from
                // its first byte or not at all.
                if l.front == Front::Component && tls_mode == ListenerTls::Starttls {
                    self.problem(
                        l.tls.as_ref().map_or(l.address.span(), |t| t.span()),
                        "external components (XEP-0114) have no STARTTLS; set tls = \"none\" or tls = \"direct\"".into(),
                    );
                }
                listeners.push(Listener {
                    front: l.front,
                    tls: tls_mode,
                    address,
                    upstream,
                });
            }
        }

        let d = Limits::default();
        let rl = raw.limits.unwrap_or_default();
        let limits = Limits {
            stanza_bytes: self.size(&rl.stanza_bytes, d.stanza_bytes, 512),
            stanza_bytes_close: self.size(&rl.stanza_bytes_close, d.stanza_bytes_close, 512),
            preauth_stanza_bytes: self.size(&rl.preauth_stanza_bytes, d.preauth_stanza_bytes, 512),
            max_depth: self.size(&rl.max_depth, d.max_depth, 2),
            max_elements: self.size(&rl.max_elements, d.max_elements, 8),
            max_attributes: self.size(&rl.max_attributes, d.max_attributes, 4),
            max_name_bytes: self.size(&rl.max_name_bytes, d.max_name_bytes, 16),
            max_attribute_value_bytes: self.size(
                &rl.max_attribute_value_bytes,
                d.max_attribute_value_bytes,
                64,
            ),
        };
        if limits.stanza_bytes_close < limits.stanza_bytes {
            let span = rl
                .stanza_bytes_close
                .as_ref()
                .or(rl.stanza_bytes.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            self.problem(
                span,
                format!(
                    "stanza_bytes_close ({}) must be at least stanza_bytes ({}): larger stanzas are bounced first, far larger ones close the stream",
                    limits.stanza_bytes_close, limits.stanza_bytes
                ),
            );
        }

        let policy_limits = self.policy_limits(
            &rl,
            raw.gate.unwrap_or_default(),
            raw.auth.unwrap_or_default(),
        );
        // Block lists are declared before the rules that name them are compiled.
        let rtbl = self.rtbl(&raw.rtbl);
        let policy = self.rules(raw.policy.as_ref(), &raw.lists, &raw.rule, &raw.include);
        let antispam = self.antispam(
            antispam::RawAntispam {
                registration: raw.registration.as_ref(),
                directory: raw.directory.as_ref(),
                subscriptions: raw.subscriptions.as_ref(),
                strangers: raw.strangers.as_ref(),
                federation: raw.federation.as_ref(),
                reputation: raw.reputation.as_ref(),
            },
            &domains,
        );

        let dt = Timeouts::default();
        let rt = raw.timeouts.unwrap_or_default();
        let timeouts = Timeouts {
            preauth: self.duration(&rt.preauth, dt.preauth),
            idle: self.duration(&rt.idle, dt.idle),
            send: self.duration(&rt.send, dt.send),
            shutdown_grace: self.duration(&rt.shutdown_grace, dt.shutdown_grace),
        };

        let rlog = raw.log.unwrap_or_default();
        let log = Log {
            format: rlog.format.unwrap_or_default(),
            level: rlog.level.unwrap_or_else(|| "info".into()),
        };

        let components = raw
            .component
            .iter()
            .map(|c| {
                let domain = c.domain.get_ref().to_ascii_lowercase();
                if domain.is_empty() || domain.contains(['@', '/', ' ']) {
                    self.problem(c.domain.span(), format!("{domain:?} is not a domain name"));
                }
                Component {
                    domain,
                    secret: c.secret.clone(),
                }
            })
            .collect();
        // The state directory: the store's, else the configuration file's.
        let config_dir = self
            .file
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let state_dir = match raw.store.as_ref().and_then(|s| s.path.as_ref()) {
            Some(p) if p.get_ref() != ":memory:" && !p.get_ref().trim().is_empty() => self
                .path(p.get_ref())
                .parent()
                .map(Path::to_owned)
                .unwrap_or(config_dir),
            _ => config_dir,
        };
        let s2s = self.s2s(raw.s2s.as_ref(), &state_dir);
        let raw_store = raw.store.unwrap_or_default();
        let redis = self.redis(&raw_store);
        let nftables = raw_store.nftables.as_ref().map(|n| self.nftables(n));
        let store = self.store(raw_store);

        let admin = raw.admin.as_ref().map(|a| self.admin(a));

        Config {
            components,
            s2s,
            admin,
            source,
            domains,
            store,
            redis,
            nftables,
            upstream: upstream.unwrap_or(Upstream {
                address: SocketAddr::from(([127, 0, 0, 1], 5222)),
                proxy_protocol: ProxyProtocol::None,
                connect_timeout: Duration::from_secs(5),
                tls: None,
                defer_connect: true,
            }),
            listeners,
            tls,
            limits,
            policy_limits,
            policy: std::sync::Arc::new(policy),
            antispam: std::sync::Arc::new(antispam),
            rtbl,
            record: raw.record.as_ref().map(|r| self.path(&r.path)),
            timeouts,
            log,
        }
    }

    /// `[store]`: the database file (relative to this file; `":memory:"` keeps
    /// nothing across restarts) and the retention of each record kind.
    /// `[store] shared`: `"none"` (default) or `"redis"` with `redis = URL`.
    fn redis(&mut self, raw: &RawStore) -> Option<xmppwall_store::RedisConfig> {
        let shared = raw.shared.as_ref()?;
        match shared.get_ref().as_str() {
            "none" => return None,
            "redis" => {}
            other => {
                self.problem(
                    shared.span(),
                    format!("unknown shared state {other:?}; write \"none\" or \"redis\""),
                );
                return None;
            }
        }
        let Some(url) = &raw.redis else {
            self.problem(
                shared.span(),
                "shared = \"redis\" needs `redis = \"redis://HOST:PORT/DB\"` in [store]".into(),
            );
            return None;
        };
        if !["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|scheme| url.get_ref().starts_with(scheme))
        {
            self.problem(
                url.span(),
                format!(
                    "invalid Redis address {:?}; write redis://HOST:PORT/DB",
                    url.get_ref()
                ),
            );
        }
        let prefix = raw
            .redis_prefix
            .as_ref()
            .map_or_else(|| "xmppwall".to_owned(), |p| p.get_ref().clone());
        Some(xmppwall_store::RedisConfig {
            url: url.get_ref().clone(),
            timeout: self.duration(&raw.redis_timeout, std::time::Duration::from_millis(100)),
            prefix,
        })
    }

    /// `[store.nftables]`: names go into `nft` scripts, so only plain identifiers.
    fn nftables(&mut self, raw: &RawNftables) -> crate::nftables::NftablesConfig {
        let d = crate::nftables::NftablesConfig::default();
        let mut name = |value: &Option<Spanned<String>>, default: String| -> String {
            let Some(v) = value else { return default };
            let ok = !v.get_ref().is_empty()
                && v.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                self.problem(
                    v.span(),
                    format!(
                        "{:?} is not an nftables name; use letters, digits, '_' and '-'",
                        v.get_ref()
                    ),
                );
            }
            v.get_ref().clone()
        };
        let family = name(&raw.family, d.family);
        let table = name(&raw.table, d.table);
        let set_v4 = name(&raw.set_v4, d.set_v4);
        let set_v6 = name(&raw.set_v6, d.set_v6);
        let netns = raw
            .netns
            .as_ref()
            .map(|n| name(&Some(n.clone()), String::new()));
        if !["inet", "ip", "ip6"].contains(&family.as_str()) {
            if let Some(f) = &raw.family {
                self.problem(
                    f.span(),
                    "the family must be \"inet\", \"ip\" or \"ip6\"".into(),
                );
            }
        }
        crate::nftables::NftablesConfig {
            family,
            table,
            set_v4,
            set_v6,
            create: raw.create.unwrap_or(d.create),
            netns,
            nft: raw.nft.as_ref().map_or(d.nft, |n| n.get_ref().clone()),
        }
    }

    fn store(&mut self, raw: RawStore) -> xmppwall_store::StoreConfig {
        let path = match &raw.path {
            Some(p) if p.get_ref() == ":memory:" => None,
            Some(p) if p.get_ref().trim().is_empty() => {
                self.problem(
                    p.span(),
                    "the store path is empty; name a file, or write \":memory:\" to keep nothing across restarts".into(),
                );
                None
            }
            Some(p) => Some(self.path(p.get_ref())),
            None => Some(self.path(DEFAULT_STORE_FILE)),
        };
        let d = xmppwall_store::Retention::default();
        let r = &raw.retention;
        xmppwall_store::StoreConfig {
            path,
            retention: xmppwall_store::Retention {
                connections: self.duration(&r.connections, d.connections),
                verdicts: self.duration(&r.verdicts, d.verdicts),
                reports: self.duration(&r.reports, d.reports),
                expired_bans: self.duration(&r.expired_bans, d.expired_bans),
                reputation: self.duration(&r.reputation, d.reputation),
                prune_interval: self.duration(&r.prune_interval, d.prune_interval),
            },
        }
    }

    fn admin(&mut self, raw: &RawAdmin) -> Admin {
        let listen = match &raw.listen {
            Some(l) => self.address(l),
            None => DEFAULT_ADMIN_LISTEN.parse().ok(),
        }
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5380)));
        let token = match (&raw.token, &raw.token_file) {
            (Some(_), Some(f)) => {
                self.problem(f.span(), "give either token or token_file, not both".into());
                None
            }
            (Some(t), None) => Some((t.get_ref().trim().to_owned(), t.span())),
            (None, Some(f)) => {
                let path = self.path(f.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some((text.trim().to_owned(), f.span())),
                    Err(e) => {
                        self.problem(
                            f.span(),
                            format!("cannot read the admin token file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let token = match token {
            Some((t, span)) if t.len() < 16 => {
                self.problem(
                    span,
                    "the admin token is shorter than 16 characters; use a long random one, e.g. from `openssl rand -hex 32`".into(),
                );
                None
            }
            Some((t, _)) => Some(t),
            None => None,
        };
        if token.is_none()
            && raw.token.is_none()
            && raw.token_file.is_none()
            && !listen.ip().is_loopback()
        {
            let span = raw.listen.as_ref().map(|l| l.span()).unwrap_or(0..0);
            self.problem(
                span,
                format!("the admin API on the non-loopback address {listen} needs a token; set token_file (or token) in [admin]"),
            );
        }
        Admin {
            listen,
            token,
            metrics_public: raw.metrics_public.unwrap_or(false),
        }
    }

    /// `"off"` or a `COUNT/PERIOD`.
    fn per_period(
        &mut self,
        value: &Option<Spanned<String>>,
        current: Option<PerPeriod>,
    ) -> Option<PerPeriod> {
        let Some(value) = value else { return current };
        if value.get_ref() == "off" {
            return None;
        }
        match PerPeriod::parse(value.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(value.span(), format!("{e}, or \"off\""));
                current
            }
        }
    }

    /// `"off"` or a whole number of at least `min`.
    fn count(
        &mut self,
        value: &Option<Spanned<Switch<i64>>>,
        current: Option<u32>,
        min: u32,
    ) -> Option<u32> {
        let Some(value) = value else { return current };
        match value.get_ref() {
            Switch::Off(s) if s == "off" => None,
            Switch::Value(n) if u32::try_from(*n).is_ok_and(|n| n >= min) => u32::try_from(*n).ok(),
            _ => {
                self.problem(
                    value.span(),
                    format!("must be a whole number of at least {min}, or \"off\""),
                );
                current
            }
        }
    }

    fn bandwidth(
        &mut self,
        value: &Option<Spanned<Switch<RawBandwidth>>>,
        current: Option<Bandwidth>,
    ) -> Option<Bandwidth> {
        let Some(value) = value else { return current };
        match value.get_ref() {
            Switch::Off(s) if s == "off" => None,
            Switch::Value(b) if b.rate > 0 && b.burst >= 512 => Some(Bandwidth {
                bytes_per_second: b.rate,
                burst_bytes: b.burst,
            }),
            _ => {
                self.problem(
                    value.span(),
                    "write { rate = BYTES_PER_SECOND, burst = BYTES } with rate > 0 and burst >= 512, or \"off\"".into(),
                );
                current
            }
        }
    }

    fn cidr_list(&mut self, entries: &[Spanned<String>]) -> CidrList {
        let mut nets = Vec::with_capacity(entries.len());
        for e in entries {
            match CidrList::parse_entry(e.get_ref()) {
                Ok(net) => nets.push(net),
                Err(message) => self.problem(e.span(), message),
            }
        }
        CidrList::new(nets)
    }

    /// Overrides `base` with what `raw` sets.
    fn stanza_limits(&mut self, raw: &RawStanzaLimits, base: &StanzaLimits) -> StanzaLimits {
        let mut l = base.clone();
        l.resources_per_account =
            self.count(&raw.resources_per_account, l.resources_per_account, 1);
        l.distinct_recipients = self.per_period(&raw.distinct_recipients, l.distinct_recipients);
        l.bandwidth = self.bandwidth(&raw.bandwidth, l.bandwidth);
        l.account_bandwidth = self.bandwidth(&raw.account_bandwidth, l.account_bandwidth);
        l.bandwidth_close_after =
            self.duration(&raw.bandwidth_close_after, l.bandwidth_close_after);
        l.roster_requests = self.per_period(&raw.roster_requests, l.roster_requests);
        l.subscription_requests =
            self.per_period(&raw.subscription_requests, l.subscription_requests);
        l.presence_broadcasts = self.per_period(&raw.presence_broadcasts, l.presence_broadcasts);
        l.muc_messages = self.per_period(&raw.muc_messages, l.muc_messages);
        l.muc_presences = self.per_period(&raw.muc_presences, l.muc_presences);
        l.rooms_joined = self.count(&raw.rooms_joined, l.rooms_joined, 1);
        l.pubsub_publishes = self.per_period(&raw.pubsub_publishes, l.pubsub_publishes);
        if let Some(payloads) = &raw.payload {
            l.payloads = payloads
                .iter()
                .map(|p| PayloadRule {
                    namespace: p.namespace.clone(),
                    direction: match p.direction {
                        RawPayloadDirection::ToServer => PayloadDirection::ToServer,
                        RawPayloadDirection::ToClient => PayloadDirection::ToClient,
                        RawPayloadDirection::Both => PayloadDirection::Both,
                    },
                    error: match p.error {
                        RawPayloadError::NotAllowed => PayloadError::NotAllowed,
                        RawPayloadError::PolicyViolation => PayloadError::PolicyViolation,
                    },
                })
                .collect();
        }
        l
    }

    fn policy_limits(&mut self, rl: &RawLimits, rg: RawGate, ra: RawAuth) -> LimitsConfig {
        let d = LimitsConfig::default();
        let tier = |c: &mut Self, raw: &Option<RawStanzaLimits>, base: &StanzaLimits| match raw {
            Some(raw) => c.stanza_limits(raw, base),
            None => base.clone(),
        };
        let registered = tier(self, &rl.registered, &d.registered);
        let anonymous = tier(self, &rl.anonymous, &d.anonymous);
        let trusted = tier(self, &rl.trusted, &d.trusted);
        let trusted_jids = rl
            .trusted_jids
            .iter()
            .map(|j| xmppwall_policy::stanza::bare_jid(j.get_ref()))
            .collect();
        let dg = GateLimits::default();
        let prefix = |c: &mut Self, v: &Option<Spanned<i64>>, default: u8, max: i64| -> u8 {
            let Some(v) = v else { return default };
            match u8::try_from(*v.get_ref()) {
                Ok(p) if i64::from(p) <= max => p,
                _ => {
                    c.problem(v.span(), format!("a prefix length from 0 to {max}"));
                    default
                }
            }
        };
        let gate = GateLimits {
            max_connections_per_address: self.count(
                &rg.max_connections_per_address,
                dg.max_connections_per_address,
                1,
            ),
            connection_attempts: self.per_period(&rg.connection_attempts, dg.connection_attempts),
            ipv4_prefix: prefix(self, &rg.ipv4_prefix, dg.ipv4_prefix, 32),
            ipv6_prefix: prefix(self, &rg.ipv6_prefix, dg.ipv6_prefix, 128),
            allow: self.cidr_list(&rg.allow),
            deny: self.cidr_list(&rg.deny),
            max_tracked_addresses: self.size(
                &rg.max_tracked_addresses,
                dg.max_tracked_addresses,
                16,
            ),
        };
        let da = AuthLimits::default();
        let auth = AuthLimits {
            max_failures: self.per_period(&ra.max_failures, da.max_failures),
            ban: self.ban_duration(&ra.ban, da.ban),
            tarpit: self.duration_or_zero(&ra.tarpit, da.tarpit),
        };
        LimitsConfig {
            gate,
            auth,
            registered,
            anonymous,
            trusted,
            trusted_jids,
            max_tracked_accounts: self.size(&rl.max_tracked_accounts, d.max_tracked_accounts, 16),
            peers: self.peer_limits(rl.peers.as_ref(), &d.peers),
        }
    }

    /// `[limits.peers]`: remote servers and components.
    fn peer_limits(&mut self, raw: Option<&RawPeerLimits>, d: &PeerLimits) -> PeerLimits {
        let Some(raw) = raw else {
            return d.clone();
        };
        PeerLimits {
            stanzas_per_domain: self.per_period(&raw.stanzas_per_domain, d.stanzas_per_domain),
            distinct_recipients: self.per_period(&raw.distinct_recipients, d.distinct_recipients),
            subscription_requests: self
                .per_period(&raw.subscription_requests, d.subscription_requests),
            max_tracked_domains: self.size(&raw.max_tracked_domains, d.max_tracked_domains, 16),
            max_tracked_senders: self.size(&raw.max_tracked_senders, d.max_tracked_senders, 16),
        }
    }

    /// Reads the included rules files and compiles every rule, reporting problems
    /// in the file where they are.
    fn rules(
        &mut self,
        policy: Option<&RawPolicy>,
        lists: &HashMap<String, Spanned<RawList>>,
        rules: &[RawRule],
        include: &[Spanned<String>],
    ) -> Policy {
        let mut included = Vec::new();
        for inc in include {
            let path = self.path(inc.get_ref());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.problem(
                        inc.span(),
                        format!("cannot read the rules file {}: {e}", path.display()),
                    );
                    continue;
                }
            };
            match toml::from_str::<RulesFile>(&text) {
                Ok(raw) => included.push(Included { path, text, raw }),
                Err(e) => {
                    let (line, column) = line_column(&text, e.span().map_or(0, |s| s.start));
                    self.problems.push(Problem {
                        file: path,
                        line,
                        column,
                        message: e.message().trim_end().to_owned(),
                    });
                }
            }
        }
        let main_base = self
            .file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .to_owned();
        let bases: Vec<PathBuf> = included
            .iter()
            .map(|i| i.path.parent().unwrap_or_else(|| Path::new(".")).to_owned())
            .collect();
        let mut sources = vec![Source {
            file: 0,
            policy,
            lists,
            rules,
            base: &main_base,
        }];
        for (i, inc) in included.iter().enumerate() {
            sources.push(Source {
                file: i + 1,
                policy: inc.raw.policy.as_ref(),
                lists: &inc.raw.lists,
                rules: &inc.raw.rule,
                base: &bases[i],
            });
        }
        compile_sources(&sources, &mut |file, span, message| {
            if file == 0 {
                self.problem(span, message);
            } else if let Some(inc) = included.get(file - 1) {
                let (line, column) = line_column(&inc.text, span.start);
                self.problems.push(Problem {
                    file: inc.path.clone(),
                    line,
                    column,
                    message,
                });
            }
        })
    }

    fn s2s(&mut self, raw: Option<&RawS2s>, state_dir: &Path) -> S2s {
        let Some(raw) = raw else {
            return S2s::default();
        };
        let mut routes = Vec::new();
        for (domain, address) in &raw.routes {
            if let Some(a) = self.address(address) {
                routes.push((domain.to_ascii_lowercase(), a));
            }
        }
        routes.sort();
        S2s {
            ca: raw.ca.as_ref().map(|ca| self.readable_file(ca, "CA file")),
            require_certificate: raw.require_certificate,
            routes,
            socks5: raw.socks5.as_ref().and_then(|a| self.address(a)),
            egress_require_tls: raw.egress_require_tls.unwrap_or(true),
            egress_insecure_skip_verify: raw.egress_insecure_skip_verify,
            resolver: raw
                .resolver
                .as_ref()
                .map(|r| self.resolver(r))
                .unwrap_or_default(),
            upstream_certificates: self.upstream_certificates(raw, state_dir),
        }
    }

    /// `[s2s] upstream_certificates` and the keys that go with it.
    fn upstream_certificates(
        &mut self,
        raw: &RawS2s,
        state_dir: &Path,
    ) -> Option<UpstreamCertificates> {
        let related = [
            &raw.upstream_ca_cert,
            &raw.upstream_ca_key,
            &raw.upstream_server_name,
            &raw.upstream_server_ca,
        ];
        if !raw
            .upstream_certificates
            .as_ref()
            .is_some_and(|b| *b.get_ref())
        {
            if let Some(key) = related.iter().find_map(|k| k.as_ref()) {
                self.problem(
                    key.span(),
                    "this takes effect only with `upstream_certificates = true`".into(),
                );
            }
            return None;
        }
        let (ca_cert, ca_key, generate) = match (&raw.upstream_ca_cert, &raw.upstream_ca_key) {
            (Some(cert), Some(key)) => (
                self.readable_file(cert, "upstream CA certificate"),
                self.readable_file(key, "upstream CA key"),
                false,
            ),
            (None, None) => {
                let cert = state_dir.join(DEFAULT_UPSTREAM_CA_CERT);
                let key = state_dir.join(DEFAULT_UPSTREAM_CA_KEY);
                if cert.exists() != key.exists() {
                    let span = raw
                        .upstream_certificates
                        .as_ref()
                        .map(|b| b.span())
                        .unwrap_or_default();
                    self.problem(
                        span,
                        format!(
                            "of the upstream CA's files {} and {}, only one exists; restore the other or remove both to have a new CA made",
                            cert.display(),
                            key.display()
                        ),
                    );
                }
                (cert, key, true)
            }
            (Some(one), None) | (None, Some(one)) => {
                self.problem(
                    one.span(),
                    "give both upstream_ca_cert and upstream_ca_key, or neither (a CA is then made in the state directory)".into(),
                );
                (PathBuf::new(), PathBuf::new(), false)
            }
        };
        let server_name = raw.upstream_server_name.as_ref().map(|n| {
            let name = n.get_ref().trim().to_ascii_lowercase();
            if rustls::pki_types::ServerName::try_from(name.clone()).is_err() {
                self.problem(n.span(), format!("{name:?} is not a valid server name"));
            }
            name
        });
        let server_ca = raw
            .upstream_server_ca
            .as_ref()
            .map(|ca| self.readable_file(ca, "CA file for the server's certificate"));
        if let (Some(skip), Some(ca)) =
            (&raw.upstream_insecure_skip_verify, &raw.upstream_server_ca)
        {
            if *skip.get_ref() {
                self.problem(
                    ca.span(),
                    "upstream_server_ca has no effect with upstream_insecure_skip_verify = true; remove one".into(),
                );
            }
        }
        Some(UpstreamCertificates {
            ca_cert,
            ca_key,
            generate,
            server_name,
            server_ca,
            insecure_skip_verify: raw
                .upstream_insecure_skip_verify
                .as_ref()
                .is_some_and(|b| *b.get_ref()),
        })
    }

    fn resolver(&mut self, value: &Spanned<String>) -> crate::dns::ResolverSetting {
        let text = value.get_ref().trim();
        if text == "system" {
            return crate::dns::ResolverSetting::System;
        }
        match text.parse::<SocketAddr>() {
            Ok(a) => crate::dns::ResolverSetting::Nameserver(a),
            Err(_) => {
                self.problem(
                    value.span(),
                    format!(
                        "invalid resolver {text:?}; write \"system\" (/etc/resolv.conf) or a nameserver's IP:PORT, e.g. \"127.0.0.1:53\""
                    ),
                );
                crate::dns::ResolverSetting::System
            }
        }
    }

    fn duration_or_zero(&mut self, value: &Option<Spanned<String>>, default: Duration) -> Duration {
        match value {
            Some(v) if matches!(v.get_ref().trim(), "0" | "0s" | "0ms") => Duration::ZERO,
            other => self.duration(other, default),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    upstream: Option<RawUpstream>,
    #[serde(default)]
    listen: Vec<RawListener>,
    tls: Option<RawTls>,
    limits: Option<RawLimits>,
    gate: Option<RawGate>,
    auth: Option<RawAuth>,
    policy: Option<RawPolicy>,
    #[serde(default)]
    lists: HashMap<String, Spanned<RawList>>,
    #[serde(default)]
    rule: Vec<RawRule>,
    /// Files of further `[policy]`, `[lists.*]` and `[[rule]]`, in order.
    #[serde(default)]
    include: Vec<Spanned<String>>,
    record: Option<RawRecord>,
    timeouts: Option<RawTimeouts>,
    log: Option<RawLog>,
    #[serde(default)]
    component: Vec<RawComponent>,
    s2s: Option<RawS2s>,
    registration: Option<antispam::RawRegistration>,
    directory: Option<antispam::RawDirectory>,
    subscriptions: Option<antispam::RawSubscriptions>,
    strangers: Option<antispam::RawStrangers>,
    federation: Option<antispam::RawFederation>,
    reputation: Option<antispam::RawReputation>,
    #[serde(default)]
    rtbl: Vec<antispam::RawRtbl>,
    store: Option<RawStore>,
    admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    domain: Spanned<String>,
    secret: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawS2s {
    ca: Option<Spanned<String>>,
    #[serde(default)]
    require_certificate: bool,
    #[serde(default)]
    routes: std::collections::BTreeMap<String, Spanned<String>>,
    socks5: Option<Spanned<String>>,
    egress_require_tls: Option<bool>,
    #[serde(default)]
    egress_insecure_skip_verify: bool,
    resolver: Option<Spanned<String>>,
    upstream_certificates: Option<Spanned<bool>>,
    upstream_ca_cert: Option<Spanned<String>>,
    upstream_ca_key: Option<Spanned<String>>,
    upstream_server_name: Option<Spanned<String>>,
    upstream_server_ca: Option<Spanned<String>>,
    upstream_insecure_skip_verify: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<Spanned<String>>,
    shared: Option<Spanned<String>>,
    redis: Option<Spanned<String>>,
    redis_timeout: Option<Spanned<String>>,
    redis_prefix: Option<Spanned<String>>,
    nftables: Option<RawNftables>,
    #[serde(default)]
    retention: RawRetention,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNftables {
    family: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    set_v4: Option<Spanned<String>>,
    set_v6: Option<Spanned<String>>,
    create: Option<bool>,
    netns: Option<Spanned<String>>,
    nft: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    connections: Option<Spanned<String>>,
    verdicts: Option<Spanned<String>>,
    reports: Option<Spanned<String>>,
    expired_bans: Option<Spanned<String>>,
    reputation: Option<Spanned<String>>,
    prune_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    metrics_public: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    address: Spanned<String>,
    proxy_protocol: Option<ProxyProtocol>,
    connect_timeout: Option<Spanned<String>>,
    tls: Option<RawUpstreamTls>,
    defer_connect: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    server_name: String,
    ca: Option<Spanned<String>>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    front: Front,
    tls: Option<Spanned<ListenerTls>>,
    address: Spanned<String>,
    upstream: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    default: Option<RawCertificate>,
    #[serde(default)]
    certificate: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    stanza_bytes: Option<Spanned<i64>>,
    stanza_bytes_close: Option<Spanned<i64>>,
    preauth_stanza_bytes: Option<Spanned<i64>>,
    max_depth: Option<Spanned<i64>>,
    max_elements: Option<Spanned<i64>>,
    max_attributes: Option<Spanned<i64>>,
    max_name_bytes: Option<Spanned<i64>>,
    max_attribute_value_bytes: Option<Spanned<i64>>,
    max_tracked_accounts: Option<Spanned<i64>>,
    /// Bare JIDs given the trusted tier.
    #[serde(default)]
    trusted_jids: Vec<Spanned<String>>,
    registered: Option<RawStanzaLimits>,
    anonymous: Option<RawStanzaLimits>,
    trusted: Option<RawStanzaLimits>,
    /// Remote servers and components.
    peers: Option<RawPeerLimits>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPeerLimits {
    stanzas_per_domain: Option<Spanned<String>>,
    distinct_recipients: Option<Spanned<String>>,
    subscription_requests: Option<Spanned<String>>,
    max_tracked_domains: Option<Spanned<i64>>,
    max_tracked_senders: Option<Spanned<i64>>,
}

/// A limit that may be switched off with the string "off".
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Switch<T> {
    Value(T),
    Off(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStanzaLimits {
    resources_per_account: Option<Spanned<Switch<i64>>>,
    distinct_recipients: Option<Spanned<String>>,
    bandwidth: Option<Spanned<Switch<RawBandwidth>>>,
    account_bandwidth: Option<Spanned<Switch<RawBandwidth>>>,
    bandwidth_close_after: Option<Spanned<String>>,
    roster_requests: Option<Spanned<String>>,
    subscription_requests: Option<Spanned<String>>,
    presence_broadcasts: Option<Spanned<String>>,
    muc_messages: Option<Spanned<String>>,
    muc_presences: Option<Spanned<String>>,
    rooms_joined: Option<Spanned<Switch<i64>>>,
    pubsub_publishes: Option<Spanned<String>>,
    payload: Option<Vec<RawPayload>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawBandwidth {
    rate: u64,
    burst: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayload {
    namespace: String,
    #[serde(default = "default_payload_direction")]
    direction: RawPayloadDirection,
    #[serde(default = "default_payload_error")]
    error: RawPayloadError,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawPayloadDirection {
    ToServer,
    ToClient,
    Both,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawPayloadError {
    NotAllowed,
    PolicyViolation,
}

fn default_payload_direction() -> RawPayloadDirection {
    RawPayloadDirection::Both
}

fn default_payload_error() -> RawPayloadError {
    RawPayloadError::NotAllowed
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGate {
    max_connections_per_address: Option<Spanned<Switch<i64>>>,
    connection_attempts: Option<Spanned<String>>,
    ipv4_prefix: Option<Spanned<i64>>,
    ipv6_prefix: Option<Spanned<i64>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    max_tracked_addresses: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    max_failures: Option<Spanned<String>>,
    ban: Option<Spanned<String>>,
    tarpit: Option<Spanned<String>>,
}

/// An included rules file, read.
struct Included {
    path: PathBuf,
    text: String,
    raw: RulesFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    path: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    preauth: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    send: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[cfg(test)]
mod tests;
