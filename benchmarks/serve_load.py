"""A bounded load test of ``efficientmod serve`` on loopback: 1 / 8 / 32 / 64 concurrent
clients, then a run with 10% bad requests mixed in; throughput, p50 / p99 latency, errors.

    python benchmarks/serve_load.py runs/demo-*/model.onnx --threads-per-replica 2 \\
        --json benchmarks/results/serve_load.json

The script starts the server itself (Ray embedded, the HTTP proxy on 127.0.0.1, the
settings below) and stops it at the end; ``--url`` measures a server that already runs
instead. Each level stops by itself after ``--requests`` requests or ``--seconds``
seconds, whichever comes first. Every client keeps one connection and posts the photo
(raw bytes, or ``--images-per-request N`` copies in one multipart request; throughput counts
images), the next as soon as the answer is back. The baseline is the sequential batch-1
throughput of the same artifact in this process, on ``--threads-per-replica`` threads (the
replica's cores), measured before the server starts and after it stops (their mean; on a
busy machine the two differ): the target is >= 2x that at 32 clients.

An error is a good request not answered 200, or a bad request (not an image, a truncated
image, a wrong content type) answered anything but 4xx. Prints a markdown table and,
with ``--json``, writes every figure with the command, settings and machine.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from efficientmod.bench import environment
from efficientmod.serve.artifact import load_artifact


def photo_bytes(preprocessing) -> bytes:
    """A real photo (scikit-image's cat) as JPEG, in the artifact's channels."""
    import io

    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.chelsea())
    buffer = io.BytesIO()
    (image.convert("L") if preprocessing.input_size[0] == 1 else image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bad_requests(good: bytes) -> list[tuple[bytes, str]]:
    return [(b"this is not an image", "image/jpeg"), (good[: len(good) // 2], "image/jpeg"), (good, "text/plain")]


def multipart_body(image: bytes, count: int) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request carrying ``image`` ``count`` times."""
    boundary = "efficientmod-load-boundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"photo.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + image + b"\r\n"
    return part * count + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def good_request(image: bytes, images_per_request: int) -> tuple[bytes, str]:
    """One image as raw bytes (``images_per_request`` 1), else a multipart request of that many."""
    return (image, "image/jpeg") if images_per_request == 1 else multipart_body(image, images_per_request)


BASELINE_WARMUP_S = 1.0


def sequential_baseline(artifact: str, threads: int, image: bytes, seconds: float) -> float:
    """Images per second of the artifact run one at a time, preprocessing included, after
    :data:`BASELINE_WARMUP_S` of untimed calls (the runtime's first calls, caches)."""
    from efficientmod.serve.http import Limits, decode_image

    predictor = load_artifact(artifact, threads).predictor

    def run_for(limit: float, least: int) -> float:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < limit or count < least:
            predictor.predict(decode_image("photo", image, predictor.preprocessing, Limits())[None], 5)
            count += 1
        return count / (time.perf_counter() - started)

    run_for(BASELINE_WARMUP_S, 1)
    return run_for(seconds, 5)


class Client:
    """One keep-alive HTTP/1.1 connection (http.client: the least CPU per request of Python's
    clients); a dropped connection is opened again once per request."""

    def __init__(self, url: str):
        parsed = urlsplit(url)
        self.host, self.port, self.path = parsed.hostname, parsed.port or 80, parsed.path.rstrip("/") + "/v1/classify"
        self.connection = None

    def post(self, body: bytes, content_type: str) -> int:
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        for attempt in (0, 1):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.connection.request("POST", self.path, body=body, headers=headers)
                response = self.connection.getresponse()
                response.read()
                if response.will_close:
                    self.close()
                return response.status
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def run_level(url: str, clients: int, good: bytes, bad_fraction: float, max_requests: int, seconds: float,
              images_per_request: int = 1) -> dict:
    """``clients`` threads posting until ``max_requests`` are sent or ``seconds`` pass; a good
    request carries ``images_per_request`` copies of ``good``; throughput counts images."""
    tickets = itertools.count()
    bad, good_body = bad_requests(good), good_request(good, images_per_request)
    bad_every = round(1 / bad_fraction) if bad_fraction > 0 else 0
    latencies, errors, bad_sent, lock = [], [], 0, threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        nonlocal bad_sent
        connection = Client(url)
        while time.perf_counter() < deadline and (ticket := next(tickets)) < max_requests:
            is_bad = bad_every and ticket % bad_every == bad_every - 1
            started = time.perf_counter()
            try:
                status = connection.post(*(bad[ticket % len(bad)] if is_bad else good_body))
            except OSError as error:
                status = type(error).__name__
            elapsed = time.perf_counter() - started
            with lock:
                if is_bad:
                    bad_sent += 1
                    if not (isinstance(status, int) and 400 <= status < 500):
                        errors.append(f"bad request answered {status}")
                elif status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(f"good request answered {status}")
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return dict(clients=clients, images_per_request=images_per_request, bad_fraction=bad_fraction,
                good_answered=len(latencies), bad_sent=bad_sent, seconds=round(wall, 2),
                throughput_img_s=round(images_per_request * len(latencies) / wall, 1),
                p50_ms=round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
                p99_ms=round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
                errors=len(errors), error_kinds=sorted(set(errors)))


def table(levels: list[dict], baseline: float | None) -> str:
    lines = ["| clients | images / request | bad requests | good answered | img/s | vs sequential batch 1 | "
             "p50 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level in levels:
        ratio = f"{level['throughput_img_s'] / baseline:.2f}x" if baseline else "-"
        lines.append(f"| {level['clients']} | {level['images_per_request']} | {100 * level['bad_fraction']:.0f}% | "
                     f"{level['good_answered']} | {level['throughput_img_s']} | {ratio} | {level['p50_ms']} | "
                     f"{level['p99_ms']} | {level['errors']} |")
    return "\n".join(lines)


def cpu_list(text: str) -> set[int]:
    """``0,2-3`` → {0, 2, 3}."""
    cpus = set()
    for item in text.split(","):
        first, _, last = item.partition("-")
        try:
            cpus.update(range(int(first), int(last or first) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list such as 0 or 0,2-3") from None
    return cpus


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="what to serve (model/ folder, best.pth, .onnx, .xml, .pte)")
    parser.add_argument("--url", default=None, help="measure this running server instead of starting one")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--mixed-clients", type=int, default=32, help="clients of the run with bad requests")
    parser.add_argument("--bad-fraction", type=float, default=0.1)
    parser.add_argument("--images-per-request", type=int, nargs="+", default=[1],
                        help="images in each good request (1: raw bytes; more: multipart); one set of levels each")
    parser.add_argument("--client-cpus", type=cpu_list, default=None,
                        help="pin the load generator's threads to these CPUs (e.g. 1 or 2-3); the server keeps all")
    parser.add_argument("--requests", type=int, default=2000, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--threads-per-replica", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-queued-requests", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    if min(args.images_per_request) < 1:
        parser.error("--images-per-request must be positive")
    return args


def measure(url: str, args: argparse.Namespace, good: bytes) -> list[dict]:
    """Every level of every ``--images-per-request``, then the mixed run (single images)."""
    if args.client_cpus is not None:
        os.sched_setaffinity(0, args.client_cpus)  # this thread; the client threads started below inherit it
    run_level(url, 1, good, 0.0, 20, 10.0)  # warm-up, not reported
    levels = [run_level(url, n, good, 0.0, args.requests, args.seconds, images)
              for images in args.images_per_request for n in args.clients]
    levels.append(run_level(url, args.mixed_clients, good, args.bad_fraction, args.requests, args.seconds))
    return levels


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    from ray import serve

    from efficientmod.serve.app import ServeSettings, build_app
    from efficientmod.serve.cluster import init_ray

    preprocessing = load_artifact(args.artifact).predictor.preprocessing
    good = photo_bytes(preprocessing)
    settings = ServeSettings(args.artifact, args.replicas, args.threads_per_replica, args.max_batch_size,
                             args.batch_wait_ms, max_ongoing_requests=max(64, 2 * args.max_batch_size),
                             max_queued_requests=args.max_queued_requests)
    before = sequential_baseline(args.artifact, args.threads_per_replica, good, args.baseline_seconds / 2)
    url = args.url
    if url is None:
        init_ray(num_cpus=None)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(settings), name="load", route_prefix="/")
        url = f"http://127.0.0.1:{args.port}"
    try:
        levels = measure(url, args, good)
    finally:
        if args.url is None:
            serve.shutdown()
            ray.shutdown()
    after = sequential_baseline(args.artifact, args.threads_per_replica, good, args.baseline_seconds / 2)
    baseline = (before + after) / 2
    print(f"sequential batch-1 baseline: {baseline:.1f} img/s on {args.threads_per_replica} thread(s) "
          f"(before the server {before:.1f}, after {after:.1f})")
    print(table(levels, baseline))
    if args.json is not None:
        settings = vars(args) | {"json": str(args.json), "client_cpus": sorted(args.client_cpus or [])}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(command=" ".join(sys.argv), settings=settings,
                                             baseline_img_s=round(baseline, 1),
                                             baseline_before_after_img_s=[round(before, 1), round(after, 1)],
                                             levels=levels,
                                             environment=environment(args.threads_per_replica)), indent=2) + "\n")
    return 1 if any(level["errors"] for level in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
