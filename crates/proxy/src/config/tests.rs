use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/nonexistent/xmppwall.toml"), text)
}

const MINIMAL: &str = r#"
[upstream]
address = "127.0.0.1:15222"

[[listen]]
front = "c2s"
tls = "none"
address = "127.0.0.1:5222"
"#;

#[test]
fn minimal_plaintext_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.upstream.address, "127.0.0.1:15222".parse().unwrap());
    assert_eq!(c.upstream.proxy_protocol, ProxyProtocol::None);
    assert_eq!(c.listeners[0].tls, ListenerTls::None);
    assert_eq!(c.limits.stanza_bytes, 262_144);
    assert_eq!(c.limits.stanza_bytes_close, 1_048_576);
    assert_eq!(c.timeouts.preauth, Duration::from_secs(30));
    assert_eq!(c.timeouts.idle, Duration::from_secs(600));
    assert!(c.domains.is_empty());
}

#[test]
fn durations_and_proxy_protocol_are_read() {
    let text = format!("{MINIMAL}\n[timeouts]\npreauth = \"2s\"\nidle = \"1m 30s\"\n",).replace(
        "address = \"127.0.0.1:15222\"",
        "address = \"127.0.0.1:15222\"\nproxy_protocol = \"v2\"",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.timeouts.preauth, Duration::from_secs(2));
    assert_eq!(c.timeouts.idle, Duration::from_secs(90));
    assert_eq!(c.upstream.proxy_protocol, ProxyProtocol::V2);
}

#[test]
fn syntax_error_reports_line_and_column() {
    let err = parse("[upstream]\naddress = \"127.0.0.1:1\"\nproxy_protocol = \n").unwrap_err();
    let p = &err.problems[0];
    assert_eq!(p.line, 3, "{err}");
    assert!(
        p.to_string().starts_with("/nonexistent/xmppwall.toml:3:"),
        "{err}"
    );
}

#[test]
fn unknown_key_is_reported_at_its_line() {
    let text = MINIMAL.replace("tls = \"none\"", "tls = \"none\"\nbogus = 1");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.problems[0].line, 8, "{err}");
    assert!(err.problems[0].message.contains("bogus"), "{err}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_position() {
    let text = r#"
[upstream]
address = "not an address"

[[listen]]
front = "c2s"
address = "127.0.0.1:5222"

[timeouts]
idle = "forever"
"#;
    let err = parse(text).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    // the bad address, the TLS listener without a certificate, the bad duration
    assert_eq!(lines, vec![3, 7, 10], "{err}");
    assert!(err.problems[0].message.contains("IP:PORT"), "{err}");
    assert!(err.problems[1].message.contains("certificate"), "{err}");
    assert!(err.problems[2].message.contains("unit"), "{err}");
}

#[test]
fn missing_certificate_file_is_named() {
    let text = format!(
        "{MINIMAL}\n[tls]\ndefault = {{ cert = \"missing.crt\", key = \"missing.key\" }}\n"
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(
        err.problems[0].message.contains("/nonexistent/missing.crt"),
        "{err}"
    );
    assert_eq!(err.problems[0].line, 11, "{err}");
}

#[test]
fn close_limit_below_bounce_limit_is_refused() {
    let text = format!("{MINIMAL}\n[limits]\nstanza_bytes = 10000\nstanza_bytes_close = 5000\n");
    let err = parse(&text).unwrap_err();
    assert!(
        err.problems[0].message.contains("stanza_bytes_close"),
        "{err}"
    );
}

#[test]
fn missing_upstream_and_listeners_are_both_reported() {
    let err = parse("domains = [\"example.org\"]\n").unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn line_column_counts_characters_not_bytes() {
    assert_eq!(line_column("ab\ncé=x", 7), (2, 4));
    assert_eq!(line_column("", 0), (1, 1));
}
