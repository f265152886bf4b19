"""Ray, embedded or joined: one place that starts it for the server and the batch jobs."""
from __future__ import annotations

import logging

__all__ = ["init_ray", "LOCAL_HOST"]

LOCAL_HOST = "127.0.0.1"


def init_ray(address: str | None = None, num_cpus: int | None = None, object_store_bytes: int | None = None,
             metrics_port: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (``ray://...`` or ``HOST:PORT``; "auto" for the one
    this machine runs), or start a new Ray embedded on this machine (never one found running):
    on the loopback address, without the dashboard, with ``num_cpus`` CPUs (default: all), an object store of
    ``object_store_bytes`` (default: Ray's) and, with ``metrics_port``, Ray's Prometheus
    metrics at ``http://127.0.0.1:PORT/metrics``. The node's address is the loopback one; Ray's
    own gRPC ports still listen on every interface, behind Ray's authentication token."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if address is not None:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as error:
            raise ValueError(f"cannot join the Ray cluster at {address}: {error}") from None
        return
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_bytes, include_dashboard=False,
             _node_ip_address=LOCAL_HOST, _metrics_export_port=metrics_port, **quiet)
