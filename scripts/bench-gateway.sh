#!/usr/bin/env bash
# End-to-end benchmark of the gateway (issue 7): backstop-gateway against a
# bare hyper-util reverse proxy (benches/src/bin/bare-proxy.rs) and nginx
# (`proxy_pass` with upstream keepalive), all in front of the simulated
# vendor, driven by oha. Loopback only; every process it starts is stopped on
# exit. Results: benches/E2E-RESULTS.md explains the table.
#
# Usage:  scripts/bench-gateway.sh
# Knobs (environment):
#   BENCH_DURATION=5          seconds per oha run
#   BENCH_ROUNDS=3            interleaved rounds (medians are reported)
#   BENCH_CONCURRENCY="16 128 1024"
#   BENCH_PHASES="0ms 50ms limits streaming"   any subset, in this order
#   BENCH_LIMIT_DURATION=10   seconds of the binding-limits run
#   BENCH_STREAMS=1000        concurrent SSE streams (50 chunks, 20 ms apart)
#   BENCH_STREAM_DURATION=6   seconds per streaming run
#   BENCH_GATEWAY_LOG=info    the gateway's RUST_LOG (its per-request log line
#                             is written to /dev/null: formatted, not stored)
#   BENCH_GATEWAY_STDERR=/dev/null  where the gateway's logs go
#   BENCH_PORT_BASE=18000     ports BASE..BASE+99 on 127.0.0.1
#   BENCH_OUT=<dir>           keep raw oha JSON and logs there (default: temp)
#   BENCH_SKIP_BUILD=1        use the release binaries already built
#   BENCH_MAX_SECONDS=1800    hard bound on the whole script
set -euo pipefail

DURATION=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CONCURRENCY=${BENCH_CONCURRENCY:-"16 128 1024"}
PHASES=${BENCH_PHASES:-"0ms 50ms limits streaming"}
LIMIT_DURATION=${BENCH_LIMIT_DURATION:-10}
STREAMS=${BENCH_STREAMS:-1000}
STREAM_DURATION=${BENCH_STREAM_DURATION:-6}
GATEWAY_LOG=${BENCH_GATEWAY_LOG:-info}
PORT_BASE=${BENCH_PORT_BASE:-18000}
MAX_SECONDS=${BENCH_MAX_SECONDS:-1800}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ -n ${BENCH_OUT:-} ]]; then
    OUT=$BENCH_OUT
    mkdir -p "$OUT"
else
    OUT=$(mktemp -d /tmp/bench-gateway.XXXXXX)
fi
# nginx workers drop privileges: they must be able to read the prefix.
chmod 755 "$OUT"
RAW="$OUT/runs.tsv"
: >"$RAW"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded: SIGKILL whatever is still there after 3 s.
        for _ in 1 2 3 4 5 6; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
on_exit() {
    local rc=$?
    cleanup
    if [[ -n ${WATCHDOG:-} ]]; then
        local w
        # The watchdog subshell and its sleep, by pid.
        for w in $(tree "$WATCHDOG" | tac); do
            kill "$w" 2>/dev/null || true
        done
    fi
    log "raw results in $OUT"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# The whole run is bounded: after MAX_SECONDS the script kills itself (the
# EXIT trap then stops everything it started).
( sleep "$MAX_SECONDS"; log "BENCH_MAX_SECONDS=$MAX_SECONDS reached"; kill -TERM $$ ) &
WATCHDOG=$!

# Starts a command in the background, logs to a file, records its pid.
spawn() {
    local name=$1
    shift
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    PIDS+=("$!")
    LAST_PID=$!
}

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "process $pid for port $port exited (logs in $OUT)"
        sleep 0.1
    done
    die "nothing listening on 127.0.0.1:$port after 10 s"
}

