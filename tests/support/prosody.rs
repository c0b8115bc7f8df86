//! A real Prosody (Debian's package, 0.12) per test: its own config, data and log in a
//! temporary directory, its own loopback ports, run in the foreground as our child.
//!
//! Options that matter, and why:
//! - `run_as_root = true`: tests (and CI) run as root. Without it `prosodyctl` switches to
//!   the `prosody` user, which cannot write our root-owned temporary directory. Prosody
//!   itself only refuses root when `mod_posix` is loaded, which we do not load (it would
//!   also daemonize and write a pidfile).
//! - `c2s_require_encryption = false` and `allow_unencrypted_plain_auth = true`: xmppwall
//!   terminates TLS and talks plaintext to the server over loopback, so the server must
//!   allow SASL (PLAIN included) on an unencrypted stream. Prosody 0.12 has no
//!   `secure_interfaces` (that arrived in 0.13), so these two options are the only way.
//! - Every listener is pinned to 127.0.0.1 and a free port, including the ones a test does
//!   not use (s2s is always loaded), so parallel tests never collide on 5222/5269/5347.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::TestCert;
use super::ports::free_loopback_addr;
use super::process::{wait_while_running, ServerProcess};
use super::{tail, ACCOUNTS, DOMAIN, OTHER_DOMAIN};

/// How long Prosody may take to start on a loaded machine (it usually takes < 1 s).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What to enable beyond the plaintext c2s listener.
#[derive(Debug, Clone, Default)]
pub struct ProsodyOptions {
    /// A certificate for [`DOMAIN`] and [`OTHER_DOMAIN`]: STARTTLS offered on c2s and a
    /// direct TLS (XEP-0368) c2s port opened.
    pub tls: bool,
    /// With `tls`: accept TLS 1.2 only. Prosody 0.12 implements channel binding only as
    /// `tls-unique`, which TLS 1.3 lacks, so this is how to make it offer
    /// `SCRAM-SHA-1-PLUS` to a client (or proxy) that would otherwise negotiate TLS 1.3.
    pub tls12_only: bool,
    /// `c2s_require_encryption = true`: no authentication before STARTTLS. Needs `tls`.
    pub require_encryption: bool,
    /// BOSH and WebSocket on a plaintext HTTP port (`consider_*_secure`, since a proxy in
    /// front terminates TLS).
    pub http: bool,
    /// External components (XEP-0114): `(domain, secret)`.
    pub components: Vec<(String, String)>,
    /// Lua appended to the global section, for options a test needs once.
    pub extra_global_config: String,
    /// A XEP-0060 publish-subscribe service at [`PUBSUB_DOMAIN`] (Prosody's `pubsub`
    /// component), nodes kept up to 256 items, `carol@example.test` its admin.
    pub pubsub: bool,
    /// The one domain to host instead of [`DOMAIN`] and [`OTHER_DOMAIN`] (a second
    /// server for federation tests); the test accounts are registered on it, and
    /// with `tls` the certificate is for it.
    pub domain: Option<String>,
    /// Outgoing server-to-server connections for these domains go to these addresses
    /// instead of DNS (tests/support/prosody_modules/mod_test_s2s_routes.lua).
    pub s2s_routes: Vec<(String, SocketAddr)>,
    /// With `tls`: a PEM file of further roots (LuaSec `cafile`) for
    /// server-to-server streams only (`s2s_ssl`), e.g. the CA whose certificates a
    /// server-to-server peer presents.
    pub ssl_cafile: Option<PathBuf>,
}

/// The publish-subscribe service's JID with `pubsub`.
pub const PUBSUB_DOMAIN: &str = "pubsub.example.test";

/// A running Prosody; killed, and its directory removed, on drop.
pub struct Prosody {
    /// Plaintext c2s (STARTTLS offered only with `tls`).
    pub c2s: SocketAddr,
    /// Direct TLS c2s, with `tls`.
    pub c2s_direct_tls: Option<SocketAddr>,
    pub s2s: SocketAddr,
    /// Direct TLS s2s (XEP-0368), with `tls`.
    pub s2s_direct_tls: Option<SocketAddr>,
    /// XEP-0114 component port; listening only when components are configured.
    pub component: SocketAddr,
    /// BOSH at `/http-bind`, WebSocket at `/xmpp-websocket`, with `http`.
    pub http: Option<SocketAddr>,
    /// The certificate Prosody serves, with `tls`.
    pub cert: Option<TestCert>,
    pub config_path: PathBuf,
    log_path: PathBuf,
    output_path: PathBuf,
    // Declared before `dir` so the process is killed before its directory is removed.
    process: ServerProcess,
    dir: TempDir,
}

