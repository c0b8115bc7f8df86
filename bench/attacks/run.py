#!/usr/bin/env python3
"""The attack suite: every attack against Prosody alone and against the same Prosody
behind xmppwall, while legitimate users exchange messages.

    bench/attacks/run.py [--seconds 15] [--only spim,oversized] [--out DIR]
                         [--setups prosody,xmppwall,xmppwall-relay] [--pin]

For each attack and each set-up a fresh Prosody (and xmppwall) starts in a temporary
directory on loopback, `xmppwall-bench attack` logs the legitimate users in, runs the
attack for --seconds, and reports what the legitimate users saw (messages sent,
delivered, bounced, lost; latency; fresh logins) and what the processes spent (CPU
and peak memory). Results: DIR/attacks.tsv (one line a run), DIR/attacks.md (the
table), DIR/attacks-*.svg and .png (plots). Needs prosody and prosody-modules
(Debian), matplotlib (pip); installs what is missing.

Set-ups: `prosody` (alone), `xmppwall` (in front, the default configuration below),
`xmppwall-relay` (the same with `[upstream] defer_connect = false`: every stream is
relayed to Prosody from its header on, as before xmppwall answered first headers
itself). `--pin` runs Prosody and xmppwall on CPU 1 and the load generator (legitimate
users and attacker) on CPU 0, to tell the servers' latency from the generator's.

Loopback only: Prosody and xmppwall listen on 127.0.0.1; attackers connect from
127.10.0.0/16 and up, legitimate users from 127.200.0.0/16. Every attack is bounded
in time and in connections (see bench/loadgen/src/attack.rs).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ATTACKS = [
    "none",
    "connection-flood",
    "slowloris",
    "stanza-flood",
    "spim",
    "subscription-flood",
    "oversized",
    "deep-nesting",
    "billion-laughs",
    "registration-flood",
    "auth-brute-force",
]
PAIRS = 10
PASSWORD = "secret"


def say(*a):
    print("attacks:", *a, file=sys.stderr, flush=True)


def ensure_tools(build=True):
    missing = [p for p, f in [("prosody", "/usr/bin/prosody"),
                              ("prosody-modules", "/usr/lib/prosody/modules/mod_firewall/mod_firewall.lua")]
               if not os.path.exists(f)]
    if missing:
        say("installing", *missing)
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(sudo + ["apt-get", "update"], check=True, env=env)
        subprocess.run(sudo + ["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True, env=env)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say("installing matplotlib")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    if not build:
        return
    say("building release binaries")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "xmppwall", "-p", "xmppwall-bench"],
                   cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_stream(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                          b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
                s.settimeout(2)
                got = b""
                while b"</stream:features>" not in got:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                if b"</stream:features>" in got:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


# Prosody's own protections, as its documentation recommends them: mod_limits' rate for
# c2s (the value of Debian's default config), the stanza size limits (defaults, written
# out), mod_register_limits, and from prosody-modules mod_c2s_conn_throttle and
# mod_firewall rules limiting messages and subscription requests per account (the
# latter as ejabberd's mod_pres_counter: 5 per minute).
FIREWALL_RULES = """\
%RATE messages: 10 (burst 30)
%RATE subscriptions: 0.0833 (burst 5)

::preroute
KIND: message
LIMIT: messages on $<@from|bare>
BOUNCE=policy-violation (Too many messages)

::preroute
KIND: presence
TYPE: subscribe
LIMIT: subscriptions on $<@from|bare>
DROP.
"""


def prosody_config(d, port, behind_wall):
    modules = ["roster", "saslauth", "disco", "ping", "register", "blocklist", "limits", "firewall"]
    # Behind xmppwall every connection comes from xmppwall's address (Prosody 0.12 reads
    # no PROXY header), so Prosody's per-address protections would throttle everyone at
    # once: the operator leaves them to xmppwall. Per-account ones stay the same.
    if not behind_wall:
        modules.append("c2s_conn_throttle")
    allowlist = '{ "127.0.0.1" }' if behind_wall else "{ }"
    return f"""-- Generated by bench/attacks/run.py
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
limits = {{ c2s = {{ rate = "10kb/s"; burst = "2s" }} }}
c2s_stanza_size_limit = 256*1024
c2s_unauthed_stanza_size_limit = 10000
allow_registration = true
min_seconds_between_registrations = 60
registration_allowlist = {allowlist}
cthrottler_logins_count = 3
cthrottler_time = 60
firewall_scripts = {{ "{d}/rules.pfw" }}
VirtualHost "localhost"
"""


WALL_CONFIG = """\
# Generated by bench/attacks/run.py: xmppwall with the protections an operator of a
# public server would turn on (docs/limits.md, docs/antispam.md).
domains = ["localhost"]

