"""``efficientmod serve``: the HTTP API on a real Ray Serve instance (one per module), a
torch ``model/`` folder and its ONNX export served; bad input answered 4xx JSON while the
server keeps serving; a full queue answered 503 + Retry-After; SIGTERM drains and exits 0."""
from __future__ import annotations

import base64
import io
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from skimage import data as skdata
from test_deploy import random_model

from efficientmod.classify.predict import Predictor, load_model
from efficientmod.cli import main
from efficientmod.serve.http import ClassifyResponse

pytestmark = pytest.mark.slow  # Ray's start-up alone takes ~10 s here; the fast tier checks efficientmod.serve.http

CLASSES = ["cat", "astronaut", "coffee"]
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    random_model("efficientmod_xxs", num_classes=len(CLASSES)).save_pretrained(folder / "model", class_names=CLASSES)
    assert main(["export", str(folder / "model"), "-o", str(folder / "model.onnx")]) == 0
    Image.fromarray(skdata.chelsea()).save(folder / "chelsea.jpg")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    return folder


@pytest.fixture(scope="module")
def server(artifacts):
    """One Ray, two applications: the torch folder at /torch (small request bounds) and the
    ONNX file at /onnx (one request at a time, one queued, batches waiting 3 s to fill)."""
    import ray
    from ray import serve

    from efficientmod.serve.app import ServeSettings, build_app
    from efficientmod.serve.cluster import init_ray
    from efficientmod.serve.http import Limits

    port, metrics_port = free_port(), free_port()
    init_ray(num_cpus=2, object_store_bytes=200 * 2**20, metrics_port=metrics_port)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        limits = Limits(max_bytes=2_000_000, max_pixels=1_000_000, max_images=3)
        serve.run(build_app(ServeSettings(str(artifacts / "model"), max_batch_size=4, limits=limits)),
                  name="torch", route_prefix="/torch")
        serve.run(build_app(ServeSettings(str(artifacts / "model.onnx"), max_batch_size=4, batch_wait_ms=3000,
                                          max_ongoing_requests=1, max_queued_requests=1)),
                  name="onnx", route_prefix="/onnx")
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        serve.shutdown()
        ray.shutdown()


def classify(url: str, data: bytes, content_type: str = "image/jpeg", **params) -> requests.Response:
    return requests.post(f"{url}/v1/classify", data=data, headers={"Content-Type": content_type},
                         params=params, timeout=60)


@pytest.fixture(scope="module")
def url(server):
    return server[0]


def test_classify_equals_single_process_predict(url, artifacts):
    paths = [artifacts / "chelsea.jpg", artifacts / "astronaut.png"]
    expected = {Path(p.path).name: p.top for p in
                Predictor.from_model(load_model(artifacts / "model")).predict_files(paths, topk=3)}
    raw = classify(f"{url}/torch", paths[0].read_bytes(), top_k=2)
    assert raw.status_code == 200
    body = raw.json()
    assert body["request_id"] == raw.headers["x-request-id"] and body["request_id"]
    assert ClassifyResponse.model_validate(body).model_dump() == body  # the declared shape, nothing more
    [result] = body["results"]
    assert [t["label"] for t in result["top"]] == [name for name, _ in expected["chelsea.jpg"][:2]]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    several = requests.post(f"{url}/torch/v1/classify", files=files, params={"top_k": 3}, timeout=60)
    assert several.status_code == 200
    for result in several.json()["results"]:
        got = [(t["label"], t["probability"]) for t in result["top"]]
        assert [n for n, _ in got] == [n for n, _ in expected[result["name"]]]
        assert [p for _, p in got] == pytest.approx([p for _, p in expected[result["name"]]], abs=1e-5)
        assert sum(p for _, p in got) == pytest.approx(1, abs=1e-5)


