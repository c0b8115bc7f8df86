//! Test certificates: a throw-away CA and a server certificate it signed, written as PEM
//! files for servers (Prosody, xmppwall) and kept in DER for our own TLS clients.
//!
//! A separate CA rather than one self-signed leaf: clients then verify the chain the way
//! they do in production (trust anchor → end-entity certificate), instead of trusting the
//! very certificate they are shown.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use tempfile::TempDir;

/// A CA and a server certificate for some domains, as files in a temporary directory that
/// lives as long as this value.
pub struct TestCert {
    dir: TempDir,
    /// The domains the server certificate is valid for.
    pub domains: Vec<String>,
    /// PEM of the server certificate alone.
    pub cert_path: PathBuf,
    /// PEM of the server certificate followed by the CA certificate.
    pub chain_path: PathBuf,
    /// PEM (PKCS#8) of the server certificate's private key.
    pub key_path: PathBuf,
    /// PEM of the CA certificate: what a client must trust.
    pub ca_path: PathBuf,
    /// PEM (PKCS#8) of the CA's private key.
    pub ca_key_path: PathBuf,
    pub cert_der: CertificateDer<'static>,
    pub ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCert {
    /// A fresh CA and a certificate signed by it for `domains` (subject alternative names;
    /// the first is also the common name).
    pub fn generate(domains: &[&str]) -> TestCert {
        assert!(
            !domains.is_empty(),
            "a certificate needs at least one domain"
        );
        let dir = tempfile::Builder::new()
            .prefix("xmppwall-test-cert-")
            .tempdir()
            .expect("creating a temporary directory for test certificates");

        let ca_key = KeyPair::generate().expect("generating the test CA key");
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).expect("empty CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut ca_name = DistinguishedName::new();
        ca_name.push(DnType::CommonName, "xmppwall test CA");
        ca_params.distinguished_name = ca_name;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .expect("self-signing the test CA");
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let names: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        let (cert, key) = sign_leaf(&issuer, domains);

        let cert_path = dir.path().join("cert.pem");
        let chain_path = dir.path().join("chain.pem");
        let key_path = dir.path().join("key.pem");
        let ca_path = dir.path().join("ca.pem");
        let ca_key_path = dir.path().join("ca-key.pem");
        write(&ca_key_path, &ca_key_pem);
        write(&cert_path, &cert.pem());
        write(&chain_path, &format!("{}{}", cert.pem(), ca_cert.pem()));
        write(&key_path, &key.serialize_pem());
        write(&ca_path, &ca_cert.pem());

        TestCert {
            domains: names,
            cert_path,
            chain_path,
            key_path,
            ca_path,
            ca_key_path,
            cert_der: cert.der().clone(),
            ca_der: ca_cert.der().clone(),
            dir,
            issuer,
        }
    }

    /// Another certificate from the same CA, for `domains`: the chain (leaf, then
    /// CA) and the leaf's private key, in DER.
    pub fn issue(
        &self,
        domains: &[&str],
    ) -> (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let (cert, key) = sign_leaf(&self.issuer, domains);
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("a PKCS#8 key");
        (vec![cert.der().clone(), self.ca_der.clone()], key)
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A certificate for `domains` (subject alternative names; the first also the common
/// name) signed by `issuer`, for TLS server and client use.
fn sign_leaf(issuer: &Issuer<'static, KeyPair>, domains: &[&str]) -> (rcgen::Certificate, KeyPair) {
    let names: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    let key = KeyPair::generate().expect("generating the server key");
    let mut params = CertificateParams::new(names).expect("server cert parameters");
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, domains[0]);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .signed_by(&key, issuer)
        .expect("signing the server certificate with the test CA");
    (cert, key)
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
