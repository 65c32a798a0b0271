# shellcheck shell=bash
# Shared settings and helpers of Tollgate's local-stack scripts (compose/*). Sourced, never executed.
#
# Everything the stack writes lives outside the repository:
#   $TOLLGATE_HOME  (default ~/.local/share/tollgate)  data/ (one dir per component), logs/, run/ (pid files)
#   $TOLLGATE_CACHE (default ~/.cache/tollgate)        tansu/ (the broker, built once), target/ (cargo target dir)
# Every port can be overridden from the environment; the defaults match compose/tollgate.toml.

# The settings below are read by the scripts that source this file.
# shellcheck disable=SC2034

TOLLGATE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# CI runners may start us without HOME.
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
TOLLGATE_HOME=${TOLLGATE_HOME:-$HOME/.local/share/tollgate}
TOLLGATE_CACHE=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}
# The cargo target dir lives in the cache, so a fresh clone reuses the dependencies already compiled.
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TOLLGATE_CACHE/target}
export TOLLGATE_ROOT TOLLGATE_HOME TOLLGATE_CACHE CARGO_TARGET_DIR

KAFKA_PORT=${KAFKA_PORT:-9092}
CLICKHOUSE_HTTP_PORT=${CLICKHOUSE_HTTP_PORT:-8123}
CLICKHOUSE_TCP_PORT=${CLICKHOUSE_TCP_PORT:-9000}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
METER_PORT=${METER_PORT:-8081}
MOCK_PROVIDER_PORT=${MOCK_PROVIDER_PORT:-8090}
BILLING_METRICS_PORT=${BILLING_METRICS_PORT:-9464}
GATEWAY_METRICS_PORT=${GATEWAY_METRICS_PORT:-9465}
ADMIN_PORT=${ADMIN_PORT:-9180}
# Several replicas (compose/up --replicas N, N >= 2): gateway-I listens on GATEWAY_REPLICA_PORT_BASE+I, its /metrics on
# GATEWAY_REPLICA_METRICS_BASE+I and its admin API on ADMIN_PORT+I-1; billing-consumer-I's /metrics (and usage API)
# on BILLING_REPLICA_METRICS_BASE+I; the load balancer (nginx) takes GATEWAY_PORT. With one replica nothing changes.
GATEWAY_REPLICA_PORT_BASE=${GATEWAY_REPLICA_PORT_BASE:-8100}
GATEWAY_REPLICA_METRICS_BASE=${GATEWAY_REPLICA_METRICS_BASE:-9500}
BILLING_REPLICA_METRICS_BASE=${BILLING_REPLICA_METRICS_BASE:-9600}
MAX_REPLICAS=16
NGINX_BIN=${NGINX_BIN:-$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)}
# The compacted topic admin changes go through; every gateway replica and billing-consumer follow it.
CONFIG_TOPIC=${TOLLGATE_CONFIG_TOPIC:-tollgate.config.v1}

# The fake instance key the gateway sends to the mock provider. Local only: it protects nothing.
MOCK_PROVIDER_API_KEY=${MOCK_PROVIDER_API_KEY:-mock-provider-local-secret}
CLICKHOUSE_DATABASE=${TOLLGATE_CLICKHOUSE_DATABASE:-tollgate}
export MOCK_PROVIDER_API_KEY

TANSU_VERSION=0.6.0
TANSU_ROOT=$TOLLGATE_CACHE/tansu
TANSU_BIN=$TANSU_ROOT/bin/tansu
CLICKHOUSE_BIN=${CLICKHOUSE_BIN:-/usr/sbin/clickhouse-server}

LOG_DIR=$TOLLGATE_HOME/logs
RUN_DIR=$TOLLGATE_HOME/run
DATA_DIR=$TOLLGATE_HOME/data

# Services in start order (compose/down stops the gateway first, then the others, then the infrastructure).
SERVICES=(meter-sidecar mock-provider billing-consumer gateway)
INFRA=(tansu clickhouse)

# log MESSAGE... — one timestamped line on stderr.
log() {
    printf '[tollgate %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# print_header — print the calling script's header comment (its --help).
print_header() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# die MESSAGE... — log and exit non-zero.
die() {
    log "error: $*"
    exit 1
}

# as_root CMD... — run CMD as root (directly when we are root, else through sudo).
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not installed"
    fi
}

# ensure_dirs — create the state directories and check that they are writable.
ensure_dirs() {
    mkdir -p "$LOG_DIR" "$RUN_DIR" "$DATA_DIR" || die "cannot create $TOLLGATE_HOME (set TOLLGATE_HOME to a writable dir)"
    local dir
    for dir in "$LOG_DIR" "$RUN_DIR" "$DATA_DIR"; do
        [[ -w $dir ]] || die "$dir is not writable by $(id -un) (set TOLLGATE_HOME to a writable dir)"
    done
}

