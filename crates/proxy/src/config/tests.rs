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
    assert_eq!(c.timeouts.send, Duration::from_secs(30));
    assert!(c.domains.is_empty());
}

#[test]
fn durations_and_proxy_protocol_are_read() {
    let text =
        format!("{MINIMAL}\n[timeouts]\npreauth = \"2s\"\nidle = \"1m 30s\"\nsend = \"15s\"\n",)
            .replace(
                "address = \"127.0.0.1:15222\"",
                "address = \"127.0.0.1:15222\"\nproxy_protocol = \"v2\"",
            );
    let c = parse(&text).unwrap();
    assert_eq!(c.timeouts.preauth, Duration::from_secs(2));
    assert_eq!(c.timeouts.idle, Duration::from_secs(90));
    assert_eq!(c.timeouts.send, Duration::from_secs(15));
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

#[test]
fn xep0205_limits_are_read_with_tiers_and_off_switches() {
    let text = format!(
        r#"{MINIMAL}
[gate]
max_connections_per_address = 3
connection_attempts = "5/10s"
ipv6_prefix = 56
allow = ["10.0.0.0/8"]
deny = ["192.0.2.0/24", "2001:db8::1"]

[auth]
max_failures = "3/1m"
ban = "10m"
tarpit = "0s"

[limits]
trusted_jids = ["Admin@Example.org"]

[limits.registered]
resources_per_account = 2
distinct_recipients = "4/1m"
bandwidth = {{ rate = 5000, burst = 10000 }}
account_bandwidth = "off"
presence_broadcasts = "off"

[[limits.registered.payload]]
namespace = "http://jabber.org/protocol/ibb"
direction = "to-server"
error = "policy-violation"

[limits.anonymous]
distinct_recipients = "1/1m"

[limits.trusted]
resources_per_account = 50
"#
    );
    let c = parse(&text).unwrap();
    let p = &c.policy_limits;
    assert_eq!(p.gate.max_connections_per_address, Some(3));
    assert_eq!(p.gate.connection_attempts.unwrap().count, 5);
    assert_eq!(p.gate.ipv6_prefix, 56);
    assert!(p.gate.allow.contains("10.1.2.3".parse().unwrap()));
    assert!(p.gate.deny.contains("2001:db8::1".parse().unwrap()));
    assert_eq!(p.auth.max_failures.unwrap().count, 3);
    assert_eq!(p.auth.ban, Duration::from_secs(600));
    assert_eq!(p.auth.tarpit, Duration::ZERO);
    assert_eq!(p.registered.resources_per_account, Some(2));
    assert_eq!(p.registered.distinct_recipients.unwrap().count, 4);
    assert_eq!(p.registered.bandwidth.unwrap().bytes_per_second, 5000);
    assert_eq!(p.registered.account_bandwidth, None);
    assert_eq!(p.registered.presence_broadcasts, None);
    assert_eq!(p.registered.payloads.len(), 1);
    assert_eq!(p.anonymous.distinct_recipients.unwrap().count, 1);
    // the anonymous tier keeps its own defaults for what it does not set
    assert_eq!(p.anonymous.resources_per_account, Some(1));
    assert_eq!(p.trusted.resources_per_account, Some(50));
    assert_eq!(p.trusted_jids, vec!["admin@example.org".to_string()]);
}

#[test]
fn bad_limit_values_are_reported_at_their_lines() {
    let text = format!(
        "{MINIMAL}\n[gate]\nconnection_attempts = \"lots\"\nallow = [\"10.0.0.0/33\"]\n\n[limits.registered]\nresources_per_account = 0\n"
    );
    let err = parse(&text).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![11, 12, 15], "{err}");
    assert!(err.problems[0].message.contains("COUNT/PERIOD"), "{err}");
    assert!(err.problems[1].message.contains("CIDR"), "{err}");
    assert!(err.problems[2].message.contains("at least 1"), "{err}");
}

