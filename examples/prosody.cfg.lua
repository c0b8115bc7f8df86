-- Prosody 0.12 behind xmppwall, as scripts/run-example.sh runs it.
--
-- Prosody listens on loopback only; xmppwall owns the public ports, terminates TLS
-- and speaks plaintext to Prosody. Prosody 0.12 has no `secure_interfaces` (0.13
-- has), so it must be told to allow authentication on the unencrypted loopback hop.
-- That is safe only because nothing but xmppwall can reach 127.0.0.1:15222.
-- Paths are relative to the directory scripts/run-example.sh starts Prosody in.

run_as_root = true              -- the example runs as whoever starts it; drop for a system install
pidfile = "prosody.pid"
data_path = "data"
log = { info = "prosody.log" }

interfaces = { "127.0.0.1" }
c2s_ports = { 15222 }
c2s_direct_tls_ports = { }
legacy_ssl_ports = { }
s2s_ports = { 15269 }
http_ports = { }
https_ports = { }
component_ports = { }

c2s_require_encryption = false
allow_unencrypted_plain_auth = true

authentication = "internal_hashed"
storage = "internal"
allow_registration = false

modules_enabled = {
    "roster"; "saslauth"; "disco"; "ping"; "carbons"; "pep"; "blocklist";
    "vcard4"; "vcard_legacy"; "private"; "smacks"; "version"; "uptime"; "time";
}

VirtualHost "localhost"
