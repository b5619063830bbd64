"""The design genserve replaced, as the baseline: one request at a time, base64 PNG in JSON.

The original demo served one gRPC call at a time: load the pipeline, then for each request
call it, save a PNG with Pillow's defaults and send it base64-encoded. This is that design
over plain HTTP (stdlib `http.server`, one request at a time, connection closed after each),
on the same model and the same generation code as genserve, so only the serving differs.

    python -m bench.baseline_server --port 8080
    POST /txt2img {"prompt": ..., "seed": ..., ...}  ->  {"image": "<base64 PNG>", "seed": ...}
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

from PIL import Image

from genserve.core.generation import generate_images
from genserve.core.loading import load_image_pipeline
from genserve.core.schemas import image_request_model
from genserve.core.settings import Settings


def serve(port: int) -> None:
    settings = Settings.from_env()
    pipe = load_image_pipeline(settings)
    request_model = image_request_model(settings.image.preset)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply(200 if self.path == "/readyz" else 404, {})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/txt2img":
                self._reply(404, {})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request = request_model(**body)
            [pixels] = generate_images(pipe, settings.image.preset, [request])
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            self._reply(200, {"image": base64.b64encode(buffer.getvalue()).decode(), "seed": request.seed})

        def _reply(self, status: int, document: dict) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(HTTPServer):
        request_queue_size = 128  # a waiting line, as gRPC's queue was: not the stdlib's 5 connections

    # Listening only once loaded, as the original did: connections are refused until then.
    Server(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port)


if __name__ == "__main__":
    main()