#[test]
fn peer_limits_are_read_with_defaults_and_off_switches() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.policy_limits.peers,
        xmppwall_policy::limits::PeerLimits::default()
    );
    let text = format!(
        "{MINIMAL}\n[limits.peers]\nstanzas_per_domain = \"600/1m\"\ndistinct_recipients = \"off\"\nsubscription_requests = \"10/1h\"\nmax_tracked_domains = 500\n"
    );
    let p = parse(&text).unwrap().policy_limits.peers;
    assert_eq!(p.stanzas_per_domain.unwrap().count, 600);
    assert_eq!(p.distinct_recipients, None);
    assert_eq!(
        p.subscription_requests.unwrap().period,
        Duration::from_secs(3600)
    );
    assert_eq!(p.max_tracked_domains, 500);
    assert_eq!(p.max_tracked_senders, 100_000);
    // Each mistake is reported: an unknown key, and a value that is no rate.
    let err = parse(&format!("{MINIMAL}\n[limits.peers]\nsenders = 3\n")).unwrap_err();
    assert!(err.to_string().contains("senders"), "{err}");
    let err = parse(&format!(
        "{MINIMAL}\n[limits.peers]\nstanzas_per_domain = \"many\"\n"
    ))
    .unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.line == 11 && p.message.contains("COUNT/PERIOD")),
        "{err}"
    );
}

#[test]
fn unknown_key_in_limits_is_reported() {
    let text = format!("{MINIMAL}\n[limits]\nstanza_byts = 5\n");
    let err = parse(&text).unwrap_err();
    assert!(err.problems[0].message.contains("stanza_byts"), "{err}");
}

#[test]
fn component_front_listener_upstream_and_components_are_read() {
    let text = r#"
[upstream]
address = "127.0.0.1:15222"

[[listen]]
front = "component"
tls = "none"
address = "127.0.0.1:5347"
upstream = "127.0.0.1:15347"

[[component]]
domain = "Bot.Example.org"
secret = "s"

[[component]]
domain = "no secret@here"
"#;
    let err = parse(text).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].line, 16, "{err}");
    let c = parse(&text.replace("no secret@here", "feeds.example.org")).unwrap();
    assert_eq!(c.listeners[0].front, Front::Component);
    assert_eq!(
        c.listeners[0].upstream,
        Some("127.0.0.1:15347".parse().unwrap())
    );
    assert_eq!(c.components[0].domain, "bot.example.org");
    assert_eq!(c.components[0].secret.as_deref(), Some("s"));
    assert_eq!(c.components[1].secret, None);
}

/// Where (line, column) the problems whose message contains `needle` were found.
fn located(err: &ConfigError, needle: &str) -> Vec<(usize, usize)> {
    err.problems
        .iter()
        .filter(|p| p.message.contains(needle))
        .map(|p| (p.line, p.column))
        .collect()
}

#[test]
fn a_component_listener_with_starttls_is_refused_where_it_says_so() {
    let text = r#"
[upstream]
address = "127.0.0.1:15222"

[tls]
default = { cert = "CERT", key = "KEY" }

[[listen]]
front = "component"
tls = "starttls"
address = "127.0.0.1:5347"

[[listen]]
front = "component"
address = "127.0.0.1:5348"
"#;
    let err = parse(text).unwrap_err();
    let refusals = located(&err, "no STARTTLS");
    // The explicit setting is named; a listener that leaves tls out, at its address.
    assert_eq!(refusals, [(10, 7), (15, 11)], "{err}");
}

#[test]
fn a_ban_over_a_century_is_refused_where_it_is_written() {
    let text = format!(
        "{MINIMAL}\n[auth]\nban = \"200y\"\n\n[[rule]]\nname = \"r\"\naction = \"drop\"\nban = \"1000y\"\n"
    );
    let err = parse(&text).unwrap_err();
    let found = located(&err, "a ban lasts at most 100 years");
    assert_eq!(found, [(11, 7), (16, 7)], "{err}");
}

#[test]
fn a_rate_of_zero_is_refused_where_it_is_written() {
    let text = format!(
        "{MINIMAL}\n[gate]\nconnection_attempts = \"0/1m\"\n\n[limits.registered]\nroster_requests = \"0/1h\"\n"
    );
    let err = parse(&text).unwrap_err();
    let lines: Vec<usize> = located(&err, "allows nothing at all")
        .into_iter()
        .map(|(line, _)| line)
        .collect();
    assert_eq!(lines, [11, 14], "{err}");
}

