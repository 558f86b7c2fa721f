#!/usr/bin/env bash
# Data-plane benchmark: warmfront against nginx as a reverse proxy, in one run, loopback only.
#
# Both proxies sit in front of the same nginx backend (100-byte responses, keep-alive); wrk sends
# requests from 300 rotating X-Tenant sources over 50 paths, so warmfront's control side has
# sources to count and forecast. Two pairs:
#   1 worker:  `warmfront run --workers 1` against nginx with 1 worker, both pinned to core 0
#              (warmfront's control process too); wrk and the backend on core 1.
#   N workers: warmfront with its default workers (one per CPU) against nginx with as many
#              workers; proxies and wrk unpinned (the backend stays on core 1), sharing the
#              machine as in production.
# The figure that matters is requests per proxy core-second (requests / CPU seconds the proxy's
# process tree used while wrk ran), so a proxy is not flattered or punished by how busy the
# other cores are. See bench/README.md.
#
# Env: DURATION (seconds per measured run, default 10), WARMFRONT (path to the warmfront command),
#      MIN_RATIO (exit 3 when a warmfront / nginx per core-s ratio is below it; unset = report only),
#      ACCESS_LOG=1 (also measure warmfront with its access log on, written to a file in the temp
#      dir, right after each warmfront run without it; reported in a second table).
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=2
LOWLOAD=3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
RESULTS=$HERE/results
HZ=$(getconf CLK_TCK)

die() { echo "bench: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------- tools
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; } ||
        die "cannot install ${need[*]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -n "${WARMFRONT:-}" ]; then :
elif command -v warmfront >/dev/null; then WARMFRONT=$(command -v warmfront)
else WARMFRONT=$REPO/.venv/bin/warmfront
fi
[ -x "$WARMFRONT" ] || die "warmfront not found (set WARMFRONT=/path/to/warmfront)"

# 1-worker pair: proxy on core 0; client and backend on core 1 (on a 1-core box all share core 0).
PROXY_CORE=0
CLIENT_CORE=$(( $(nproc) > 1 ? 1 : 0 ))
NCPU=$(nproc)
ALL_CORES=0-$(( NCPU - 1 ))

# ---------------------------------------------------------------------------- processes we own
TMP=$(mktemp -d /tmp/warmfront-bench.XXXXXX)
chmod 755 "$TMP"    # nginx workers run as nobody and open paths under here
STARTED=()

