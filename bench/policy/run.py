#!/usr/bin/env python3
"""The cost of a 200-rule policy end to end: Prosody's mod_firewall against xmppwall.

    bench/policy/run.py [--seconds 15] [--rate 100] [--pairs 10] [--pin] [--out DIR]

Three set-ups, one after the other in one run, each with a fresh Prosody 0.12 (Debian)
on loopback and the same legitimate traffic (`xmppwall-bench attack --kind none`:
PAIRS senders each writing RATE chat messages a second to a partner, bodies of about
20 ordinary words, nothing any rule matches):

  prosody            Prosody alone, no rules: the baseline.
  prosody+firewall   Prosody with mod_firewall (prosody-modules) running the rules in
                     its `::preroute` chain (stanzas from local clients).
  xmppwall+prosody   the same rules in xmppwall's `to-server` chain, in front of a
                     Prosody without mod_firewall.

Reported per set-up: messages delivered per second, latency, and the CPU Prosody and
xmppwall spent per delivered message. After each measurement a canary checks that the
rules act: an ordinary message, one with a listed keyword, one matching a pattern and
an ordinary one again, from one account to another; the rule set-ups must stop the
middle two and deliver the others, the baseline deliver all four (DIR/policy-canary.md;
the script fails otherwise). Results: DIR/policy.tsv (raw lines),
DIR/policy.md (the table, with ratios to the baseline). Needs prosody and
prosody-modules (Debian): installs what is missing, as bench/attacks/run.py does.

The 200 rules, and how each side writes them (all match nothing in this traffic, so
every message is delivered and only the cost of looking differs):

  rules     what                                   mod_firewall                          xmppwall
  1         10,000 keywords, whole words           %SEARCH body: body#                   keywords = "list:words"
                                                   %PATTERN word: [A-Za-z]+
                                                   %LIST words: file:...
                                                   SCAN: body for word in words
  2-51      50 regular expressions on the body     INSPECT: body#~=WORD%s+WORD (a Lua    regex = ["WORD\\s+WORD"]
            ("word word")                          pattern: same language here)
  52-101    50 sender domains                      FROM: <*>@DOMAIN                      from = ["*@DOMAIN"]
  102-151   50 recipient domains                   TO: <*>@DOMAIN                        to = ["*@DOMAIN"]
  152-181   30 payload namespaces                  PAYLOAD: urn:example:NS               payload = ["urn:example:NS"]
  182-191   10 iq kind/type/payload                KIND: iq, TYPE: set, PAYLOAD: NS      kind, type, payload
  192       1,000 sender JIDs (list)               CHECK LIST: jids contains $<@from|bare>   from = "list:jids"
  193       1,000 recipient JIDs (list)            CHECK LIST: jids contains $<@to|bare>     to = "list:jids"
  194       1,000 sender domains (list)            CHECK LIST: domains contains $<@from|host>  from_domain = "list:domains"
  195-200   6 rate limits, never reached           %RATE rN: 100000 (burst 100000)       rate_limit = { key, limit = "100000/1s" }
            (per sender, recipient, domain)        LIMIT: rN on $<@from|bare> ...

Every rule that matched would drop the stanza (mod_firewall `DROP.`, xmppwall
`action = "drop"`); the keyword rule bounces (`BOUNCE=policy-violation`, `bounce`).
Differences that remain: xmppwall's keywords are case-insensitive and mod_firewall's
SCAN is not (the traffic and the lists are lower case); xmppwall's `from_domain` also
matches subdomains. xmppwall's XEP-0205 limits stay on, raised so they never fire
(as in bench/run-relay.sh).

Loopback only; the traffic is bounded by --seconds and --rate.
"""

import argparse
import base64
import os
import random
import socket
import time
import subprocess
import sys
import tempfile
import shutil
import signal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "attacks"))
import run as attacks  # noqa: E402  (free_port, answers_stream, ensure_tools)

