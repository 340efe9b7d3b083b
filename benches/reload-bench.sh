#!/usr/bin/env bash
# Reload cost under load: a generated config of 1,000 gateways x 10 routes (10,000
# routes) is reloaded N times (SIGHUP, and file rewrites that change weights) while wrk
# drives traffic through weir to an nginx upstream. Reports each reload's time (parse,
# validate, build, swap, as weir logs it) and wrk's errors. Loopback only; bounded.
# Needs: cargo build --release; nginx and wrk (Debian packages).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
weir=${WEIR_BIN:-$here/target/release/weir}
reloads=${RELOADS:-20}
work=$(mktemp -d /tmp/weir-reload-bench.XXXXXX)
up_port=19911 weir_port=19912
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -c "$work/up.conf" -s stop 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/up.conf" <<CFG
worker_processes 1;
pid $work/up.pid;
error_log $work/up.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$up_port; location / { return 200 "ok"; } } }
CFG
nginx -c "$work/up.conf"

gen() { # $1 = weight of r0 in the bench gateway
    echo "listeners: { http: { bind: \"127.0.0.1:$weir_port\" } }"
    echo "gateways:"
    echo "  - name: bench"
    echo "    virtual_hosts: [127.0.0.1]"
    echo "    routes:"
    echo "      a: { weight: $1%, instances: [\"127.0.0.1:$up_port\"] }"
    echo "      b: { weight: $((100 - $1))%, instances: [\"127.0.0.1:$up_port\"] }"
    for g in $(seq 1 999); do
        echo "  - name: gw$g"
        echo "    virtual_hosts: [gw$g.example.com]"
        echo "    routes:"
        for r in $(seq 0 9); do
            echo "      r$r: { weight: 10%, instances: [\"127.0.0.1:$((20000 + r))\", \"127.0.0.1:$((20010 + r))\"] }"
        done
    done
}
gen 50 >"$work/weir.yaml"
echo "config: $(wc -l <"$work/weir.yaml") lines, $(du -h "$work/weir.yaml" | cut -f1)"
WEIR_THREADS=2 RUST_LOG=info "$weir" run -c "$work/weir.yaml" 2>"$work/weir.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$weir_port/" && break; sleep 0.1; done

duration=$((reloads / 2 + 6))
timeout $((duration + 10)) wrk -t1 -c20 -d"${duration}s" "http://127.0.0.1:$weir_port/" >"$work/wrk.out" &
wrk_pid=$!
sleep 2
for i in $(seq 1 "$reloads"); do
    if (( i % 2 )); then kill -HUP "${pids[0]}"; else gen $(( (i * 7) % 101 )) >"$work/weir.yaml"; fi
    sleep 0.4
done
wait "$wrk_pid"
echo "--- reloads (as logged by weir)"
grep -o 'config reloaded.*' "$work/weir.log" | sed 's/: .*//' | awk '{print; sub(/.* in /, ""); sub(/ ms.*/, ""); v=$0+0; s+=v; if (v>m) m=v} END {printf "reloads: %d, mean %.1f ms, max %.1f ms\n", NR, s/NR, m}'
grep -c 'reload rejected' "$work/weir.log" | sed 's/^/rejected: /' || true
echo "--- wrk"
grep -E "Requests/sec|requests in|Socket errors|Non-2xx" "$work/wrk.out" || true