cleanup() {
    local pid kids=()
    for pid in "${STARTED[@]}"; do
        kids+=($(pgrep -P "$pid" 2>/dev/null || true))
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 30); do
        local alive=0
        for pid in "${STARTED[@]}" "${kids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${STARTED[@]}" "${kids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {   # n: n distinct ports nobody on this host is using
    local used port out=()
    used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
    while [ ${#out[@]} -lt "$1" ]; do
        port=$(( 20000 + RANDOM % 40000 ))
        grep -qx "$port" <<<"$used" || [[ " ${out[*]} " == *" $port "* ]] || out+=("$port")
    done
    echo "${out[@]}"
}

wait_http() {   # url pid: until a 200 arrives, the process dies, or 15 s pass
    for _ in $(seq 150); do
        kill -0 "$2" 2>/dev/null || return 1
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

nginx_conf() {   # name [workers]: writes $TMP/name.conf's common part (the caller appends the server block)
    cat > "$TMP/$1.conf" <<EOF
daemon off;
worker_processes ${2:-1};
pid $TMP/$1.pid;
error_log $TMP/$1.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 65;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/$1-body;
    proxy_temp_path $TMP/$1-proxy;
    fastcgi_temp_path $TMP/$1-fastcgi;
    uwsgi_temp_path $TMP/$1-uwsgi;
    scgi_temp_path $TMP/$1-scgi;
EOF
}

start_nginx() {   # name cores
    taskset -c "$2" "$NGINX" -e "$TMP/$1.err" -p "$TMP" -c "$TMP/$1.conf" &
    STARTED+=($!)
    LAST_PID=$!
}

# One CPU figure for a process tree: utime and stime (fields 14, 15 of /proc/PID/stat) of the
# process and its children, in clock ticks. The comm field may hold spaces, so cut after ')'.
cpu_ticks() {   # pid -> "utime stime" (its children too: nginx's and warmfront's workers)
    local pid u=0 s=0 rest
    for pid in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        rest=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a f <<<"$rest"
        u=$(( u + f[11] )); s=$(( s + f[12] ))
    done
    echo "$u $s"
}

to_ms() {   # wrk's "123.45us" / "1.23ms" / "1.02s" -> milliseconds
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else { sub(/s$/, "", v); printf "%.3f", v * 1000 } }'
}

run_wrk() {   # conns seconds url out [cores]
    timeout $(( $2 + 20 )) taskset -c "${5:-$CLIENT_CORE}" wrk -t1 -c"$1" -d"$2"s --latency --timeout 5s \
        -s "$TMP/tenants.lua" "$3" > "$4" 2>&1 || { cat "$4" >&2; die "wrk failed against $3"; }
    local bad
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$4")
    [ -z "$bad" ] || { cat "$4" >&2; die "$bad non-2xx responses from $3"; }
    bad=$(awk -F'[ ,]+' '/Socket errors:/ {print $4 + $6 + $8 + $10}' "$4")
    [ -z "$bad" ] || [ "$bad" = 0 ] || { cat "$4" >&2; die "$bad socket errors against $3"; }
}

wrk_field() {   # out field: requests | rps | p50 | p99 (ms)
    case $2 in
        requests) awk '/ requests in / {print $1; exit}' "$1" ;;
        rps) awk '/^Requests\/sec:/ {print $2; exit}' "$1" ;;
        p50) to_ms "$(awk '$1 == "50%" {print $2; exit}' "$1")" ;;
        p99) to_ms "$(awk '$1 == "99%" {print $2; exit}' "$1")" ;;
    esac
}

check_body() {   # url: the proxy must return the backend's exact 100 bytes
    local got
    got=$(curl -s --max-time 2 -o "$TMP/body" -w '%{http_code} %{size_download}' "$1") || true
    [ "$got" = "200 100" ] || die "$1 answered '$got', expected '200 100'"
    cmp -s "$TMP/body" "$TMP/expected" || die "$1 returned a different body"
}

# Measure one proxy: warm up, then the loaded run with CPU sampled around it, then one connection.
measure() {   # name pid url client-cores
    local name=$1 pid=$2 url=$3 cores=$4 before after
    check_body "$url"
    run_wrk 64 "$WARMUP" "$url" "$TMP/$name-warm.txt" "$cores"
    before=$(cpu_ticks "$pid")
    run_wrk 64 "$DURATION" "$url" "$TMP/$name-load.txt" "$cores"
    after=$(cpu_ticks "$pid")
    run_wrk 1 "$LOWLOAD" "$url" "$TMP/$name-c1.txt" "$cores"
    local req u s
    req=$(wrk_field "$TMP/$name-load.txt" requests)
    read -r u s <<<"$(awk -v a="$before" -v b="$after" 'BEGIN {
        split(a, x, " "); split(b, y, " "); print y[1] - x[1], y[2] - x[2] }')"
    [ -n "$req" ] && [ "$req" -gt 0 ] || die "no requests completed through $name"
    [ $(( u + s )) -gt 0 ] || die "no CPU time seen for $name (pid $pid)"
    ROWS+=("$name $req $(wrk_field "$TMP/$name-load.txt" rps) $u $s $(wrk_field "$TMP/$name-load.txt" p50) $(wrk_field "$TMP/$name-load.txt" p99) $(wrk_field "$TMP/$name-c1.txt" p50)")
}

