#!/usr/bin/env bash
# Capacity: what one gateway replica and one billing-consumer take, and how they add up behind a load balancer,
# on this machine, in one run. docs/capacity.md reads its figures from here.
#
#   bench/scale.sh           (BENCH_SECONDS=10 BENCH_ROUNDS=3 BENCH_CONNECTIONS=64 BENCH_MAX_REPLICAS=3
#                             BENCH_INGESTERS=2 BENCH_GATEWAY_WORKERS=1; BENCH_BROKER_CORE=1 puts the broker on
#                             core 1 alone)
#
# Gateways: 1 … BENCH_MAX_REPLICAS metered replicas configured as compose/up --replicas runs them (full metering, a
# consumer and a model token quota, spool.write_ahead, a health topic; usage events to a broker of the run's own)
# behind the load balancer compose/up --replicas runs (nginx from lb_config in compose/lib.sh, access log on), and
# bench/lib.sh's metered gateway (the same without write-ahead) behind one too, for what write-ahead costs. wrk,
# closed loop, through the load balancer; per replica count: requests/s, and CPU time per request of the gateways
# together, of meter-sidecar, of the load balancer and of the broker. Gateway cores per 10,000 requests/s is the
# gateways' CPU per request × 10,000: what a deployment needs whatever the number of machines, since the replicas
# share nothing on the request path.
# Ingest: the events those runs put on the usage topic, read back by 1 … BENCH_INGESTERS billing-consumer `run`
# processes in one consumer group into a fresh ClickHouse database each time: events/s from the first row to the
# last, per partition, and CPU per event of billing-consumer and of ClickHouse. ClickHouse is the local stack's
# (TOLLGATE_CLICKHOUSE_URL, default http://127.0.0.1:8123; compose/infra-up starts it when it does not answer).
# Quota loop: billing-consumer's quota loop started afterwards, counting every event of the topic (all partitions,
# as the lease holder does): events/s and CPU per event.
#
# On a machine with fewer cores than processes, the replicas share the cores: requests/s then stays where one
# replica's CPU per request puts it, and the CPU per request is the figure to plan with.
set -euo pipefail
# One HTTP worker per gateway: a replica is one core's worth of gateway, and N of them do not oversubscribe a small
# machine's cores with N × cores workers (which measures the scheduler, not Tollgate).
export BENCH_GATEWAY_WORKERS=${BENCH_GATEWAY_WORKERS:-1}
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
MAX_REPLICAS=${BENCH_MAX_REPLICAS:-3}
INGESTERS=${BENCH_INGESTERS:-2}
CH_URL=${TOLLGATE_CLICKHOUSE_URL:-http://127.0.0.1:8123}
# The usage topic's partitions (billing-consumer create-topics' default, as bench/lib.sh creates it).
PARTITIONS=3

per() { # TICKS COUNT — microseconds of CPU per item
    awk -v t="$1" -v n="$2" -v hz="$hz" 'BEGIN { printf "%.1f", (n > 0 ? t / hz / n * 1e6 : 0) }'
}
metric_total() { # FORMAT NAME URL... — the sum of an unlabelled metric over these /metrics endpoints, printf'd
    local format=$1 name=$2 total=0 value url
    shift 2
    for url in "$@"; do
        value=$(curl -fsS --max-time 5 "$url" | awk -v n="$name" '$1 == n {print $2}')
        total=$(awk -v a="$total" -v b="${value:-0}" 'BEGIN { printf "%.6f", a + b }')
    done
    # shellcheck disable=SC2059 # the format is the caller's
    printf "$format\n" "$total"
}
metric_sum() { metric_total %.0f "$@"; } # NAME URL... — a whole count

# --- the replicas and one load balancer per replica count -------------------------------------------------------
# Replicas 1 … MAX_REPLICAS listen on 18201, 18202, …, configured as compose/up --replicas runs them: every usage
# event written ahead to the spool (spool.write_ahead) and instance health shared through a health topic. Load
# balancer N (18210+N) spreads over the first N of them; load balancer 0 (18210) is in front of bench/lib.sh's
# metered gateway (18180), the same configuration without write-ahead, for what write-ahead costs.
quota_extra='[[token_limits]]
models = ["bench-json", "bench-sse", "bench-failover"]
limit = 100000000000
time_window = "1h"'
consumer_extra='token_limits = [{ limit = 100000000000, time_window = "1h" }]'
replica_ports=()
replica_pids=()
for ((i = 1; i <= MAX_REPLICAS; i++)); do
    port=$((18200 + i))
    gateway_toml "replica-$i" "$port" true "$quota_extra" "$consumer_extra" |
        sed -e 's/^usage_topic = .*/&\nhealth_topic = "tollgate.health.v1.bench"/' \
            -e 's/^dir = .*spool-.*/&\nwrite_ahead = true/' >"$work/replica-$i.toml"
    grep -q '^write_ahead = true' "$work/replica-$i.toml" || die "replica-$i.toml: no write_ahead"
    start "replica-$i" env RUST_LOG=warn "$bin/gateway" --config "$work/replica-$i.toml"
    replica_pids+=("${pids[-1]}")
    replica_ports+=("$port")
done
for port in "${replica_ports[@]}"; do
    wait_for_http "http://127.0.0.1:$port/healthz" 60 || { tail -n 30 "$work"/replica-*.log >&2; die "replica $port"; }
done
declare -A lb_port lb_pid
for ((n = 0; n <= MAX_REPLICAS; n++)); do
    dir=$work/lb-$n
    mkdir -p "$dir/tmp"
    lb_port[$n]=$((18210 + n))
    if ((n == 0)); then
        lb_config "$dir" "$dir/access.log" "${lb_port[$n]}" 18180 >"$dir/nginx.conf"
    else
        lb_config "$dir" "$dir/access.log" "${lb_port[$n]}" "${replica_ports[@]:0:n}" >"$dir/nginx.conf"
    fi
    start "lb-$n" "$NGINX" -p "$dir" -c "$dir/nginx.conf"
    wait_for_port "${lb_port[$n]}" 10 || die "load balancer $n did not start"
    lb_pid[$n]=$(cat "$dir/nginx.pid")
done
lb_pids() { # N — the load balancer's master and workers
    echo "${lb_pid[$1]} $(pgrep -P "${lb_pid[$1]}" | tr '\n' ' ')"
}

wrk_lua bench-json false >"$work/json.lua"

# wrk_lb N — prints "req/s gateway_us meter_us lb_us broker_us" for one run through load balancer N (0: the gateway
# without write-ahead, alone).
wrk_lb() {
    local n=$1 gw_before meter_before lb_before broker_before out requests
    local gws=("${replica_pids[@]:0:n}")
    ((n > 0)) || gws=("$metered_pid")
    local lbs
    read -r -a lbs <<<"$(lb_pids "$n")"
    gw_before=$(cpu_ticks "${gws[@]}")
    meter_before=$(cpu_ticks "$meter_pid")
    lb_before=$(cpu_ticks "${lbs[@]}")
    broker_before=$(cpu_ticks "$broker_pid")
    out=$("${pinned[@]}" wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s "$work/json.lua" \
        "http://127.0.0.1:${lb_port[$n]}/v1/chat/completions")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        printf '%s\n' "$out" >&2
        die "$n replicas answered errors under load"
    fi
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    printf '%s %s %s %s %s\n' "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")" \
        "$(per $(($(cpu_ticks "${gws[@]}") - gw_before)) "$requests")" \
        "$(per $(($(cpu_ticks "$meter_pid") - meter_before)) "$requests")" \
        "$(per $(($(cpu_ticks "${lbs[@]}") - lb_before)) "$requests")" \
        "$(per $(($(cpu_ticks "$broker_pid") - broker_before)) "$requests")"
}