#[test]
fn antispam_sections_are_read_and_their_mistakes_located() {
    let c = parse(&format!(
        "{MINIMAL}\n[registration]\nallow_from = [\"10.0.0.0/8\"]\n\n[federation]\nmode = \"deny\"\ndomains = [\"spam.example\"]\n\n[strangers]\nmessages = \"strip-body\"\n"
    ))
    .unwrap();
    let a = &c.antispam;
    assert!(!a.registration_open("192.0.2.1".parse().unwrap()));
    assert!(a.registration_open("10.0.0.1".parse().unwrap()));
    assert_eq!(
        a.registration.per_address,
        Some(PerPeriod::new(1, Duration::from_secs(600)))
    );
    assert!(a.registration.reserved.contains("postmaster"));
    assert!(a.federation_refuses("spam.example", None));
    assert_eq!(
        a.strangers.map(|s| s.messages),
        Some(xmppwall_policy::antispam::StrangerAction::StripBody)
    );
    let e = parse(&format!(
        "{MINIMAL}\n[federation]\nmode = \"block\"\n\n[strangers]\nsubscriptions = \"strip-body\"\n\n[registration]\nusername_patterns = [\"(\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains(":11:8: unknown mode \"block\""), "{e}");
    assert!(
        e.contains(":14:17: unknown action \"strip-body\"; use pass, drop or bounce"),
        "{e}"
    );
    assert!(e.contains(":17:21: invalid regular expression"), "{e}");
}

#[test]
fn store_defaults_beside_the_config_and_reads_retention() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.store.path.as_deref(),
        Some(Path::new("/nonexistent/xmppwall.db"))
    );
    assert_eq!(c.store.retention, xmppwall_store::Retention::default());

    let text = format!(
        "{MINIMAL}\n[store]\npath = \"state/wall.db\"\n[store.retention]\nconnections = \"7d\"\nverdicts = \"2d\"\nprune_interval = \"10m\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.store.path.as_deref(),
        Some(Path::new("/nonexistent/state/wall.db"))
    );
    assert_eq!(
        c.store.retention.connections,
        Duration::from_secs(7 * 86_400)
    );
    assert_eq!(c.store.retention.verdicts, Duration::from_secs(2 * 86_400));
    assert_eq!(c.store.retention.prune_interval, Duration::from_secs(600));
    assert_eq!(
        c.store.retention.reports,
        xmppwall_store::Retention::default().reports
    );

    let memory = parse(&format!("{MINIMAL}\n[store]\npath = \":memory:\"\n")).unwrap();
    assert_eq!(memory.store.path, None);
}

#[test]
fn store_retention_errors_name_their_line() {
    let text = format!("{MINIMAL}\n[store.retention]\nverdicts = \"soon\"\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("xmppwall.toml:11:12"), "{e}");
    assert!(e.contains("invalid duration \"soon\""), "{e}");
    let e = parse(&format!("{MINIMAL}\n[store]\nfile = \"x.db\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `file`"), "{e}");
}

#[test]
fn reputation_section_is_read() {
    let c = parse(&format!(
        "{MINIMAL}\n[reputation]\nreport_weight = 10\nthrottle_at = \"off\"\nquarantine_at = \"off\"\nban_at = 20\nexempt = [\"partner.example\", \"boss@example.org\"]\n"
    ))
    .unwrap();
    let r = c.antispam.reputation.as_ref().expect("configured");
    assert_eq!(r.ban, Some(20.0));
    assert_eq!(r.quarantine, None);
    assert!(r.throttle.is_none());
    assert!(r.exempt_jids.contains("boss@example.org"));
}

#[test]
fn admin_defaults_to_loopback_and_keeps_the_token_out_of_debug_output() {
    let c = parse(&format!(
        "{MINIMAL}\n[admin]\ntoken = \"0123456789abcdef0123\"\n"
    ))
    .unwrap();
    let admin = c.admin.expect("[admin] read");
    assert_eq!(admin.listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
    assert_eq!(admin.token.as_deref(), Some("0123456789abcdef0123"));
    assert!(!admin.metrics_public);
    assert!(!format!("{admin:?}").contains("0123456789abcdef"));
    assert!(parse(MINIMAL).unwrap().admin.is_none());
}

#[test]
fn admin_on_a_public_address_without_a_token_is_refused_at_its_line() {
    let err = parse(&format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:5380\"\n")).unwrap_err();
    assert_eq!(err.problems[0].line, 11, "{err}");
    assert!(err.to_string().contains("needs a token"), "{err}");
    // Loopback without a token is allowed.
    assert!(parse(&format!("{MINIMAL}\n[admin]\nlisten = \"[::1]:5380\"\n")).is_ok());
}

#[test]
fn admin_token_problems_are_reported() {
    let short = parse(&format!("{MINIMAL}\n[admin]\ntoken = \"short\"\n")).unwrap_err();
    assert!(short.to_string().contains("shorter than 16"), "{short}");
    let missing = parse(&format!(
        "{MINIMAL}\n[admin]\ntoken_file = \"no-such.token\"\n"
    ))
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("cannot read the admin token file"),
        "{missing}"
    );
}

