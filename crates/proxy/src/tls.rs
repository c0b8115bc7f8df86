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

/// Certificates by domain, chosen per connection.
#[derive(Debug)]
struct CertTable {
    by_domain: HashMap<String, Arc<ServerConfig>>,
    /// Wildcard entries, `*.example.org` stored as `example.org`.
    by_parent: HashMap<String, Arc<ServerConfig>>,
    default: Option<Arc<ServerConfig>>,
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

fn server_config(files: &CertificateFiles) -> Result<Arc<ServerConfig>, TlsError> {
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
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

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

/// Turns an I/O error from a TLS accept into words for the log.
pub fn describe_handshake_error(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}