PASSWORD = "secret"
DOMAIN = "localhost"


def words(rng, n, exclude):
    out, seen = [], set(exclude)
    while len(out) < n:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 11)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


ORDINARY = {"hello", "how", "are", "you", "today", "see", "the", "meeting", "at", "noon", "and",
            "bring", "coffee", "thanks", "for", "photos", "will", "call", "later", "tonight"}


def policy(d):
    """Writes the lists and both rule files into `d`; returns what the canary needs to
    make each kind of content rule match: a keyword of the list and a regex's two words."""
    rng = random.Random(0x2545F491)
    keywords = words(rng, 10_000, ORDINARY)
    pairs = [(a, b) for a, b in zip(words(rng, 50, ORDINARY), words(rng, 50, ORDINARY))]
    from_domains = [f"{w}.example" for w in words(rng, 50, ())]
    to_domains = [f"{w}.example" for w in words(rng, 50, ())]
    payloads = [f"urn:example:{w}" for w in words(rng, 40, ())]
    jids = [f"{w}@spam.example" for w in words(rng, 1000, ())]
    list_domains = [f"{w}.example" for w in words(rng, 1000, ())]
    (d / "words.txt").write_text("\n".join(keywords) + "\n")
    (d / "jids.txt").write_text("\n".join(jids) + "\n")
    (d / "domains.txt").write_text("\n".join(list_domains) + "\n")

    fw = [
        "# Generated by bench/policy/run.py: 200 rules, see its docstring.",
        "%SEARCH body: body#",
        "%PATTERN word: [A-Za-z]+",
        f"%LIST words: file:{d}/words.txt",
        f"%LIST jids: file:{d}/jids.txt",
        f"%LIST domains: file:{d}/domains.txt",
    ]
    for i in range(6):
        fw.append(f"%RATE r{i}: 100000 (burst 100000)")
    wall = [
        "# Generated by bench/policy/run.py: the same 200 rules, see its docstring.",
        "[lists.words]", 'kind = "keywords"', f'file = "{d}/words.txt"',
        "[lists.jids]", 'kind = "jids"', f'file = "{d}/jids.txt"',
        "[lists.domains]", 'kind = "domains"', f'file = "{d}/domains.txt"',
    ]
    count = 0

    def rule(fw_conditions, fw_action, wall_match, wall_action="drop", extra=""):
        nonlocal count
        count += 1
        fw.extend(["", "::preroute", *fw_conditions, fw_action])
        wall.extend(["", "[[rule]]", f'name = "r{count}"', 'chain = "to-server"', f'action = "{wall_action}"'])
        if extra:
            wall.append(extra)
        wall.extend(["[rule.match]", *wall_match])

    rule(["KIND: message", "SCAN: body for word in words"], "BOUNCE=policy-violation (keyword)",
         ['kind = ["message"]', 'keywords = "list:words"'], "bounce")
    for a, b in pairs:
        rule(["KIND: message", f"INSPECT: body#~={a}%s+{b}"], "DROP.",
             ['kind = ["message"]', f'regex = ["{a}\\\\s+{b}"]'])
    for dom in from_domains:
        rule([f"FROM: <*>@{dom}"], "DROP.", [f'from = ["*@{dom}"]'])
    for dom in to_domains:
        rule([f"TO: <*>@{dom}"], "DROP.", [f'to = ["*@{dom}"]'])
    for ns in payloads[:30]:
        rule([f"PAYLOAD: {ns}"], "DROP.", [f'payload = ["{ns}"]'])
    for ns in payloads[30:]:
        rule(["KIND: iq", "TYPE: set", f"PAYLOAD: {ns}"], "DROP.",
             ['kind = ["iq"]', 'type = ["set"]', f'payload = ["{ns}"]'])
    rule(["CHECK LIST: jids contains $<@from|bare>"], "DROP.", ['from = "list:jids"'])
    rule(["CHECK LIST: jids contains $<@to|bare>"], "DROP.", ['to = "list:jids"'])
    rule(["CHECK LIST: domains contains $<@from|host>"], "DROP.", ['from_domain = "list:domains"'])
    for i, (expr, key) in enumerate([("$<@from|bare>", "from"), ("$<@to|bare>", "to"),
                                     ("$<@from|host>", "from-domain"), ("$<@from|bare>", "account"),
                                     ("$<@to|bare>", "to"), ("$<@from|bare>", "from")]):
        rule(["KIND: message", f"LIMIT: r{i} on {expr}"], "DROP.", ['kind = ["message"]'],
             extra=f'rate_limit = {{ key = "{key}", limit = "100000/1s" }}')
    assert count == 200, count
    (d / "rules.pfw").write_text("\n".join(fw) + "\n")
    (d / "rules.toml").write_text("\n".join(wall) + "\n")
    return {"keyword": keywords[0], "pair": pairs[0]}


