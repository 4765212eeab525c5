"""An OpenAI-compatible chat-completions server backed by the offline model, and its replay mode.

Any OpenAI client (the ``openai`` package, langchain-openai's ``ChatOpenAI``, curl) can
talk to it: ``POST /v1/chat/completions`` (with ``stream``: server-sent events, with a usage
chunk when ``stream_options.include_usage`` is set) and ``GET /v1/models``.

The server binds to loopback unless told otherwise. It is a threaded stdlib
``http.server``: one thread per connection, keep-alive, no dependencies.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fieldgate.agents.offline.server.backends import Backend, OfflineBackend, Reply
from fieldgate.agents.offline.server.wire import OFFLINE_MODEL_ID, error_body, stream_chunks
from fieldgate.errors import RequestInvalid

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The default address: reachable from this machine only."""


class ModelHTTPServer(ThreadingHTTPServer):
    """The HTTP server: a backend, an optional bearer token, and a stop signal for hangs."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], backend: Backend, api_key: str | None = None
    ) -> None:
        super().__init__(address, _Handler)
        self.backend = backend
        self.api_key = api_key
        self.stopping = threading.Event()

    @property
    def base_url(self) -> str:
        """The URL clients use as ``OPENAI_BASE_URL``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ModelHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "fieldgate-model/1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add some 40 ms to every answer.
    disable_nagle_algorithm = True
    timeout = 60.0
    """Idle keep-alive connections are closed after this many seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_json(
            HTTPStatus.UNAUTHORIZED,
            error_body("invalid API key", "invalid_request_error"),
        )
        return False

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/health", "/v1/health"):
            self._send_json(HTTPStatus.OK, {"status": "ok"})
            return
        if not self._authorized():
            return
        entry = {"id": OFFLINE_MODEL_ID, "object": "model", "created": 0, "owned_by": "fieldgate"}
        if path in ("/v1/models", "/models"):
            self._send_json(HTTPStatus.OK, {"object": "list", "data": [entry]})
        elif path.startswith(("/v1/models/", "/models/")):
            self._send_json(HTTPStatus.OK, {**entry, "id": path.rsplit("/", 1)[1]})
        else:
            self._not_found()

    def _not_found(self) -> None:
        self._send_json(
            HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "invalid_request_error")
        )

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._not_found()
            return
        if not self._authorized():
            return
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise RequestInvalid("the body must be a JSON object")
            reply = self.server.backend.reply(request)
        except (ValueError, RequestInvalid) as exc:
            param = exc.param if isinstance(exc, RequestInvalid) else None
            self._send_json(
                HTTPStatus.BAD_REQUEST, error_body(str(exc), "invalid_request_error", param)
            )
            return
        except Exception as exc:
            # Whatever went wrong, the client gets an answer it can retry, not a dropped line.
            log.exception("the model backend failed")
            message = f"the model backend failed: {type(exc).__name__}: {exc}"
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, error_body(message, "server_error"))
            return
        if reply.delay_s and self.server.stopping.wait(reply.delay_s):
            return
        try:
            self._answer(request, reply)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout passed while a recorded hang waited).
            self.close_connection = True

    def _answer(self, request: Mapping[str, Any], reply: Reply) -> None:
        if reply.raw is not None:
            self._send(reply.status, reply.raw.encode(), "application/json", reply.headers)
        elif reply.status == 200 and request.get("stream") and reply.body is not None:
            options = request.get("stream_options") or {}
            self._stream(stream_chunks(reply.body, bool(options.get("include_usage"))))
        else:
            self._send_json(reply.status, reply.body or {}, reply.headers)

    def _stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = (f"data: {json.dumps(c)}\n\n" for c in chunks)
        for event in itertools.chain(events, ["data: [DONE]\n\n"]):
            data = event.encode()
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


@contextmanager
def model_server(
    backend: Backend | None = None,
    *,
    host: str = LOOPBACK,
    port: int = 0,
    api_key: str | None = None,
) -> Iterator[str]:
    """Serve ``backend`` (the offline model by default) in a background thread.

    Yields the base URL (``http://127.0.0.1:PORT/v1``); port 0 picks a free port.
    """
    server = ModelHTTPServer((host, port), backend or OfflineBackend(), api_key)
    # A short poll keeps shutdown quick: tests start and stop many servers.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="model-server", daemon=True
    )
    thread.start()
    try:
        yield server.base_url
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


def serve_forever(
    backend: Backend | None = None,
    *,
    host: str = LOOPBACK,
    port: int = 0,
    api_key: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in this thread until interrupted; ``on_ready`` gets the base URL first."""
    server = ModelHTTPServer((host, port), backend or OfflineBackend(), api_key)
    try:
        if on_ready is not None:
            on_ready(server.base_url)
        server.serve_forever()
    finally:
        server.stopping.set()
        server.server_close()