# port_open PORT — true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# still_alive NAME — true while the process recorded for NAME exists. Weaker than running_pid on purpose: right
# after the fork, before exec, its environment does not show TOLLGATE_PROCESS yet, and a start-up wait must not
# take that moment for a crash.
still_alive() {
    local pid
    pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# wait_for_port PORT TIMEOUT_SECONDS [NAME] — wait until 127.0.0.1:PORT accepts connections.
# With NAME, give up early when that process died.
wait_for_port() {
    local port=$1 timeout=$2 name=${3:-}
    local deadline=$((SECONDS + timeout))
    until port_open "$port"; do
        if [[ -n $name ]] && ! still_alive "$name"; then
            return 1
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# wait_for_http URL TIMEOUT_SECONDS [NAME] — wait until URL answers 2xx.
# With NAME, give up early when that process died.
wait_for_http() {
    local url=$1 timeout=$2 name=${3:-}
    local deadline=$((SECONDS + timeout))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n $name ]] && ! still_alive "$name"; then
            return 1
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.3
    done
}

# pid_file NAME / log_file NAME — where a component's pid and output go.
pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }
log_file() { printf '%s/%s.log' "$LOG_DIR" "$1"; }

# running_pid NAME — print the recorded pid of NAME and succeed if that process is alive and is ours.
# "Ours" means its environment carries TOLLGATE_PROCESS=NAME (set by start_process), so a stale pid
# file whose pid was reused by another program after a reboot is never mistaken for, or killed as, ours.
running_pid() {
    local file pid
    file=$(pid_file "$1")
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/environ ]] &&
        ! tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "TOLLGATE_PROCESS=$1"; then
        # nginx writes its process title over its environment: the load balancer is known by its config path.
        [[ $1 == lb ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-c $(lb_conf_file)" || return 1
    fi
    printf '%s\n' "$pid"
}

# start_process NAME WORKDIR CMD... — start CMD in WORKDIR as a daemon in its own session, stdin from
# /dev/null, stdout and stderr appended to logs/NAME.log, pid in run/NAME.pid. No-op when NAME already runs.
# The daemon holds none of the caller's file descriptors, so a caller reading our output sees EOF.
start_process() {
    local name=$1 workdir=$2
    shift 2
    local pid
    if pid=$(running_pid "$name"); then
        log "$name already running (pid $pid)"
        return 0
    fi
    ensure_dirs
    mkdir -p "$workdir"
    local logf
    logf=$(log_file "$name")
    printf '\n===== %s starting %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" "$*" >>"$logf"
    # A background subshell is not a process-group leader, so setsid(1) calls setsid(2) and execs in
    # place: $! is the daemon's own pid. Every descriptor above 2 is closed first: a pipe inherited from
    # whoever runs us (a CI runner, a terminal multiplexer) must not stay open in a long-lived daemon.
    (
        cd "$workdir" || exit 1
        export TOLLGATE_PROCESS="$name"
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then
                { eval "exec $fd>&-"; } 2>/dev/null || true
            fi
        done
        exec setsid nohup "$@" </dev/null >>"$logf" 2>&1
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$(pid_file "$name")"
    log "$name started (pid $pid, log $logf)"
}

# stop_process NAME [TIMEOUT_SECONDS] — TERM the recorded pid, wait, KILL after the bound, remove the pid file.
stop_process() {
    stop_processes "${2:-20}" "$1"
}

# stop_processes TIMEOUT_SECONDS NAME... — stop_process for several at once: TERM all, wait for all.
stop_processes() {
    local timeout=$1
    shift
    local name pid pids=() names=()
    for name in "$@"; do
        if pid=$(running_pid "$name"); then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        else
            rm -f "$(pid_file "$name")"
        fi
    done
    local deadline=$((SECONDS + timeout)) i alive
    while :; do
        alive=0
        for i in "${!pids[@]}"; do
            kill -0 "${pids[i]}" 2>/dev/null && alive=1
        done
        ((alive)) || break
        if ((SECONDS >= deadline)); then
            for i in "${!pids[@]}"; do
                if kill -0 "${pids[i]}" 2>/dev/null; then
                    log "${names[i]} did not stop within ${timeout}s, sending KILL"
                    kill -KILL "${pids[i]}" 2>/dev/null || true
                fi
            done
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    for name in "${names[@]}"; do
        rm -f "$(pid_file "$name")"
    done
}

# show_log_tail NAME [LINES] — print the end of a component's log, for failed health checks.
show_log_tail() {
    local name=$1 lines=${2:-30} logf
    logf=$(log_file "$name")
    if [[ -r $logf ]]; then
        log "last $lines lines of $logf (this start):"
        # Only the output of the latest start: everything after the last "===== ... starting" marker.
        awk '/^===== .* starting /{n = 0; delete buf} {buf[n++] = $0} END {for (i = 0; i < n; i++) print buf[i]}' "$logf" |
            tail -n "$lines" >&2
    else
        log "no log at $logf"
    fi
}

# refuse_foreign_port NAME PORT VAR — fail when PORT is already taken by a process that is not our NAME.
refuse_foreign_port() {
    local name=$1 port=$2 var=$3
    if ! running_pid "$name" >/dev/null && port_open "$port"; then
        local owner=""
        if command -v ss >/dev/null 2>&1; then
            owner=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -n 1 || true)
        fi
        die "$name: port $port is already in use by another process ${owner:+($owner) }— stop it, or choose another port with $var=..."
    fi
}

# service_port NAME — the port a service is reached on: its API, or its /metrics for billing-consumer.
service_port() {
    case $1 in
        meter-sidecar) printf '%s' "$METER_PORT" ;;
        mock-provider) printf '%s' "$MOCK_PROVIDER_PORT" ;;
        billing-consumer) printf '%s' "$BILLING_METRICS_PORT" ;;
        billing-consumer-*) printf '%s' $((BILLING_REPLICA_METRICS_BASE + ${1#billing-consumer-})) ;;
        gateway | lb) printf '%s' "$GATEWAY_PORT" ;;
        gateway-*) printf '%s' $((GATEWAY_REPLICA_PORT_BASE + ${1#gateway-})) ;;
        *) return 1 ;;
    esac
}

# gateway_metrics_port NAME — where gateway NAME (gateway or gateway-I) serves /metrics.
gateway_metrics_port() {
    case $1 in
        gateway-*) printf '%s' $((GATEWAY_REPLICA_METRICS_BASE + ${1#gateway-})) ;;
        *) printf '%s' "$GATEWAY_METRICS_PORT" ;;
    esac
}

# health_url NAME — the URL whose 2xx answer means NAME is healthy (empty for the broker). The load balancer's is
# a gateway's /healthz through it.
health_url() {
    case $1 in
        clickhouse) printf 'http://127.0.0.1:%s/ping' "$CLICKHOUSE_HTTP_PORT" ;;
        meter-sidecar | mock-provider | gateway | gateway-* | lb)
            printf 'http://127.0.0.1:%s/healthz' "$(service_port "$1")"
            ;;
        billing-consumer | billing-consumer-*) printf 'http://127.0.0.1:%s/metrics' "$(service_port "$1")" ;;
        *) return 0 ;;
    esac
}

