#!/usr/bin/env bash
# End-to-end benchmarks of xmppwall's c2s relay, side by side with haproxy (TCP
# mode), socat and a direct connection, in one run on this machine:
#
#   1. relay throughput: K clients send a stanza mix through each path to a sink;
#   2. added round-trip latency: one client, one XEP-0199 ping in flight;
#   3. resident memory per idle authenticated connection (plaintext and direct TLS).
#
# Everything listens and connects on 127.0.0.1 only, and every case is bounded in
# time. Prints markdown tables (see BENCHMARKS.md for what they mean) and keeps the
# raw results under target/bench-results/.
#
# Knobs (environment):
#   CASE_SECONDS=10   how long each throughput case sends
#   KS="8 64"         client connection counts for throughput
#   REPEAT=2          throughput rounds (cases interleaved, means reported)
#   LAT_COUNT=20000   measured pings per latency case
#   IDLE_N=10000      idle connections for the memory test (capped by `ulimit -n`)
#   PIN=1             pin the proxy under test to CPU 1, load generator and sink to CPU 0
#   TLS_THROUGHPUT=1  also measure xmppwall's direct-TLS front (informative)
#   PERF=0            1: record a `perf` profile of xmppwall during the K=max case
#   SKIP_BUILD=0      1: use the binaries already built in the target dir
#   KEEP=0            1: keep the temporary directory (configs, logs)
#   XMPPWALL=, BENCH= paths of prebuilt binaries (with SKIP_BUILD=1)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASE_SECONDS=${CASE_SECONDS:-10}
KS=${KS:-"8 64"}
REPEAT=${REPEAT:-2}
LAT_COUNT=${LAT_COUNT:-20000}
IDLE_N=${IDLE_N:-10000}
PIN=${PIN:-1}
TLS_THROUGHPUT=${TLS_THROUGHPUT:-1}
PERF=${PERF:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run-relay.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
missing=()
for tool in haproxy socat openssl taskset; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "need root to install ${missing[*]}"
    pkgs=()
    for tool in "${missing[@]}"; do
        case $tool in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$tool") ;; esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

# --- build -------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $SKIP_BUILD != 1 ]]; then
    say "building (release)"
    (cd "$ROOT" && cargo build --release -p xmppwall -p xmppwall-bench)
fi
XMPPWALL_GIVEN=${XMPPWALL:-}
XMPPWALL=${XMPPWALL:-$TARGET_DIR/release/xmppwall}
BENCH=${BENCH:-$TARGET_DIR/release/xmppwall-bench}
[[ -x $XMPPWALL && -x $BENCH ]] || die "binaries not found in $TARGET_DIR/release"

# --- limits ------------------------------------------------------------------
# xmppwall holds two descriptors per connection (client and server side), so the
# memory test can open at most about half the descriptor limit. Raising the hard
# limit needs CAP_SYS_RESOURCE, which some containers do not grant even to root.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
MAX_IDLE=$(((FD_LIMIT - 200) / 2))
if ((IDLE_N > MAX_IDLE)); then
    echo "note: ulimit -n is $FD_LIMIT (hard limit $(ulimit -Hn)); memory test uses $MAX_IDLE connections instead of $IDLE_N" >&2
    IDLE_N=$MAX_IDLE
fi

if [[ $PIN == 1 && $(nproc) -ge 2 ]]; then
    PROXY_CPUS=(taskset -c 1)
    GEN_CPUS=(taskset -c 0)
else
    PIN=0
    PROXY_CPUS=()
    GEN_CPUS=()
fi

# --- scratch space, cleanup --------------------------------------------------
WORK=$(mktemp -d -t xmppwall-bench.XXXXXX)
# Results go straight to the target dir, so a failure half-way keeps what was measured.
OUT_DIR=$TARGET_DIR/bench-results
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$OUT_DIR/relay-$STAMP.tsv
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP == 1 ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening on $port (logs in $WORK)"
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$port after 10 s"
}

