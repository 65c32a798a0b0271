#!/usr/bin/env bash
# Tollgate against nginx, on this machine, in one run: the same fake upstream (nginx serving a fixed chat
# completion and a fixed SSE stream), reached directly, through nginx as a plain reverse proxy, through Tollgate
# with metering off (auth, routing, failover) and with full metering (auth, routing, quota check, prompt
# estimate by meter-sidecar, SSE usage parse, one usage event to Kafka). Targets are measured interleaved, round
# after round, and reported as ratios to nginx measured in the same run.
#
#   bench/load.sh            (BENCH_SECONDS=10 BENCH_ROUNDS=3 BENCH_CONNECTIONS=64 BENCH_RATE=500
#                             BENCH_HIGH_RATE=3000; BENCH_BROKER_CORE=1 puts the broker on core 1 alone)
#
# Measures, per target: throughput (wrk, closed loop, BENCH_CONNECTIONS connections), CPU time per request of
# the proxy's processes (Tollgate metered: gateway and meter-sidecar) and, apart, of the broker; latency at
# BENCH_RATE and at BENCH_HIGH_RATE requests/s (open loop, timed from when each request was sent) and what the
# proxy adds to the upstream's p99; concurrent streaming throughput and streamed output tokens per second per
# core of the proxy's CPU; streaming time to first byte; resident memory. Installs nginx and wrk from Debian when
# missing; builds release binaries; starts a broker of its own; uses ports 18180-18199 and stops everything it
# started.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
RATE=${BENCH_RATE:-500}
HIGH_RATE=${BENCH_HIGH_RATE:-3000}
# Output tokens in each of the fake upstream's streams (20 chunks of "token "; its usage chunk says 20).
STREAM_TOKENS=20

# --- measuring -------------------------------------------------------------------------------------------------
nginx_pids() { pgrep -f "nginx: worker process" -P "$(cat "$work/proxy.pid")" | tr '\n' ' '; cat "$work/proxy.pid"; }
rss_kib() { # PID... — summed VmRSS
    local total=0 pid
    for pid in "$@"; do total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0))); done
    echo "$total"
}

wrk_lua bench-json false >"$work/json.lua"
wrk_lua bench-sse true >"$work/sse.lua"

declare -A url=(
    [direct]=http://127.0.0.1:18190/v1/chat/completions
    [nginx]=http://127.0.0.1:18192/v1/chat/completions
    [pure]=http://127.0.0.1:18182/v1/chat/completions
    [metered]=http://127.0.0.1:18180/v1/chat/completions
)
declare -A sse_url=(
    [direct]=http://127.0.0.1:18191/v1/chat/completions
    [nginx]=http://127.0.0.1:18193/v1/chat/completions
    [pure]=http://127.0.0.1:18182/v1/chat/completions
    [metered]=http://127.0.0.1:18180/v1/chat/completions
)
procs() {
    case $1 in
        nginx) nginx_pids ;;
        pure) echo "$pure_pid" ;;
        metered) echo "$metered_pid $meter_pid" ;;
        direct) cat "$work/upstream.pid" ;;
    esac
}

declare -A rps cpu_us broker_us sse_rps sse_cpu_us
# wrk_run TARGET SCRIPT URL — prints "req/s cpu_us_per_request broker_cpu_us_per_request"; fails on any non-2xx
# answer or socket error. The broker's CPU is its own figure: only the metered target sends it anything.
wrk_run() {
    local target=$1 script=$2 target_url=$3
    local before after broker_before broker_after out
    # shellcheck disable=SC2046 # one argument per pid
    before=$(cpu_ticks $(procs "$target"))
    broker_before=$(cpu_ticks "$broker_pid")
    out=$("${pinned[@]}" wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s "$script" "$target_url")
    # shellcheck disable=SC2046
    after=$(cpu_ticks $(procs "$target"))
    broker_after=$(cpu_ticks "$broker_pid")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        printf '%s\n' "$out" >&2
        die "$target answered errors under load"
    fi
    local requests
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v r="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" -v t=$((after - before)) -v hz="$hz" -v n="$requests" \
        -v b=$((broker_after - broker_before)) \
        'BEGIN { printf "%.0f %.1f %.1f\n", r, (n > 0 ? t / hz / n * 1e6 : 0), (n > 0 ? b / hz / n * 1e6 : 0) }'
}

