//! A real ejabberd (Debian's package, 23.01) per test, for what Prosody 0.12 cannot do:
//! PROXY protocol on c2s (`use_proxy_protocol: true`), so tests can check that the server
//! sees the real client address xmppwall forwards.
//!
//! How it runs, and why:
//! - Not through `ejabberdctl`, which wants /etc/ejabberd, `su ejabberd` and a named
//!   Erlang node (epmd, a cookie, one node name per host). We start `erl` directly with
//!   the ejabberd application, *without* a node name: the VM is not distributed, so no
//!   epmd, no cookie, no global state shared between parallel tests. ejabberd reads its
//!   config from `EJABBERD_CONFIG_PATH` and keeps Mnesia in `-mnesia dir` (both in our
//!   temporary directory); `HOME` points there too so nothing lands in the real home.
//! - Administration (creating accounts, listing sessions) goes over ejabberd's HTTP API
//!   (`mod_http_api`) on a loopback port, allowed to 127.0.0.0/8 only, instead of
//!   `ejabberdctl` (which needs Erlang distribution).
//! - Where the real client address shows: `user_sessions_info` (from `mod_admin_extra`)
//!   returns each session's `ip`, and the log has
//!   `Accepted proxied connection 203.0.113.7:40000 -> 127.0.0.1:5222` and
//!   `Accepted c2s PLAIN authentication for alice@example.test by mnesia backend from 203.0.113.7`.
//! - Federation ([`EjabberdOptions::s2s`]): an `ejabberd_s2s_in` listener on loopback,
//!   `s2s_use_starttls: false` (xmppwall terminates TLS in front of it and it talks
//!   plaintext on loopback) and `mod_s2s_dialback`; no certificate (it needs none on
//!   a plaintext stream, and the harness's test certificates, valid until the year
//!   4096, crash ejabberd's expiry timer in `ejabberd_pkix`). ejabberd (its `xmpp_stream_out`) looks up `_xmpp-server._tcp` SRV records
//!   with Erlang's own resolver (`inet_res`): the VM gets an `ERL_INETRC` file naming
//!   the test's DNS server (dnsmasq on a loopback port) as its only nameserver, with
//!   `/etc/resolv.conf` and `/etc/hosts` switched off. The SRV *targets* (and a domain
//!   without SRV records) are resolved with `getaddrinfo`, the system's resolver, so
//!   tests give numeric targets (`127.0.0.1`) and always an SRV record: no lookup
//!   leaves the machine.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::ports::free_loopback_addr;
use super::process::{wait_while_running, ServerProcess};
use super::{tail, ACCOUNTS, DOMAIN, IO_TIMEOUT};

/// ejabberd takes 1–3 s to start on an idle machine; a loaded 2-core CI machine compiling
/// in parallel can take much longer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running ejabberd; killed (with its helper processes), and its directory removed, on
/// drop.
pub struct Ejabberd {
    /// Plaintext c2s (no STARTTLS).
    pub c2s: SocketAddr,
    /// The plaintext `ejabberd_s2s_in` listener, with [`EjabberdOptions::s2s`].
    pub s2s: Option<SocketAddr>,
    /// Whether c2s expects a PROXY protocol header (v1 or v2) first on every connection.
    pub proxy_protocol: bool,
    /// The HTTP API (`/api/<command>`), loopback only.
    pub http: SocketAddr,
    log_path: PathBuf,
    output_path: PathBuf,
    // Declared before `dir` so the VM is killed before its Mnesia directory is removed.
    process: ServerProcess,
    dir: TempDir,
}

/// How to start ejabberd.
#[derive(Debug, Clone, Default)]
pub struct EjabberdOptions {
    /// c2s expects a PROXY protocol header (v1 or v2) first on every connection.
    pub proxy_protocol: bool,
    /// Federation: the DNS server (`IP:PORT`, on loopback) through which ejabberd
    /// resolves remote domains (`_xmpp-server._tcp` SRV, then A records).
    pub s2s: Option<SocketAddr>,
}

impl Ejabberd {
    /// Starts ejabberd with host [`DOMAIN`] and accounts [`ACCOUNTS`]; with
    /// `proxy_protocol`, its c2s listener requires a PROXY header on every connection.
    pub fn start(proxy_protocol: bool) -> Ejabberd {
        Ejabberd::start_with(EjabberdOptions {
            proxy_protocol,
            ..EjabberdOptions::default()
        })
    }

