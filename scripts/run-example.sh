#!/usr/bin/env bash
# Runs xmppwall's main job on this machine: a Prosody on 127.0.0.1:15222 with two
# accounts, and xmppwall in front of it on 127.0.0.1:5222 (STARTTLS) and :5223
# (direct TLS), using examples/xmppwall.toml. Installs Prosody if it is missing.
# Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
run="$root/run/example"
mkdir -p "$run/data"

if ! command -v prosody >/dev/null 2>&1; then
    echo "installing prosody (Debian package)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody openssl >/dev/null
fi
# Debian's package starts a system Prosody on the default ports; the example uses its own.
service prosody stop >/dev/null 2>&1 || true

if [ ! -f "$run/localhost.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost" \
        -keyout "$run/localhost.key" -out "$run/localhost.crt" 2>/dev/null
fi

cp examples/prosody.cfg.lua "$run/prosody.cfg.lua"
for user in alice bob; do
    (cd "$run" && prosodyctl --config prosody.cfg.lua register "$user" localhost "$user-secret" >/dev/null)
done

(cd "$run" && exec prosody --config prosody.cfg.lua -F) &
prosody_pid=$!
trap 'kill $prosody_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/15222) 2>/dev/null && break
    sleep 0.1
done

cargo build --release --quiet
echo "xmppwall: STARTTLS on 127.0.0.1:5222, direct TLS on 127.0.0.1:5223; accounts alice@localhost / alice-secret, bob@localhost / bob-secret"
target/release/xmppwall check --config examples/xmppwall.toml
target/release/xmppwall run --config examples/xmppwall.toml