log "warming up"
for ((n = 0; n <= MAX_REPLICAS; n++)); do
    "${pinned[@]}" wrk -t1 -c8 -d2s -s "$work/json.lua" "http://127.0.0.1:${lb_port[$n]}/v1/chat/completions" >/dev/null
done
declare -A rps gw_us meter_us lb_us broker_us
for round in $(seq "$ROUNDS"); do
    for ((n = 0; n <= MAX_REPLICAS; n++)); do
        read -r r g m l b < <(wrk_lb "$n")
        rps[$n]+="$r "
        gw_us[$n]+="$g "
        meter_us[$n]+="$m "
        lb_us[$n]+="$l "
        broker_us[$n]+="$b "
        log "round $round: $n replica(s) $r req/s; CPU µs/request: gateways $g, meter $m, load balancer $l, broker $b"
    done
done

# --- ingest: the topic those runs filled, read back by 1 … INGESTERS billing-consumers ---------------------------
metrics_urls=()
for port in 18180 "${replica_ports[@]}"; do metrics_urls+=("http://127.0.0.1:$port/metrics"); done
deadline=$((SECONDS + 120))
while (($(metric_sum tollgate_events_queued "${metrics_urls[@]}") > 0)) ||
    (($(metric_sum tollgate_spool_bytes "${metrics_urls[@]}") > 0)); do
    ((SECONDS < deadline)) || die "the gateways did not hand every event to the broker within 120 s"
    sleep 1