def prosody_config(d, port, firewall):
    modules = ["roster", "saslauth", "disco", "ping"] + (["firewall"] if firewall else [])
    return f"""-- Generated by bench/policy/run.py
run_as_root = true
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
log = {{ warn = "{d}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
modules_enabled = {{ {"; ".join(f'"{m}"' for m in modules)} }}
modules_disabled = {{ "limits" }}
firewall_scripts = {{ "{d}/rules.pfw" }}
VirtualHost "{DOMAIN}"
"""


WALL_CONFIG = """\
# Generated by bench/policy/run.py
domains = ["{domain}"]
include = ["{dir}/rules.toml"]

[upstream]
address = "127.0.0.1:{prosody}"
proxy_protocol = "none"

[[listen]]
front = "c2s"
tls = "none"
address = "127.0.0.1:{port}"

# XEP-0205 limits on, raised so that they never fire (as bench/run-relay.sh).
[gate]
max_connections_per_address = 1000000
connection_attempts = "1000000/1s"

[limits.registered]
distinct_recipients = "1000000/1s"
bandwidth = {{ rate = 1000000000, burst = 1000000000 }}
account_bandwidth = {{ rate = 1000000000, burst = 1000000000 }}
roster_requests = "1000000/1s"
subscription_requests = "1000000/1s"
presence_broadcasts = "1000000/1s"

[log]
level = "warn"
"""


