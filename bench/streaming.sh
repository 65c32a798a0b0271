#!/usr/bin/env bash
# Measures Tollgate's streaming overhead: time to first byte and throughput of concurrent SSE streams, sent to
# the mock provider directly and through the gateway (full metering: auth, routing, prompt estimate by
# meter-sidecar, SSE parse, usage event to Kafka), interleaved, with release builds on this machine.
#
#   bench/streaming.sh [STREAMS] [CONCURRENCY]      (defaults 2000 and 50)
#
# Needs the broker (started through compose/infra-up); uses ports 18080-18090 and stops what it started.
set -euo pipefail
# shellcheck source=../compose/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../compose/lib.sh"
cd "$TOLLGATE_ROOT"

streams=${1:-2000}
concurrency=${2:-50}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked --bins >&2
bin=$CARGO_TARGET_DIR/release
"$TOLLGATE_ROOT/compose/infra-up" tansu >&2

provider_key=bench-provider-key
client_key=tg-bench-key
key_sha=$(printf '%s' "$client_key" | "$bin/gateway" hash-key)
cat >"$work/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:18080"
instance_id = "bench"
[meter]
url = "http://127.0.0.1:18081"
[kafka]
brokers = "127.0.0.1:$KAFKA_PORT"
usage_topic = "tollgate.usage.v1.bench"
[[instances]]
name = "mock"
endpoint = "http://127.0.0.1:18090/v1"
api_key_env = "BENCH_PROVIDER_KEY"
[[routes]]
name = "gpt-4o-mini"
models = ["gpt-4o-mini"]
targets = [{ instance = "mock" }]
[[consumers]]
name = "bench"
keys = [{ id = "bench-1", sha256 = "$key_sha" }]
TOML

start() { "$@" </dev/null >>"$work/services.log" 2>&1 & pids+=($!); }
start "$bin/mock-provider" --listen 127.0.0.1:18090 --expect-api-key "$provider_key"
start "$bin/meter-sidecar" --listen 127.0.0.1:18081
RUST_LOG=warn BENCH_PROVIDER_KEY=$provider_key start "$bin/gateway" --config "$work/gateway.toml"
for url in http://127.0.0.1:18090/healthz http://127.0.0.1:18081/healthz http://127.0.0.1:18080/healthz; do
    wait_for_http "$url" 30 || { cat "$work/services.log" >&2; exit 1; }
done

run() {
    "$bin/stream-bench" --label "$1" --url "$2" --key "$3" --streams "$streams" --concurrency "$concurrency"
}
direct=http://127.0.0.1:18090/v1/chat/completions
gateway=http://127.0.0.1:18080/v1/chat/completions
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $streams streams, $concurrency concurrent"
run warmup "$gateway" "$client_key" >/dev/null
for round in 1 2; do
    run "direct-$round" "$direct" "$provider_key"
    run "gateway-$round" "$gateway" "$client_key"
done