stop() {
    local pid=$1 p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=()
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# A process and its direct children (nginx: master and workers).
tree() {
    local root=$1
    echo "$root"
    awk -v r="$root" '$4 == r { print $1 }' /proc/[0-9]*/stat 2>/dev/null || true
}

# utime + stime in clock ticks, summed over the tree.
cpu_ticks() {
    local total=0 pid t
    for pid in $(tree "$1"); do
        t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

# VmHWM in KiB, summed over the tree (shared pages of nginx's processes are
# counted once per process).
peak_rss_kib() {
    local total=0 pid v
    for pid in $(tree "$1"); do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------- install

install_tools() {
    local need_apt=()
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
    command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
    command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
    if ((${#need_apt[@]})); then
        log "installing ${need_apt[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        local pkg
        for pkg in "${need_apt[@]}"; do
            if [[ $pkg == nginx ]]; then
                apt-get install -y -qq nginx-light >/dev/null 2>&1 \
                    || apt-get install -y -qq nginx >/dev/null
            else
                apt-get install -y -qq "$pkg" >/dev/null
            fi
        done
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    if ! command -v oha >/dev/null 2>&1; then
        if [[ -x $HOME/.cargo/bin/oha ]]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            log "installing oha (cargo install oha --locked; a few minutes)"
            cargo install oha --locked
            export PATH="$HOME/.cargo/bin:$PATH"
        fi
    fi
    command -v oha >/dev/null || die "oha not found after install"
}

build() {
    if [[ -n ${BENCH_SKIP_BUILD:-} ]]; then
        log "BENCH_SKIP_BUILD set: using the existing release binaries"
    else
        log "cargo build --release -p backstop-gateway -p backstop-benches --bins"
        cargo build --release -p backstop-gateway -p backstop-benches --bins
    fi
    local target_dir
    target_dir=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    GATEWAY="$target_dir/release/backstop-gateway"
    BARE="$target_dir/release/bare-proxy"
    [[ -x $GATEWAY && -x $BARE ]] || die "release binaries missing in $target_dir/release"
}

# ---------------------------------------------------------------- targets

P_VENDOR=$((PORT_BASE + 1))
P_GATEWAY=$((PORT_BASE + 10))
P_BARE=$((PORT_BASE + 11))
P_NGINX=$((PORT_BASE + 12))
P_GATEWAY_QUIET=$((PORT_BASE + 13))

CLIENT_KEY=bench-client-key
export BENCH_CLIENT_KEY=$CLIENT_KEY

start_vendor() {
    # $1: latency ms; rest: extra vendor flags
    local latency=$1
    shift
    spawn vendor "$GATEWAY" simulate-vendor --listen "127.0.0.1:$P_VENDOR" \
        --latency-ms "$latency" --jitter-ms 0 "$@"
    VENDOR_PID=$LAST_PID
    wait_port "$P_VENDOR" "$VENDOR_PID"
}

# Every layer on, limits that do not bind (one client key, so auth and the
# per-client limiters are on the path too).
write_gateway_config() {
    local file=$1 rpm=$2 sla=$3 waiting=$4
    cat >"$file" <<EOF
listen = "127.0.0.1:$P_GATEWAY"

[server]
max_connections = 100000

[upstream]
url = "http://127.0.0.1:$P_VENDOR/v1"

[sla]
timeout = "$sla"

[admission]
max_waiting = $waiting

[rate_limit]
requests_per_minute = $rpm
tokens_per_minute = 1000000000000

[concurrency]
max_in_flight = 100000

[[clients]]
name = "bench"
key_env = "BENCH_CLIENT_KEY"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
EOF
}

start_gateway() {
    local config=$1
    # The per-request log line is formatted and written, but not kept
    # (BENCH_GATEWAY_STDERR=<file> keeps it).
    RUST_LOG=$GATEWAY_LOG "$GATEWAY" --config "$config" \
        >"$OUT/gateway.out" 2>"${BENCH_GATEWAY_STDERR:-/dev/null}" &
    PIDS+=("$!")
    GATEWAY_PID=$!
    wait_port "$P_GATEWAY" "$GATEWAY_PID"
}

# The same gateway with its per-request log line off (RUST_LOG=warn): shows
# what the log line costs.
start_gateway_quiet() {
    local config=$1
    RUST_LOG=warn "$GATEWAY" --config "$config" --listen "127.0.0.1:$P_GATEWAY_QUIET" \
        >"$OUT/gateway-quiet.out" 2>"$OUT/gateway-quiet.err" &
    PIDS+=("$!")
    GATEWAY_QUIET_PID=$!
    wait_port "$P_GATEWAY_QUIET" "$GATEWAY_QUIET_PID"
}

start_bare() {
    spawn bare "$BARE" --listen "127.0.0.1:$P_BARE" --upstream "http://127.0.0.1:$P_VENDOR"
    BARE_PID=$LAST_PID
    wait_port "$P_BARE" "$BARE_PID"
}

start_nginx() {
    local buffering=$1 prefix="$OUT/nginx"
    mkdir -p "$prefix/logs" "$prefix/tmp"
    chmod -R 777 "$prefix/tmp"
    cat >"$prefix/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events {
    worker_connections 16384;
}
http {
    access_log off;
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream vendor {
        server 127.0.0.1:$P_VENDOR;
        keepalive 512;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$P_NGINX reuseport backlog=4096;
        location / {
            proxy_pass http://vendor;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering $buffering;
        }
    }
}
EOF
    spawn nginx "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
    NGINX_PID=$LAST_PID
    wait_port "$P_NGINX" "$NGINX_PID"
}

# ---------------------------------------------------------------- oha

BODY='{"model":"sim-1","messages":[{"role":"user","content":"hello"}]}'
STREAM_BODY='{"model":"sim-1","stream":true,"messages":[{"role":"user","content":"hello"}]}'

# oha_run <json-out> <concurrency> <seconds> <port> <body> [extra oha flags]
oha_run() {
    local json=$1 conc=$2 secs=$3 port=$4 body=$5
    shift 5
    # Runs past the deadline are bounded by oha's own -z plus a margin.
    timeout $((secs + 30)) oha --no-tui --output-format json -z "${secs}s" -c "$conc" \
        --wait-ongoing-requests-after-deadline \
        -m POST -H 'content-type: application/json' \
        -H "authorization: Bearer $CLIENT_KEY" -d "$body" "$@" \
        "http://127.0.0.1:$port/v1/chat/completions" >"$json" 2>"$json.err" || {
        log "oha failed on port $port (c=$conc): $(head -c 300 "$json.err")"
        echo '{}' >"$json"
    }
}

# measure <phase> <target> <pid> <port> <conc> <round> <seconds> <body> [oha flags]
measure() {
    local phase=$1 target=$2 pid=$3 port=$4 conc=$5 round=$6 secs=$7 body=$8
    shift 8
    local json="$OUT/$phase-$target-c$conc-r$round.json" before after
    before=$(cpu_ticks "$pid")
    oha_run "$json" "$conc" "$secs" "$port" "$body" "$@"
    after=$(cpu_ticks "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$target" "$conc" "$round" \
        "$json" "$((after - before))" "$(peak_rss_kib "$pid")" >>"$RAW"
    log "$phase $target c=$conc round $round: $(python3 -c '
import json,sys
d=json.load(open(sys.argv[1])).get("summary",{})
print("%.0f req/s" % (d.get("requestsPerSec") or 0))' "$json")"
}

# The direct target has no proxy: its CPU is the vendor's (reported apart).
run_phase() {
    local phase=$1 latency=$2 secs=$3 body=$4 buffering=$5
    shift 5
    local targets=("$@")
    log "phase $phase: vendor latency ${latency} ms"
    start_vendor "$latency" "${VENDOR_FLAGS[@]}"
    write_gateway_config "$OUT/gateway-$phase.toml" 1000000000 60s 100000
    start_gateway "$OUT/gateway-$phase.toml"
    local t quiet=
    for t in "${targets[@]}"; do
        [[ $t == gateway-quiet ]] && quiet=1
    done
    [[ -n $quiet ]] && start_gateway_quiet "$OUT/gateway-$phase.toml"
    start_bare
    start_nginx "$buffering"
    # One short warm-up each (connections, pools, page faults).
    for t in "${targets[@]}"; do
        oha_run "$OUT/warmup-$phase-$t.json" 16 1 "$(port_of "$t")" "$body"
    done
    local round conc
    for round in $(seq 1 "$ROUNDS"); do
        for conc in $CONCURRENCY; do
            for t in "${targets[@]}"; do
                measure "$phase" "$t" "$(pid_of "$t")" "$(port_of "$t")" "$conc" "$round" "$secs" "$body"
            done
        done
        # Rotate the order each round so drift does not favour one target.
        targets=("${targets[@]:1}" "${targets[0]}")
    done
    stop "$NGINX_PID"
    stop "$BARE_PID"
    [[ -n $quiet ]] && stop "$GATEWAY_QUIET_PID"
    stop "$GATEWAY_PID"
    stop "$VENDOR_PID"
}

port_of() {
    case $1 in
        direct) echo "$P_VENDOR" ;;
        gateway) echo "$P_GATEWAY" ;;
        gateway-quiet) echo "$P_GATEWAY_QUIET" ;;
        bare) echo "$P_BARE" ;;
        nginx) echo "$P_NGINX" ;;
    esac
}
pid_of() {
    case $1 in
        direct) echo "$VENDOR_PID" ;;
        gateway) echo "$GATEWAY_PID" ;;
        gateway-quiet) echo "$GATEWAY_QUIET_PID" ;;
        bare) echo "$BARE_PID" ;;
        nginx) echo "$NGINX_PID" ;;
    esac
}