# replica_count — how many gateway replicas the running stack has: the count compose/up recorded in $RUN_DIR, 1
# when none is recorded (a single gateway, no load balancer).
replica_count() {
    local n
    n=$(cat "$RUN_DIR/replicas" 2>/dev/null) || n=1
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAX_REPLICAS)) || n=1
    printf '%s\n' "$n"
}

# replica_names BASE [N] — the process names of BASE (gateway, billing-consumer) for N replicas (default: the
# recorded count): BASE itself for one, BASE-1 … BASE-N for more.
replica_names() {
    local base=$1 n=${2:-$(replica_count)} i
    if ((n == 1)); then
        printf '%s\n' "$base"
    else
        for ((i = 1; i <= n; i++)); do printf '%s-%s\n' "$base" "$i"; done
    fi
}

# stack_services [N] — every service of the stack with N replicas (default: the recorded count), in start order:
# meter-sidecar, mock-provider, the billing-consumers, the gateways, and the load balancer when N >= 2.
stack_services() {
    local n=${1:-$(replica_count)}
    printf '%s\n' meter-sidecar mock-provider
    replica_names billing-consumer "$n"
    replica_names gateway "$n"
    ((n == 1)) || printf '%s\n' lb
}

# kafka_metadata_ok PORT — send a Kafka Metadata v0 request over bash's /dev/tcp and check that the answer
# names a broker at 127.0.0.1:PORT (i.e. the broker speaks Kafka and advertises the address clients must use).
kafka_metadata_ok() {
    local port=$1 hex
    # size=22 | api_key=3 (Metadata) | version=0 | correlation_id=7 | client_id="tollgate" | topics=[] (all)
    hex=$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf '\x00\x00\x00\x16\x00\x03\x00\x00\x00\x00\x00\x07\x00\x08tollgate\x00\x00\x00\x00' >&3
        size=$(timeout 5 head -c 4 <&3 | od -An -tu4 --endian=big | tr -d ' ')
        [[ $size =~ ^[0-9]+$ ]] && ((size > 0 && size < 1048576)) || exit 1
        timeout 5 head -c "$size" <&3 | od -An -v -tx1 | tr -d ' \n'
    ) || return 1
    # answer: correlation_id=7 | brokers (>= 1) | node_id | host (int16 length, bytes) | port (int32) ...
    local host_hex port_hex
    host_hex=$(printf '127.0.0.1' | od -An -v -tx1 | tr -d ' \n')
    port_hex=$(printf '%08x' "$port")
    [[ ${hex:0:8} == 00000007 && ${hex:8:8} != 00000000 && ${hex:24:4} == 0009 &&
        ${hex:28:18} == "$host_hex" && ${hex:46:8} == "$port_hex" ]]
}

