"""A small OPA-REST-compatible server for tests, evaluating with OPA's own Go evaluator.

It implements the part of the OPA REST API that opa-python-client uses:
``GET /health``, ``GET|PUT|DELETE /v1/policies/{id}``, ``GET /v1/policies``,
``GET|PUT|DELETE /v1/data/{path}`` and ``POST /v1/data/{path}`` with
``{"input": …}`` → ``{"result": …}`` (``{}`` when undefined). Policies are compiled and
evaluated by ``github.com/open-policy-agent/opa/v1/rego`` (the opa-golib-python-bindings
wheel, see the README), so :class:`OpaServerEngine` is tested against OPA's evaluator.
Like OPA 1.x it refuses a module that does not parse, is not Rego v1 or does not
compile with the others, answering 400 with ``rego_*_error`` entries carrying file and row.

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

from fieldgate.policy import check_v1
from fieldgate.policy._opago import bindings

_ERROR = re.compile(r"^(?P<file>\S+?):(?P<row>\d+): (?P<code>rego_\w+): (?P<message>.+)$", re.M)


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
        self._engine: Any = None
        self._packages: dict[str, Any] = {}
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
                self._engine = None
            return errors

    def delete_policy(self, policy_id: str) -> bool:
        with self._lock:
            found = self.policies.pop(policy_id, None) is not None
            self._engine = None
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
            self._engine = None

    def delete_data(self, path: list[str]) -> bool:
        with self._lock:
            node = self.data
            for key in path[:-1]:
                node = node.get(key, {})
            found = node.pop(path[-1], None) is not None if path else False
            self._engine = None
            return found

    def evaluate(self, path: list[str], input: Any) -> Any:
        """The value at ``data.<path>`` for ``input``; raise _Undefined or RuntimeError."""
        opa = bindings()
        with self._lock:
            if self._engine is None:
                self._engine = self._new_engine(self.policies)
                self._engine.add_data(self.data)
                self._packages = {}
            if path and path[-1].startswith("test_"):
                # a Rego test: each query OPA prepares compiles every module (a tenth
                # of a second), so a test package is evaluated once and its tests read
                package = ".".join(path[:-1])
                if package not in self._packages:
                    try:
                        self._packages[package] = self._engine.eval_document(package, {})
                    except opa.OpaError:
                        self._packages[package] = None  # one test fails: query them one by one
                tests = self._packages[package]
                if isinstance(tests, dict) and input in (None, {}):
                    if path[-1] not in tests:
                        raise _Undefined
                    return tests[path[-1]]
            try:
                return self._engine.eval_document(".".join(path), input)
            except opa.OpaUndefinedError:
                raise _Undefined from None
            except opa.OpaError as exc:
                raise RuntimeError(exc.message) from None

    # --- OPA's Go evaluator ------------------------------------------------------

    @staticmethod
    def _new_engine(policies: dict[str, str]) -> Any:
        opa = bindings()
        assert opa is not None, "opa-golib-python-bindings is not installed (see the README)"
        engine = opa.OpaEngine()
        for policy_id, source in policies.items():
            engine.add_policy(policy_id, source)
        return engine

    def _compile_errors(self, policies: dict[str, str]) -> list[dict[str, Any]]:
        opa = bindings()
        try:
            # modules are parsed when added and compiled together when a query is prepared
            self._new_engine(policies).eval_query("x := 1")
        except opa.OpaError as exc:
            return _errors(exc.message)
        return []


def _errors(message: str) -> list[dict[str, Any]]:
    errors = [
        {
            "code": m["code"],
            "message": m["message"],
            "location": {"file": m["file"], "row": int(m["row"]), "col": 0},
        }
        for m in _ERROR.finditer(message)
    ]
    return errors or [{"code": "rego_compile_error", "message": message.strip()[:200]}]


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
