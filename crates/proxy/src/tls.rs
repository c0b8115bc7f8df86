//! TLS towards clients (termination, certificate per domain by SNI) and towards the
//! server (optional).
//!
//! Owns loading certificate files and swapping them in atomically on reload; a
//! failed reload keeps the certificates in use. It must not read XMPP.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ServerConfig;
use rustls::ClientConfig;

use crate::config::{CertificateFiles, TlsFiles, UpstreamTls};

/// ALPN protocol id for XMPP client connections over direct TLS (XEP-0368 §3).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// ALPN protocol id for server-to-server connections over direct TLS (XEP-0368 §3).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// The TLS configurations of one certificate: for clients, and for remote servers
/// (which are asked for a certificate of their own, RFC 6120 §13.7.2).
#[derive(Debug, Clone)]
struct Configs {
    c2s: Arc<ServerConfig>,
    s2s: Arc<ServerConfig>,
}

/// Certificates by domain, chosen per connection.
#[derive(Debug)]
struct CertTable {
    by_domain: HashMap<String, Configs>,
    /// Wildcard entries, `*.example.org` stored as `example.org`.
    by_parent: HashMap<String, Configs>,
    default: Option<Configs>,
}

/// The server-side TLS configurations, reloadable without restart.
#[derive(Debug)]
pub struct CertStore {
    table: ArcSwap<CertTable>,
}

impl CertStore {
    pub fn load(files: &TlsFiles) -> Result<CertStore, TlsError> {
        Ok(CertStore {
            table: ArcSwap::from_pointee(CertTable::load(files)?),
        })
    }

    /// Loads every file again; on any error the certificates in use stay.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let table = CertTable::load(files)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// The configuration for a client that asked for `name` (SNI, or for STARTTLS
    /// without SNI, the stream header's `to`).
    pub fn config_for(&self, name: Option<&str>) -> Option<Arc<ServerConfig>> {
        self.configs_for(name).map(|c| c.c2s)
    }

    /// The configuration for a remote server that asked for `name`: the same
    /// certificate, and the peer is asked for its own (optional: dialback-only peers
    /// have none), ALPN `xmpp-server`.
    pub fn s2s_config_for(&self, name: Option<&str>) -> Option<Arc<ServerConfig>> {
        self.configs_for(name).map(|c| c.s2s)
    }

    fn configs_for(&self, name: Option<&str>) -> Option<Configs> {
        let table = self.table.load();
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = table.by_domain.get(&name) {
                return Some(c.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = table.by_parent.get(parent) {
                    return Some(c.clone());
                }
            }
        }
        table.default.clone()
    }
}

impl CertTable {
    fn load(files: &TlsFiles) -> Result<CertTable, TlsError> {
        let mut table = CertTable {
            by_domain: HashMap::new(),
            by_parent: HashMap::new(),
            default: None,
        };
        if let Some(default) = &files.default {
            table.default = Some(server_config(default)?);
        }
        for entry in &files.certificates {
            let config = server_config(entry)?;
            for domain in &entry.domains {
                match domain.strip_prefix("*.") {
                    Some(parent) => table.by_parent.insert(parent.to_owned(), config.clone()),
                    None => table.by_domain.insert(domain.clone(), config.clone()),
                };
            }
            if table.default.is_none() {
                table.default = Some(config);
            }
        }
        Ok(table)
    }
}

fn server_config(files: &CertificateFiles) -> Result<Configs, TlsError> {
    let c2s = c2s_server_config(files)?;
    let (certs, key) = load_key(&files.cert, &files.key)?;
    let provider = Arc::new(default_provider());
    let mut s2s = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(RequestPeerCertificate(provider)))
        .with_single_cert(certs, key)
        .map_err(|e| {
            file_error(
                &files.key,
                format!("the key does not match the certificate or is unsupported: {e}"),
            )
        })?;
    s2s.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    s2s.ignore_client_order = true;
    Ok(Configs {
        c2s,
        s2s: Arc::new(s2s),
    })
}

