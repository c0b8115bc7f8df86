//! The binary under test: `xmppwall run --config FILE` with a config the test writes,
//! output captured to a log file, killed on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use tempfile::TempDir;

use super::process::{wait_while_running, ServerProcess};
use super::tail;

/// How long xmppwall may take until its listeners accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The xmppwall binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_xmppwall")
}

/// A running xmppwall; killed on drop.
pub struct Xmppwall {
    pub config_path: PathBuf,
    /// The addresses waited for at start (from `[[listen]]` and `[admin]`), wildcards
    /// turned into loopback.
    pub listen: Vec<SocketAddr>,
    log_path: PathBuf,
    // Declared before `dir` so the process dies before its config is removed.
    process: ServerProcess,
    dir: TempDir,
}

impl Xmppwall {
    /// Writes `config_toml` to a file, starts `xmppwall run --config FILE` (with
    /// `RUST_LOG=debug` unless the environment sets it) and waits until every address in
    /// `[[listen]]` (and `[admin] address`, if any) accepts TCP.
    pub fn start(config_toml: &str) -> Xmppwall {
        let listen = listen_addresses(config_toml);
        Xmppwall::start_waiting_for(config_toml, &listen)
    }

    /// Like [`Self::start`], waiting for the given addresses instead of those in the config.
    pub fn start_waiting_for(config_toml: &str, wait_for: &[SocketAddr]) -> Xmppwall {
        let dir = tempfile::Builder::new()
            .prefix("xmppwall-test-proxy-")
            .tempdir()
            .expect("creating a temporary directory for xmppwall");
        let config_path = dir.path().join("xmppwall.toml");
        std::fs::write(&config_path, config_toml)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let log_path = dir.path().join("xmppwall.log");

        let mut command = Command::new(binary());
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path());
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "debug");
        }
        let mut process = ServerProcess::spawn("xmppwall", command, &log_path);

        for &addr in wait_for {
            wait_while_running(
                &format!("accept TCP on {addr}"),
                &mut process,
                STARTUP_TIMEOUT,
                || {
                    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .ok()
                        .map(|_| ())
                },
                || describe(&log_path, config_toml),
            );
        }
        Xmppwall {
            config_path,
            listen: wait_for.to_vec(),
            log_path,
            process,
            dir,
        }
    }

    /// Sends a signal by name: `"HUP"` (reload), `"TERM"` (graceful shutdown), ...
    pub fn send_signal(&mut self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits at most `timeout` for xmppwall to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Replaces the config file (for a reload test: then `send_signal("HUP")`).
    pub fn rewrite_config(&self, config_toml: &str) {
        std::fs::write(&self.config_path, config_toml)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config_path.display()));
    }

    /// Everything xmppwall printed (stdout and stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs `xmppwall check --config FILE` on `config_toml` and returns what it did.
pub fn check(config_toml: &str) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("xmppwall-test-check-")
        .tempdir()
        .expect("creating a temporary directory");
    let path = dir.path().join("xmppwall.toml");
    std::fs::write(&path, config_toml)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running {} check: {e}", binary()))
}

/// The TCP addresses a config listens on: `address` of every `[[listen]]` and of
/// `[admin]`. A wildcard host (`0.0.0.0`, `[::]`) is reached through loopback.
pub fn listen_addresses(config_toml: &str) -> Vec<SocketAddr> {
    let config: toml::Table = config_toml
        .parse()
        .unwrap_or_else(|e| panic!("the test's xmppwall config is not TOML: {e}\n{config_toml}"));
    let mut found = Vec::new();
    if let Some(listeners) = config.get("listen").and_then(|l| l.as_array()) {
        found.extend(
            listeners
                .iter()
                .filter_map(|l| l.get("address").and_then(|a| a.as_str())),
        );
    }
    if let Some(admin) = config
        .get("admin")
        .and_then(|a| a.get("listen").or_else(|| a.get("address")))
        .and_then(|a| a.as_str())
    {
        found.push(admin);
    }
    found
        .into_iter()
        .map(|a| {
            let addr: SocketAddr = a
                .parse()
                .unwrap_or_else(|e| panic!("listen address {a:?} is not ip:port: {e}"));
            match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
                }
                IpAddr::V6(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
                }
                _ => addr,
            }
        })
        .collect()
}

fn describe(log: &Path, config: &str) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    format!(
        "--- config ---\n{config}\n--- xmppwall output (tail) ---\n{}",
        tail(&log, 8000)
    )
}