targets=(direct nginx pure metered)
# Latency first, on an idle system: after the saturating throughput runs the broker is still working through
# the metered target's events for a while, which is the broker's backlog, not the proxy's latency.
declare -A lat_p50 lat_p99 high_p50 high_p99 ttfb_p50 ttfb_p99
for t in "${targets[@]}"; do
    line=$("${pinned[@]}" "$bin/stream-bench" --label "$t" --url "${url[$t]}" --key "$client_key" --model bench-json \
        --stream false --rate "$RATE" --duration "${SECONDS_PER_RUN}s")
    lat_p50[$t]=$(sed -n 's/.*latency_p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    lat_p99[$t]=$(sed -n 's/.*latency_p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    line=$("${pinned[@]}" "$bin/stream-bench" --label "$t" --url "${url[$t]}" --key "$client_key" --model bench-json \
        --stream false --rate "$HIGH_RATE" --duration "${SECONDS_PER_RUN}s")
    high_p50[$t]=$(sed -n 's/.*latency_p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    high_p99[$t]=$(sed -n 's/.*latency_p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    line=$("${pinned[@]}" "$bin/stream-bench" --label "$t" --url "${sse_url[$t]}" --key "$client_key" --model bench-sse \
        --stream true --requests 1000 --concurrency 1)
    ttfb_p50[$t]=$(sed -n 's/.*ttfb_p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    ttfb_p99[$t]=$(sed -n 's/.*ttfb_p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
done
# Resident memory after the fixed-rate runs (the gateway's own; nginx's workers').
declare -A rss_mib
for t in "${targets[@]}"; do
    # shellcheck disable=SC2046
    rss_mib[$t]=$(($(rss_kib $(procs "$t" | cut -d' ' -f1)) / 1024))
    # shellcheck disable=SC2046
    [[ $t == nginx ]] && rss_mib[$t]=$(($(rss_kib $(nginx_pids)) / 1024))
done


log "warming up"
for t in "${targets[@]}"; do "${pinned[@]}" wrk -t1 -c8 -d2s -s "$work/json.lua" "${url[$t]}" >/dev/null; done

for round in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
        read -r r c b < <(wrk_run "$t" "$work/json.lua" "${url[$t]}")
        rps[$t]+="$r "
        cpu_us[$t]+="$c "
        broker_us[$t]+="$b "
        log "round $round: $t $r req/s, $c µs CPU/request, broker $b µs/request"
        read -r r c b < <(wrk_run "$t" "$work/sse.lua" "${sse_url[$t]}")
        sse_rps[$t]+="$r "
        sse_cpu_us[$t]+="$c "
        log "round $round: $t streams $r/s, $c µs CPU/stream"
    done
done

# --- the table -------------------------------------------------------------------------------------------------
med() { median <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf (b > 0 ? "%.2f×" : "–"), a / b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }
n_rps=$(med "${rps[nginx]}")
n_sse=$(med "${sse_rps[nginx]}")
printf '\n# %s, %s, %s cores, %s GiB; wrk -c%s %ss × %s rounds (median), open loop at %s and %s req/s%s\n\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" "$(nproc)" \
    "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" "$CONNECTIONS" "$SECONDS_PER_RUN" "$ROUNDS" "$RATE" \
    "$HIGH_RATE" "${BENCH_BROKER_CORE:+; the broker alone on core $BENCH_BROKER_CORE, everything else on the others}"
printf '| target | req/s | × nginx | CPU µs/req | × nginx | broker µs/req | p99 ms @%s/s | p99 added ms | p99 added ms @%s/s | streams/s | × nginx | output tokens/s per core | TTFB p50 added ms | RSS MiB |\n' "$RATE" "$HIGH_RATE"
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
n_cpu=$(med "${cpu_us[nginx]}")
for t in "${targets[@]}"; do
    r=$(med "${rps[$t]}")
    s=$(med "${sse_rps[$t]}")
    c=$(med "${cpu_us[$t]}")
    # Streamed output tokens per second of one core of the target's processes: tokens per stream over CPU per stream.
    per_core=$(awk -v c="$(med "${sse_cpu_us[$t]}")" -v n="$STREAM_TOKENS" 'BEGIN { printf (c > 0 ? "%.0f" : "–"), n * 1e6 / c }')
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$r" "$(ratio "$r" "$n_rps")" \
        "$c" "$(ratio "$c" "$n_cpu")" "$(med "${broker_us[$t]}")" "${lat_p99[$t]}" \
        "$(minus "${lat_p99[$t]}" "${lat_p99[direct]}")" "$(minus "${high_p99[$t]}" "${high_p99[direct]}")" \
        "$s" "$(ratio "$s" "$n_sse")" "$per_core" "$(minus "${ttfb_p50[$t]}" "${ttfb_p50[direct]}")" "${rss_mib[$t]}"
done
m=$(med "${rps[metered]}")
p=$(med "${rps[pure]}")
printf '\nmetering costs %s of Tollgate'"'"'s own pure-proxy throughput\n' \
    "$(awk -v m="$m" -v p="$p" 'BEGIN { printf "%.0f %%", (1 - m / p) * 100 }')"
printf '\nper round (req/s; CPU µs/req; streams/s):\n'
for t in "${targets[@]}"; do
    printf '  %-8s %s; %s; %s\n' "$t" "${rps[$t]}" "${cpu_us[$t]}" "${sse_rps[$t]}"
done
printf '\nlatency, ms (p50 / p99 @%s/s; p50 / p99 @%s/s; TTFB p50 / p99):\n' "$RATE" "$HIGH_RATE"
for t in "${targets[@]}"; do
    printf '  %-8s %s / %s; %s / %s; %s / %s\n' "$t" "${lat_p50[$t]}" "${lat_p99[$t]}" "${high_p50[$t]}" \
        "${high_p99[$t]}" "${ttfb_p50[$t]}" "${ttfb_p99[$t]}"
done
