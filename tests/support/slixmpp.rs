//! Runs tests/interop/slixmpp_echo.py: slixmpp, an XMPP client library independent of
//! everything in this repository, as a real client in interoperability tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::ServerProcess;
use super::{tail, Account};

/// What the script prints once its session is established and its presence processed.
pub const READY_LINE: &str = "SLIXMPP-READY";

/// What the component script prints once its handshake succeeded.
pub const COMPONENT_READY_LINE: &str = "COMPONENT-READY";

/// The component script's path in the source tree.
pub fn component_script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/slixmpp_component.py"
    ))
}

/// The script's path in the source tree.
pub fn script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/slixmpp_echo.py"
    ))
}

/// How the script reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlixmppTls {
    StartTls,
    Direct,
}

/// Where and as whom the script logs in.
#[derive(Debug, Clone)]
pub struct SlixmppLogin {
    pub account: Account,
    pub server: SocketAddr,
    pub tls: SlixmppTls,
    /// PEM of the CA to trust.
    pub ca: PathBuf,
}

impl SlixmppLogin {
    fn args(&self) -> Vec<String> {
        let tls = match self.tls {
            SlixmppTls::StartTls => "starttls",
            SlixmppTls::Direct => "direct",
        };
        vec![
            "--jid".into(),
            self.account.jid(),
            "--password".into(),
            self.account.password.into(),
            "--host".into(),
            self.server.ip().to_string(),
            "--port".into(),
            self.server.port().to_string(),
            "--tls".into(),
            tls.into(),
            "--ca".into(),
            self.ca.display().to_string(),
        ]
    }
}

/// A running slixmpp_echo.py; killed on drop.
pub struct Slixmpp {
    output_path: PathBuf,
    process: ServerProcess,
    _dir: TempDir,
}

impl Slixmpp {
    /// `send` role: sends `body` to `to` and exits 0 once a reply from `to` arrives (with
    /// body `expect_reply`, when given).
    pub fn send(login: &SlixmppLogin, to: &str, body: &str, expect_reply: Option<&str>) -> Slixmpp {
        let mut args = vec!["send".to_string()];
        args.extend(login.args());
        args.extend(["--to".into(), to.into(), "--body".into(), body.into()]);
        if let Some(reply) = expect_reply {
            args.extend(["--expect-body".into(), reply.into()]);
        }
        Slixmpp::spawn(&args)
    }

    /// `echo` role: answers `count` messages with their own body, then exits 0.
    pub fn echo(login: &SlixmppLogin, count: u32) -> Slixmpp {
        let mut args = vec!["echo".to_string()];
        args.extend(login.args());
        args.extend(["--count".into(), count.to_string()]);
        Slixmpp::spawn(&args)
    }

    /// An external component (XEP-0114, tests/interop/slixmpp_component.py) for
    /// `domain`, connecting to `server` with `secret`: it answers each chat message
    /// with a headline "ad: BODY", then an echo of the body, and exits 0 after
    /// `count` echoes. It prints [`COMPONENT_READY_LINE`] after the handshake.
    pub fn component(domain: &str, secret: &str, server: SocketAddr, count: u32) -> Slixmpp {
        let args = [
            "--jid".to_string(),
            domain.to_string(),
            "--secret".into(),
            secret.into(),
            "--host".into(),
            server.ip().to_string(),
            "--port".into(),
            server.port().to_string(),
            "--count".into(),
            count.to_string(),
        ];
        Slixmpp::spawn_script(&component_script(), &args)
    }

    fn spawn(args: &[String]) -> Slixmpp {
        Slixmpp::spawn_script(&script(), args)
    }

    fn spawn_script(script: &std::path::Path, args: &[String]) -> Slixmpp {
        let dir = tempfile::Builder::new()
            .prefix("xmppwall-test-slixmpp-")
            .tempdir()
            .expect("creating a temporary directory for slixmpp's output");
        let output_path = dir.path().join("slixmpp.out");
        let mut command = Command::new("python3");
        // The script's own timeout is the inner bound; `wait` below is the outer one.
        command.arg(script).args(args).args(["--timeout", "25"]);
        let process = ServerProcess::spawn("slixmpp_echo.py", command, &output_path);
        Slixmpp {
            output_path,
            process,
            _dir: dir,
        }
    }

    /// What the script printed so far (its log goes to stderr, merged here).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output_path).unwrap_or_default()
    }

    /// Waits until the script is logged in and its presence processed.
    pub fn wait_ready(&mut self, timeout: Duration) {
        self.wait_for_line(READY_LINE, timeout)
    }

    /// Waits until the script prints `line`.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(line) {
            if let Some(status) = self.process.try_exit_status() {
                panic!(
                    "slixmpp_echo.py exited ({status}) before logging in:\n{}",
                    tail(&self.output(), 8000)
                );
            }
            assert!(
                Instant::now() < deadline,
                "slixmpp_echo.py did not log in within {timeout:?}:\n{}",
                tail(&self.output(), 8000)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the script to exit; panics (with its output) if it does not within
    /// `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match self.process.wait_exit(timeout) {
            Some(status) => status,
            None => panic!(
                "slixmpp_echo.py still running after {timeout:?}:\n{}",
                tail(&self.output(), 8000)
            ),
        }
    }

    /// Waits for the script and asserts it succeeded.
    pub fn assert_success(&mut self, timeout: Duration) {
        let status = self.wait(timeout);
        assert!(
            status.success(),
            "slixmpp_echo.py failed ({status}):\n{}",
            tail(&self.output(), 8000)
        );
    }
}
