#!/usr/bin/env bash
# CANDIDATE_CMD wrapper for ../shared/bench/run.sh: HAProxy doing the work of weir's
# WEIR_EDGE=1 config (benches/weir-candidate.sh), so that the edge config is compared
# like for like in one harness: a stats endpoint (metrics), `cookie SRV insert`
# (instance stickiness), a canary backend chosen by a header, a path rewrite for /v1,
# one request and one response header rule.
#
#   cd ../shared/bench && SCENARIOS=h1_plain CANDIDATE_NAME=haproxy-edge \
#     CANDIDATE_CMD="$OLDPWD/benches/haproxy-edge.sh" CANDIDATE_HTTP_PORT=19280 \
#     CANDIDATE_TLS_PORT=19643 ./run.sh
set -euo pipefail

cfg=$BENCH_WORKDIR/haproxy-edge.cfg
IFS=, read -r -a servers <<<"${UPSTREAMS:?}"
servers_of() { # backend's server lines, each with its own stickiness cookie
    for i in "${!servers[@]}"; do
        printf '    server %s%d %s cookie %s%d\n' "$1" "$i" "${servers[$i]}" "$1" "$i"
    done
}
{
    cat <<CFG
global
    nbthread ${PROXY_THREADS:-2}
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend stats
    bind 127.0.0.1:${HAPROXY_STATS_PORT:-19298}
    stats enable
    stats uri /metrics
frontend edge
    bind $LISTEN_HOST:${CANDIDATE_HTTP_PORT:?}
CFG
    [ -n "${CANDIDATE_TLS_PORT:-}" ] && echo "    bind $LISTEN_HOST:$CANDIDATE_TLS_PORT ssl crt $CERT_PEM alpn h2,http/1.1"
    cat <<CFG
    http-request set-header x-edge haproxy
    http-response set-header x-served-by haproxy
    use_backend canary if { req.hdr(x-canary) -m found }
    default_backend stable
backend canary
    balance roundrobin
    cookie SRV insert indirect nocache
CFG
    servers_of canary
    cat <<CFG
backend stable
    balance roundrobin
    cookie SRV insert indirect nocache
    http-request set-path %[path,regsub(^/v1,/api)] if { path_beg /v1 }
CFG
    servers_of stable
} >"$cfg"

exec haproxy -db -f "$cfg"