# ---------------------------------------------------------------------------- backend
read -r BACKEND NGINX_PORT WF_PORT WF_ADMIN <<<"$(free_ports 4)"
cat > "$TMP/tenants.lua" <<'EOF'
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", "/p/" .. (n % 50), {["X-Tenant"] = "t" .. (n % 300)})
end
EOF
BODY=$(printf 'warmfront-bench %083d\n' 0)   # exactly 100 bytes with the newline
printf '%s\n' "$BODY" > "$TMP/expected"
[ "$(wc -c < "$TMP/expected")" = 100 ] || die "backend body is not 100 bytes"

nginx_conf backend
cat >> "$TMP/backend.conf" <<EOF
    server {
        listen 127.0.0.1:$BACKEND reuseport backlog=4096;
        location / { default_type text/plain; return 200 "$BODY\n"; }
    }
}
EOF
start_nginx backend "$CLIENT_CORE"; BACKEND_PID=$LAST_PID
wait_http "http://127.0.0.1:$BACKEND/" "$BACKEND_PID" || { cat "$TMP/backend.err" >&2; die "backend did not start"; }
check_body "http://127.0.0.1:$BACKEND/"

# ---------------------------------------------------------------------------- peers
# nginx doing the same work warmfront does per request: upstream keep-alive, Host kept,
# X-Forwarded-* added.
start_nginx_proxy() {   # name workers cores
    nginx_conf "$1" "$2"
    cat >> "$TMP/$1.conf" <<EOF
    upstream backend {
        server 127.0.0.1:$BACKEND;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
    start_nginx "$1" "$3"
    wait_http "http://127.0.0.1:$NGINX_PORT/" "$LAST_PID" || { cat "$TMP/$1.err" >&2; die "nginx proxy did not start"; }
}

# warmfront with a config of its own: one static pool, sources by X-Tenant.
mkdir -p "$TMP/wfconf"
cat > "$TMP/wfconf/routing.yaml" <<EOF
listen: 127.0.0.1:$WF_PORT
admin: {listen: 127.0.0.1:$WF_ADMIN}
state_dir: $TMP/state
sources: [{header: X-Tenant}, {client_ip: true}]
routes: [{name: all, pool: web, type: page}]
EOF
cat > "$TMP/wfconf/pools.yaml" <<EOF
pools:
  web: {backend: static, servers: ["127.0.0.1:$BACKEND"]}
EOF
# The same config with an access log, one file per run (`log_config name` points it at $TMP/name.access.log).
log_config() {
    mkdir -p "$TMP/wfconf-log"
    cp "$TMP/wfconf/pools.yaml" "$TMP/wfconf-log/pools.yaml"
    { cat "$TMP/wfconf/routing.yaml"; echo "access_log: $TMP/$1.access.log"; } > "$TMP/wfconf-log/routing.yaml"
    WFCONF=$TMP/wfconf-log
}
WFCONF=$TMP/wfconf
start_warmfront() {   # cores [--workers N]
    local cores=$1; shift
    taskset -c "$cores" "$WARMFRONT" run --config "$WFCONF" --log-level warning "$@" \
        >> "$TMP/warmfront.log" 2>&1 &
    STARTED+=($!); LAST_PID=$!
    wait_http "http://127.0.0.1:$WF_PORT/" "$LAST_PID" || { cat "$TMP/warmfront.log" >&2; die "warmfront did not start"; }
}

stop_pid() {   # pid: SIGTERM, then wait for it and its children
    local kids p
    kids=$(pgrep -P "$1" 2>/dev/null || true)
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 100); do
        local alive=0
        for p in "$1" $kids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    for p in "$1" $kids; do kill -KILL "$p" 2>/dev/null || true; done
}

