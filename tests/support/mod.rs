//! The integration-test harness: real XMPP servers (Prosody, ejabberd) started per test on
//! their own loopback ports, the xmppwall binary under test, and a raw XMPP client that
//! reads the wire with an XML reader independent of xmppwall's own framer.
//!
//! Every test starts its own servers in its own temporary directories, so tests run in
//! parallel threads without sharing ports, files or state. Every wait is bounded: a hung
//! server or proxy fails the test within seconds, with the server's log in the message.
//!
//! Helpers panic with a message that says what went wrong and where to look: in a test a
//! panic is the failure report.

// Each test file includes this module with `mod support;` and uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod client;
pub mod ejabberd;
pub mod http;
pub mod ports;
pub mod process;
pub mod prosody;
pub mod proxy_protocol;
pub mod redis;
pub mod slixmpp;
pub mod sqlite;
pub mod tap;
pub mod wall;
pub mod xml;
pub mod xmppwall;

pub use certs::TestCert;
pub use client::{tls_client_config, TestClient, TlsVersions};
pub use ejabberd::Ejabberd;
pub use ports::{free_loopback_addr, free_port};
pub use prosody::{Prosody, ProsodyOptions};
pub use xmppwall::Xmppwall;

use std::time::Duration;

/// The domain every test server hosts.
pub const DOMAIN: &str = "example.test";
/// A second virtual host, for tests that need two local domains (Prosody only).
pub const OTHER_DOMAIN: &str = "other.test";

/// A test account that every server the harness starts has registered.
#[derive(Debug, Clone, Copy)]
pub struct Account {
    pub user: &'static str,
    pub password: &'static str,
}

impl Account {
    /// The bare JID on [`DOMAIN`].
    pub fn jid(&self) -> String {
        format!("{}@{}", self.user, DOMAIN)
    }
}

pub const ALICE: Account = Account {
    user: "alice",
    password: "alice-secret-1",
};
pub const BOB: Account = Account {
    user: "bob",
    password: "bob-secret-2",
};
pub const CAROL: Account = Account {
    user: "carol",
    password: "carol-secret-3",
};
/// The accounts created on every server the harness starts.
pub const ACCOUNTS: [Account; 3] = [ALICE, BOB, CAROL];

/// How long one read from a peer may take before the test fails. Long enough for a loaded
/// 2-core CI machine, short enough that a hang is reported rather than waited out.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The last `max` bytes of a log, for panic messages that stay readable.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