class Setup:
    def __init__(self, name, pin):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="xmppwall-policy-"))
        self.procs = {}
        pin_argv = ["taskset", "-c", "1"] if pin else []
        self.probes = policy(self.dir)
        accounts = self.dir / "data" / DOMAIN / "accounts"
        accounts.mkdir(parents=True)
        for i in range(2 * 50):
            (accounts / f"legit{i}.dat").write_text(f'return {{\n\t["password"] = "{PASSWORD}";\n}};\n')
        prosody_port = attacks.free_port()
        (self.dir / "prosody.cfg.lua").write_text(
            prosody_config(self.dir, prosody_port, firewall=(name == "prosody+firewall")))
        self.start("prosody", pin_argv + ["prosody", "-F", "--config", str(self.dir / "prosody.cfg.lua")])
        if not attacks.answers_stream(prosody_port):
            raise SystemExit(f"Prosody did not start; see {self.dir}")
        self.port = prosody_port
        if name == "xmppwall+prosody":
            port = attacks.free_port()
            (self.dir / "xmppwall.toml").write_text(
                WALL_CONFIG.format(domain=DOMAIN, dir=self.dir, prosody=prosody_port, port=port))
            check = subprocess.run([str(ROOT / "target/release/xmppwall"), "check", "--config",
                                    str(self.dir / "xmppwall.toml")], capture_output=True, text=True)
            if check.returncode != 0:
                raise SystemExit(f"xmppwall refuses the generated config:\n{check.stdout}{check.stderr}")
            self.start("xmppwall", pin_argv + [str(ROOT / "target/release/xmppwall"), "run", "--config",
                                               str(self.dir / "xmppwall.toml")])
            if not attacks.answers_stream(port):
                raise SystemExit(f"xmppwall did not start; see {self.dir}")
            self.port = port

    def start(self, name, argv):
        out = open(self.dir / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, keep=False):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if keep:
            attacks.say(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """Just enough of an XMPP client for the canary: plaintext stream, SASL PLAIN, bind."""

    HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
              "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")

    def __init__(self, port, user):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.send(self.HEADER)
        self.read_until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        got = self.read_until(b"</success>", b"/>", b"</failure>")
        if b"<success" not in got:
            raise SystemExit(f"canary: {user} could not log in: {got[-200:]!r}")
        self.send(self.HEADER)
        self.read_until(b"</stream:features>")
        self.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  "<resource>canary</resource></bind></iq>")
        self.read_until(b"</iq>")
        self.send("<presence/>")

    def send(self, text):
        self.sock.sendall(text.encode())

    def read_until(self, *markers, timeout=10.0):
        """Everything read up to and including the first of `markers`."""
        deadline = time.time() + timeout
        while True:
            hits = [(self.buf.find(m), m) for m in markers if self.buf.find(m) >= 0]
            if hits:
                at, m = min(hits)
                out, self.buf = self.buf[:at + len(m)], self.buf[at + len(m):]
                return out
            if time.time() > deadline:
                raise SystemExit(f"canary: timed out waiting for {markers}; read {self.buf[-300:]!r}")
            self.sock.settimeout(max(0.1, deadline - time.time()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit(f"canary: stream closed; read {self.buf[-300:]!r}")
            self.buf += chunk


def canary(setup):
    """Checks that the rules act: one message per kind of content rule (a keyword of the
    list, bounced; a pattern, dropped) between two ordinary messages, from legit98 to
    legit99. The last ordinary message arriving proves that anything missing before it
    was stopped (one sender's messages to one recipient stay in order). Returns, per
    probe, whether the recipient got it."""
    a, b = setup.probes["pair"]
    probes = [("first", "hello how are you"),
              ("keyword", f"hello {setup.probes['keyword']} today"),
              ("pattern", f"see {a} {b} later"),
              ("last", "thanks see you")]
    receiver = Client(setup.port, "legit99")
    sender = Client(setup.port, "legit98")
    time.sleep(0.5)  # both available before the first message
    for pid, body in probes:
        sender.send(f"<message to='legit99@{DOMAIN}' type='chat' id='canary-{pid}'><body>{body}</body></message>")
    got = receiver.read_until(b"canary-last")
    return {pid: f"canary-{pid}".encode() in got for pid, _ in probes}


SETUPS = ["prosody", "prosody+firewall", "xmppwall+prosody"]


def fnum(row, key):
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return float("nan")


def table(rows):
    base = next((r for r in rows if r.get("label") == "prosody"), None)
    out = ["| set-up | sent | delivered | msg/s delivered | × baseline | p50 ms | p99 ms "
           "| Prosody CPU % | Prosody CPU µs/msg | × baseline | xmppwall CPU % | xmppwall CPU µs/msg "
           "| Prosody + xmppwall µs/msg | × baseline |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]

    def per_msg(r, name):
        d = fnum(r, "delivered")
        return fnum(r, f"{name}_cpu_pct") / 100.0 * fnum(r, "seconds") * 1e6 / d if d else float("nan")

    def rate(r):
        return fnum(r, "delivered") / fnum(r, "seconds")

    for r in rows:
        p_us = per_msg(r, "prosody")
        w_us = per_msg(r, "xmppwall") if "xmppwall_cpu_pct" in r else 0.0
        total = p_us + w_us
        b_rate = rate(base) if base else float("nan")
        b_us = per_msg(base, "prosody") if base else float("nan")
        out.append(
            f"| {r['label']} | {r['sent']} | {r['delivered']} | {rate(r):.0f} | {rate(r) / b_rate:.2f} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['prosody_cpu_pct']} | {p_us:.0f} | {p_us / b_us:.2f} "
            f"| {r.get('xmppwall_cpu_pct', '–')} | {w_us:.0f} | {total:.0f} | {total / b_us:.2f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=15, help="how long each set-up is measured")
    ap.add_argument("--pairs", type=int, default=10, help="sender/receiver pairs (at most 50)")
    ap.add_argument("--rate", type=int, default=100,
                    help="messages per second each sender writes (default 100: 1,000 a second in all, "
                         "which Prosody keeps up with; raise it to find where each set-up saturates)")
    ap.add_argument("--body-words", type=int, default=20, help="ordinary words in each body")
    ap.add_argument("--pin", action="store_true", help="servers on CPU 1, the load generator on CPU 0")
    ap.add_argument("--setups", default=",".join(SETUPS), help="comma-separated: " + ", ".join(SETUPS))
    ap.add_argument("--no-build", action="store_true", help="use the release binaries already in target/")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories (configs, logs)")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--report-only", action="store_true", help="redo the table from DIR/policy.tsv")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "policy.tsv"
    if not args.report_only:
        attacks.ensure_tools(build=not args.no_build)
        results.unlink(missing_ok=True)
        canaries = []
        subprocess.run(["uptime"])
        for name in args.setups.split(","):
            if name not in SETUPS:
                raise SystemExit(f"unknown set-up {name}; known: {', '.join(SETUPS)}")
            setup = Setup(name, args.pin)
            try:
                argv = (["taskset", "-c", "0"] if args.pin else []) + [
                    str(ROOT / "target/release/xmppwall-bench"), "attack", "--kind", "none",
                    "--target", f"127.0.0.1:{setup.port}", "--seconds", str(args.seconds),
                    "--pairs", str(args.pairs), "--rate", str(args.rate), "--body-words", str(args.body_words),
                    "--password", PASSWORD, "--label", name, "--results", str(results)]
                for pname, p in setup.procs.items():
                    argv += ["--process", f"{pname}={p.pid}"]
                attacks.say(f"policy: {name}")
                done = subprocess.run(argv, timeout=args.seconds + 120)
                if done.returncode != 0:
                    attacks.say(f"{name} failed (exit {done.returncode})")
                seen = canary(setup)
                expected = {"first": True, "keyword": name == "prosody", "pattern": name == "prosody",
                            "last": True}
                verdict = "as expected" if seen == expected else "NOT AS EXPECTED"
                attacks.say(f"canary {name}: delivered {seen}: {verdict}")
                canaries.append((name, seen, verdict))
            finally:
                setup.stop(keep=args.keep)
        subprocess.run(["uptime"])
        lines = ["", "Canary after the measurement (a message per kind of content rule, between two "
                 "ordinary ones; delivered or not):", "",
                 "| set-up | ordinary | keyword | pattern | ordinary | verdict |", "|---|---|---|---|---|---|"]
        for name, seen, verdict in canaries:
            yes = {True: "delivered", False: "stopped"}
            lines.append(f"| {name} | {yes[seen['first']]} | {yes[seen['keyword']]} | {yes[seen['pattern']]} "
                         f"| {yes[seen['last']]} | {verdict} |")
        (out / "policy-canary.md").write_text("\n".join(lines) + "\n")
    rows = attacks.read_results(results)
    report = table(rows)
    canary_file = out / "policy-canary.md"
    if canary_file.exists():
        report += canary_file.read_text()
    (out / "policy.md").write_text(report)
    print(report)
    if not args.report_only and any(v != "as expected" for _, _, v in canaries):
        raise SystemExit("a canary was not handled as the rules say: see above")


if __name__ == "__main__":
    main()