[upstream]
address = "127.0.0.1:{prosody}"
proxy_protocol = "none"
defer_connect = {defer}

[[listen]]
front = "c2s"
tls = "none"
address = "127.0.0.1:{port}"

[gate]
max_connections_per_address = 10
connection_attempts = "60/1m"

[auth]
max_failures = "5/10m"
ban = "10m"
tarpit = "1s"

[limits]
preauth_stanza_bytes = 10000
stanza_bytes = 262144
stanza_bytes_close = 1048576

[limits.registered]
distinct_recipients = "30/1m"
subscription_requests = "5/1m"
bandwidth = {{ rate = 4000, burst = 20000 }}
bandwidth_close_after = "10s"

[registration]
per_address = "1/10m"
per_prefix = "10/1h"

[timeouts]
preauth = "10s"
idle = "10m"

[log]
level = "warn"
"""


class Run:
    """One set-up: Prosody, and xmppwall in front of it when asked."""

    def __init__(self, behind_wall, defer=True, pin=False):
        self.dir = Path(tempfile.mkdtemp(prefix="xmppwall-attack-"))
        self.behind_wall = behind_wall
        self.pin = ["taskset", "-c", "1"] if pin else []
        self.procs = {}
        prosody_port = free_port()
        accounts = self.dir / "data" / "localhost" / "accounts"
        accounts.mkdir(parents=True)
        users = [f"legit{i}" for i in range(2 * PAIRS)] + [f"fresh{i}" for i in range(10)] + ["mallory", "victim"]
        for user in users:
            (accounts / f"{user}.dat").write_text(f'return {{\n\t["password"] = "{PASSWORD}";\n}};\n')
        (self.dir / "rules.pfw").write_text(FIREWALL_RULES)
        (self.dir / "prosody.cfg.lua").write_text(prosody_config(self.dir, prosody_port, behind_wall))
        self.start("prosody", self.pin + ["prosody", "-F", "--config", str(self.dir / "prosody.cfg.lua")])
        if not answers_stream(prosody_port):
            raise SystemExit(f"Prosody did not start; see {self.dir}")
        self.port = prosody_port
        if behind_wall:
            wall_port = free_port()
            (self.dir / "xmppwall.toml").write_text(
                WALL_CONFIG.format(prosody=prosody_port, port=wall_port, defer="true" if defer else "false"))
            self.start("xmppwall", self.pin + [str(ROOT / "target/release/xmppwall"), "run", "--config",
                                               str(self.dir / "xmppwall.toml")])
            if not answers_stream(wall_port):
                raise SystemExit(f"xmppwall did not start; see {self.dir}")
            self.port = wall_port

    def start(self, name, argv):
        out = open(self.dir / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


SETUPS = {
    # name: (label, behind xmppwall, defer_connect)
    "prosody": ("prosody", False, True),
    "xmppwall": ("xmppwall+prosody", True, True),
    "xmppwall-relay": ("xmppwall(relay)+prosody", True, False),
}


def run_one(attack, setup, seconds, results, pin):
    label, behind_wall, defer = SETUPS[setup]
    if pin:
        label += " pinned"
    run = Run(behind_wall, defer=defer, pin=pin)
    try:
        argv = (["taskset", "-c", "0"] if pin else []) + [
                str(ROOT / "target/release/xmppwall-bench"), "attack", "--target", f"127.0.0.1:{run.port}",
                "--kind", attack, "--seconds", str(seconds), "--pairs", str(PAIRS), "--password", PASSWORD,
                "--label", label, "--results", str(results)]
        for name, p in run.procs.items():
            argv += ["--process", f"{name}={p.pid}"]
        say(f"{attack} against {label}")
        done = subprocess.run(argv, timeout=seconds + 120)
        if done.returncode != 0:
            say(f"{attack} against {label} failed (exit {done.returncode})")
    finally:
        run.stop()


def read_results(path):
    rows = []
    for line in path.read_text().splitlines():
        rows.append(dict(f.split("=", 1) for f in line.split("\t") if "=" in f))
    return rows


def fnum(row, key):
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return float("nan")


def table(rows):
    out = ["| attack | set-up | legit sent | delivered | bounced | lost | p50 ms | p99 ms | fresh logins ok "
           "| Prosody CPU % | Prosody peak RSS MiB | xmppwall CPU % | xmppwall peak RSS MiB | attacker units | cut "
           "| attacks accepted | load generator CPU % (attacker) | waiting for a CPU %: Prosody / xmppwall / load generator |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        sent, delivered = fnum(r, "sent"), fnum(r, "delivered")
        pct = 100.0 * delivered / sent if sent else float("nan")
        wall = r.get("xmppwall_cpu_pct")
        out.append("| {a} | {l} | {s:.0f} | {d:.0f} ({p:.1f} %) | {b} | {lost} | {p50} | {p99} | {lo}/{la} | {pc} | {pr:.0f} | "
                   "{wc} | {wr} | {u} | {c} | {acc} | {lg} | {waits} |".format(
                       a=r["attack"], l=r["label"], s=sent, d=delivered, p=pct, b=r.get("bounced"),
                       lost=r.get("lost"), p50=r.get("p50_ms"), p99=r.get("p99_ms"), lo=r.get("logins_ok"),
                       la=r.get("logins"), pc=r.get("prosody_cpu_pct"), pr=fnum(r, "prosody_rss_kib") / 1024,
                       wc=wall if wall else "–",
                       wr=f"{fnum(r, 'xmppwall_rss_kib') / 1024:.0f}" if wall else "–",
                       u=r.get("attack_units"), c=r.get("attack_cut"), acc=r.get("attack_accepted", "–"),
                       lg=(f"{r['loadgen_cpu_pct']} ({r.get('attacker_thread_cpu_pct', '–')})"
                           if "loadgen_cpu_pct" in r else "–"),
                       waits=" / ".join(r.get(f"{n}_wait_pct", "–") for n in ("prosody", "xmppwall", "loadgen"))))
    return "\n".join(out) + "\n"


def plots(rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in dict.fromkeys(r["attack"] for r in rows)]
    # Every set-up in the results, in the order they ran (pinned runs carry it in
    # their label).
    labels = list(dict.fromkeys(r["label"] for r in rows))
    by = {(r["attack"], r["label"]): r for r in rows}

    def series(key, transform=lambda r, v: v):
        return {l: [transform(by[(a, l)], fnum(by[(a, l)], key)) if (a, l) in by else float("nan")
                    for a in attacks] for l in labels}

    delivered = series("delivered", lambda r, v: 100.0 * v / fnum(r, "sent") if fnum(r, "sent") else float("nan"))
    charts = [
        ("delivered", "legitimate messages delivered (%)", delivered, None),
        ("p99", "legitimate message latency, p99 (ms, log scale)", series("p99_ms"), "log"),
        ("prosody-cpu", "Prosody CPU during the attack (% of one core)", series("prosody_cpu_pct"), None),
    ]
    for name, title, data, scale in charts:
        fig, ax = plt.subplots(figsize=(11, 4.2))
        width = 0.8 / len(labels)
        xs = range(len(attacks))
        for i, l in enumerate(labels):
            offset = (i - (len(labels) - 1) / 2) * width
            ax.bar([x + offset for x in xs], data[l], width, label=l)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(attacks, rotation=30, ha="right")
        ax.set_title(title)
        if scale:
            ax.set_yscale(scale)
        if name == "p99":
            ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="100 ms goal")
        ax.legend()
        fig.tight_layout()
        for ext in ("svg", "png"):
            fig.savefig(out / f"attacks-{name}.{ext}", dpi=90)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=15, help="how long each attack runs")
    ap.add_argument("--only", help="comma-separated attacks (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench/results"), help="where results and plots go")
    ap.add_argument("--report-only", action="store_true", help="redo the table and plots from DIR/attacks.tsv")
    ap.add_argument("--setups", default="prosody,xmppwall",
                    help="comma-separated set-ups: " + ", ".join(SETUPS) + " (default: prosody,xmppwall)")
    ap.add_argument("--pin", action="store_true",
                    help="Prosody and xmppwall on CPU 1, the load generator on CPU 0")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries already in target/")
    ap.add_argument("--keep", action="store_true", help="append to DIR/attacks.tsv instead of replacing it")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "attacks.tsv"
    if not args.report_only:
        ensure_tools(build=not args.no_build)
        attacks = args.only.split(",") if args.only else ATTACKS
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise SystemExit(f"unknown attacks: {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
        setups = args.setups.split(",")
        unknown = [x for x in setups if x not in SETUPS]
        if unknown:
            raise SystemExit(f"unknown set-ups: {', '.join(unknown)}; known: {', '.join(SETUPS)}")
        if not args.keep:
            results.unlink(missing_ok=True)
        subprocess.run(["uptime"])
        for attack in attacks:
            for setup in setups:
                run_one(attack, setup, args.seconds, results, args.pin)
        subprocess.run(["uptime"])
    rows = read_results(results)
    (out / "attacks.md").write_text(table(rows))
    plots(rows, out)
    print(table(rows))


if __name__ == "__main__":
    main()
