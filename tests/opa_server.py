"""A small OPA-REST-compatible server for tests, evaluating with regopy.

It implements the part of the OPA REST API that opa-python-client uses:
``GET /health``, ``GET|PUT|DELETE /v1/policies/{id}``, ``GET /v1/policies``,
``GET|PUT|DELETE /v1/data/{path}`` and ``POST /v1/data/{path}`` with
``{"input": …}`` → ``{"result": …}`` (``{}`` when undefined). Like OPA 1.x it
refuses a module that does not parse or is not Rego v1, answering 400 with
``rego_parse_error`` entries carrying file, row and column.

    server = OpaTestServer().start()
    ... OpaServerEngine(server.url) ...
    server.stop()
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from regopy import Interpreter, LogLevel, RegoError

from fieldgate.policy import check_v1

_ERROR_AT = re.compile(r"\(error (\d+):")
_ERROR_MESSAGE = re.compile(r"\(errormsg (\d+):")


class _Undefined(Exception):
    pass


class OpaTestServer:
    """Policies and data in memory, served on 127.0.0.1 at a random port."""

    def __init__(self) -> None:
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request, for assertions."""
        self._lock = threading.Lock()
        self._compiled: dict[str, tuple[Interpreter, Any]] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OpaTestServer:
        """Start serving in a daemon thread."""
        server = self

        class Handler(_Handler):
            opa = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- state -----------------------------------------------------------------

    def put_policy(self, policy_id: str, source: str) -> list[dict[str, Any]]:
        """Store a module; return OPA-style errors (empty when it compiled with the others)."""
        with self._lock:
            candidate = {**self.policies, policy_id: source}
            errors = [
                {
                    "code": "rego_parse_error",
                    "message": problem.message,
                    "location": {"file": policy_id, "row": problem.line, "col": problem.column},
                }
                for problem in check_v1(policy_id, source)
            ]
            if not errors:
                errors = self._compile_errors(candidate)
            if not errors:
                self.policies = candidate
                self._compiled.clear()
            return errors

    def delete_policy(self, policy_id: str) -> bool:
        with self._lock:
            found = self.policies.pop(policy_id, None) is not None
            self._compiled.clear()
            return found

    def put_data(self, path: list[str], value: Any) -> None:
        with self._lock:
            if not path:
                self.data = value
            else:
                node = self.data
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = value
            self._compiled.clear()

    def delete_data(self, path: list[str]) -> bool:
        with self._lock:
            node = self.data
            for key in path[:-1]:
                node = node.get(key, {})
            found = node.pop(path[-1], None) is not None if path else False
            self._compiled.clear()
            return found

    def evaluate(self, path: list[str], input: Any) -> Any:
        """The value at ``data.<path>`` for ``input``; raise _Undefined or RuntimeError."""
        entrypoint = "/".join(path)
        with self._lock:
            if entrypoint not in self._compiled:
                interpreter = self._interpreter(self.policies)
                interpreter.add_data(self.data)
                self._compiled[entrypoint] = (interpreter, interpreter.build(None, [entrypoint]))
            interpreter, bundle = self._compiled[entrypoint]
            if input is not None:
                interpreter.set_input_term(json.dumps(input))
            else:
                interpreter.set_input_term("{}")
            try:
                output = interpreter.query_bundle_entrypoint(bundle, entrypoint)
            except (RegoError, ValueError) as exc:  # ValueError: output that is not JSON
                raise RuntimeError(str(exc).strip()) from None
            if not output.ok():
                raise RuntimeError(str(output).strip() or "evaluation error")
            if not output.results or not output.results[0].expressions:
                raise _Undefined
            return output.results[0].expressions[0]

    # --- regopy ----------------------------------------------------------------

    @staticmethod
    def _interpreter(policies: dict[str, str]) -> Interpreter:
        interpreter = Interpreter()
        interpreter.log_level = LogLevel.NONE
        interpreter.strict_built_in_errors = True
        for policy_id, source in policies.items():
            interpreter.add_module(policy_id, source)
        return interpreter

    def _compile_errors(self, policies: dict[str, str]) -> list[dict[str, Any]]:
        try:
            self._interpreter(policies)
        except RegoError as exc:
            return _parse_errors(str(exc), policies)
        return []


