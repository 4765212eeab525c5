"""The OPA server engine: the same pack, uploaded to an OPA server and queried over REST."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient
from opa_client.errors import RegoParseError

from fieldgate.errors import PolicyUploadRejected
from fieldgate.policy._engine import (
    RegoTestResult,
    check_shape,
    fail_closed,
    normalize_path,
)
from fieldgate.policy._pack import PolicyPack, SourceProblem

POLICY_PREFIX = "fieldgate"
"""Policy ids on the server are ``fieldgate/<file stem>``."""
TEST_PREFIX = "fieldgate-tests"
"""Test modules are uploaded as ``fieldgate-tests/<file stem>`` while tests run, then removed."""


class OpaServerEngine:
    """Evaluates the pack on an OPA server through opa-python-client.

    On first use it uploads the data document and every policy module (the data
    under ``fieldgate/…`` part by part, so that it does not overlap the policy
    packages), then queries the same paths as :class:`RegoEngine`. An unreachable
    server, a rejected upload, an HTTP error, a timeout or an undefined result is a
    deny with the reason; a failed upload is retried at the next decision.
    """

    name = "opa"

    def __init__(
        self,
        url: str,
        pack: PolicyPack | None = None,
        *,
        timeout_s: float = 2.0,
        retries: int = 1,
        token: str | None = None,
    ) -> None:
        """Connect to the OPA server at ``url`` (e.g. ``http://127.0.0.1:8181``)."""
        self.url = url
        self.pack = pack if pack is not None else PolicyPack.load()
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self._client = OpaClient(
            host=parts.hostname or "localhost",
            port=parts.port or (443 if parts.scheme == "https" else 8181),
            ssl=parts.scheme == "https",
            token=token,
            timeout=timeout_s,
            retries=retries,
        )
        self._lock = threading.Lock()
        self._loaded = False
        self.problems: list[SourceProblem] = []
        """Why the last upload failed (empty when it succeeded)."""
        self.upload_error: str | None = None
        """The last upload failure, as one line."""

    @property
    def revision(self) -> str:
        """sha256 over the pack's policy modules and data."""
        return self.pack.revision.digest

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.close_connection()

    def load(self) -> bool:
        """Upload the data and the policy modules; tell whether the server took them all."""
        with self._lock:
            return self._load()

    def _load(self) -> bool:
        self.problems = list(self.pack.lint())
        if self.problems:
            self.upload_error = "policies are not Rego v1: " + "; ".join(map(str, self.problems))
            return False
        try:
            for path, value in _data_documents(self.pack.data, self.pack):
                self._client.update_or_create_data(value, path)
            for module in self.pack.policies:
                self._upload(module.name, module.source, f"{POLICY_PREFIX}/{_stem(module.name)}")
        except PolicyUploadRejected as exc:
            self.problems = [p for p in exc.problems if isinstance(p, SourceProblem)]
            self.upload_error = "the OPA server rejected the policies: " + "; ".join(
                map(str, exc.problems)
            )
            return False
        except Exception as exc:
            self.upload_error = f"cannot upload the policies to OPA at {self.url}: {_describe(exc)}"
            return False
        self._loaded = True
        self.upload_error = None
        return True

    def _upload(self, name: str, source: str, policy_id: str) -> None:
        try:
            self._client.update_policy_from_string(source, policy_id, rego_compat=False)
        except RegoParseError as exc:
            problems = [
                SourceProblem(
                    name,
                    int((error.get("location") or {}).get("row", 0)),
                    int((error.get("location") or {}).get("col", 0)),
                    str(error.get("message", "")),
                )
                for error in exc.errors
                if isinstance(error, dict)
            ] or [SourceProblem(name, 0, 0, str(exc.message))]
            raise PolicyUploadRejected(problems) from None

    def decide(self, path: str, input: Mapping[str, Any]) -> dict[str, Any]:
        """Query ``path`` on the server; on any failure a deny with the reason."""
        path = normalize_path(path)
        with self._lock:
            if not self._loaded and not self._load():
                return fail_closed(path, self.upload_error or "policies not loaded")
        package, _, rule = path.rpartition(".")
        try:
            response = self._client.query_rule(dict(input), package.replace(".", "/"), rule)
        except requests.Timeout:
            return fail_closed(path, f"OPA at {self.url} timed out at {path}")
        except requests.HTTPError as exc:
            return fail_closed(path, f"OPA at {self.url} refused {path}: {_describe(exc)}")
        except Exception as exc:
            return fail_closed(path, f"cannot query OPA at {self.url}: {_describe(exc)}")
        if not isinstance(response, dict) or "result" not in response:
            return fail_closed(path, f"the decision at {path} is undefined")
        result = response["result"]
        problem = check_shape(path, result)
        if problem:
            return fail_closed(path, problem)
        assert isinstance(result, dict)
        return result

    def test(self) -> list[RegoTestResult]:
        """Run the pack's Rego tests on the server: upload them, query each test, remove them."""
        if not self.load():
            return [
                RegoTestResult("<upload>", p.file, p.line, False, p.message) for p in self.problems
            ] or [RegoTestResult("<upload>", "", 0, False, self.upload_error or "upload failed")]
        results: list[RegoTestResult] = []
        uploaded = []
        try:
            # a test module may call another's functions (rollout_floors_test uses
            # rollout_test), and OPA refuses it until that one is there: upload in
            # passes until none is taken
            pending = list(self.pack.tests)
            rejected: dict[str, PolicyUploadRejected] = {}
            while pending:
                waiting = []
                for module in pending:
                    policy_id = f"{TEST_PREFIX}/{_stem(module.name)}"
                    try:
                        self._upload(module.name, module.source, policy_id)
                    except PolicyUploadRejected as exc:
                        rejected[module.name] = exc
                        waiting.append(module)
                        continue
                    rejected.pop(module.name, None)
                    uploaded.append(policy_id)
                if len(waiting) == len(pending):
                    break
                pending = waiting
            for refusal in rejected.values():
                results.extend(
                    RegoTestResult("<compile>", p.file, p.line, False, p.message)
                    for p in refusal.problems
                    if isinstance(p, SourceProblem)
                )
            for module in self.pack.tests:
                if module.name in rejected:
                    continue
                for rule, line in module.tests():
                    name = f"{module.package}.{rule}"
                    try:
                        response = self._client.query_rule(
                            {}, module.package.replace(".", "/"), rule
                        )
                    except Exception as exc:
                        results.append(
                            RegoTestResult(name, module.name, line, False, _describe(exc))
                        )
                        continue
                    value = response.get("result") if isinstance(response, dict) else None
                    results.append(
                        RegoTestResult.of_value(
                            name, module.name, line, value, undefined=value is None
                        )
                    )
        finally:
            for policy_id in uploaded:
                # the tests ran; a test module left behind decides nothing
                with contextlib.suppress(Exception):
                    self._client.delete_policy(policy_id)
        return results


def _stem(name: str) -> str:
    return name.removesuffix(".rego")


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.json()
            return f"HTTP {response.status_code}: {body.get('message', body)}"
        except ValueError:
            return f"HTTP {response.status_code}"
    message = getattr(exc, "message", None)
    text = str(message or exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _data_documents(
    data: Mapping[str, Any], pack: PolicyPack
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Split the data document into parts that do not overlap a policy package path.

    OPA refuses data written at a path under which policies live (``fieldgate``
    holds ``fieldgate.rollout``), so such objects are written key by key.
    """
    packages = [m.package.split(".") for m in pack.modules]

    def walk(prefix: list[str], value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        overlaps = any(p[: len(prefix)] == prefix for p in packages)
        if overlaps and isinstance(value, Mapping):
            for key, child in value.items():
                yield from walk([*prefix, key], child)
        elif isinstance(value, Mapping):
            yield "/".join(prefix), dict(value)
        else:
            raise ValueError(f"data at {'.'.join(prefix)} must be an object to upload to OPA")

    for key, value in data.items():
        yield from walk([key], value)
