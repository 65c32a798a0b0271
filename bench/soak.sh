#!/usr/bin/env bash
# A soak of Tollgate with full metering: a steady open-loop load for SOAK_SECONDS (default 600) — whole chat
# completions, SSE streams, and requests on a route whose preferred upstream fails one answer in ten (each such
# request fails over) — while the gateway's resident memory and open file descriptors are sampled every
# SOAK_SAMPLE seconds. Prints the samples, then first / peak / last and the growth from the second minute to the
# last, and exits non-zero when a request failed, RSS went above 64 MiB, or RSS or descriptors kept growing.
#
#   bench/soak.sh        (SOAK_SECONDS=600 SOAK_SAMPLE=10 SOAK_JSON_RATE=150 SOAK_SSE_RATE=40 SOAK_FAILOVER_RATE=50)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_quota_loop
duration=${SOAK_SECONDS:-600}
sample=${SOAK_SAMPLE:-10}
url=http://127.0.0.1:18180/v1/chat/completions
samples=$work/samples.csv
echo "seconds,rss_kib,fds" >"$samples"

load() { # MODEL RATE STREAM
    "$bin/stream-bench" --label "$1" --url "$url" --key "$client_key" --model "$1" --rate "$2" \
        --stream "$3" --duration "${duration}s" >"$work/load-$1.out" 2>&1
}
load bench-json "${SOAK_JSON_RATE:-150}" false &
loaders=($!)
load bench-sse "${SOAK_SSE_RATE:-40}" true &
loaders+=($!)
load bench-failover "${SOAK_FAILOVER_RATE:-50}" false &
loaders+=($!)

log "soaking for ${duration}s; sampling the gateway (pid $metered_pid) every ${sample}s"
started=$(date +%s)
while :; do
    now=$(($(date +%s) - started))
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$metered_pid/status")
    fds=$(find "/proc/$metered_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    echo "$now,$rss,$fds" | tee -a "$samples"
    ((now >= duration)) && break
    sleep "$sample"
done
failed=0
for pid in "${loaders[@]}"; do wait "$pid" || failed=1; done
cat "$work"/load-*.out

# Growth: the mean of the last minute against the mean of the second minute (the first is warm-up).
report=$(awk -F, -v d="$duration" 'NR > 1 {
        n++; rss[n] = $2; fds[n] = $3; t[n] = $1
        if ($2 > peak) peak = $2
    }
    END {
        for (i = 1; i <= n; i++) {
            if (t[i] >= 60 && t[i] < 120) { a += rss[i]; af += fds[i]; an++ }
            if (t[i] >= d - 60) { b += rss[i]; bf += fds[i]; bn++ }
        }
        printf "rss_first_mib=%.1f rss_peak_mib=%.1f rss_last_mib=%.1f rss_growth_mib=%.1f fds_first=%d fds_last=%d fds_growth=%.1f\n",
            rss[1] / 1024, peak / 1024, rss[n] / 1024, (b / bn - a / an) / 1024, fds[1], fds[n], bf / bn - af / an
    }' "$samples")
echo "$report"
peak=$(sed -n 's/.*rss_peak_mib=\([0-9.]*\).*/\1/p' <<<"$report")
growth=$(sed -n 's/.*rss_growth_mib=\([-0-9.]*\).*/\1/p' <<<"$report")
fd_growth=$(sed -n 's/.*fds_growth=\([-0-9.]*\).*/\1/p' <<<"$report")
((failed == 0)) || die "requests failed during the soak"
awk -v p="$peak" 'BEGIN { exit !(p < 64) }' || die "RSS peaked at $peak MiB (target: under 64)"
awk -v g="$growth" 'BEGIN { exit !(g < 2) }' || die "RSS grew by $growth MiB from the second minute to the last"
awk -v g="$fd_growth" 'BEGIN { exit !(g < 5) }' || die "open descriptors grew by $fd_growth"
log "soak passed"