    pub fn start_with(options: EjabberdOptions) -> Ejabberd {
        let proxy_protocol = options.proxy_protocol;
        let dir = tempfile::Builder::new()
            .prefix("xmppwall-test-ejabberd-")
            .tempdir()
            .expect("creating a temporary directory for ejabberd");
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap_or_else(|e| panic!("creating {}: {e}", spool.display()));
        let c2s = free_loopback_addr();
        let http = free_loopback_addr();
        let config_path = dir.path().join("ejabberd.yml");
        let log_path = dir.path().join("ejabberd.log");
        let output_path = dir.path().join("ejabberd.out");
        let s2s = options.s2s.map(|_| free_loopback_addr());
        let extra = s2s.map(render_s2s_config).unwrap_or_default();
        let config = render_config(c2s, http, proxy_protocol, &extra);
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));

        let mut command = Command::new("erl");
        command
            .args(["-noinput", "-noshell", "+K", "true"])
            // Erlang reads `-app key value` values as Erlang terms: a path is a string,
            // so it is quoted.
            .args(["-mnesia", "dir"])
            .arg(format!("\"{}\"", spool.display()))
            .args(["-s", "ejabberd"])
            .env("EJABBERD_CONFIG_PATH", &config_path)
            .env("EJABBERD_LOG_PATH", &log_path)
            .env("ERL_LIBS", ejabberd_lib_dir())
            .env("ERL_CRASH_DUMP", dir.path().join("erl_crash.dump"))
            .env("ERL_CRASH_DUMP_BYTES", "0")
            .env("CONTRIB_MODULES_PATH", dir.path().join("contrib"))
            .env("HOME", dir.path())
            .current_dir(dir.path());
        if let Some(nameserver) = options.s2s {
            let inetrc = dir.path().join("inetrc");
            std::fs::write(&inetrc, render_inetrc(nameserver))
                .unwrap_or_else(|e| panic!("writing {}: {e}", inetrc.display()));
            command.env("ERL_INETRC", &inetrc);
        }
        let process = ServerProcess::spawn("ejabberd", command, &output_path);
        let mut ejabberd = Ejabberd {
            c2s,
            s2s,
            proxy_protocol,
            http,
            log_path,
            output_path,
            process,
            dir,
        };

        wait_while_running(
            "answer on its HTTP API",
            &mut ejabberd.process,
            STARTUP_TIMEOUT,
            || api_call(http, "status", "{}").ok().map(|_| ()),
            // Closures capture the fields they use, disjoint from `process`.
            || describe_logs(&ejabberd.log_path, &ejabberd.output_path),
        );
        for account in ACCOUNTS {
            ejabberd.register(account.user, account.password);
        }
        // Listeners start after the application; a TCP connect confirms c2s is up without
        // sending a stream (which would need a PROXY header first).
        wait_while_running(
            "accept TCP on c2s",
            &mut ejabberd.process,
            STARTUP_TIMEOUT,
            || {
                TcpStream::connect_timeout(&c2s, Duration::from_secs(1))
                    .ok()
                    .map(|_| ())
            },
            || describe_logs(&ejabberd.log_path, &ejabberd.output_path),
        );
        ejabberd
    }

    /// Calls an ejabberd API command with a JSON body; returns the JSON answer. Panics on
    /// an HTTP error with ejabberd's message.
    pub fn api(&self, command: &str, body: serde_json::Value) -> serde_json::Value {
        match api_call(self.http, command, &body.to_string()) {
            Ok(answer) => answer,
            Err(e) => panic!("ejabberd API {command} {body}: {e}"),
        }
    }

    /// Registers an account on [`DOMAIN`].
    pub fn register(&self, user: &str, password: &str) {
        self.api(
            "register",
            serde_json::json!({ "user": user, "host": DOMAIN, "password": password }),
        );
    }

    /// The client address of every current session of `user`@[`DOMAIN`], as ejabberd
    /// recorded it (from the PROXY header when there is one).
    pub fn session_addresses(&self, user: &str) -> Vec<IpAddr> {
        let sessions = self.api(
            "user_sessions_info",
            serde_json::json!({ "user": user, "host": DOMAIN }),
        );
        let sessions = sessions
            .as_array()
            .unwrap_or_else(|| panic!("user_sessions_info did not return a list: {sessions}"));
        sessions
            .iter()
            .map(|s| {
                let ip = s["ip"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a session without \"ip\": {s}"));
                // ejabberd prints IPv4-mapped IPv6 addresses as "::FFFF:a.b.c.d".
                let ip: IpAddr = ip
                    .parse()
                    .unwrap_or_else(|e| panic!("session ip {ip:?} is not an address: {e}"));
                match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                }
            })
            .collect()
    }

    /// The client address of `user`'s session, waiting (bounded) for exactly one session
    /// to appear: ejabberd opens the session while answering the bind request, so a test
    /// that just bound a resource may ask a moment before it is listed.
    pub fn session_address(&self, user: &str) -> IpAddr {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let addresses = self.session_addresses(user);
            match addresses.as_slice() {
                [one] => return *one,
                [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => panic!(
                    "expected one session of {user}, found addresses {addresses:?}\n{}",
                    tail(&self.log(), 4000)
                ),
            }
        }
    }

    /// The addresses in the log's "Accepted c2s ... authentication for USER@DOMAIN ...
    /// from IP" lines, oldest first, as written so far. This survives the session ending,
    /// but ejabberd's logger writes with a delay: see [`Self::wait_logged_auth_addresses`].
    pub fn logged_auth_addresses(&self, user: &str) -> Vec<String> {
        let needle = format!("authentication for {user}@{DOMAIN} ");
        self.log()
            .lines()
            .filter(|l| l.contains("Accepted c2s") && l.contains(&needle))
            .filter_map(|l| l.rsplit(" from ").next())
            .map(|ip| ip.trim().to_string())
            .collect()
    }

    /// [`Self::logged_auth_addresses`] once there are at least `count` of them, waiting
    /// (bounded) for ejabberd's logger to write them out.
    pub fn wait_logged_auth_addresses(&self, user: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let found = self.logged_auth_addresses(user);
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "ejabberd logged {} authentications of {user}, expected {count}\n{}",
                found.len(),
                tail(&self.log(), 4000)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The VM's stdout and stderr (console log, crash reports).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `extra`: a listener, top-level options and module lines to add.
fn render_config(
    c2s: SocketAddr,
    http: SocketAddr,
    proxy_protocol: bool,
    extra: &(String, String, String),
) -> String {
    let (extra_listener, extra_options, extra_modules) = extra;
    format!(
        r#"# Generated by the xmppwall test harness (tests/support/ejabberd.rs).
loglevel: info
log_rotate_count: 0
hosts:
  - "{DOMAIN}"
listen:
  -
    port: {c2s_port}
    ip: "{c2s_ip}"
    module: ejabberd_c2s
    use_proxy_protocol: {proxy_protocol}
    starttls: false
{extra_listener}  -
    port: {http_port}
    ip: "{http_ip}"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
{extra_options}auth_method: internal
auth_password_format: scram
# No shaper, no rate limits of ejabberd's own: tests measure xmppwall's.
shaper_rules: {{}}
acl:
  loopback:
    ip:
      - 127.0.0.0/8
api_permissions:
  "loopback admin":
    who:
      acl: loopback
    what: "*"
modules:
  mod_admin_extra: {{}}
  mod_disco: {{}}
  mod_http_api: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
{extra_modules}"#,
        c2s_port = c2s.port(),
        c2s_ip = c2s.ip(),
        http_port = http.port(),
        http_ip = http.ip(),
    )
}

/// The federation part of the configuration: a plaintext `ejabberd_s2s_in` listener
/// on loopback (xmppwall's s2s front is the public one), no STARTTLS either way
/// (`s2s_use_starttls: false`: xmppwall does TLS on the inbound side and its egress
/// front on the outbound side), dialback (`mod_s2s_dialback`), IPv4 only towards
/// remote servers (the test DNS has A records only). Returns the listener, the
/// top-level options and the module lines.
fn render_s2s_config(s2s: SocketAddr) -> (String, String, String) {
    let listener = format!(
        "  -\n    port: {}\n    ip: \"{}\"\n    module: ejabberd_s2s_in\n",
        s2s.port(),
        s2s.ip()
    );
    let options = "s2s_use_starttls: false
s2s_access: all
s2s_dns_timeout: 5
s2s_dns_retries: 1
outgoing_s2s_families:
  - ipv4
"
    .to_owned();
    (listener, options, "  mod_s2s_dialback: {}\n".to_owned())
}

/// Erlang's resolver configuration (`ERL_INETRC`): the test DNS server only.
fn render_inetrc(nameserver: SocketAddr) -> String {
    let ip = match nameserver.ip() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{{{a},{b},{c},{d}}}")
        }
        IpAddr::V6(_) => panic!("the test DNS server listens on IPv4 loopback"),
    };
    format!(
        "{{resolv_conf, \"\"}}.\n{{hosts_file, \"\"}}.\n{{lookup, [dns]}}.\n\
         {{nameserver, {ip}, {port}}}.\n{{timeout, 2000}}.\n{{retry, 2}}.\n",
        port = nameserver.port()
    )
}

