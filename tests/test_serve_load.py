"""benchmarks/serve_load.py's client side (the fast tier, no Ray): keep-alive connections, several
images per request read back by the server's own multipart reader, bad requests counted
apart, throughput counted in images, bounded in requests."""
from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from benchmark_scripts import load_script
from starlette.requests import Request
from synthetic_images import class_image, jpeg_bytes

from efficientmod.serve.http import Limits, read_images

GOOD = jpeg_bytes(class_image(0, 3, size=40))


serve_load = load_script("serve_load")


def read_back(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The images the server's reader finds in a request with this body."""
    scope = dict(type="http", method="POST", path="/v1/classify", query_string=b"",
                 headers=[(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())])

    async def receive():
        return dict(type="http.request", body=body, more_body=False)

    return asyncio.run(read_images(Request(scope, receive), Limits()))


@pytest.mark.parametrize("count", [1, 3])
def test_a_good_request_carries_the_photo_as_many_times_as_asked(count):
    body, content_type = serve_load.good_request(GOOD, count)
    images = read_back(body, content_type)
    assert [data for _, data in images] == [GOOD] * count
    assert content_type == "image/jpeg" if count == 1 else content_type.startswith("multipart/form-data")


class Stub(BaseHTTPRequestHandler):
    """200 for a JPEG or a multipart request, 415 for another type, 400 for a broken JPEG; it
    counts the connections and the images it was sent."""

    protocol_version = "HTTP/1.1"  # keep-alive
    connections, images, lock = 0, 0, threading.Lock()

    def setup(self):
        super().setup()
        with Stub.lock:
            Stub.connections += 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        kind = self.headers["Content-Type"]
        images = body.count(b"filename=") if kind.startswith("multipart/") else int(body.endswith(b"\xff\xd9"))
        status = 415 if kind == "text/plain" else 200 if images else 400
        with Stub.lock:
            Stub.images += images if status == 200 else 0
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture()
def stub():
    Stub.connections = Stub.images = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_clients_keep_their_connection_and_count_images(stub):
    level = serve_load.run_level(stub, 3, GOOD, 0.0, 30, 60.0, images_per_request=4)
    assert (level["good_answered"], level["errors"], level["bad_sent"]) == (30, 0, 0)
    assert Stub.images == 120 and Stub.connections == 3  # one keep-alive connection per client
    assert level["images_per_request"] == 4
    assert level["throughput_img_s"] == pytest.approx(120 / level["seconds"], rel=0.05)


def test_bad_requests_answered_4xx_are_not_errors(stub):
    level = serve_load.run_level(stub, 2, GOOD, 0.1, 100, 60.0)
    assert (level["good_answered"], level["bad_sent"], level["errors"]) == (90, 10, 0)
    assert Stub.images == 90


def test_a_server_that_answers_wrongly_is_counted(stub):
    level = serve_load.run_level(stub, 1, b"not a jpeg", 0.0, 5, 60.0)
    assert (level["good_answered"], level["errors"], level["error_kinds"]) == (0, 5, ["good request answered 400"])


def test_cpu_lists_and_bad_arguments(capsys):
    assert serve_load.cpu_list("0,2-3") == {0, 2, 3}
    args = serve_load.parse_args(["m.onnx", "--images-per-request", "1", "8", "--client-cpus", "1"])
    assert (args.images_per_request, args.client_cpus) == ([1, 8], {1})
    with pytest.raises(SystemExit):
        serve_load.parse_args(["m.onnx", "--client-cpus", "a-b"])
    with pytest.raises(SystemExit):
        serve_load.parse_args(["m.onnx", "--images-per-request", "0"])
    assert "must be positive" in capsys.readouterr().err
