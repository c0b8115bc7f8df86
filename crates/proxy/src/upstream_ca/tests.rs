use super::*;
use rustls::client::danger::ServerCertVerifier;

/// A fresh directory under the system's temporary directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "xmppwall-upstream-ca-{name}-{}-{nanos}",
            std::process::id()
        ));
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(dir: &Dir) -> UpstreamCertificates {
    UpstreamCertificates {
        ca_cert: dir.0.join("state/upstream-ca.crt"),
        ca_key: dir.0.join("state/upstream-ca.key"),
        generate: true,
        server_name: None,
        server_ca: None,
        insecure_skip_verify: true,
    }
}

/// Verifies `chain` as a certificate for `domain` with only `ca` trusted.
fn verifies(ca: &CertificateDer<'static>, chain: &[CertificateDer<'static>], domain: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("the CA certificate parses");
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(default_provider()),
    )
    .build()
    .expect("a verifier");
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(domain.to_owned()).expect("a name"),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .is_ok()
}

#[test]
fn made_on_first_start_and_kept_after() {
    let dir = Dir::new("first-start");
    let s = settings(&dir);
    let first = UpstreamCa::load(&s).expect("the CA is made");
    assert!(s.ca_cert.exists() && s.ca_key.exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&s.ca_key)
            .expect("key metadata")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    let second = UpstreamCa::load(&s).expect("the CA is loaded");
    assert_eq!(
        first.certificate(),
        second.certificate(),
        "a new CA was made"
    );
    // A certificate minted after loading chains to the CA made before.
    let (chain, _) = second
        .mint_chain("remote.test", SystemTime::now())
        .expect("minting");
    assert!(verifies(first.certificate(), &chain, "remote.test"));
}

#[test]
fn minted_certificate_is_valid_for_its_domain_only() {
    let dir = Dir::new("domain");
    let ca = UpstreamCa::load(&settings(&dir)).expect("the CA is made");
    let (chain, _) = ca
        .mint_chain("remote.test", SystemTime::now())
        .expect("minting");
    assert_eq!(chain.len(), 2, "leaf and CA");
    assert!(verifies(ca.certificate(), &chain, "remote.test"));
    assert!(!verifies(ca.certificate(), &chain, "other.test"));
    assert!(!verifies(ca.certificate(), &chain, "sub.remote.test"));
}

#[test]
fn minted_certificate_expires() {
    let dir = Dir::new("expiry");
    let ca = UpstreamCa::load(&settings(&dir)).expect("the CA is made");
    let long_ago = SystemTime::now() - MINTED_VALIDITY - Duration::from_secs(3600);
    let (chain, _) = ca.mint_chain("remote.test", long_ago).expect("minting");
    assert!(!verifies(ca.certificate(), &chain, "remote.test"));
}

#[test]
fn client_configs_are_cached_per_domain_and_bounded() {
    let dir = Dir::new("cache");
    let ca = UpstreamCa::load(&settings(&dir)).expect("the CA is made");
    let a = ca.client_config("remote.test").expect("a config");
    let again = ca.client_config("REMOTE.test.").expect("a config");
    assert!(Arc::ptr_eq(&a, &again), "the same domain minted twice");
    let b = ca.client_config("other.test").expect("a config");
    assert!(!Arc::ptr_eq(&a, &b));
    for i in 0..MAX_CACHED_DOMAINS + 5 {
        ca.client_config(&format!("d{i}.test")).expect("a config");
    }
    assert_eq!(ca.cached(), MAX_CACHED_DOMAINS);
}

#[test]
fn given_files_must_exist() {
    let dir = Dir::new("given");
    let s = UpstreamCertificates {
        generate: false,
        ..settings(&dir)
    };
    let e = UpstreamCa::load(&s).expect_err("no files, no CA");
    assert!(e.to_string().contains("upstream-ca.crt"), "{e}");
    assert!(
        !s.ca_key.exists(),
        "a key was made where none was asked for"
    );
}

#[test]
fn a_lone_certificate_is_not_replaced() {
    let dir = Dir::new("lone");
    let s = settings(&dir);
    std::fs::create_dir_all(s.ca_cert.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&s.ca_cert, "not a certificate").expect("write");
    let e = UpstreamCa::load(&s).expect_err("half a CA");
    assert!(e.to_string().contains("upstream-ca.key"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&s.ca_cert).expect("read"),
        "not a certificate"
    );
}