/// Where the ejabberd application lives: the directory holding `ejabberd-<version>/`,
/// which Erlang's `ERL_LIBS` must name. Debian puts it under the multiarch directory
/// (`/usr/lib/x86_64-linux-gnu`), other builds under Erlang's own `lib`.
fn ejabberd_lib_dir() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/lib/erlang/lib")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        candidates.extend(entries.flatten().map(|e| e.path()));
    }
    for dir in candidates {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("ejabberd-")
                && entry.path().join("ebin/ejabberd.app").is_file()
            {
                return dir;
            }
        }
    }
    panic!("ejabberd is not installed (no ejabberd-*/ebin/ejabberd.app under /usr/lib); run scripts/test.sh");
}

/// One HTTP/1.1 POST to `/api/<command>`; ejabberd answers JSON. `Err` on connection
/// problems and on non-200 answers (with the body).
fn api_call(http: SocketAddr, command: &str, body: &str) -> Result<serde_json::Value, String> {
    let mut tcp = TcpStream::connect_timeout(&http, Duration::from_secs(1))
        .map_err(|e| format!("connecting to {http}: {e}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("setting timeouts: {e}"))?;
    let request = format!(
        "POST /api/{command} HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {response:?}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP {status}: {body}"));
    }
    serde_json::from_str(body).map_err(|e| format!("answer is not JSON ({e}): {body:?}"))
}

fn describe_logs(log: &Path, output: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let output = std::fs::read_to_string(output).unwrap_or_default();
    format!(
        "--- ejabberd stdout/stderr (tail) ---\n{}\n--- ejabberd log (tail) ---\n{}",
        tail(&output, 4000),
        tail(&log, 8000)
    )
}