def _parse_errors(text: str, policies: dict[str, str]) -> list[dict[str, Any]]:
    errors = []
    for match in _ERROR_AT.finditer(text):
        start = match.end()
        name = text[start : start + int(match[1])]
        offset = re.match(r"\|(\d+)\|", text[start + int(match[1]) :])
        message_match = _ERROR_MESSAGE.search(text, start)
        message = "error"
        if message_match:
            message = text[message_match.end() : message_match.end() + int(message_match[1])]
        row = col = 0
        if offset and name in policies:
            before = policies[name].encode()[: int(offset[1])].decode(errors="replace")
            row = before.count("\n") + 1
            col = len(before) - (before.rfind("\n") + 1) + 1
        errors.append(
            {
                "code": "rego_parse_error",
                "message": message,
                "location": {"file": name, "row": row, "col": col},
            }
        )
    return errors or [{"code": "rego_compile_error", "message": text.strip()[:200]}]


class _Handler(BaseHTTPRequestHandler):
    opa: OpaTestServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: Any = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self) -> tuple[str, list[str]]:
        path = self.path.split("?", 1)[0].rstrip("/")
        self.opa.requests.append((self.command, path))
        for prefix in ("/v1/policies", "/v1/data"):
            if path == prefix or path.startswith(prefix + "/"):
                rest = path[len(prefix) :].strip("/")
                return prefix, [p for p in rest.split("/") if p]
        return path, []

    def do_GET(self) -> None:
        prefix, parts = self._route()
        if prefix == "/health":
            self._send(200, {})
        elif prefix == "/v1/policies" and not parts:
            self._send(200, {"result": [{"id": k, "raw": v} for k, v in self.opa.policies.items()]})
        elif prefix == "/v1/policies":
            policy_id = "/".join(parts)
            if policy_id in self.opa.policies:
                self._send(200, {"result": {"id": policy_id, "raw": self.opa.policies[policy_id]}})
            else:
                self._send(
                    404,
                    {
                        "code": "resource_not_found",
                        "message": f"storage_not_found_error: policy id {policy_id!r}",
                    },
                )
        elif prefix == "/v1/data":
            self._query(parts, None)
        else:
            self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_POST(self) -> None:
        prefix, parts = self._route()
        if prefix != "/v1/data":
            self._send(404, {"code": "resource_not_found", "message": self.path})
            return
        try:
            body = json.loads(self._body() or b"{}")
        except json.JSONDecodeError as exc:
            self._send(400, {"code": "invalid_parameter", "message": f"body is not JSON: {exc}"})
            return
        self._query(parts, body.get("input") if isinstance(body, dict) else None)

    def do_PUT(self) -> None:
        prefix, parts = self._route()
        if prefix == "/v1/policies" and parts:
            errors = self.opa.put_policy("/".join(parts), self._body().decode("utf-8"))
            if errors:
                self._send(
                    400,
                    {
                        "code": "invalid_parameter",
                        "message": "error(s) occurred while compiling module(s)",
                        "errors": errors,
                    },
                )
            else:
                self._send(200, {})
        elif prefix == "/v1/data":
            try:
                value = json.loads(self._body() or b"null")
            except json.JSONDecodeError as exc:
                self._send(
                    400, {"code": "invalid_parameter", "message": f"body is not JSON: {exc}"}
                )
                return
            self.opa.put_data(parts, value)
            self._send(204)
        else:
            self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_DELETE(self) -> None:
        prefix, parts = self._route()
        if prefix == "/v1/policies" and parts:
            if self.opa.delete_policy("/".join(parts)):
                self._send(200, {})
            else:
                self._send(404, {"code": "resource_not_found", "message": "policy not found"})
        elif prefix == "/v1/data" and parts:
            self.opa.delete_data(parts)
            self._send(204)
        else:
            self._send(404, {"code": "resource_not_found", "message": self.path})

    def _query(self, parts: list[str], input: Any) -> None:
        try:
            result = self.opa.evaluate(parts, input)
        except _Undefined:
            self._send(200, {})
        except RuntimeError as exc:
            self._send(500, {"code": "internal_error", "message": str(exc)})
        else:
            self._send(200, {"result": result})
