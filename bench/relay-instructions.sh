#!/usr/bin/env bash
# User-space instructions xmppwall spends per relayed c2s stanza, counted by
# callgrind (no machine noise): xmppwall relays the throughput mix from one
# connection to the bench sink twice, for 2 s and for 6 s of traffic, and the
# difference of instructions is divided by the difference of stanzas (start-up,
# login and shutdown cancel out). Limits are raised so that nothing is refused.
#
#   cargo build --release -p xmppwall -p xmppwall-bench
#   bench/relay-instructions.sh            # BIN=target/release by default
#
# Listens and connects on 127.0.0.1 only (ports SINK_PORT, FRONT_PORT); every step
# is bounded in time; only the processes it started are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SINK_PORT=${SINK_PORT:-27001}
FRONT_PORT=${FRONT_PORT:-27002}
OUT=${OUT:-target/bench-results/relay-instructions}
mkdir -p "$OUT"
cat > "$OUT/xmppwall.toml" <<TOML
domains = ["localhost"]
[upstream]
address = "127.0.0.1:$SINK_PORT"
proxy_protocol = "none"
[[listen]]
front = "c2s"
tls = "none"
address = "127.0.0.1:$FRONT_PORT"
TOML
cat bench/relay-limits.toml >> "$OUT/xmppwall.toml"

runs=()
for secs in 2 6; do
  "$BIN/xmppwall-bench" sink --listen "127.0.0.1:$SINK_PORT" 2>"$OUT/sink.$secs.log" &
  sink=$!
  sleep 0.3
  valgrind --tool=callgrind --callgrind-out-file="$OUT/relay.$secs.cg" \
    "$BIN/xmppwall" run --config "$OUT/xmppwall.toml" >"$OUT/valgrind.$secs.log" 2>&1 &
  wall=$!
  sleep 6
  stanzas=$(timeout 60 "$BIN/xmppwall-bench" throughput --target "127.0.0.1:$FRONT_PORT" \
    --label xw --connections 1 --seconds "$secs" 2>&1 | tail -1 | tr '\t' '\n' |
    sed -n 's/^stanzas=//p')
  kill -INT "$wall"
  for _ in $(seq 40); do kill -0 "$wall" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$wall" 2>/dev/null && kill -KILL "$wall"
  kill "$sink"; wait "$sink" 2>/dev/null || true
  instructions=$(awk '/Collected/ {print $NF}' "$OUT/valgrind.$secs.log")
  echo "seconds=$secs stanzas=$stanzas instructions=$instructions"
  runs+=("$stanzas $instructions")
done
read -r s1 i1 <<<"${runs[0]}"
read -r s2 i2 <<<"${runs[1]}"
echo "instructions per stanza: $(( (i2 - i1) / (s2 - s1) ))"
echo "profiles: $OUT/relay.2.cg $OUT/relay.6.cg (callgrind_annotate --inclusive=yes)"