# Limits that bind: 6,000 rpm configured, offered 300 req/s (3x) from 512
# connections (more than the queue holds, so the overflow is refused at
# once); SLA 5 s, admission queue defaults (80 waiters, 5 s).
run_limits() {
    log "phase limits: 6000 rpm configured, 300 req/s offered"
    start_vendor 0
    write_gateway_config "$OUT/gateway-limits.toml" 6000 5s 80
    start_gateway "$OUT/gateway-limits.toml"
    local json="$OUT/limits-gateway.json" before after
    before=$(cpu_ticks "$GATEWAY_PID")
    oha_run "$json" 512 "$LIMIT_DURATION" "$P_GATEWAY" "$BODY" -q 300 \
        --db-url "$OUT/limits.sqlite"
    after=$(cpu_ticks "$GATEWAY_PID")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' limits gateway 512 1 "$json" \
        "$((after - before))" "$(peak_rss_kib "$GATEWAY_PID")" >>"$RAW"
    stop "$GATEWAY_PID"
    stop "$VENDOR_PID"
}

# ---------------------------------------------------------------- report

report() {
    python3 - "$RAW" "$OUT" "$LIMIT_DURATION" "$(getconf CLK_TCK)" <<'PY'
import json, os, sqlite3, statistics, sys
from collections import defaultdict

raw, out, limit_secs, tck = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rows = [l.rstrip("\n").split("\t") for l in open(raw) if l.strip()]
runs = defaultdict(list)
for phase, target, conc, rnd, path, ticks, rss in rows:
    try:
        d = json.load(open(path))
    except Exception:
        d = {}
    runs[(phase, target, int(conc))].append((d, int(ticks), int(rss)))

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def stats(d):
    s = d.get("summary", {})
    lp = d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {}) or {}
    errs = d.get("errorDistribution", {}) or {}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errs.values())
    return dict(rps=s.get("requestsPerSec"), p50=lp.get("p50"), p99=lp.get("p99"),
                p999=lp.get("p99.9"), ok=ok, bad=bad, codes=codes, errs=errs,
                slowest=s.get("slowest"), total=s.get("total"))

