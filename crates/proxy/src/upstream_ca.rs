//! xmppwall's local upstream CA: how a remote server proven by its certificate
//! reaches the server behind xmppwall as itself.
//!
//! xmppwall terminates the peer's TLS, so the server cannot see the peer's
//! certificate. When the certificate is valid for the stream's `from` domain
//! (RFC 6120 §13.7.2, RFC 6125 §6.4, XEP-0178 §3), xmppwall opens its own stream
//! to the server with STARTTLS (RFC 6120 §5.4) and presents a short-lived
//! certificate for that domain, issued by this CA, which the server is configured
//! to trust for server-to-server streams. The server then offers SASL EXTERNAL and
//! authenticates the peer's domain as it would a direct peer (XEP-0178 §3).
//!
//! The CA's key never leaves xmppwall: it is made on first start in the state
//! directory (or given in the configuration) and only read here. Whoever holds it
//! can make the server accept any domain: the same trust any TLS-inspecting proxy
//! asks for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;

use crate::config::UpstreamCertificates;
use crate::tls::TlsError;

/// How long a minted certificate is valid.
pub const MINTED_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// A cached certificate is replaced when less than this is left of it.
pub const RENEW_BEFORE: Duration = Duration::from_secs(12 * 3600);
/// Backdating of `notBefore`, for a server whose clock is a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Peer domains whose certificate and TLS configuration are kept.
pub const MAX_CACHED_DOMAINS: usize = 1024;
/// How long a made CA is valid (the server trusts it; renew by removing both files).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The upstream CA and the TLS configurations it has made, per peer domain.
pub struct UpstreamCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    server_name: Option<ServerName<'static>>,
    minted: Mutex<HashMap<String, Minted>>,
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCa")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

struct Minted {
    config: Arc<ClientConfig>,
    renew_at: SystemTime,
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl UpstreamCa {
    /// Loads the CA from its files, or makes a new one when neither exists and the
    /// configuration allows it (the default paths).
    pub fn load(settings: &UpstreamCertificates) -> Result<UpstreamCa, TlsError> {
        let (cert, key) = (&settings.ca_cert, &settings.ca_key);
        let (issuer, ca_der) = if settings.generate && !cert.exists() && !key.exists() {
            generate(cert, key)?
        } else {
            load(cert, key)?
        };
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if settings
            .insecure_skip_verify
        {
            Arc::new(crate::tls::AcceptAnyCertificate::new())
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &settings.server_ca {
                Some(ca) => {
                    for c in CertificateDer::pem_file_iter(ca)
                        .map_err(|e| file_error(ca, format!("cannot read CA file: {e}")))?
                    {
                        let c =
                            c.map_err(|e| file_error(ca, format!("invalid PEM certificate: {e}")))?;
                        roots.add(c)?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(default_provider()),
            )
            .build()
            .map_err(|e| TlsError::File {
                path: "[s2s] upstream_server_ca".into(),
                message: format!("cannot build a certificate verifier: {e}"),
            })?
        };
        let server_name = match &settings.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| TlsError::File {
                path: "[s2s] upstream_server_name".into(),
                message: format!("{n:?} is not a valid server name: {e}"),
            })?),
            None => None,
        };
        Ok(UpstreamCa {
            issuer,
            ca_der,
            verifier,
            server_name,
            minted: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (what the server trusts).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The name to ask the server for (SNI) and find in its certificate: the
    /// configured one, else `local`, the domain the peer's stream is addressed to.
    pub fn server_name(&self, local: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => ServerName::try_from(local.to_owned())
                .map_err(|e| format!("{local} is not a valid server name: {e}")),
        }
    }

    /// The TLS client configuration presenting a certificate for `domain`: from the
    /// cache while it has more than [`RENEW_BEFORE`] left, else newly minted.
    pub fn client_config(&self, domain: &str) -> Result<Arc<ClientConfig>, TlsError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = SystemTime::now();
        let mut minted = self.minted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = minted.get(&domain) {
            if now < m.renew_at {
                return Ok(m.config.clone());
            }
        }
        let (config, renew_at) = self.mint(&domain, now)?;
        if minted.len() >= MAX_CACHED_DOMAINS && !minted.contains_key(&domain) {
            // Stale ones first; if none, the one renewed soonest (the oldest).
            minted.retain(|_, m| now < m.renew_at);
            if minted.len() >= MAX_CACHED_DOMAINS {
                if let Some(oldest) = minted
                    .iter()
                    .min_by_key(|(_, m)| m.renew_at)
                    .map(|(d, _)| d.clone())
                {
                    minted.remove(&oldest);
                }
            }
        }
        minted.insert(
            domain,
            Minted {
                config: config.clone(),
                renew_at,
            },
        );
        Ok(config)
    }

    /// How many peer domains have a certificate cached.
    pub fn cached(&self) -> usize {
        self.minted.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn mint(
        &self,
        domain: &str,
        now: SystemTime,
    ) -> Result<(Arc<ClientConfig>, SystemTime), TlsError> {
        let (chain, key) = self.mint_chain(domain, now)?;
        let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone())
            .with_client_auth_cert(chain, key)?;
        Ok((Arc::new(config), now + MINTED_VALIDITY - RENEW_BEFORE))
    }

    /// A certificate for `domain` valid from a little before `now` for
    /// [`MINTED_VALIDITY`], followed by the CA's: the domain as its only DNS name
    /// (the DNS-ID that RFC 6125 §6.4 and XEP-0178 §3 have the server check
    /// against the stream's `from`) and as common name, for TLS client and server
    /// use; and its key.
    pub fn mint_chain(
        &self,
        domain: &str,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let minting = |e: rcgen::Error| TlsError::File {
            path: "[s2s] upstream CA".into(),
            message: format!("cannot make a certificate for {domain}: {e}"),
        };
        let key = KeyPair::generate().map_err(minting)?;
        let mut params = CertificateParams::new(vec![domain.to_owned()]).map_err(minting)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, domain);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + MINTED_VALIDITY).into();
        let cert = params.signed_by(&key, &self.issuer).map_err(minting)?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::File {
            path: "[s2s] upstream CA".into(),
            message: format!("cannot use the key made for {domain}: {e}"),
        })?;
        Ok((chain, key))
    }
}