def test_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(url, artifacts):
    url, good = f"{url}/torch", (artifacts / "chelsea.jpg").read_bytes()
    huge = jpeg(Image.new("RGB", (1200, 1000), "white"))  # 1.2 M pixels > 1 M, a small file
    cases = [
        (classify(url, b"this is not an image"), 400, "not an image"),
        (classify(url, good[: len(good) // 2]), 400, "truncated or corrupt"),
        (classify(url, good, "text/plain"), 415, "unsupported content type"),
        (classify(url, huge), 413, "1200x1000 pixels"),
        (classify(url, good + b"\0" * 2_000_000), 413, "bytes, over the bound"),
        (requests.post(f"{url}/v1/classify", files=[("files", ("a.jpg", good))] * 4, timeout=60), 413, "4 images"),
        (classify(url, good, top_k=0), 422, "top_k"),
        (classify(url, good, top_k=101), 422, "top_k 101"),
        (requests.post(f"{url}/v1/classify", data=iter([good]), headers={"Content-Type": "image/jpeg"},
                       timeout=60), 411, "Content-Length"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (words, response.text)
        error = response.json()["error"]
        assert error["status"] == status and words in error["message"], error
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert classify(url, good).status_code == 200  # the replica is still serving


def test_model_health_openapi_and_page(url, artifacts):
    model = requests.get(f"{url}/torch/v1/model", timeout=30).json()
    assert (model["name"], model["runtime"], model["precision"], model["classes"]) == (
        "efficientmod_xxs", "torch", "fp32", CLASSES)
    assert model["preprocessing"]["input_size"] == [3, 224, 224] and model["explainable"]
    assert requests.get(f"{url}/torch/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{url}/torch/readyz", timeout=30).json()["status"] == "ready"
    schema = requests.get(f"{url}/torch/openapi.json", timeout=30).json()
    assert {"/v1/classify", "/v1/explain", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    classify = schema["paths"]["/v1/classify"]["post"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert classify["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ClassifyResponse"}
    page = requests.get(f"{url}/torch/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="drop"' in page.text


def test_explain_draws_the_maps_of_a_torch_artifact(url, artifacts):
    response = requests.post(f"{url}/torch/v1/explain", data=(artifacts / "chelsea.jpg").read_bytes(),
                             headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in CLASSES
    titles = [panel["title"] for panel in body["panels"]]
    assert titles[0] == "input" and any(t.startswith("context") for t in titles) and titles[-1].startswith("CAM")
    png = base64.b64decode(body["panels"][1]["png"].removeprefix("data:image/png;base64,"))
    assert Image.open(io.BytesIO(png)).size == (224, 224)


def test_onnx_artifact_and_a_full_queue_answers_503_with_retry_after(url, artifacts):
    url = f"{url}/onnx"
    model = requests.get(f"{url}/v1/model", timeout=30).json()
    assert (model["runtime"], model["classes"], model["explainable"]) == ("onnxruntime", CLASSES, False)
    assert requests.post(f"{url}/v1/explain", data=b"x", headers={"Content-Type": "image/jpeg"},
                         timeout=30).status_code == 404
    good, answers = (artifacts / "chelsea.jpg").read_bytes(), {}

    def send(key):
        answers[key] = classify(url, good)

    threads = [threading.Thread(target=send, args=(key,)) for key in ("held", "queued")]
    for thread in threads:  # one in the replica (its batch waits 3 s to fill), one waiting at the proxy
        thread.start()
        time.sleep(0.7)
    refused = classify(url, good)
    for thread in threads:
        thread.join()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert [answers[k].status_code for k in ("held", "queued")] == [200, 200]


def test_requests_batch_sizes_and_latency_are_ray_metrics(server, url, artifacts):
    """Counted by the earlier tests (some bad requests among them), exported by Ray."""
    assert classify(f"{url}/torch", b"not an image").status_code == 400
    wanted = ("ray_efficientmod_requests", "ray_efficientmod_batch_size_bucket", "ray_efficientmod_latency_ms_bucket")
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:  # Ray exports every few seconds
        text = requests.get(server[1], timeout=10).text
        if all(name in text for name in wanted) and 'status="400"' in text:
            break
        time.sleep(2)
    assert all(name in text for name in wanted), text[-2000:]
    assert any('route="classify"' in line and 'status="400"' in line for line in text.splitlines()
               if line.startswith("ray_efficientmod_requests"))


def test_sigterm_drains_the_request_in_flight_and_exits_0(artifacts):
    port = free_port()
    command = [sys.executable, "-m", "efficientmod", "serve", str(artifacts / "model.onnx"), "--port", str(port),
               "--batch-wait-ms", "6000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:  # Ray's notes, then the line printed once the server answers
            if "on http://127.0.0.1:" in line:
                break
        else:
            pytest.fail(f"efficientmod serve exited {process.wait()} before serving")
        answer = {}
        sender = threading.Thread(target=lambda: answer.update(r=classify(f"http://127.0.0.1:{port}",
                                                                          (artifacts / "chelsea.jpg").read_bytes())))
        sender.start()
        time.sleep(2)  # the request waits in its batch (6 s to fill)
        process.send_signal(signal.SIGTERM)
        sender.join()
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert answer["r"].status_code == 200 and answer["r"].json()["results"][0]["top"][0]["label"] in CLASSES