# Stops a process started here and forgets it.
stop() {
    local pid=$1 p keep=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

mapfile -t PORTS < <("$BENCH" free-ports 8)
SINK_PORT=${PORTS[0]} XW_PLAIN=${PORTS[1]} XW_TLS=${PORTS[2]} HA_PORT=${PORTS[3]}
SO_PORT=${PORTS[4]} HA_TLS=${PORTS[5]} XW_MEM_PLAIN=${PORTS[6]} XW_MEM_TLS=${PORTS[7]}

# --- certificate, configs ----------------------------------------------------
# ECDSA P-256: the cheapest common handshake signature, so 10,000 TLS logins stay
# within the time budget on two cores.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$WORK/localhost.key" -out "$WORK/localhost.crt" 2>/dev/null
cat "$WORK/localhost.crt" "$WORK/localhost.key" >"$WORK/localhost.pem"

xmppwall_config() { # file plain-port tls-port
    cat >"$1" <<EOF
domains = ["localhost"]

[upstream]
address = "127.0.0.1:$SINK_PORT"
proxy_protocol = "none"

[[listen]]
front = "c2s"
tls = "none"
address = "127.0.0.1:$2"

[[listen]]
front = "c2s"
tls = "direct"
address = "127.0.0.1:$3"

[tls]
default = { cert = "$WORK/localhost.crt", key = "$WORK/localhost.key" }

EOF
    cat "$ROOT/bench/relay-limits.toml" >>"$1"
}
xmppwall_config "$WORK/xmppwall.toml" "$XW_PLAIN" "$XW_TLS"
xmppwall_config "$WORK/xmppwall-mem.toml" "$XW_MEM_PLAIN" "$XW_MEM_TLS"
"$XMPPWALL" check --config "$WORK/xmppwall.toml" >/dev/null

haproxy_config() { # file port maxconn
    cat >"$1" <<EOF
global
    maxconn $3
defaults
    mode tcp
    timeout connect 5s
    timeout client 30m
    timeout server 30m
frontend c2s
    bind 127.0.0.1:$2
    default_backend sink
frontend c2s_tls
    bind 127.0.0.1:$HA_TLS ssl crt $WORK/localhost.pem alpn xmpp-client
    default_backend sink
backend sink
    server sink 127.0.0.1:$SINK_PORT
EOF
}
haproxy_config "$WORK/haproxy.cfg" "$HA_PORT" 4096
haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejected $WORK/haproxy.cfg"

# --- machine -----------------------------------------------------------------
{
    echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    echo "nproc: $(nproc)"
    lscpu | head -n 15
    free -h
    echo "kernel: $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$(haproxy -v | head -n 1)"
    echo "$(socat -V | grep 'socat version')"
    echo "$(rustc -V 2>/dev/null || true)"
    [[ -n ${XMPPWALL_GIVEN:-} ]] && echo "xmppwall binary given: $XMPPWALL (the commit below is the work tree's, not necessarily the binary's)"
    echo "xmppwall: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates src 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "ulimit -n: $FD_LIMIT; pinning: $([[ $PIN == 1 ]] && echo 'proxy on CPU 1, load generator and sink on CPU 0' || echo none)"
    echo '```'
    echo
} >"$WORK/header.md"
cat "$WORK/header.md"
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "warning: load average $load: something else is using the CPUs; numbers will be noisy" >&2
fi

# --- servers -----------------------------------------------------------------
say "starting sink, xmppwall, haproxy, socat"
"${GEN_CPUS[@]}" "$BENCH" sink --listen "127.0.0.1:$SINK_PORT" 2>"$WORK/sink.log" &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_port "$SINK_PORT" "$SINK_PID"

"${PROXY_CPUS[@]}" "$XMPPWALL" run --config "$WORK/xmppwall.toml" 2>"$WORK/xmppwall.log" &
XW_PID=$!
PIDS+=("$XW_PID")
wait_port "$XW_PLAIN" "$XW_PID"

# -db: stay in the foreground, so the trap can stop it. haproxy sizes its threads
# to the CPUs it may use, as tokio does for xmppwall.
"${PROXY_CPUS[@]}" haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
HA_PID=$!
PIDS+=("$HA_PID")
wait_port "$HA_PORT" "$HA_PID"

# One process per connection (fork), socat's usual way of relaying.
"${PROXY_CPUS[@]}" socat "TCP-LISTEN:$SO_PORT,bind=127.0.0.1,reuseaddr,fork,backlog=1024,nodelay" \
    "TCP:127.0.0.1:$SINK_PORT,nodelay" 2>"$WORK/socat.log" &
SO_PID=$!
PIDS+=("$SO_PID")
wait_port "$SO_PORT" "$SO_PID"

# path label -> port, pid (pid 0: nothing in between)
declare -A PORT_OF=([direct]=$SINK_PORT [xmppwall]=$XW_PLAIN [haproxy]=$HA_PORT [socat]=$SO_PORT [xmppwall-tls]=$XW_TLS [haproxy-tls]=$HA_TLS)
declare -A PID_OF=([direct]=0 [xmppwall]=$XW_PID [haproxy]=$HA_PID [socat]=$SO_PID [xmppwall-tls]=$XW_PID [haproxy-tls]=$HA_PID)
tls_args() {
    case $1 in
    *-tls) echo "--tls direct --cert $WORK/localhost.crt" ;;
    *) echo "--tls none" ;;
    esac
}
pid_args() {
    local pid=${PID_OF[$1]}
    ((pid == 0)) || echo "--proxy-pid $pid"
}