def ms(x):
    return "-" if x is None else "%.2f" % (x * 1000)

def agg(key):
    rs = runs.get(key)
    if not rs:
        return None
    st = [stats(d) for d, _, _ in rs]
    ticks = sum(t for _, t, _ in rs)
    n = sum(s["ok"] + s["bad"] for s in st)
    return dict(
        rps=med([s["rps"] for s in st]), p50=med([s["p50"] for s in st]),
        p99=med([s["p99"] for s in st]), p999=med([s["p999"] for s in st]),
        bad=sum(s["bad"] for s in st), n=n,
        cpu=(ticks / tck) / n * 1000 if n else None,
        rss=max(r for _, _, r in rs) / 1024, rounds=len(rs),
        slowest=max((s["slowest"] or 0) for s in st), st=st)

lines = []
p = lines.append
for phase in ("0ms", "50ms"):
    concs = sorted({c for (ph, _, c) in runs if ph == phase})
    if not concs:
        continue
    p(f"\n### Vendor latency {phase} (medians of {max(len(v) for k, v in runs.items() if k[0] == phase)} interleaved rounds)\n")
    p("| c | target | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU s / 1k req | peak RSS MiB | req/s vs bare | req/s vs nginx |")
    p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in concs:
        bare = agg((phase, "bare", c))
        ngx = agg((phase, "nginx", c))
        for t in ("gateway", "gateway-quiet", "bare", "nginx", "direct"):
            a = agg((phase, t, c))
            if not a:
                continue
            rb = "%.2fx" % (a["rps"] / bare["rps"]) if bare and bare["rps"] and a["rps"] else "-"
            rn = "%.2fx" % (a["rps"] / ngx["rps"]) if ngx and ngx["rps"] and a["rps"] else "-"
            cpu = "-" if a["cpu"] is None else "%.4f" % a["cpu"]
            name = {"direct": "direct (vendor; CPU = vendor's)", "gateway-quiet": "gateway, RUST_LOG=warn"}.get(t, t)
            p(f"| {c} | {name} | {a['rps']:.0f} | {ms(a['p50'])} | {ms(a['p99'])} | {ms(a['p999'])} | {a['bad']} | {cpu} | {a['rss']:.1f} | {rb} | {rn} |")
    # Added p99 at the lowest concurrency, against the direct vendor and the bare proxy.
    c = concs[0]
    g, b, d = agg((phase, "gateway", c)), agg((phase, "bare", c)), agg((phase, "direct", c))
    if g and b and g["p99"] is not None and b["p99"] is not None:
        extra = f"; vs direct {((g['p99'] - d['p99']) * 1000):+.2f} ms" if d and d["p99"] is not None else ""
        p(f"\np99 added by the gateway at c={c}: vs bare {((g['p99'] - b['p99']) * 1000):+.2f} ms{extra}")
    # Per-round req/s, to show the spread.
    p("\nPer-round req/s (gateway / bare / nginx):")
    for c in concs:
        per = []
        for t in ("gateway", "gateway-quiet", "bare", "nginx"):
            a = agg((phase, t, c))
            if a:
                per.append(t + " " + " ".join("%.0f" % (s["rps"] or 0) for s in a["st"]))
        p(f"- c={c}: " + "; ".join(per))