# ---------------------------------------------------------------------------- measure
ROWS=()
LOG_ROWS=()      # ACCESS_LOG=1: the same warmfront runs with the access log on
LOG_LINES=()     # lines each of those runs wrote
measure_logged() {   # name cores [--workers N]: like the run before it, with the access log on
    local name=$1 cores=$2; shift 2
    log_config "$name"
    start_warmfront "$cores" "$@"; P=$LAST_PID
    measure "$name" "$P" "http://127.0.0.1:$WF_PORT/" "$cores"; stop_pid "$P"
    WFCONF=$TMP/wfconf
    LOG_ROWS+=("${ROWS[-1]}"); unset 'ROWS[-1]'
    LOG_LINES+=("$(wc -l < "$TMP/$name.access.log")")
}
echo "bench: 1 worker each, proxies on core $PROXY_CORE ..." >&2
start_nginx_proxy proxy1 1 "$PROXY_CORE"; P=$LAST_PID
measure nginx-1 "$P" "http://127.0.0.1:$NGINX_PORT/" "$CLIENT_CORE"; stop_pid "$P"
start_warmfront "$PROXY_CORE" --workers 1; P=$LAST_PID
measure warmfront-1 "$P" "http://127.0.0.1:$WF_PORT/" "$CLIENT_CORE"; stop_pid "$P"
[ "${ACCESS_LOG:-0}" = 1 ] && measure_logged warmfront-1-log "$PROXY_CORE" --workers 1
echo "bench: $NCPU workers each, nothing pinned ..." >&2
start_nginx_proxy proxyn "$NCPU" "$ALL_CORES"; P=$LAST_PID
measure "nginx-$NCPU" "$P" "http://127.0.0.1:$NGINX_PORT/" "$ALL_CORES"; stop_pid "$P"
start_warmfront "$ALL_CORES"; P=$LAST_PID
measure "warmfront-$NCPU" "$P" "http://127.0.0.1:$WF_PORT/" "$ALL_CORES"; stop_pid "$P"
[ "${ACCESS_LOG:-0}" = 1 ] && measure_logged "warmfront-$NCPU-log" "$ALL_CORES"
run_wrk 1 "$LOWLOAD" "http://127.0.0.1:$BACKEND/" "$TMP/direct-c1.txt"
DIRECT_P50=$(wrk_field "$TMP/direct-c1.txt" p50)
grep -q . "$TMP/warmfront.log" && { echo "bench: warmfront logged:" >&2; head -20 "$TMP/warmfront.log" >&2; }

