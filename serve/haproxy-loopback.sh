#!/bin/sh
# HAProxy with its stats page and Prometheus metrics on 127.0.0.1, for a cluster on a laptop
# (serve/laptop_env.py makes Ray run this in place of HAProxy).
# Ray 2.60 binds both on every interface (`bind *:STATS_PORT`, `bind :METRICS_PORT` in
# ray/serve/_private/haproxy_templates.py) and has no setting for their address, so this
# rewrites those two binds in the config Ray hands over (-f FILE), then runs the real HAProxy
# with the same arguments (exec: Ray signals and recognises the process by its pid and config).
set -eu

ports="${RAY_SERVE_HAPROXY_STATS_PORT:?}|${RAY_SERVE_HAPROXY_METRICS_PORT:?}"
previous=""
for arg in "$@"; do
  if [ "$previous" = "-f" ]; then
    sed -E -i "s/^([[:space:]]*bind[[:space:]]+)\*?:($ports)([[:space:]]|\$)/\\1127.0.0.1:\\2\\3/" \
      "$arg"
  fi
  previous="$arg"
done
exec "${RAYVISION_HAPROXY_BINARY:?set by serve/laptop_env.py}" "$@"
