//! xmppwall's proxy: the fronts, TLS, sessions, and the connection to the server.
//!
//! The sans-IO parts ([`session`], [`stream_error`], [`config`], [`proxy_header`])
//! hold the protocol logic; [`c2s`] and [`server`] are the tokio shell around them.
#![forbid(unsafe_code)]

pub mod c2s;
pub mod component;
pub mod config;
pub mod dns;
pub mod durable;
pub mod egress;
pub mod enforce;
pub mod io;
pub mod nftables;
pub mod peer;
pub mod proxy_header;
pub mod recorder;
pub mod relay;
pub mod rtbl;
pub mod s2s;
pub mod server;
pub mod session;
pub mod sessions;
pub mod socks5;
pub mod stats;
pub mod stream;
pub use xmppwall_policy::errors as stream_error;
pub mod tls;
pub mod upstream_ca;