#[test]
fn shared_redis_state_is_read_and_its_mistakes_located() {
    let c = parse(&format!(
        "{MINIMAL}\n[store]\nshared = \"redis\"\nredis = \"redis://127.0.0.1:6390/2\"\nredis_timeout = \"250ms\"\n"
    ))
    .unwrap();
    let redis = c.redis.expect("shared state on");
    assert_eq!(redis.url, "redis://127.0.0.1:6390/2");
    assert_eq!(redis.timeout, Duration::from_millis(250));
    assert_eq!(redis.prefix, "xmppwall");
    assert_eq!(parse(MINIMAL).unwrap().redis, None);

    let e = parse(&format!("{MINIMAL}\n[store]\nshared = \"redis\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(":11:10: shared = \"redis\" needs"), "{e}");
    let e = parse(&format!(
        "{MINIMAL}\n[store]\nshared = \"memcached\"\nredis = \"127.0.0.1:6379\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(":11:10: unknown shared state \"memcached\""),
        "{e}"
    );
}

#[test]
fn nftables_export_is_read_and_odd_names_refused() {
    let c = parse(&format!(
        "{MINIMAL}\n[store.nftables]\ntable = \"wall\"\nset_v4 = \"bad4\"\ncreate = false\nnetns = \"edge\"\n"
    ))
    .unwrap();
    let n = c.nftables.expect("export on");
    assert_eq!((n.family.as_str(), n.table.as_str()), ("inet", "wall"));
    assert_eq!((n.set_v4.as_str(), n.set_v6.as_str()), ("bad4", "banned6"));
    assert!(!n.create);
    assert_eq!(n.netns.as_deref(), Some("edge"));
    assert!(parse(MINIMAL).unwrap().nftables.is_none());
    let e = parse(&format!(
        "{MINIMAL}\n[store.nftables]\ntable = \"x; flush ruleset\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(":11:9: \"x; flush ruleset\" is not an nftables name"),
        "{e}"
    );
}

#[test]
fn s2s_section_and_egress_listener_are_read_and_checked() {
    let text = r#"
[upstream]
address = "127.0.0.1:15222"

[[listen]]
front = "s2s-egress"
tls = "direct"
address = "127.0.0.1:15270"

[s2s]
require_certificate = true
routes = { "Partner.Example" = "192.0.2.7:5269", "bad.example" = "nowhere" }
socks5 = "127.0.0.1:1080"
"#;
    let err = parse(text).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    // the egress listener with TLS (twice: and no certificate), the unparsable route
    assert_eq!(lines, vec![8, 8, 12], "{err}");
    assert!(err.to_string().contains("set tls = \"none\""), "{err}");
    let c = parse(
        &text
            .replace("tls = \"direct\"", "tls = \"none\"")
            .replace(", \"bad.example\" = \"nowhere\"", ""),
    )
    .unwrap();
    assert_eq!(c.listeners[0].front, Front::S2sEgress);
    assert!(c.s2s.require_certificate);
    assert!(c.s2s.egress_require_tls);
    assert_eq!(
        c.s2s.route("partner.example"),
        Some("192.0.2.7:5269".parse().unwrap())
    );
    assert_eq!(c.s2s.socks5, Some("127.0.0.1:1080".parse().unwrap()));
}