# --- 1. throughput -----------------------------------------------------------
paths=(direct xmppwall haproxy socat)
[[ $TLS_THROUGHPUT == 1 ]] && paths+=(xmppwall-tls haproxy-tls)
max_k=$(tr ' ' '\n' <<<"$KS" | sort -n | tail -n 1)
for round in $(seq 1 "$REPEAT"); do
    for k in $KS; do
        # Rotate the order each round, so slow drift (other load, thermal) does not
        # always favour the same path.
        n=${#paths[@]}
        for i in $(seq 0 $((n - 1))); do
            path=${paths[$(((i + round - 1) % n))]}
            say "throughput: $path, K=$k, round $round/$REPEAT"
            if [[ $PERF == 1 && $path == xmppwall && $k == "$max_k" && $round == 1 ]] && command -v perf >/dev/null; then
                perf record -F 999 -g -p "$XW_PID" -o "$WORK/perf.data" -- sleep "$((CASE_SECONDS / 2))" \
                    >/dev/null 2>&1 &
                PERF_PID=$!
            fi
            # shellcheck disable=SC2046
            "${GEN_CPUS[@]}" "$BENCH" throughput --target "127.0.0.1:${PORT_OF[$path]}" \
                --label "$path" $(tls_args "$path") $(pid_args "$path") --sink-pid "$SINK_PID" \
                --connections "$k" --seconds "$CASE_SECONDS" --results "$RESULTS" >&2
            if [[ -n ${PERF_PID:-} ]]; then
                wait "$PERF_PID" || true
                unset PERF_PID
            fi
        done
    done
done

# --- 2. latency --------------------------------------------------------------
# Twice: pinned as above (the proxy's core is otherwise idle, so every hop through
# it pays a cross-core wake-up), then with every process free to run on any CPU.
variants=(unpinned)
[[ $PIN == 1 ]] && variants=(pinned unpinned)
for variant in "${variants[@]}"; do
    lat_cpus=("${GEN_CPUS[@]}")
    if [[ $variant == unpinned ]]; then
        lat_cpus=()
        # -a: every thread; socat's per-connection children inherit it at fork.
        for pid in "$SINK_PID" "$XW_PID" "$HA_PID" "$SO_PID"; do
            taskset -a -p -c "0-$(($(nproc) - 1))" "$pid" >/dev/null
        done
    fi
    for path in direct xmppwall haproxy socat; do
        say "latency: $path ($variant)"
        "${lat_cpus[@]}" "$BENCH" latency --target "127.0.0.1:${PORT_OF[$path]}" \
            --label "$path/$variant" --tls none --count "$LAT_COUNT" --results "$RESULTS" >&2
    done
done

# --- 3. memory per idle connection -------------------------------------------
# Fresh processes, not pinned (logins are CPU-heavy and pinning does not change
# what a connection keeps), so that what the throughput test left in the allocator
# does not count.
stop "$XW_PID"
stop "$HA_PID"
stop "$SO_PID"
stages="$((IDLE_N / 10)),$IDLE_N"
for front in plain tls; do
    "$XMPPWALL" run --config "$WORK/xmppwall-mem.toml" 2>"$WORK/xmppwall-mem-$front.log" &
    MEM_PID=$!
    PIDS+=("$MEM_PID")
    wait_port "$XW_MEM_PLAIN" "$MEM_PID"
    if [[ $front == plain ]]; then port=$XW_MEM_PLAIN tls="--tls none"; else port=$XW_MEM_TLS tls="--tls direct --cert $WORK/localhost.crt"; fi
    say "memory: xmppwall $front front, $IDLE_N idle connections"
    # shellcheck disable=SC2086
    "$BENCH" idle --target "127.0.0.1:$port" --label "xmppwall-$front" $tls --pid "$MEM_PID" \
        --stages "$stages" --results "$RESULTS" >&2
    cp "/proc/$MEM_PID/smaps_rollup" "$WORK/smaps-after-$front.txt" 2>/dev/null || true
    stop "$MEM_PID"
done
# haproxy for reference, plaintext only. It refuses to start when 2 x maxconn plus
# its own descriptors exceed `ulimit -n`, so maxconn is just above IDLE_N.
haproxy_config "$WORK/haproxy-mem.cfg" "$HA_PORT" "$((IDLE_N + 20))"
haproxy -db -f "$WORK/haproxy-mem.cfg" 2>"$WORK/haproxy-mem.log" &
HA_PID=$!
PIDS+=("$HA_PID")
sleep 0.5
if kill -0 "$HA_PID" 2>/dev/null; then
    wait_port "$HA_PORT" "$HA_PID"
    say "memory: haproxy (reference), $IDLE_N idle connections"
    "$BENCH" idle --target "127.0.0.1:$HA_PORT" --label "haproxy-plain" --tls none --pid "$HA_PID" \
        --stages "$stages" --results "$RESULTS" >&2 || echo "haproxy reference failed" >&2
    stop "$HA_PID"
else
    echo "note: haproxy did not start for the memory reference: $(tail -n 1 "$WORK/haproxy-mem.log")" >&2
fi

# --- report ------------------------------------------------------------------
{
    cat "$WORK/header.md"
    "$BENCH" report "$RESULTS"
} | tee "$OUT_DIR/relay-$STAMP.md"
if [[ -f $WORK/perf.data ]]; then
    perf report -i "$WORK/perf.data" --stdio --no-children --percent-limit 1.5 \
        >"$OUT_DIR/perf-xmppwall-$STAMP.txt" 2>/dev/null || true
    echo "perf profile of xmppwall: $OUT_DIR/perf-xmppwall-$STAMP.txt" >&2
fi
if grep -q . "$WORK/sink.log" 2>/dev/null && grep -qv 'listening on' "$WORK/sink.log"; then
    echo "sink reported errors:" >&2
    grep -v 'listening on' "$WORK/sink.log" | head -n 20 >&2
fi
echo "results: $OUT_DIR/relay-$STAMP.md" >&2
