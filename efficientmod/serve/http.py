"""The HTTP side of the server, without Ray: the request bounds, reading the images a
request carries (raw image bytes or multipart/form-data), decoding them with the model's
preprocessing, and the JSON errors that name what was wrong with a request.

Every problem with a request is a :class:`RequestError` (a 4xx status and a one-line
message); the server answers it as ``{"error": {"status", "message"}, "request_id"}`` and
goes on serving.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from efficientmod.classify.data import DECODE_ERRORS
from efficientmod.classify.predict import Preprocessing

__all__ = ["Limits", "RequestError", "read_images", "decode_image", "error_body",
           "ClassifyResponse", "ModelResponse", "ExplainResponse"]

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Limits:
    """What one request may carry; over a bound the answer is 413."""

    max_bytes: int = 20_000_000  # the whole request body
    max_pixels: int = 40_000_000  # width x height of each image
    max_images: int = 16  # images in one multipart request
    max_top_k: int = 100

    def __post_init__(self):
        if min(self.max_bytes, self.max_pixels, self.max_images, self.max_top_k) < 1:
            raise ValueError(f"the request bounds must be positive, got {self}")


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(status: int, message: str, request_id: str | None) -> dict:
    return {"error": {"status": status, "message": message}, "request_id": request_id}


def check_length(content_length: str | None, limits: Limits) -> None:
    """The declared body length, checked before the body is read."""
    if content_length is None:
        raise RequestError(411, "the request has no Content-Length: send the image bytes with their length")
    try:
        length = int(content_length)
    except ValueError:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number") from None
    if length > limits.max_bytes:
        raise RequestError(413, f"the request body is {length:,} bytes, over the bound of {limits.max_bytes:,}")
    if length == 0:
        raise RequestError(400, "the request body is empty: send an image")


async def read_images(request, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image of a Starlette ``request``: the raw body for an
    ``image/*`` or ``application/octet-stream`` request, every file part of a
    ``multipart/form-data`` one."""
    content_type = request.headers.get("content-type", "")
    check_length(request.headers.get("content-length"), limits)
    if content_type.startswith(RAW_IMAGE_TYPES):
        return [("image", await request.body())]
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(415, f"unsupported content type {content_type or '(none)'!r}: send image bytes "
                           "(image/*, application/octet-stream) or multipart/form-data with image files")
    form = await request.form(max_files=limits.max_images + 1, max_fields=limits.max_images + 1)
    try:
        files = [value for _, value in form.multi_items() if hasattr(value, "read")]
        if not files:
            raise RequestError(400, "the multipart request holds no file: attach images as file parts")
        if len(files) > limits.max_images:
            raise RequestError(413, f"{len(files)} images in one request, over the bound of {limits.max_images}")
        return [(upload.filename or f"image {i}", await upload.read()) for i, upload in enumerate(files)]
    finally:
        await form.close()


def decode_image(name: str, data: bytes, preprocessing: Preprocessing, limits: Limits) -> torch.Tensor:
    """The preprocessed (C, H, W) tensor of one image; a :class:`RequestError` naming the
    image when it is no image (400), too large (413) or broken (400)."""
    if not data:
        raise RequestError(400, f"{name}: empty file, not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise RequestError(400, f"{name}: not an image (no format Pillow reads)") from None
    except DECODE_ERRORS as error:
        raise RequestError(400, f"{name}: unreadable image header ({type(error).__name__}: {error})") from None
    if width * height > limits.max_pixels:
        raise RequestError(413, f"{name}: {width}x{height} pixels, over the bound of {limits.max_pixels:,} pixels")
    try:
        return preprocessing.load(io.BytesIO(data))
    except DECODE_ERRORS as error:
        raise RequestError(400, f"{name}: truncated or corrupt image ({type(error).__name__}: {error})") from None


# -- the response schemas (OpenAPI) ----------------------------------------------------------
class ClassScore(BaseModel):
    label: str
    probability: float


class ImageResult(BaseModel):
    name: str
    top: list[ClassScore]


class ClassifyResponse(BaseModel):
    request_id: str | None
    results: list[ImageResult]


class ModelResponse(BaseModel):
    name: str
    artifact: str
    runtime: str
    precision: str
    preprocessing: dict
    classes: list[str]
    explainable: bool  # POST /v1/explain draws maps (the artifact carries a torch model)


class MapPanel(BaseModel):
    title: str
    png: str  # a data: URL


class ExplainResponse(BaseModel):
    request_id: str | None
    label: str
    panels: list[MapPanel]
    notes: list[str]