lim = agg(("limits", "gateway", 512))
if lim:
    s = lim["st"][0]
    codes = s["codes"]
    n200 = sum(v for k, v in codes.items() if k.startswith("2"))
    n429 = codes.get("429", 0)
    total = n200 + sum(v for k, v in codes.items() if not k.startswith("2")) + sum(s["errs"].values())
    # oha waits for the queued requests after the deadline: the run lasts longer.
    secs = lim["st"][0].get("total") or limit_secs
    p("\n### Limits that bind (6,000 rpm = 100/s configured, burst 100; offered 300 req/s for %gs from 512 connections; queue 80 waiters, 5 s; SLA 5 s)\n" % limit_secs)
    p(f"- admitted: {n200} in {secs:.2f}s (until the last queued request finished) = {n200 / secs:.1f}/s "
      f"against 100/s configured; the bucket allows at most 100 (burst) + 100/s x {secs:.2f}s = {(100 + 100 * secs):.0f}")
    p(f"- 429 share: {n429}/{total} = {100 * n429 / max(total, 1):.1f}%; other statuses {dict((k, v) for k, v in codes.items() if k not in ('200', '429'))}; errors {s['errs']}")
    p(f"- slowest request: {s['slowest'] * 1000:.1f} ms (SLA 5 s)")
    db = os.path.join(out, "limits.sqlite")
    if os.path.exists(db):
        try:
            con = sqlite3.connect(db)
            cols = [r[1] for r in con.execute("pragma table_info(oha)")]
            q = "select status, end - start from oha"
            lat = defaultdict(list)
            for st_, dur in con.execute(q):
                lat[int(st_)].append(dur)
            for code in sorted(lat):
                xs = sorted(lat[code])
                p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
                p50 = xs[len(xs) // 2]
                p(f"- status {code}: n={len(xs)}, p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {xs[-1] * 1000:.2f} ms")
        except Exception as e:
            p(f"- per-status latency unavailable: {e}")
    p(f"- gateway CPU {lim['cpu']:.4f} s / 1k requests, peak RSS {lim['rss']:.1f} MiB")

concs = sorted({c for (ph, _, c) in runs if ph == "stream"})
if concs:
    p("\n### Streaming (SSE, 50 chunks 20 ms apart per stream; vendor alone takes about 1 s per stream)\n")
    p("| streams | target | streams/s | p50 s | p99 s | errors | CPU s / 1k streams | peak RSS MiB |")
    p("|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in concs:
        for t in ("gateway", "bare", "nginx", "direct"):
            a = agg(("stream", t, c))
            if not a:
                continue
            cpu = "-" if a["cpu"] is None else "%.3f" % a["cpu"]
            name = t if t != "direct" else "direct (vendor)"
            p(f"| {c} | {name} | {a['rps']:.0f} | {a['p50']:.3f} | {a['p99']:.3f} | {a['bad']} | {cpu} | {a['rss']:.1f} |")
    g, d = agg(("stream", "gateway", concs[0])), agg(("stream", "direct", concs[0]))
    if g and d:
        p(f"\nGateway p50 stream time minus direct: {(g['p50'] - d['p50']) * 1000:+.1f} ms per stream of 50 chunks "
          f"({(g['p50'] - d['p50']) * 1000 / 50:+.2f} ms per chunk if spread evenly; when the cores are "
          f"saturated this is mostly queueing, not per-chunk work)")
print("\n".join(lines))
PY
}

# ---------------------------------------------------------------- main

log "output in $OUT"
install_tools
build
log "$(nproc) cores; $(oha --version); $("$NGINX" -v 2>&1)"
VENDOR_FLAGS=()
for phase in $PHASES; do
    case $phase in
        0ms) run_phase 0ms 0 "$DURATION" "$BODY" on direct gateway gateway-quiet bare nginx ;;
        50ms) run_phase 50ms 50 "$DURATION" "$BODY" on gateway bare nginx ;;
        limits) run_limits ;;
        streaming)
            VENDOR_FLAGS=(--stream-chunks 50 --chunk-interval-ms 20)
            saved_conc=$CONCURRENCY saved_rounds=$ROUNDS
            CONCURRENCY=$STREAMS ROUNDS=1
            run_phase stream 0 "$STREAM_DURATION" "$STREAM_BODY" off direct gateway bare nginx
            CONCURRENCY=$saved_conc ROUNDS=$saved_rounds
            VENDOR_FLAGS=()
            ;;
        *) die "unknown phase $phase (0ms 50ms limits streaming)" ;;
    esac
done
report | tee "$OUT/table.md"
