#!/usr/bin/env bash
# Instructions per proxied request, gateway and bare proxy, by callgrind:
# deterministic (the machine's load does not enter), so it is the figure to
# drive per-request work with; scripts/bench-gateway.sh gives the req/s.
#
# Each proxy runs under valgrind on one core (`taskset -c 0`: the gateway
# then starts one worker thread), the simulated vendor outside valgrind, with
# the configuration of scripts/bench-gateway.sh (every layer on, one client
# key, limits that do not bind). After a warm-up the counters are zeroed,
# N keep-alive `POST /v1/chat/completions` are sent from 4 connections, and
# the total is divided by N (kernel time is not counted). Also the atomic
# read-modify-write instructions per request (`lock`-prefixed and `xchg`,
# counted by benches/atomics.py from the per-instruction counts): callgrind
# counts them as one instruction each, but each is a serialising operation,
# and one on a cache line the other core holds costs a transfer as well.
#
# Usage:  scripts/callgrind-gateway.sh            (needs valgrind and python3)
# Knobs:  CG_REQUESTS=2000  CG_WARMUP=400  CG_LOG=info  CG_PORT_BASE=18100
#         CG_SKIP_BUILD=1 (use the release binaries already built)
#         CG_OUT=<dir> (keep the callgrind files there; default: temp)
set -euo pipefail

REQUESTS=${CG_REQUESTS:-2000}
WARMUP=${CG_WARMUP:-400}
GATEWAY_LOG=${CG_LOG:-info}
PORT_BASE=${CG_PORT_BASE:-18100}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${CG_OUT:-$(mktemp -d /tmp/callgrind-gateway.XXXXXX)}
mkdir -p "$OUT"

command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
if [[ -z ${CG_SKIP_BUILD:-} ]]; then
    cargo build --release -p backstop-gateway -p backstop-benches --bins
fi
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
GATEWAY="$target_dir/release/backstop-gateway"
BARE="$target_dir/release/bare-proxy"

P_VENDOR=$((PORT_BASE + 1))
P_PROXY=$((PORT_BASE + 2))
export CG_CLIENT_KEY=callgrind-client-key

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 600); do
        python3 - "$1" <<'EOF' && return 0
import socket, sys
s = socket.socket()
s.settimeout(0.2)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    exit 1
}

# N requests over 4 keep-alive connections; prints nothing on success.
drive() {
    python3 - "$P_PROXY" "$1" <<'EOF'
import http.client, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
headers = {"Content-Type": "application/json",
           "Authorization": "Bearer callgrind-client-key"}
errors = []
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(k):
        c.request("POST", "/v1/chat/completions", body, headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            errors.append(r.status)
threads = [threading.Thread(target=run, args=(n // 4,)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit(f"{len(errors)} non-200 answers, e.g. {errors[0]}")
EOF
}

cat >"$OUT/gateway.toml" <<EOF
listen = "127.0.0.1:$P_PROXY"
[server]
max_connections = 100000
[upstream]
url = "http://127.0.0.1:$P_VENDOR/v1"
[admission]
max_waiting = 100000
[rate_limit]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[concurrency]
max_in_flight = 100000
[[clients]]
name = "callgrind"
key_env = "CG_CLIENT_KEY"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
EOF

"$GATEWAY" simulate-vendor --listen "127.0.0.1:$P_VENDOR" --latency-ms 0 --jitter-ms 0 \
    >"$OUT/vendor.out" 2>&1 &
PIDS+=("$!")
wait_port "$P_VENDOR"

# $1 name; rest: the command to run under callgrind.
measure() {
    local name=$1
    shift
    local file="$OUT/$name.callgrind"
    taskset -c 0 valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
        --dump-instr=yes --callgrind-out-file="$file" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$P_PROXY"
    drive "$WARMUP"
    callgrind_control -z "$pid" >/dev/null 2>&1
    drive "$REQUESTS"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # The dump written by -d ends in .1 (the first dump after the zeroing).
    local dump
    dump=$(ls -t "$file".* 2>/dev/null | head -1)
    local total
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    # The zeroed counters make the dump the difference itself: compare it
    # with an empty file.
    : >"$OUT/empty.callgrind"
    local atomics
    atomics=$(python3 benches/atomics.py "$1" "$OUT/empty.callgrind" "$dump" "$REQUESTS" | head -1)
    echo "$name: $((total / REQUESTS)) instructions, $atomics atomic read-modify-writes per request ($dump)"
}

RUST_LOG=$GATEWAY_LOG measure gateway "$GATEWAY" --config "$OUT/gateway.toml"
RUST_LOG=warn measure gateway-quiet "$GATEWAY" --config "$OUT/gateway.toml"
measure bare "$BARE" --listen "127.0.0.1:$P_PROXY" --upstream "http://127.0.0.1:$P_VENDOR"