# ---------------------------------------------------------------------------- report
# Rows come in pairs, nginx then warmfront: 1 worker, then N.
mkdir -p "$RESULTS"
WHEN=$(date -u +%Y-%m-%dT%H:%M:%SZ)
printf '%s\n' "${ROWS[@]}" | awk -v hz="$HZ" -v dur="$DURATION" -v direct="$DIRECT_P50" \
    -v when="$WHEN" -v cores="$NCPU" -v nginxv="$("$NGINX" -v 2>&1 | sed 's/.*\///')" \
    -v json="$RESULTS/proxy.json" -v pc="$PROXY_CORE" -v cc="$CLIENT_CORE" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" '
{
    name[NR] = $1; req[NR] = $2; rps[NR] = $3; cpu = ($4 + $5) / hz; pcs[NR] = $2 / cpu
    us_user[NR] = $4 / hz / $2 * 1e6; us_sys[NR] = $5 / hz / $2 * 1e6
    p50[NR] = $6; p99[NR] = $7; c1[NR] = $8
}
END {
    printf "| proxy | req/s | per core-s | × nginx | p50 | p99 | p99 × nginx | p50, 1 conn | user / kernel µs per req |\n"
    printf "|---|---|---|---|---|---|---|---|---|\n"
    for (i = 1; i <= NR; i++) {
        base = (i % 2) ? i : i - 1
        x[i] = pcs[i] / pcs[base]; t[i] = p99[i] / p99[base]
        printf "| %s | %.0f | %.0f | %.2f | %.2f ms | %.2f ms | %.1f | %.0f µs | %.1f / %.1f |\n",
            name[i], rps[i], pcs[i], x[i], p50[i], p99[i], t[i], c1[i] * 1000, us_user[i], us_sys[i]
    }
    printf "| backend direct | | | | | | | %.0f µs | |\n", direct * 1000
    printf "\nwrk -t1 -c64 -d%ss (p50/p99), wrk -t1 -c1 (1 conn), 300 rotating X-Tenant sources; 1-worker pair on core %s, wrk + backend on core %s; N-worker pair and wrk unpinned; load average at the end %s\n",
        dur, pc, cc, load
    printf "warmfront adds %.0f µs p50 per request over nginx at 1 connection (1 worker)\n", (c1[2] - c1[1]) * 1000
    printf "box throughput, warmfront with %d workers / nginx with 1 worker: %.2f\n", cores, rps[4] / rps[1]
    printf "warmfront / nginx per core-s ratio, 1 worker: %.2f\n", x[2]
    printf "warmfront / nginx per core-s ratio, %d workers: %.2f\n", cores, x[4]

    printf "{\n  \"date\": \"%s\",\n  \"cores\": %d,\n  \"nginx\": \"%s\",\n  \"load\": \"%s\",\n", when, cores, nginxv, load > json
    printf "  \"duration_s\": %d,\n  \"connections\": 64,\n  \"sources\": 300,\n  \"response_bytes\": 100,\n", dur > json
    printf "  \"backend_direct_p50_1conn_ms\": %.3f,\n  \"proxies\": [\n", direct > json
    for (i = 1; i <= NR; i++)
        printf "    {\"proxy\": \"%s\", \"requests\": %d, \"req_per_s\": %.1f, \"per_core_s\": %.1f, " \
               "\"x_nginx\": %.3f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p99_x_nginx\": %.3f, \"p50_1conn_ms\": %.3f, " \
               "\"user_us_per_req\": %.2f, \"kernel_us_per_req\": %.2f}%s\n",
               name[i], req[i], rps[i], pcs[i], x[i], p50[i], p99[i], t[i], c1[i], us_user[i], us_sys[i],
               (i < NR ? "," : "") > json
    printf "  ],\n  \"ratio_1_worker\": %.3f,\n  \"ratio_n_workers\": %.3f,\n  \"box_throughput_x_nginx_1\": %.3f\n}\n",
        x[2], x[4], rps[4] / rps[1] > json
}' | tee "$TMP/table.md"

echo "bench: wrote $RESULTS/proxy.json" >&2

# With the access log: each logged run against the warmfront run just before it (rows 2 and 4).
if [ ${#LOG_ROWS[@]} -gt 0 ]; then
    { printf '%s\n' "${ROWS[1]}" "${LOG_ROWS[0]}" "${ROWS[3]}" "${LOG_ROWS[1]}"; } | awk -v hz="$HZ" \
        -v lines="${LOG_LINES[*]}" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" '
    { name[NR] = $1; req[NR] = $2; rps[NR] = $3; pcs[NR] = $2 / (($4 + $5) / hz); p50[NR] = $6; p99[NR] = $7
      us[NR] = ($4 + $5) / hz / $2 * 1e6 }
    END {
        split(lines, n, " ")
        printf "\n| warmfront | access log | req/s | per core-s | × without | CPU µs per req | p50 | p99 | lines written |\n|---|---|---|---|---|---|---|---|---|\n"
        for (i = 1; i <= NR; i++) {
            base = (i % 2) ? i : i - 1
            printf "| %s | %s | %.0f | %.0f | %.3f | %.1f | %.2f ms | %.2f ms | %s |\n", name[i], (i % 2) ? "off" : "on",
                rps[i], pcs[i], pcs[i] / pcs[base], us[i], p50[i], p99[i], (i % 2) ? "" : n[i / 2]
        }
        printf "access log to a file in the temp dir; lines written include the warm-up and 1-connection runs; load average at the end %s\n", load
    }'
fi
if [ -n "${MIN_RATIO:-}" ]; then
    for RATIO in $(awk '/per core-s ratio/ {print $NF}' "$TMP/table.md"); do
        if awk -v r="$RATIO" -v m="$MIN_RATIO" 'BEGIN {exit !(r < m)}'; then
            echo "bench: ratio $RATIO is below MIN_RATIO=$MIN_RATIO" >&2
            exit 3
        fi
    done
fi
