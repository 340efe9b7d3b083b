#!/usr/bin/env bash
# CANDIDATE_CMD wrapper for ../shared/bench/run.sh: runs the release `weir` binary as the
# candidate proxy, configured from what run.sh exports (LISTEN_HOST, CANDIDATE_HTTP_PORT,
# UPSTREAMS, PROXY_THREADS, BENCH_WORKDIR). Build first: `cargo build --release`.
#
#   cd ../shared/bench && SCENARIOS=h1_plain CANDIDATE_NAME=weir \
#     CANDIDATE_CMD="$OLDPWD/benches/weir-candidate.sh" CANDIDATE_HTTP_PORT=19280 ./run.sh
#
# The config routes by virtual host (the Host wrk sends is 127.0.0.1:PORT) to one route
# whose instances are the upstreams: the same work an operator's vhost setup does.
# With CANDIDATE_TLS_PORT set, weir also serves TLS with the harness's certificate.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
weir=${WEIR_BIN:-$here/target/release/weir}
[ -x "$weir" ] || { echo "no $weir: run cargo build --release" >&2; exit 1; }

cfg=$BENCH_WORKDIR/weir.yaml
IFS=, read -r -a servers <<<"${UPSTREAMS:?}"
instances=$(printf '"%s", ' "${servers[@]}")
# WEIR_METRICS=1 adds an admin listener (per-request metrics are recorded only when
# one can serve them); WEIR_ACCESS_LOG=PATH writes the access log there.
{
cat <<CFG
listeners:
  http: { bind: "$LISTEN_HOST:${CANDIDATE_HTTP_PORT:?}" }
CFG
# The harness's clients send no SNI (or an IP): the certificate is the default.
# WEIR_SCALE=1: the scale case of issue 14, 1,000 SNI certificates (ECDSA, one name
# each, made once into $WEIR_SCALE_CACHE) and 10,000 routes (1,000 more gateways of 10
# routes each) loaded beside the benchmark's own certificate and gateway.
scale=${WEIR_SCALE:-0}
certs_dir=${WEIR_SCALE_CACHE:-/tmp/weir-scale-certs}
if [ "$scale" = 1 ] && [ ! -f "$certs_dir/done" ]; then
    mkdir -p "$certs_dir"
    seq 1 1000 | xargs -P 2 -I{} openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -nodes -days 30 -subj "/CN=s{}.scale.test" -addext "subjectAltName=DNS:s{}.scale.test" \
        -keyout "$certs_dir/s{}.key" -out "$certs_dir/s{}.pem" 2>/dev/null
    touch "$certs_dir/done"
fi
[ -n "${CANDIDATE_TLS_PORT:-}" ] && {
cat <<CFG
  https:
    bind: "$LISTEN_HOST:$CANDIDATE_TLS_PORT"
    tls:
      default_certificate: 0
      certificates:
        - { cert: "$CERT_FILE", key: "$KEY_FILE" }
CFG
[ "$scale" = 1 ] && for i in $(seq 1 1000); do
    echo "        - { cert: \"$certs_dir/s$i.pem\", key: \"$certs_dir/s$i.key\" }"
done
}
[ "${WEIR_METRICS:-0}" = 1 ] && echo "admin: { bind: \"127.0.0.1:${WEIR_ADMIN_PORT:-19299}\" }"
[ -n "${WEIR_ACCESS_LOG:-}" ] && echo "access_log: $WEIR_ACCESS_LOG"
# WEIR_POLICY=1 configures the traffic policy a request pays for even when nothing
# fails: header rules with a template, retries, outlier detection, a request deadline,
# compression (wrk asks for none: the decision only). WEIR_TRACING=1 adds unsampled
# tracing (spans made and propagated, none recorded or exported).
[ "${WEIR_TRACING:-0}" = 1 ] && echo 'tracing: { otlp_endpoint: "http://127.0.0.1:4318", sample: 0% }'
# WEIR_EDGE=1: the config an operator of Vamp's model runs (issue 30), with metrics on:
# instance stickiness, a conditional canary route at 0%, a stable route rewriting
# /v1 paths, one request and one response header rule. benches/haproxy-edge.sh is
# HAProxy doing the same work, for a like-for-like ratio.
if [ "${WEIR_EDGE:-0}" = 1 ]; then
[ "${WEIR_METRICS:-0}" = 1 ] || echo "admin: { bind: \"127.0.0.1:${WEIR_ADMIN_PORT:-19299}\" }"
cat <<CFG
gateways:
  - name: bench
    virtual_hosts: [127.0.0.1, localhost, bench.test]
    sticky: instance
    request_headers: { set: { x-edge: weir } }
    response_headers: { set: { x-served-by: weir } }
    routes:
      canary:
        weight: 0%
        condition: has header x-canary
        instances: [${instances%, }]
      upstreams:
        weight: 100%
        rewrites: [ { path: "%[path,regsub(^/v1,/api)] if path_beg /v1" } ]
        instances: [${instances%, }]
CFG
else
cat <<CFG
gateways:
  - name: bench
    virtual_hosts: [127.0.0.1, localhost, bench.test]
    routes:
      upstreams:
        instances: [${instances%, }]
CFG
fi
[ "${WEIR_POLICY:-0}" = 1 ] && cat <<'CFG'
        request_headers: { set: { x-client: "%[src]" }, remove: [x-debug] }
        response_headers: { set: { x-served-by: weir } }
        retries: { attempts: 1, on: [connect, reset, 502, 503] }
        outlier: { consecutive_5xx: 5 }
        timeouts: { request: 30s }
        compression: {}
CFG
[ "$scale" = 1 ] && for g in $(seq 1 1000); do
    echo "  - name: scale$g"
    echo "    virtual_hosts: [s$g.scale.test]"
    echo "    routes:"
    for r in $(seq 1 10); do
        echo "      r$r: { weight: 10%, instances: [${instances%, }] }"
    done
done
true
} >"$cfg"

export WEIR_THREADS=${PROXY_THREADS:-2}
export RUST_LOG=${RUST_LOG:-warn}
exec "$weir" run -c "$cfg"