impl Prosody {
    /// Plaintext c2s only, accounts [`ACCOUNTS`] on [`DOMAIN`].
    pub fn start() -> Prosody {
        Prosody::start_with(ProsodyOptions::default())
    }

    pub fn start_with(options: ProsodyOptions) -> Prosody {
        assert!(
            !options.require_encryption || options.tls,
            "require_encryption without tls would leave no way to log in"
        );
        assert!(!options.tls12_only || options.tls, "tls12_only needs tls");
        let dir = tempfile::Builder::new()
            .prefix("xmppwall-test-prosody-")
            .tempdir()
            .expect("creating a temporary directory for Prosody");
        let data = dir.path().join("data");
        let certs = dir.path().join("certs");
        for d in [&data, &certs] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        let cert = options.tls.then(|| match &options.domain {
            Some(domain) => TestCert::generate(&[domain]),
            None => TestCert::generate(&[DOMAIN, OTHER_DOMAIN]),
        });

        let c2s = free_loopback_addr();
        let c2s_direct_tls = options.tls.then(free_loopback_addr);
        let s2s = free_loopback_addr();
        let s2s_direct_tls = options.tls.then(free_loopback_addr);
        let component = free_loopback_addr();
        let http = options.http.then(free_loopback_addr);
        let log_path = dir.path().join("prosody.log");
        let output_path = dir.path().join("prosody.out");

        let config = render_config(&ConfigInput {
            dir: dir.path(),
            data: &data,
            certs: &certs,
            log: &log_path,
            c2s,
            c2s_direct_tls,
            s2s,
            s2s_direct_tls,
            component,
            http,
            cert: cert.as_ref(),
            options: &options,
        });
        let config_path = dir.path().join("prosody.cfg.lua");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));

        let host = options.domain.as_deref().unwrap_or(DOMAIN);
        for account in ACCOUNTS {
            prosodyctl_register(&config_path, account.user, host, account.password);
        }

        let mut command = Command::new("prosody");
        command.arg("-F").arg("--config").arg(&config_path);
        let mut process = ServerProcess::spawn("prosody", command, &output_path);

        let describe = || describe_logs(&log_path, &output_path);
        wait_while_running(
            "answer a stream header on c2s",
            &mut process,
            STARTUP_TIMEOUT,
            || stream_answers(c2s, host).then_some(()),
            describe,
        );

        Prosody {
            c2s,
            c2s_direct_tls,
            s2s,
            s2s_direct_tls,
            component,
            http,
            cert,
            config_path,
            log_path,
            output_path,
            process,
            dir,
        }
    }

    /// Registers another account (works while Prosody runs: internal storage is files).
    pub fn register(&self, user: &str, host: &str, password: &str) {
        prosodyctl_register(&self.config_path, user, host, password);
    }

    /// Prosody's log (debug level: every stanza in and out).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Prosody's own stdout and stderr (startup errors before logging is configured).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether Prosody is still running (a test can assert it survived something).
    pub fn is_running(&mut self) -> bool {
        self.process.try_exit_status().is_none()
    }
}

struct ConfigInput<'a> {
    dir: &'a Path,
    data: &'a Path,
    certs: &'a Path,
    log: &'a Path,
    c2s: SocketAddr,
    c2s_direct_tls: Option<SocketAddr>,
    s2s: SocketAddr,
    s2s_direct_tls: Option<SocketAddr>,
    component: SocketAddr,
    http: Option<SocketAddr>,
    cert: Option<&'a TestCert>,
    options: &'a ProsodyOptions,
}