# kafka_canary_ok PORT — produce a canary record to the broker on PORT and read it back (`gateway check-broker`):
# a broker whose storage died still answers metadata, so metadata alone is not health. Without a built gateway
# binary that has the check (before compose/install), falls back to the metadata check.
kafka_canary_ok() {
    local port=$1 bin
    bin=$(cargo_bin gateway)
    # A gateway binary built before check-broker existed cannot tell: metadata it is, then.
    if [[ -x $bin ]] && "$bin" check-broker --help >/dev/null 2>&1; then
        "$bin" check-broker --brokers "127.0.0.1:$port" --timeout "${2:-10s}" >/dev/null 2>&1
    else
        kafka_metadata_ok "$port"
    fi
}

# metric_value URL NAME — the first sample of metric NAME (any labels) at a Prometheus URL; empty if none.
metric_value() {
    curl -fsS --max-time 2 "$1" 2>/dev/null | awk -v name="$2" '$1 == name || index($1, name "{") == 1 { print $2; exit }'
}

# cargo_bin NAME — path of a workspace binary built by `cargo build --bins` (debug profile).
cargo_bin() { printf '%s/debug/%s' "$CARGO_TARGET_DIR" "$1"; }

# admin_key — the local stack's admin API key: made once (256 random bits) into $DATA_DIR/admin-key, mode 600.
# There is no default admin key; this one exists only on this machine.
admin_key() {
    local file=$DATA_DIR/admin-key
    if [[ ! -s $file ]]; then
        mkdir -p "$DATA_DIR"
        (umask 077 && printf 'tga-%s\n' "$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')" >"$file")
    fi
    head -n 1 "$file"
}

# gateway_config [I] — path of the gateway config to run: compose/tollgate.toml rendered into $DATA_DIR/gateway
# with the overridden ports, its spool in $DATA_DIR/gateway/spool, and an [admin] table: loopback only, the config
# topic, and the key of admin_key. With I, replica I of several: rendered into $DATA_DIR/gateway-I with instance
# id local-I, its own API, metrics and admin ports and spool ($DATA_DIR/gateway-I/spool), server.replicas set to
# the replica count (each enforces its share of every request-rate limit), and the usage API read from
# billing-consumer-1.
gateway_config() {
    local src=$TOLLGATE_ROOT/compose/tollgate.toml
    [[ -r $src ]] || die "missing $src"
    local i=${1:-} name=gateway port=$GATEWAY_PORT admin=$ADMIN_PORT billing=$BILLING_METRICS_PORT replicas=1
    if [[ -n $i ]]; then
        replicas=$(replica_count)
        name=gateway-$i
        port=$(service_port "$name")
        admin=$((ADMIN_PORT + i - 1))
        billing=$(service_port billing-consumer-1)
    fi
    local metrics
    metrics=$(gateway_metrics_port "$name")
    local out=$DATA_DIR/$name/tollgate.toml
    mkdir -p "${out%/*}"
    local sha
    sha=$(printf '%s' "$(admin_key)" | sha256sum | cut -d' ' -f1)
    {
        sed -e "s/\(127\.0\.0\.1\|localhost\):8080\b/\1:$port/g" \
            -e "s/\(127\.0\.0\.1\|localhost\):8081\b/\1:$METER_PORT/g" \
            -e "s/\(127\.0\.0\.1\|localhost\):8090\b/\1:$MOCK_PROVIDER_PORT/g" \
            -e "s/\(127\.0\.0\.1\|localhost\):9092\b/\1:$KAFKA_PORT/g" \
            -e "s/\(127\.0\.0\.1\|localhost\):9465\b/\1:$metrics/g" \
            -e "s/\(127\.0\.0\.1\|localhost\):9464\b/\1:$billing/g" \
            -e "s/^instance_id = \"local-1\"/instance_id = \"local-${i:-1}\"\nreplicas = $replicas/" \
            -e "s|^dir = \"spool\"|dir = \"$DATA_DIR/$name/spool\"|" \
            "$src"
        printf '\n# Added by compose/up: the admin API on loopback, its key from compose/admin-key.\n'
        printf '[admin]\nlisten = "127.0.0.1:%s"\nconfig_topic = "%s"\n' "$admin" "$CONFIG_TOPIC"
        printf 'keys = [{ id = "local-admin", sha256 = "%s", role = "admin" }]\n' "$sha"
    } >"$out"
    printf '%s\n' "$out"
}

