"""The Ray Serve application: one deployment (:class:`Classifier`, ``--replicas`` copies)
whose replicas load the artifact once, decode each request's images, and run them through
the model in dynamic batches (``@serve.batch``: up to ``max_batch_size`` images, waiting at
most ``batch_wait_ms`` for a batch to fill). Its FastAPI app is the HTTP API:

* ``POST /v1/classify?top_k=5``: raw image bytes or multipart files → labels, probabilities
* ``POST /v1/explain``: one image → the maps of :mod:`efficientmod.serve.page` (torch artifacts)
* ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``GET /`` (the web page), ``/docs``
  and ``/openapi.json``.

The queue is bounded: a replica takes ``max_ongoing_requests`` at once and the proxy keeps
at most ``max_queued_requests`` waiting; beyond that Ray answers 503 with ``Retry-After``.
Metrics (requests by route and status, batch sizes, latency) are Ray metrics, exported
with Ray Serve's own on Ray's Prometheus endpoint.
"""
# no `from __future__ import annotations`: FastAPI reads the route signatures' types at run time
import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException

from efficientmod.serve.artifact import load_artifact
from efficientmod.serve.http import (
    ClassifyResponse,
    ExplainResponse,
    Limits,
    ModelResponse,
    RequestError,
    decode_image,
    error_body,
    read_images,
)
from efficientmod.serve.page import explain, page_html

__all__ = ["ServeSettings", "Classifier", "build_app", "api"]

IMAGE_BODY = {"requestBody": {"content": {
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}, "required": True}}

DRAIN_TIMEOUT_S = 30.0  # a replica stopped with requests in flight answers them within this

api = FastAPI(title="efficientmod serve", version="1",
              description="Image classification with an efficientmod artifact, batched on Ray Serve.")


def _request_id(request: Request) -> str | None:
    return request.headers.get("x-request-id")


@api.exception_handler(RequestError)
async def _refused(request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.message, _request_id(request)), status_code=error.status)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return JSONResponse(error_body(422, problems, _request_id(request)), status_code=422)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(error.status_code, str(error.detail), _request_id(request)),
                        status_code=error.status_code)


@dataclass(frozen=True)
class ServeSettings:
    """What ``efficientmod serve`` configures."""

    artifact: str
    replicas: int = 1
    threads_per_replica: int = 1
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    max_ongoing_requests: int = 32  # per replica
    max_queued_requests: int = 64  # waiting at the proxy; beyond it 503 + Retry-After
    limits: Limits = Limits()

    def __post_init__(self):
        if min(self.replicas, self.threads_per_replica, self.max_batch_size, self.max_ongoing_requests,
               self.max_queued_requests) < 1:
            raise ValueError("--replicas, --threads-per-replica, --max-batch-size, --max-ongoing-requests and "
                             "--max-queued-requests must be positive")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")


@serve.deployment(name="classifier")
@serve.ingress(api)
class Classifier:
    def __init__(self, settings: ServeSettings):
        self.served = load_artifact(settings.artifact, settings.threads_per_replica)
        self.limits = settings.limits
        self.run_batch.set_max_batch_size(settings.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)
        self.explain_lock = threading.Lock()  # the maps' hooks are per forward pass: one at a time
        self.requests = Counter("efficientmod_requests", "requests answered, by route and status",
                                tag_keys=("route", "status"))
        self.batch_sizes = Histogram("efficientmod_batch_size", "images per model run",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        self.latency = Histogram("efficientmod_latency_ms", "request latency in the replica (ms), by route",
                                 boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
                                 tag_keys=("route",))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def run_batch(self, images: list) -> list[list[tuple[str, float]]]:
        """The top ``max_top_k`` (class, probability) of each image (one model run per batch)."""
        self.batch_sizes.observe(len(images))
        return await asyncio.to_thread(self.served.predictor.predict, torch.stack(images), self.limits.max_top_k)

    async def _decoded(self, request: Request) -> list[tuple[str, object]]:
        images = await read_images(request, self.limits)
        preprocessing = self.served.predictor.preprocessing
        return await asyncio.to_thread(
            lambda: [(name, decode_image(name, data, preprocessing, self.limits)) for name, data in images])

    @contextlib.contextmanager
    def _counted(self, route: str):
        """Count the request answered inside the block by route and status, and time it."""
        started, status = time.perf_counter(), 200
        try:
            yield
        except RequestError as error:
            status = error.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            self.requests.inc(tags={"route": route, "status": str(status)})
            self.latency.observe(1000 * (time.perf_counter() - started), tags={"route": route})

    @api.post("/v1/classify", response_model=ClassifyResponse, openapi_extra=IMAGE_BODY,
              summary="top-k labels and probabilities of one image (raw bytes) or several (multipart)")
    async def classify(self, request: Request, top_k: int = Query(5, ge=1)) -> JSONResponse:
        with self._counted("classify"):
            if top_k > self.limits.max_top_k:
                raise RequestError(422, f"top_k {top_k} is over the bound of {self.limits.max_top_k}")
            decoded = await self._decoded(request)
            tops = await asyncio.gather(*(self.run_batch(tensor) for _, tensor in decoded))
        results = [dict(name=name, top=[dict(label=label, probability=p) for label, p in top[:top_k]])
                   for (name, _), top in zip(decoded, tops, strict=True)]
        # built as ClassifyResponse declares it: returned as a response, FastAPI does not validate it again
        return JSONResponse(dict(request_id=_request_id(request), results=results))

    @api.post("/v1/explain", response_model=ExplainResponse, openapi_extra=IMAGE_BODY,
              summary="the context / attention / class-activation maps of one image (torch artifacts)")
    async def explain(self, request: Request) -> dict:
        with self._counted("explain"):
            if self.served.explainable is None:
                raise RequestError(404, f"no maps: {self.served.info['artifact']} runs in "
                                   f"{self.served.info['runtime']}, not torch")
            decoded = await self._decoded(request)
            if len(decoded) != 1:
                raise RequestError(400, f"/v1/explain takes one image, got {len(decoded)}")
            label, panels, notes = await asyncio.to_thread(self._explain, decoded[0][1])
        return dict(request_id=_request_id(request), label=label, panels=panels, notes=notes)

    def _explain(self, tensor):
        with self.explain_lock:
            predictor = self.served.predictor
            return explain(self.served.explainable, tensor, predictor.preprocessing, predictor.class_names)

    @api.get("/v1/model", response_model=ModelResponse, summary="what is served")
    async def model(self) -> dict:
        return dict(self.served.info, explainable=self.served.explainable is not None)

    @api.get("/healthz", summary="the replica is alive")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="the model is loaded and answers")
    async def readyz(self) -> dict:
        return {"status": "ready", "model": self.served.info["name"]}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> str:
        return page_html()


def build_app(settings: ServeSettings):
    """The bound application, ready for ``serve.run``."""
    return Classifier.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.threads_per_replica},
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
        graceful_shutdown_timeout_s=DRAIN_TIMEOUT_S,
    ).bind(settings)
