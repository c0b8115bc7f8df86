//! Free loopback ports for servers started by tests.
//!
//! The kernel picks a free port when we bind port 0; we release it and hand the number to
//! a server. Another process could take it in between, but the kernel hands out ephemeral
//! ports in a rotating order, so a port just released is not reused soon. Within this test
//! binary we additionally never hand out the same port twice, so parallel tests cannot
//! collide with each other even if the kernel returned it again.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that is free now and that no other test in this binary got.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        let mut ports = handed_out()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ports.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found in 1000 attempts");
}

/// `127.0.0.1:<free port>`.
pub fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}
