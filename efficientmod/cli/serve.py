"""``efficientmod serve ARTIFACT``: the HTTP API and web page on Ray Serve (see :mod:`efficientmod.serve`)."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "add_batch_arguments", "run_batch_predict"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (Ray Serve: batching, replicas, web page)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve ARTIFACT (a model/ folder, a training checkpoint such as best.pth, or an exported "
        ".onnx / OpenVINO .xml / .pte file) on Ray Serve, in the runtime the artifact names, with its own "
        "preprocessing and class names. POST /v1/classify takes image bytes or multipart files; GET /v1/model, "
        "/healthz, /readyz; the web page is at /, the OpenAPI schema at /openapi.json (/docs). Ray starts "
        "embedded on this machine (HTTP on 127.0.0.1 unless --host, no dashboard) unless --address joins a "
        "cluster, where the replicas spread over its machines. SIGTERM or Ctrl-C drains the requests in "
        "flight and exits 0.",
        epilog="examples:\n"
        "  efficientmod serve runs/demo-*/model\n"
        "  efficientmod serve model.onnx --replicas 2 --threads-per-replica 2 --max-batch-size 32\n"
        "  efficientmod serve model.xml --address ray://head:10001 --host 0.0.0.0",
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help="model/ folder, best.pth, .onnx, .xml or .pte")
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP server binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                        help="join this Ray cluster (ray://HOST:10001, HOST:6379 or 'auto') instead of starting Ray")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="Ray's Prometheus metrics at http://127.0.0.1:PORT/metrics: efficientmod_requests "
                        "(by route, status), efficientmod_batch_size, efficientmod_latency_ms and Ray Serve's own "
                        "(embedded Ray; a cluster exports its own)")
    parser.add_argument("--replicas", type=int, default=1, help="copies of the model (default 1)")
    parser.add_argument("--threads-per-replica", type=int, default=1, metavar="N",
                        help="CPUs (inference threads) each replica takes (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=16, metavar="N",
                        help="images per model run at most (default 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                        help="how long a batch waits to fill before it runs (default 5)")
    parser.add_argument("--max-ongoing-requests", type=int, default=32, metavar="N",
                        help="requests one replica handles at once (default 32)")
    parser.add_argument("--max-queued-requests", type=int, default=64, metavar="N",
                        help="requests waiting for a replica; more are answered 503 with Retry-After (default 64)")
    parser.add_argument("--max-bytes", type=int, default=20_000_000, metavar="N",
                        help="largest request body (default 20,000,000); larger ones get 413")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, metavar="N",
                        help="largest image, width x height (default 40,000,000); larger ones get 413")
    parser.add_argument("--max-images", type=int, default=16, metavar="N",
                        help="images in one multipart request at most (default 16)")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from efficientmod.serve.app import ServeSettings
    from efficientmod.serve.artifact import load_artifact
    from efficientmod.serve.http import Limits
    from efficientmod.serve.server import serve_until_stopped

    for name, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"{name} must be in 1..65535, got {port}")
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_images=args.max_images)
    settings = ServeSettings(args.artifact, args.replicas, args.threads_per_replica, args.max_batch_size,
                             args.batch_wait_ms, args.max_ongoing_requests, args.max_queued_requests, limits)
    load_artifact(args.artifact)  # a bad artifact fails here, in one line, before Ray starts
    return serve_until_stopped(settings, args.host, args.port, args.address, args.metrics_port,
                               ready=lambda message: print(message, flush=True))


def add_batch_arguments(predict: argparse.ArgumentParser) -> None:
    """``efficientmod predict``'s batch inference over Ray Data (``--engine ray``)."""
    batch = predict.add_argument_group("batch inference over Ray Data (--engine ray)")
    batch.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this process, top-k printed (default); ray: Ray Data, rows written to --output, "
                       "IMAGE may be a folder (searched recursively)")
    batch.add_argument("--output", default=None, metavar="PREDS.jsonl|.parquet",
                       help="with --engine ray: one row per image (path, labels, probs, error); a rerun skips the "
                       "images already written")
    batch.add_argument("--workers", type=int, default=1, metavar="N",
                       help="model copies (Ray actors) of --threads CPUs each (default 1)")
    batch.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                       help="join this Ray cluster (the images must be readable from every node) instead of "
                       "starting Ray on this machine")


def run_batch_predict(args: argparse.Namespace) -> int:
    from efficientmod.serve.batch import predict_to_file, report

    if args.engine != "ray" or args.output is None:
        raise ValueError("--engine ray writes its rows to --output PREDS.jsonl|.parquet: give both")
    summary = predict_to_file(args.model, args.images, args.output, checkpoint=args.checkpoint, topk=args.topk,
                              batch_size=args.batch_size, threads=args.threads, workers=args.workers,
                              address=args.address)
    return report(summary, args.output)