fn load(
    cert: &Path,
    key: &Path,
) -> Result<(Issuer<'static, KeyPair>, CertificateDer<'static>), TlsError> {
    let cert_pem = std::fs::read_to_string(cert).map_err(|e| {
        file_error(
            cert,
            format!("cannot read the upstream CA certificate: {e}"),
        )
    })?;
    let key_pem = std::fs::read_to_string(key)
        .map_err(|e| file_error(key, format!("cannot read the upstream CA key: {e}")))?;
    let key_pair = KeyPair::from_pem(&key_pem)
        .map_err(|e| file_error(key, format!("not a usable private key: {e}")))?;
    let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| file_error(cert, format!("no PEM certificate: {e}")))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, key_pair)
        .map_err(|e| file_error(cert, format!("not a usable CA certificate: {e}")))?;
    Ok((issuer, ca_der))
}

/// Makes a new CA and writes it: the key first, readable by its owner only.
fn generate(
    cert: &Path,
    key: &Path,
) -> Result<(Issuer<'static, KeyPair>, CertificateDer<'static>), TlsError> {
    let making = |e: rcgen::Error| file_error(cert, format!("cannot make the upstream CA: {e}"));
    let key_pair = KeyPair::generate().map_err(making)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(making)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "xmppwall upstream CA");
    params.distinguished_name = name;
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + CA_VALIDITY).into();
    let ca = params.self_signed(&key_pair).map_err(making)?;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| file_error(dir, format!("cannot create the directory: {e}")))?;
    }
    write_private(key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, ca.pem()).map_err(|e| {
        file_error(
            cert,
            format!("cannot write the upstream CA certificate: {e}"),
        )
    })?;
    tracing::info!(cert = %cert.display(), key = %key.display(), "upstream CA made; configure the server to trust its certificate for server-to-server streams");
    let ca_der = ca.der().clone();
    Ok((Issuer::new(params, key_pair), ca_der))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, format!("cannot create the upstream CA key: {e}")))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(path, format!("cannot write the upstream CA key: {e}")))
}

#[cfg(test)]
mod tests;