# billing_env — the environment billing-consumer runs with (exported into the current shell).
billing_env() {
    export TOLLGATE_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
    export TOLLGATE_CLICKHOUSE_URL=http://127.0.0.1:$CLICKHOUSE_HTTP_PORT
    export TOLLGATE_CLICKHOUSE_DATABASE=$CLICKHOUSE_DATABASE
    export BILLING_METRICS_LISTEN=127.0.0.1:$BILLING_METRICS_PORT
}

# clickhouse_query SQL — run SQL through ClickHouse's HTTP interface, print the result.
clickhouse_query() {
    curl -fsS --max-time 10 "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/" --data-binary "$1"
}

# lb_dir / lb_conf_file — where the load balancer (nginx, compose/up --replicas N) keeps its config, pid and temp
# files.
lb_dir() { printf '%s/lb' "$DATA_DIR"; }
lb_conf_file() { printf '%s/nginx.conf' "$(lb_dir)"; }

# lb_config DIR ACCESS_LOG LISTEN_PORT UPSTREAM_PORT... — print the nginx configuration of the load balancer in
# front of the gateway replicas on 127.0.0.1:UPSTREAM_PORT...: it listens on 127.0.0.1:LISTEN_PORT, keeps its pid
# and temp files in DIR and logs errors to stderr (run it as `nginx -p DIR -c DIR/nginx.conf -e stderr`).
# compose/up and tests/tests/replicas.rs both run what this prints.
#
# - Retries: a request goes to the next replica after a connection error or timeout; nginx never resends a POST
#   once any of it reached a replica (no `non_idempotent`), so a chat completion is retried only when its replica
#   refused the connection — it cannot be served, and billed, twice. With proxy_request_buffering off, a body
#   nginx already started sending is not resent either.
# - A replica that failed once is left alone for fail_timeout, then tried again with one request; a refused
#   connection costs that request well under a millisecond on loopback. The failure state is shared by the
#   workers (zone).
# - Streams: no buffering either way, so SSE chunks pass as the gateway writes them; read and send timeouts of
#   10 minutes for long streams. The gateway enforces its own body limit (server.max_request_bytes), so nginx
#   sets none.
# - Keep-alive to the replicas, idle at most 4 s: below the gateway's 5 s, so nginx never reuses a connection the
#   gateway is closing (a POST sent on one would fail without a retry).
# - The access log names, per request, every replica tried ($upstream_addr) and what each answered
#   ($upstream_status), the time it ended ($msec) and took ($request_time), and the gateway's x-request-id;
#   tab-separated.
lb_config() {
    local dir=$1 access_log=$2 listen=$3
    shift 3
    (($# >= 1)) || die "lb_config: no upstream port"
    local servers="" port
    for port in "$@"; do
        servers+="        server 127.0.0.1:$port max_fails=1 fail_timeout=2s;"$'\n'
    done
    cat <<CONF
# Tollgate's load balancer in front of $# gateway replicas; made by lb_config (compose/lib.sh).
daemon off;
worker_processes 2;
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    log_format tollgate '\$msec\t\$request_time\t\$status\t\$upstream_addr\t\$upstream_status\t\$upstream_response_time\t\$upstream_http_x_request_id\t\$request_method \$request_uri';
    access_log $access_log tollgate;
    server_tokens off;

    upstream tollgate_gateways {
        zone tollgate_gateways 64k;
$servers        keepalive 64;
        keepalive_timeout 4s;
        keepalive_requests 10000;
    }

    server {
        listen 127.0.0.1:$listen;
        client_max_body_size 0;
        location / {
            proxy_pass http://tollgate_gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
            proxy_send_timeout 600s;
            proxy_read_timeout 600s;
            send_timeout 600s;
        }
    }
}
CONF
}
