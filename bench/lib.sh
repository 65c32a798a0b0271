#!/usr/bin/env bash
# Sourced by the bench scripts, which use the variables it sets:
# shellcheck disable=SC2034
# The set-up bench/load.sh and bench/soak.sh share (sourced, not run): nginx and wrk from Debian when missing,
# release binaries, and on ports 18180-18199:
# - the fake upstream (nginx, one worker): 18190 a fixed chat completion, 18191 a fixed SSE stream of 20 chunks
#   and a usage chunk, 18194 the chat completion with one answer in ten a 503 (for failover);
# - nginx as a plain reverse proxy (keep-alive to the upstream, proxy_buffering off for SSE): 18192 → 18190,
#   18193 → 18191;
# - a Tansu broker of its own on 18196 (fresh storage in the run's scratch directory);
# - meter-sidecar on 18181; Tollgate with full metering on 18180 (a consumer token quota and a model quota, so
#   admission checks both), and with metering off on 18182. Routes by model: bench-json, bench-sse,
#   bench-failover (the flaky upstream and the steady one, same priority).
# Everything started is stopped on exit. Sets: $work, $bin, $client_keys (eight consumers), $client_key, $metered_pid, $pure_pid, $meter_pid,
# $broker_pid, and $pinned (the command prefix that puts a load generator on the targets' cores; see BENCH_BROKER_CORE);
# start_quota_loop starts billing-consumer's quota loop (metrics on 18195). Measuring helpers: cpu_ticks, median,
# wrk_lua. BENCH_GATEWAY_WORKERS: the gateways' HTTP workers (default: one per core).
set -euo pipefail
# shellcheck source=../compose/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../compose/lib.sh"
cd "$TOLLGATE_ROOT"

