#!/usr/bin/env bash
# The test command: ./scripts/test.sh [extra cargo test arguments]
#
# Installs what the integration tests need if it is missing (Debian's prosody,
# ejabberd and redis-server, Python's slixmpp), makes sure no system XMPP daemon is left running from a
# package install, then runs `cargo test --workspace --all-targets "$@"`.
#
# Idempotent: installs nothing when everything is present. Non-interactive (CI=true
# works). Set XMPPWALL_TEST_NO_INSTALL=1 to skip the install step entirely.
#
# The tests start their own Prosody, ejabberd and Redis on free loopback ports in
# temporary directories; they never use the system services or /etc/{prosody,ejabberd}.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }

# The Debian packages the tests run, with a file each one installs.
declare -A APT_PACKAGES=(
    [prosody]=/usr/bin/prosody
    [ejabberd]=/usr/sbin/ejabberdctl
    [procps]=/bin/kill
    [python3]=/usr/bin/python3
    [python3-pip]=/usr/lib/python3/dist-packages/pip
    [redis-server]=/usr/bin/redis-server
    [nftables]=/usr/sbin/nft
    [iproute2]=/usr/sbin/ip
    # A real SOCKS5 server (RFC 1928) for the s2s egress tests.
    [microsocks]=/usr/bin/microsocks
    # A real DNS server (SRV and address records) for the s2s egress's resolution
    # tests. dnsmasq-base is the program alone: unlike the `dnsmasq` package it
    # installs no system service, so nothing starts listening on port 53.
    [dnsmasq-base]=/usr/sbin/dnsmasq
)
# slixmpp's API changes between releases; tests/interop/slixmpp_echo.py is written for
# this one (and works with >= 1.8).
SLIXMPP_VERSION=1.17.0

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "need root to run: $*"
        return 1
    fi
}

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_apt_packages() {
    local missing=()
    local package
    for package in "${!APT_PACKAGES[@]}"; do
        # python3 and pip may come from elsewhere (pyenv): a working command is enough.
        case "$package" in
            python3) command -v python3 >/dev/null 2>&1 && continue ;;
            python3-pip) python3 -m pip --version >/dev/null 2>&1 && continue ;;
        esac
        if ! package_installed "$package" || [ ! -e "${APT_PACKAGES[$package]}" ]; then
            missing+=("$package")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0

    say "installing Debian packages: ${missing[*]}"
    # Package scripts must not start the system prosody/ejabberd (ports 5222, 5269,
    # 5280, epmd...). A policy-rc.d that exits 101 forbids it; we add one only for the
    # duration of the install, and only if the machine has none.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    local status=0
    {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "${missing[@]}" >/dev/null
    } || status=$?
    if [ "$added_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    return "$status"
}

stop_system_daemons() {
    # If a package install (or anything before us) started the system services, stop
    # them: our servers use their own ports, but a daemon holding 5222/5269/5280 confuses
    # anyone reading the machine's state, and ejabberd's system node is not ours. There is
    # no systemd here; `service` runs the init scripts. Harmless when they are not running.
    local service
    for service in prosody ejabberd redis-server; do
        if [ -x "/etc/init.d/$service" ]; then
            as_root service "$service" stop >/dev/null 2>&1 || true
        fi
    done
}

install_slixmpp() {
    if python3 - <<'EOF' 2>/dev/null; then
import slixmpp, sys
major, minor = (int(x) for x in slixmpp.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (1, 8) else 1)
EOF
        return 0
    fi
    say "installing slixmpp $SLIXMPP_VERSION with pip"
    # A Debian python3 refuses pip installs outside a venv (PEP 668); the tests run this
    # interpreter directly, so allow it there.
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "slixmpp==$SLIXMPP_VERSION" 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            "slixmpp==$SLIXMPP_VERSION"
}

if [ "${XMPPWALL_TEST_NO_INSTALL:-0}" != 1 ]; then
    install_apt_packages
    stop_system_daemons
    install_slixmpp
fi

exec cargo test --workspace --all-targets "$@"
