"""``efficientmod serve`` in the foreground: start (or join) Ray, run the application, answer
until SIGTERM or Ctrl-C, then drain the requests in flight and stop."""
from __future__ import annotations

import signal
import sys
import threading

from efficientmod.serve.app import ServeSettings, build_app
from efficientmod.serve.cluster import init_ray

__all__ = ["serve_until_stopped"]

APP_NAME = "efficientmod"


def serve_until_stopped(settings: ServeSettings, host: str, port: int, address: str | None = None,
                        metrics_port: int | None = None, ready=print) -> int:
    """Serve ``settings.artifact`` on http://HOST:PORT/ until SIGTERM / SIGINT; returns 0
    once the requests in flight are answered and Ray is shut down. ``ready(message)`` is
    called when the server answers; ``metrics_port``: see :func:`init_ray`."""
    import ray
    from ray import serve

    init_ray(address, metrics_port=metrics_port)
    stop = threading.Event()  # set by SIGTERM / SIGINT; installed after Ray's start-up, which sets its own
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
        ready(f"efficientmod serve: {settings.artifact} on http://{host}:{port}/ "
              f"({settings.replicas} replica(s); API docs at /docs); SIGTERM or Ctrl-C stops")
        while not stop.wait(0.5):
            pass
        print("efficientmod serve: stopping: draining the requests in flight", file=sys.stderr, flush=True)
        serve.delete(APP_NAME)  # replicas stop taking requests and answer those they hold; the proxy delivers them
        if address is None:  # on a cluster, Serve and the other applications stay up
            serve.shutdown()
    finally:
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