done
events=$(metric_sum tollgate_events_emitted_total "${metrics_urls[@]}")
log "the usage topic holds $events events from the runs above"

curl -fsS --max-time 5 "$CH_URL/ping" >/dev/null 2>&1 || "$TOLLGATE_ROOT/compose/infra-up" >&2
ch_pid=$(pgrep -f '^[^ ]*clickhouse(-server| server) ' | head -1 || true)
[[ -n $ch_pid ]] || log "ClickHouse runs outside this machine's process table: its CPU is not measured"
ch_query() { curl -fsS --max-time 30 "$CH_URL/" --data-binary "$1"; }

declare -A ingest_rate ingest_bc_us ingest_ch_us ingest_secs ingest_batches ingest_insert_rate ingest_broker_us
declare -A ingest_broker_cores
stamp=$(date +%s)
for ((c = 1; c <= INGESTERS; c++)); do
    db=tollgate_bench_scale_${stamp}_$c
    "$bin/billing-consumer" --clickhouse-url "$CH_URL" --clickhouse-database "$db" migrate >>"$work/migrate.log" 2>&1 ||
        { cat "$work/migrate.log" >&2; die "migrate $db"; }
    ingesters=()
    for ((k = 1; k <= c; k++)); do
        start "ingest-$c-$k" env RUST_LOG=warn "$bin/billing-consumer" --brokers "127.0.0.1:$BENCH_KAFKA_PORT" \
            --clickhouse-url "$CH_URL" --clickhouse-database "$db" run --topic tollgate.usage.v1.bench \
            --group "bench-scale-$stamp-$c" --metrics-listen "127.0.0.1:$((18219 + k))"
        ingesters+=("${pids[-1]}")
    done
    # From the first row to the last: the group's first rebalance (several seconds on a fresh group) is not ingest.
    first="" rows=0
    deadline=$((SECONDS + 300))
    while ((rows < events)); do
        ((SECONDS < deadline)) || die "$c billing-consumer(s) wrote $rows of $events events in 300 s"
        rows=$(ch_query "SELECT count() FROM $db.usage_events")
        if [[ -z $first ]] && ((rows > 0)); then
            first=$(date +%s.%N)
            first_rows=$rows
            bc_before=$(cpu_ticks "${ingesters[@]}")
            ch_from=$(cpu_ticks ${ch_pid:+"$ch_pid"})
            broker_from=$(cpu_ticks "$broker_pid")
        fi
        sleep 0.1
    done
    last=$(date +%s.%N)
    bc_ticks=$(($(cpu_ticks "${ingesters[@]}") - bc_before))
    ch_ticks=$(($(cpu_ticks ${ch_pid:+"$ch_pid"}) - ch_from))
    broker_ticks=$(($(cpu_ticks "$broker_pid") - broker_from))
    ingest_secs[$c]=$(awk -v a="$first" -v b="$last" 'BEGIN { printf "%.2f", b - a }')
    ingest_rate[$c]=$(awk -v n=$((events - first_rows)) -v s="${ingest_secs[$c]}" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
    ingest_bc_us[$c]=$(per "$bc_ticks" $((events - first_rows)))
    ingest_ch_us[$c]=$(per "$ch_ticks" $((events - first_rows)))
    ingest_broker_us[$c]=$(per "$broker_ticks" $((events - first_rows)))
    # The broker's busy cores while it served the fetches: 1.0 is one core all the time.
    ingest_broker_cores[$c]=$(awk -v t="$broker_ticks" -v hz="$hz" -v s="${ingest_secs[$c]}" \
        'BEGIN { printf "%.2f", (s > 0 ? t / hz / s : 0) }')
    log "$c billing-consumer(s): $((events - first_rows)) events in ${ingest_secs[$c]} s = ${ingest_rate[$c]}/s; CPU µs/event: billing-consumer ${ingest_bc_us[$c]}, ClickHouse ${ingest_ch_us[$c]}"
    # ClickHouse's insert rate: rows over the time billing-consumer spent in INSERTs (its own histogram).
    urls=()
    for ((k = 1; k <= c; k++)); do urls+=("http://127.0.0.1:$((18219 + k))/metrics"); done
    ingest_batches[$c]=$(metric_sum billing_batches_inserted_total "${urls[@]}")
    ingest_insert_rate[$c]=$(awk -v n="$events" -v s="$(metric_total %.6f billing_insert_duration_seconds_sum "${urls[@]}")" \
        'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
    for pid in "${ingesters[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${ingesters[@]}"; do wait "$pid" 2>/dev/null || true; done
    ch_query "DROP DATABASE IF EXISTS $db" >/dev/null
done

# --- the quota loop: one process counting every event of every partition ------------------------------------------
# Started now, it reads the topic from the longest window back: all the events of the runs above.
start_quota_loop
quota_pid=${pids[-1]}
wait_for_http http://127.0.0.1:18195/metrics 60 || die "the quota loop did not start"
first="" applied=0
deadline=$((SECONDS + 300))
while ((applied < events)); do
    ((SECONDS < deadline)) || die "the quota loop counted $applied of $events events in 300 s"
    applied=$(metric_sum billing_quota_events_applied_total http://127.0.0.1:18195/metrics)
    if [[ -z $first ]] && ((applied > 0)); then
        first=$(date +%s.%N)
        first_applied=$applied
        quota_before=$(cpu_ticks "$quota_pid")
        broker_from=$(cpu_ticks "$broker_pid")
    fi
    sleep 0.1
done
last=$(date +%s.%N)
quota_counted=$((events - first_applied))
quota_secs=$(awk -v a="$first" -v b="$last" 'BEGIN { printf "%.2f", b - a }')
quota_rate=$(awk -v n="$quota_counted" -v s="$quota_secs" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
quota_us=$(per $(($(cpu_ticks "$quota_pid") - quota_before)) "$quota_counted")
quota_broker_cores=$(awk -v t=$(($(cpu_ticks "$broker_pid") - broker_from)) -v hz="$hz" -v s="$quota_secs" \
    'BEGIN { printf "%.2f", (s > 0 ? t / hz / s : 0) }')
log "the quota loop: $quota_counted events in $quota_secs s = $quota_rate/s, $quota_us µs CPU/event"

# --- the tables ---------------------------------------------------------------------------------------------------
printf '\n# %s, %s, %s cores, %s GiB; wrk -c%s %ss × %s rounds (median) through nginx (lb_config)%s\n\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" "$(nproc)" \
    "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" "$CONNECTIONS" "$SECONDS_PER_RUN" "$ROUNDS" \
    "${BENCH_BROKER_CORE:+; the broker alone on core $BENCH_BROKER_CORE}"
printf '| gateway replicas | req/s | gateways CPU µs/req | gateway cores per 10k req/s | meter µs/req | load balancer µs/req | broker µs/req |\n'
printf '|---|---|---|---|---|---|---|\n'
for ((n = 0; n <= MAX_REPLICAS; n++)); do
    g=$(median <<<"${gw_us[$n]}")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$( ((n > 0)) && echo "$n" || echo "1, without write-ahead")" \
        "$(median <<<"${rps[$n]}")" "$g" "$(awk -v g="$g" 'BEGIN { printf "%.2f", g * 10000 / 1e6 }')" \
        "$(median <<<"${meter_us[$n]}")" "$(median <<<"${lb_us[$n]}")" "$(median <<<"${broker_us[$n]}")"
done
printf '\n| billing-consumers (one group, %s partitions) | events | seconds | events/s | events/s per partition | batches | ClickHouse rows/s while inserting | billing-consumer CPU µs/event | ClickHouse CPU µs/event | broker CPU µs/event | broker cores busy |\n' "$PARTITIONS"
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
for ((c = 1; c <= INGESTERS; c++)); do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$events" "${ingest_secs[$c]}" \
        "${ingest_rate[$c]}" "$(awk -v r="${ingest_rate[$c]}" -v p="$PARTITIONS" 'BEGIN { printf "%.0f", r / p }')" \
        "${ingest_batches[$c]}" "${ingest_insert_rate[$c]}" "${ingest_bc_us[$c]}" "${ingest_ch_us[$c]}" \
        "${ingest_broker_us[$c]}" "${ingest_broker_cores[$c]}"
done
printf '\nquota loop (one process, every partition): %s events in %s s = %s events/s, %s µs CPU/event; broker cores busy %s\n' \
    "$quota_counted" "$quota_secs" "$quota_rate" "$quota_us" "$quota_broker_cores"
printf '\nper round (req/s):\n'
for ((n = 0; n <= MAX_REPLICAS; n++)); do printf '  load balancer %s: %s\n' "$n" "${rps[$n]}"; done