for tool in nginx wrk; do
    if ! command -v "$tool" >/dev/null 2>&1 && ! [[ -x /usr/sbin/$tool ]]; then
        log "installing $tool from Debian"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$tool" </dev/null ||
            { as_root env DEBIAN_FRONTEND=noninteractive apt-get update </dev/null &&
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$tool" </dev/null; }
    fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# BENCH_BIN_DIR: binaries built before (gateway, meter-sidecar, billing-consumer, stream-bench), e.g. a copy of
# another commit's, to compare two builds on the same machine; unset, this checkout's are built.
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    bin=$BENCH_BIN_DIR
else
    log "building release binaries"
    cargo build --release --locked --bins >&2
    bin=$CARGO_TARGET_DIR/release
fi
[[ -x $TANSU_BIN ]] || "$TOLLGATE_ROOT/compose/install" --no-bins >&2
BENCH_KAFKA_PORT=18196

# --- the fake upstream: a fixed chat completion and a fixed stream of 20 chunks plus a usage chunk -----------
chunk='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench","choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}\n\n'
sse=""
for _ in $(seq 20); do sse+=$chunk; done
sse+='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
sse+='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench","choices":[],"usage":{"prompt_tokens":14,"completion_tokens":20,"total_tokens":34}}\n\n'
sse+='data: [DONE]\n\n'
json='{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":7,"total_tokens":21}}'

# nginx_common NAME — the lines every nginx of the bench starts with: its own error log and pid file.
nginx_common() {
    printf 'daemon off; error_log %s/%s-error.log warn; pid %s/%s.pid;\nevents { worker_connections 8192; }' \
        "$work" "$1" "$work" "$1"
}
cat >"$work/upstream.conf" <<CONF
$(nginx_common upstream)
worker_processes 1;
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:18190; location / { default_type application/json; return 200 '$json'; } }
    server { listen 127.0.0.1:18191; location / { default_type text/event-stream; return 200 '$sse'; } }
    split_clients "\${request_id}" \$flaky { 10% 1; * 0; }
    server {
        listen 127.0.0.1:18194;
        location / {
            default_type application/json;
            if (\$flaky) { return 503 '{"error":{"message":"flaky","type":"server_error"}}'; }
            return 200 '$json';
        }
    }
}
CONF
cat >"$work/proxy.conf" <<CONF
$(nginx_common proxy)
worker_processes auto;
http {
    access_log off;
    keepalive_requests 1000000;
    upstream json { server 127.0.0.1:18190; keepalive 256; }
    upstream sse { server 127.0.0.1:18191; keepalive 256; }
    server {
        listen 127.0.0.1:18192;
        location / { proxy_pass http://json; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        listen 127.0.0.1:18193;
        location / {
            proxy_pass http://sse; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
        }
    }
}
CONF

# --- Tollgate, metered and not ---------------------------------------------------------------------------------
# Eight consumers, as a shared gateway has several: their usage events are keyed by consumer, so they spread over
# the usage topic's partitions as production traffic does. wrk takes turns with their keys; $client_key is the first.
client_keys=()
for i in $(seq 8); do client_keys+=("tg-bench-key-$i-0123456789"); done
client_key=${client_keys[0]}
consumers_toml() { # CONSUMER_EXTRA
    local i sha
    for i in "${!client_keys[@]}"; do
        sha=$(printf '%s' "${client_keys[i]}" | "$bin/gateway" hash-key)
        printf '[[consumers]]\nname = "bench-%d"\nkeys = [{ id = "bench-%d", sha256 = "%s" }]\n%s\n' \
            $((i + 1)) $((i + 1)) "$sha" "$1"
    done
}
gateway_toml() { # NAME PORT METERING EXTRA CONSUMER_EXTRA
    cat <<TOML
[server]
listen = "127.0.0.1:$2"
instance_id = "bench-$1"
workers = ${BENCH_GATEWAY_WORKERS:-$(nproc)}
metering = $3
[meter]
url = "http://127.0.0.1:18181"
[kafka]
brokers = "127.0.0.1:$BENCH_KAFKA_PORT"
usage_topic = "tollgate.usage.v1.bench"
[quota]
topic = "tollgate.quota.v1.bench"
[spool]
dir = "$work/spool-$1"
[[instances]]
name = "json"
endpoint = "http://127.0.0.1:18190/v1"
[[instances]]
name = "sse"
endpoint = "http://127.0.0.1:18191/v1"
[[instances]]
name = "flaky"
endpoint = "http://127.0.0.1:18194/v1"
circuit_breaker = { failures = 5, cooldown = "2s" }
[[routes]]
name = "bench-json"
models = ["bench-json"]
targets = [{ instance = "json" }]
[[routes]]
name = "bench-sse"
models = ["bench-sse"]
targets = [{ instance = "sse" }]
[[routes]]
name = "bench-failover"
models = ["bench-failover"]
targets = [{ instance = "flaky" }, { instance = "json" }]
$4
$(consumers_toml "$5")
TOML
}
gateway_toml metered 18180 true \
    '[[token_limits]]
models = ["bench-json", "bench-sse", "bench-failover"]
limit = 100000000000
time_window = "1h"' \
    'token_limits = [{ limit = 100000000000, time_window = "1h" }]' >"$work/metered.toml"
gateway_toml pure 18182 false "" "" >"$work/pure.toml"

# BENCH_BROKER_CORE=N: the broker runs on core N alone and everything else (the targets, the fake upstream, the load
# generators) on the other cores, so that the broker's CPU is out of the targets' budget. Unset: all share all.
pinned=()
broker_pinned=()
if [[ -n ${BENCH_BROKER_CORE:-} ]]; then
    others=$(seq 0 $(($(nproc) - 1)) | grep -vx "$BENCH_BROKER_CORE" | paste -sd, -)
    [[ -n $others ]] || die "BENCH_BROKER_CORE needs a machine with another core"
    pinned=(taskset -c "$others")
    broker_pinned=(taskset -c "$BENCH_BROKER_CORE")
fi
start() { # LOG COMMAND...
    local log=$1
    shift
    if [[ $log == tansu ]]; then
        "${broker_pinned[@]}" "$@" </dev/null >>"$work/$log.log" 2>&1 &
    else
        "${pinned[@]}" "$@" </dev/null >>"$work/$log.log" 2>&1 &
    fi
    pids+=($!)
}
# A broker of the run's own, on a fresh SQLite file: a long-used broker's growing file slows its acknowledgements
# (and pushes the gateway's events into its spool), which would measure the broker's history, not Tollgate.
start tansu env -C "$work" RUST_LOG=warn "$TANSU_BIN" broker --cluster-id tollgate-bench \
    --listener-url "tcp://127.0.0.1:$BENCH_KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$BENCH_KAFKA_PORT" \
    --storage-engine sqlite://tansu.db
wait_for_port "$BENCH_KAFKA_PORT" 30 || die "the bench broker did not start"
broker_pid=${pids[-1]}
"$bin/billing-consumer" --brokers "127.0.0.1:$BENCH_KAFKA_PORT" create-topics --topic tollgate.usage.v1.bench \
    --quota-topic tollgate.quota.v1.bench >>"$work/topics.log" 2>&1 || { cat "$work/topics.log" >&2; die "topics"; }
start upstream "$NGINX" -c "$work/upstream.conf" -p "$work"
start proxy "$NGINX" -c "$work/proxy.conf" -p "$work"
start meter env RUST_LOG=warn "$bin/meter-sidecar" --listen 127.0.0.1:18181
start metered env RUST_LOG=warn "$bin/gateway" --config "$work/metered.toml"
metered_pid=${pids[-1]}
start pure env RUST_LOG=warn "$bin/gateway" --config "$work/pure.toml"
pure_pid=${pids[-1]}
meter_pid=${pids[3]}
# start_quota_loop — billing-consumer's quota loop, as in production: its snapshots keep the gateway's quota books
# short. Off for the load benchmark, where it would take CPU from the targets on these two cores.
start_quota_loop() {
    start quota env RUST_LOG=warn "$bin/billing-consumer" --brokers "127.0.0.1:$BENCH_KAFKA_PORT" quota \
        --config "$work/metered.toml" --topic tollgate.usage.v1.bench --quota-topic tollgate.quota.v1.bench \
        --metrics-listen 127.0.0.1:18195
}
for url in http://127.0.0.1:18181/healthz http://127.0.0.1:18180/healthz http://127.0.0.1:18182/healthz; do
    wait_for_http "$url" 60 || { tail -n 30 "$work"/*.log >&2; die "$url did not come up"; }
done
wait_for_port 18192 10 || die "nginx did not come up"


# --- measuring, for every bench script ----------------------------------------------------------------------------
hz=$(getconf CLK_TCK)
# cpu_ticks PID... — user+system clock ticks of these processes (all their threads).
cpu_ticks() {
    local total=0 pid fields
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || continue
        read -r -a fields < <(sed 's/^.*) //' "/proc/$pid/stat")
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}
# median — the median of the numbers on standard input (separated by spaces or lines).
median() { tr -s ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# wrk_lua MODEL STREAM — a wrk script posting one chat completion request; the eight consumers take turns
# (formatted once; every target, nginx included, gets the same requests).
wrk_lua() {
    cat <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"$1","stream":$2,"messages":[{"role":"user","content":"Say hello to the tollgate benchmark, please."}]}'
local keys = { $(printf '"%s", ' "${client_keys[@]}") }
local requests, turn = {}, 0
init = function(args)
    for i, key in ipairs(keys) do
        wrk.headers["Authorization"] = "Bearer " .. key
        requests[i] = wrk.format()
    end
end
request = function()
    turn = turn % #requests + 1
    return requests[turn]
end
LUA
}