fn c2s_server_config(files: &CertificateFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, key) = load_key(&files.cert, &files.key)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            file_error(
                &files.key,
                format!("the key does not match the certificate or is unsupported: {e}"),
            )
        })?;
    // Clients that speak direct TLS may offer ALPN `xmpp-client`; the ones that offer
    // nothing are served too.
    config.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn load_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(cert, "no certificate found in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("no usable private key: {e}")))?;
    Ok((certs, key))
}

/// The client configuration for TLS from xmppwall to the server.
pub fn upstream_config(
    tls: &UpstreamTls,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), TlsError> {
    let provider = Arc::new(default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| file_error(ca, format!("cannot read CA file: {e}")))?
                {
                    let cert =
                        cert.map_err(|e| file_error(ca, format!("invalid PEM certificate: {e}")))?;
                    roots.add(cert)?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| TlsError::File {
        path: "[upstream] tls.server_name".into(),
        message: format!("{:?} is not a valid server name: {e}", tls.server_name),
    })?;
    Ok((Arc::new(config), name))
}

/// Accepts any server certificate; only reachable with `insecure_skip_verify = true`.
#[derive(Debug)]
pub(crate) struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AcceptAnyCertificate {
    pub(crate) fn new() -> Self {
        AcceptAnyCertificate(Arc::new(default_provider()))
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Asks a remote server for its certificate without requiring one, and accepts any
/// chain at the TLS layer (the handshake signature is still verified): which domains
/// the certificate proves is decided per domain afterwards ([`PeerCertificate`]),
/// because one stream may carry several (XEP-0220 §8, multiplexing).
#[derive(Debug)]
struct RequestPeerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for RequestPeerCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How xmppwall checks remote servers' certificates: the roots (`[s2s] ca`, else
/// the web PKI) and the client configuration of the egress.
#[derive(Debug, Clone)]
pub struct S2sTls {
    pub verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    pub egress: Arc<ClientConfig>,
    /// The upstream CA, with `[s2s] upstream_certificates` (docs/federation.md).
    pub upstream: Option<Arc<crate::upstream_ca::UpstreamCa>>,
}

/// Builds [`S2sTls`] from the `[s2s]` section.
pub fn s2s_tls(s2s: &crate::config::S2s) -> Result<S2sTls, TlsError> {
    let provider = Arc::new(default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &s2s.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| file_error(ca, format!("cannot read CA file: {e}")))?
            {
                let cert =
                    cert.map_err(|e| file_error(ca, format!("invalid PEM certificate: {e}")))?;
                roots.add(cert)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::File {
            path: "[s2s] ca".into(),
            message: format!("cannot build a certificate verifier: {e}"),
        })?;
    let egress_verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        if s2s.egress_insecure_skip_verify {
            Arc::new(AcceptAnyCertificate(provider.clone()))
        } else {
            verifier.clone()
        };
    let mut egress = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(egress_verifier)
        .with_no_client_auth();
    egress.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    let upstream = match &s2s.upstream_certificates {
        Some(settings) => Some(Arc::new(crate::upstream_ca::UpstreamCa::load(settings)?)),
        None => None,
    };
    Ok(S2sTls {
        verifier,
        egress: Arc::new(egress),
        upstream,
    })
}

/// The certificate chain a remote server presented, and what it proves.
#[derive(Clone)]
pub struct PeerCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("certificates", &self.chain.len())
            .finish()
    }
}

impl PeerCertificate {
    /// Whether the chain is valid now, issued by a trusted root, and names `domain`
    /// (RFC 6120 §13.7.2, with the DNS-ID rules of RFC 6125 §6.4 as RFC 7590 applies
    /// them to XMPP): the same check a server makes of a server certificate.
    pub fn valid_for(&self, domain: &str) -> bool {
        let Some((end_entity, intermediates)) = self.chain.split_first() else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_owned()) else {
            return false;
        };
        self.verifier
            .verify_server_cert(
                end_entity,
                intermediates,
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .is_ok()
    }
}

/// Turns an I/O error from a TLS accept into words for the log.
pub fn describe_handshake_error(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}