#[test]
fn s2s_resolver_is_system_by_default_or_a_nameserver() {
    let base = "[upstream]\naddress = \"127.0.0.1:15222\"\n\n[[listen]]\nfront = \"c2s\"\ntls = \"none\"\naddress = \"127.0.0.1:5222\"\n\n[s2s]\n";
    let c = parse(base).unwrap();
    assert_eq!(c.s2s.resolver, crate::dns::ResolverSetting::System);
    let c = parse(&format!("{base}resolver = \"system\"\n")).unwrap();
    assert_eq!(c.s2s.resolver, crate::dns::ResolverSetting::System);
    let c = parse(&format!("{base}resolver = \"127.0.0.1:5353\"\n")).unwrap();
    assert_eq!(
        c.s2s.resolver,
        crate::dns::ResolverSetting::Nameserver("127.0.0.1:5353".parse().unwrap())
    );
    let err = parse(&format!("{base}resolver = \"dns.example\"\n")).unwrap_err();
    let where_: Vec<(usize, usize)> = err.problems.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(where_, vec![(10, 12)], "{err}");
    assert!(err.to_string().contains("invalid resolver"), "{err}");
}

#[test]
fn upstream_certificates_default_to_a_ca_in_the_state_directory() {
    let base = "[upstream]\naddress = \"127.0.0.1:15222\"\n\n[[listen]]\nfront = \"c2s\"\ntls = \"none\"\naddress = \"127.0.0.1:5222\"\n\n";
    let c = parse(&format!("{base}[s2s]\n")).unwrap();
    assert_eq!(c.s2s.upstream_certificates, None);
    let c = parse(&format!(
        "{base}[s2s]\nupstream_certificates = true\nupstream_insecure_skip_verify = true\n"
    ))
    .unwrap();
    let u = c.s2s.upstream_certificates.unwrap();
    assert_eq!(u.ca_cert, Path::new("/nonexistent/upstream-ca.crt"));
    assert_eq!(u.ca_key, Path::new("/nonexistent/upstream-ca.key"));
    assert!(u.generate);
    assert!(u.insecure_skip_verify);
    assert_eq!(u.server_name, None);
    // Beside the store, where the store is.
    let c = parse(&format!(
        "{base}[store]\npath = \"/var/lib/xmppwall/state.db\"\n\n[s2s]\nupstream_certificates = true\nupstream_server_name = \"XMPP.example.org\"\n"
    ))
    .unwrap();
    let u = c.s2s.upstream_certificates.unwrap();
    assert_eq!(u.ca_cert, Path::new("/var/lib/xmppwall/upstream-ca.crt"));
    assert_eq!(u.server_name.as_deref(), Some("xmpp.example.org"));
}

#[test]
fn upstream_certificate_problems_are_reported_with_their_position() {
    let base = "[upstream]\naddress = \"127.0.0.1:15222\"\n\n[[listen]]\nfront = \"c2s\"\ntls = \"none\"\naddress = \"127.0.0.1:5222\"\n\n[s2s]\n";
    let where_ = |text: &str| {
        let err = parse(&format!("{base}{text}")).unwrap_err();
        let at: Vec<(usize, usize)> = err.problems.iter().map(|p| (p.line, p.column)).collect();
        (at, err.to_string())
    };
    // A CA file without the rest of the option.
    let (at, text) = where_("upstream_ca_cert = \"/etc/xmppwall/ca.crt\"\n");
    assert_eq!(at, vec![(10, 20)], "{text}");
    assert!(text.contains("upstream_certificates = true"), "{text}");
    // Half a CA.
    let (at, text) =
        where_("upstream_certificates = true\nupstream_ca_key = \"/etc/xmppwall/ca.key\"\n");
    assert_eq!(at, vec![(11, 19)], "{text}");
    assert!(text.contains("give both"), "{text}");
    // Files that are not there.
    let (at, text) = where_(
        "upstream_certificates = true\nupstream_ca_cert = \"/nonexistent/ca.crt\"\nupstream_ca_key = \"/nonexistent/ca.key\"\nupstream_server_ca = \"/nonexistent/roots.pem\"\n",
    );
    assert_eq!(at, vec![(11, 20), (12, 19), (13, 22)], "{text}");
    assert!(text.contains("upstream CA certificate"), "{text}");
    // A bad server name; roots and no verification at once.
    let (at, text) = where_(
        "upstream_certificates = true\nupstream_server_name = \"not a name\"\nupstream_insecure_skip_verify = true\nupstream_server_ca = \"/nonexistent/roots.pem\"\n",
    );
    assert_eq!(at, vec![(11, 24), (13, 22), (13, 22)], "{text}");
    assert!(text.contains("not a valid server name"), "{text}");
    assert!(text.contains("has no effect"), "{text}");
}
