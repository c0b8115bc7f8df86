//! xmppwall in front of a server, as the integration tests set it up: a STARTTLS, a
//! direct-TLS and a plaintext c2s listener with a throw-away certificate, plus whatever
//! configuration a test adds; and the moves tests make on it (log in, reload, read the
//! SIGUSR1 `stats` line).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::certs::TestCert;
use super::client::{tls_client_config, TestClient, TlsVersions};
use super::ports::free_loopback_addr;
use super::process::wait_until;
use super::{Account, Xmppwall, DOMAIN, IO_TIMEOUT};

/// What a test adds to the generated configuration.
#[derive(Debug, Clone, Default)]
pub struct WallConfig {
    /// More hosted domains besides [`DOMAIN`].
    pub domains: Vec<String>,
    /// Lines inside `[upstream]` (e.g. `proxy_protocol = "v2"`).
    pub upstream: String,
    /// Top-level keys, before any table (e.g. `include = [...]`).
    pub top: String,
    /// Tables appended at the end (`[limits]`, `[[rule]]`, ...).
    pub tables: String,
}

/// A running xmppwall and the addresses of its listeners.
pub struct Wall {
    pub xmppwall: Xmppwall,
    pub starttls: SocketAddr,
    pub direct: SocketAddr,
    pub plain: SocketAddr,
    pub cert: TestCert,
    layout: Layout,
}

/// Everything the configuration text is made from.
struct Layout {
    starttls: SocketAddr,
    direct: SocketAddr,
    plain: SocketAddr,
    cert_path: String,
    key_path: String,
    upstream: SocketAddr,
    config: WallConfig,
}

impl Wall {
    /// xmppwall in front of the server at `upstream`.
    pub fn start(upstream: SocketAddr, config: WallConfig) -> Wall {
        let cert = TestCert::generate(&[DOMAIN]);
        let layout = Layout {
            starttls: free_loopback_addr(),
            direct: free_loopback_addr(),
            plain: free_loopback_addr(),
            cert_path: cert.chain_path.display().to_string(),
            key_path: cert.key_path.display().to_string(),
            upstream,
            config,
        };
        let xmppwall = Xmppwall::start(&layout.render(&layout.config.tables));
        Wall {
            xmppwall,
            starttls: layout.starttls,
            direct: layout.direct,
            plain: layout.plain,
            cert,
            layout,
        }
    }

    /// The configuration with other `tables` at the end.
    pub fn config_text(&self, tables: &str) -> String {
        self.layout.render(tables)
    }

    /// A client configuration that trusts this xmppwall's certificate.
    pub fn tls(&self) -> Arc<ClientConfig> {
        tls_client_config(&self.cert.ca_der, TlsVersions::Any)
    }

    /// A client on the STARTTLS listener, past TLS, with the post-TLS features.
    pub fn client_after_tls(&self) -> (TestClient, String) {
        let mut c = TestClient::connect(self.starttls);
        c.open_stream();
        let features = c.starttls(&self.tls());
        (c, features)
    }

    /// Logs in over STARTTLS, binds `resource`, sends initial presence.
    pub fn login(&self, account: Account, resource: &str) -> (TestClient, String) {
        let (mut c, _) = self.client_after_tls();
        c.auth_plain(account);
        let jid = c.bind(Some(resource));
        c.send_raw("<presence/>");
        (c, jid)
    }

    /// Logs in on the plaintext listener from `source`, binds, sends initial presence.
    pub fn login_plain_from(
        &self,
        source: IpAddr,
        account: Account,
        resource: &str,
    ) -> (TestClient, String) {
        let mut c = TestClient::connect_from(source, self.plain);
        c.open_stream();
        c.auth_plain(account);
        let jid = c.bind(Some(resource));
        c.send_raw("<presence/>");
        (c, jid)
    }

    /// Rewrites the configuration with other `tables` and waits until the log shows
    /// `expect` once more (e.g. "configuration reloaded" or "reload refused").
    pub fn reload(&mut self, tables: &str, expect: &str) {
        let text = self.config_text(tables);
        self.xmppwall.rewrite_config(&text);
        let before = self.xmppwall.log().matches(expect).count();
        self.xmppwall.send_signal("HUP");
        let xmppwall = &self.xmppwall;
        wait_until(Duration::from_secs(10), expect, || {
            (xmppwall.log().matches(expect).count() > before).then_some(())
        });
    }

    /// `kill -9`s xmppwall (it gets no chance to flush or close anything), then starts
    /// it again with the same configuration on the same listeners.
    pub fn kill_and_restart(&mut self) {
        self.xmppwall.send_signal("KILL");
        self.xmppwall
            .wait_exit(Duration::from_secs(10))
            .expect("xmppwall exits after SIGKILL");
        self.xmppwall = Xmppwall::start(&self.layout.render(&self.layout.config.tables));
    }

    /// Asks for a `stats` line (SIGUSR1) and returns the new one.
    pub fn stats(&mut self) -> String {
        let is_stats = |l: &str| l.contains("limits=addresses=");
        let count = |log: &str| log.lines().filter(|l| is_stats(l)).count();
        let before = count(&self.xmppwall.log());
        self.xmppwall.send_signal("USR1");
        let xmppwall = &self.xmppwall;
        wait_until(IO_TIMEOUT, "a stats line after SIGUSR1", || {
            let log = xmppwall.log();
            (count(&log) > before).then(|| {
                log.lines()
                    .rev()
                    .find(|l| is_stats(l))
                    .unwrap_or_default()
                    .to_owned()
            })
        })
    }
}

impl Layout {
    fn render(&self, tables: &str) -> String {
        let domains: Vec<String> = std::iter::once(DOMAIN.to_string())
            .chain(self.config.domains.iter().cloned())
            .map(|d| format!("{d:?}"))
            .collect();
        format!(
            r#"
domains = [{domains}]
{top}

[upstream]
address = "{upstream}"
connect_timeout = "2s"
{upstream_extra}

[[listen]]
front = "c2s"
tls = "starttls"
address = "{starttls}"

[[listen]]
front = "c2s"
tls = "direct"
address = "{direct}"

[[listen]]
front = "c2s"
tls = "none"
address = "{plain}"

[tls]
default = {{ cert = "{cert}", key = "{key}" }}

{tables}
"#,
            domains = domains.join(", "),
            top = self.config.top,
            upstream = self.upstream,
            upstream_extra = self.config.upstream,
            starttls = self.starttls,
            direct = self.direct,
            plain = self.plain,
            cert = self.cert_path,
            key = self.key_path,
        )
    }
}