fn render_config(input: &ConfigInput<'_>) -> String {
    let ports = |addr: Option<SocketAddr>| match addr {
        Some(a) => format!("{{ {} }}", a.port()),
        None => "{ }".to_string(),
    };
    let options = input.options;
    let mut modules = vec![
        "roster",
        "saslauth",
        "tls",
        "disco",
        "ping",
        "register",
        "carbons",
        "smacks",
        "blocklist",
        "pep",
        "vcard",
        "private",
        "time",
        "version",
        "dialback",
    ];
    if options.http {
        modules.extend(["bosh", "websocket"]);
    }
    // Always: a domain without a route gets no address at all, so no test makes
    // Prosody look up DNS (every test stays on loopback).
    modules.push("test_s2s_routes");
    let modules: Vec<String> = modules.iter().map(|m| format!("{m:?}")).collect();

    let mut c = String::new();
    // `writeln!` into a String cannot fail.
    let mut line = |s: String| {
        let _ = writeln!(c, "{s}");
    };
    line("-- Generated by the xmppwall test harness (tests/support/prosody.rs).".into());
    line("run_as_root = true".into());
    line(format!("pidfile = {:?}", input.dir.join("prosody.pid")));
    line(format!("data_path = {:?}", input.data));
    line(format!("certificates = {:?}", input.certs));
    line(format!("log = {{ debug = {:?} }}", input.log));
    line(r#"interfaces = { "127.0.0.1" }"#.into());
    line(r#"local_interfaces = { "127.0.0.1" }"#.into());
    line(format!("c2s_ports = {}", ports(Some(input.c2s))));
    line(format!(
        "c2s_direct_tls_ports = {}",
        ports(input.c2s_direct_tls)
    ));
    line("legacy_ssl_ports = { }".into());
    line(format!("s2s_ports = {}", ports(Some(input.s2s))));
    line(format!(
        "s2s_direct_tls_ports = {}",
        ports(input.s2s_direct_tls)
    ));
    line(format!(
        "component_ports = {}",
        ports(Some(input.component))
    ));
    line(format!("http_ports = {}", ports(input.http)));
    line("https_ports = { }".into());
    line(r#"http_interfaces = { "127.0.0.1" }"#.into());
    line("consider_bosh_secure = true".into());
    line("consider_websocket_secure = true".into());
    line(format!(
        "c2s_require_encryption = {}",
        options.require_encryption
    ));
    line("allow_unencrypted_plain_auth = true".into());
    line("s2s_require_encryption = false".into());
    line("s2s_secure_auth = false".into());
    line(r#"authentication = "internal_hashed""#.into());
    line(r#"storage = "internal""#.into());
    line("allow_registration = true".into());
    // No rate limits of Prosody's own: tests measure xmppwall's limits, not the server's.
    line("limits = { }".into());
    line(format!("modules_enabled = {{ {} }}", modules.join("; ")));
    if let Some(cert) = input.cert {
        // LuaSec: "tlsv1_2" is exactly TLS 1.2; "tlsv1_2+" is 1.2 or later.
        let protocol = if options.tls12_only {
            "tlsv1_2"
        } else {
            "tlsv1_2+"
        };
        line(format!(
            "ssl = {{ certificate = {:?}; key = {:?}; protocol = {protocol:?} }}",
            cert.chain_path, cert.key_path
        ));
        if let Some(cafile) = &options.ssl_cafile {
            // For server-to-server streams only (mod_tls merges `s2s_ssl` over `ssl`).
            line(format!("s2s_ssl = {{ cafile = {cafile:?} }}"));
        }
    }
    line(format!(
        "plugin_paths = {{ {:?} }}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/prosody_modules")
    ));
    if !options.s2s_routes.is_empty() {
        let routes: Vec<String> = options
            .s2s_routes
            .iter()
            .map(|(domain, addr)| {
                format!(
                    "[{domain:?}] = {{ {:?}, {} }}",
                    addr.ip().to_string(),
                    addr.port()
                )
            })
            .collect();
        line(format!("test_s2s_routes = {{ {} }}", routes.join("; ")));
    }
    line(options.extra_global_config.clone());
    match &options.domain {
        Some(domain) => line(format!("VirtualHost {domain:?}")),
        None => {
            line(format!("VirtualHost {DOMAIN:?}"));
            line(format!("VirtualHost {OTHER_DOMAIN:?}"));
        }
    }
    if options.pubsub {
        line(format!("Component {PUBSUB_DOMAIN:?} \"pubsub\""));
        line(format!("    admins = {{ \"carol@{DOMAIN}\" }}"));
        line("    pubsub_max_items = 256".into());
    }
    for (domain, secret) in &options.components {
        line(format!("Component {domain:?}"));
        line(format!("    component_secret = {secret:?}"));
    }
    c
}

fn prosodyctl_register(config: &Path, user: &str, host: &str, password: &str) {
    let output = Command::new("prosodyctl")
        .arg("--config")
        .arg(config)
        .args(["register", user, host, password])
        .output()
        .unwrap_or_else(|e| panic!("running prosodyctl (is prosody installed?): {e}"));
    assert!(
        output.status.success(),
        "prosodyctl register {user} {host} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether a stream header sent to `addr` is answered with stream features: Prosody has
/// not only bound the port but also loaded the host and its modules.
fn stream_answers(addr: SocketAddr, domain: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            tcp,
            "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )?;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            let n = tcp.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
            // A readiness probe, not an assertion: a substring is enough.
            if String::from_utf8_lossy(&received).contains("</stream:features>") {
                return Ok(true);
            }
        }
        Ok(false)
    };
    attempt().unwrap_or(false)
}

fn describe_logs(log: &Path, output: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let output = std::fs::read_to_string(output).unwrap_or_default();
    format!(
        "--- prosody stdout/stderr ---\n{}\n--- prosody log (tail) ---\n{}",
        tail(&output, 4000),
        tail(&log, 8000)
    )
}
