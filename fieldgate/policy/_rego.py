"""The in-process engine: regopy, compiled once into a bundle and queried many times."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from fieldgate.errors import RegoEvaluationError
from fieldgate.policy import _regopy
from fieldgate.policy._engine import (
    DECISIONS,
    RegoTestResult,
    check_shape,
    fail_closed,
    normalize_path,
)
from fieldgate.policy._pack import PolicyPack, SourceProblem

T = TypeVar("T")


def entrypoint_of(path: str) -> str:
    """``fieldgate.rollout.decision`` → ``fieldgate/rollout/decision`` (a bundle entrypoint)."""
    return normalize_path(path).replace(".", "/")


class _Worker:
    """One daemon thread that runs engine calls, so that a call can be given up on.

    A regopy call cannot be interrupted; when one overruns, the caller gets a
    timeout and the engine refuses everything until that call has returned.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        # the thread holds the queue, not the worker, so a dropped engine stops it
        self._thread = threading.Thread(target=_serve, args=(self._jobs,), name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future

    def stop(self) -> None:
        """Let the thread end once it is idle."""
        self._jobs.put(None)

    def __del__(self) -> None:
        self.stop()


def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None]) -> None:
    while (item := jobs.get()) is not None:
        job, future = item
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(job())
        except BaseException as exc:  # handed to the caller, who fails closed
            future.set_exception(exc)
        del job, future, item  # drop the engine the job refers to before waiting again


class RegoEngine:
    """Evaluates the pack in-process with regopy (the default engine).

    The pack is compiled once into a bundle with the three decisions as
    entrypoints; each decision then sets the input and runs one entrypoint. Any
    compile error, evaluation error, timeout, undefined or malformed result is a
    deny carrying the reason. Safe to share between threads (calls are serialised).
    """

    name = "regopy"

    def __init__(
        self,
        pack: PolicyPack | None = None,
        *,
        timeout_s: float | None = 2.0,
        entrypoints: tuple[str, ...] = DECISIONS,
    ) -> None:
        """Compile ``pack`` (default: the shipped pack).

        Args:
            pack: the policy pack.
            timeout_s: longest one decision may take; None runs calls inline without a limit.
            entrypoints: decisions compiled into the bundle; other paths are compiled per query.
        """
        self.pack = pack if pack is not None else PolicyPack.load()
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._worker = _Worker("fieldgate-regopy") if timeout_s is not None else None
        self._overrun: Future[Any] | None = None
        self._entrypoints = {normalize_path(p) for p in entrypoints}
        self.problems: list[SourceProblem] = []
        """Why the pack did not compile (empty when it did)."""
        self._interpreter = _regopy.new_interpreter()
        self._bundle: Any = None
        self._compile()

    @property
    def revision(self) -> str:
        """sha256 over the pack's policy modules and data."""
        return self.pack.revision.digest

    @property
    def error(self) -> str | None:
        """Why every decision is denied now, when the engine cannot decide at all."""
        if self.problems:
            return "policies do not compile: " + "; ".join(str(p) for p in self.problems)
        if self._overrun is not None:
            if not self._overrun.done():
                return (
                    f"a decision that took longer than {self.timeout_s:g} s is still running; "
                    "the engine refuses until it ends"
                )
            self._overrun = None
        return None

    def _compile(self) -> None:
        self.problems = _regopy.load_pack(self._interpreter, self.pack)
        if self.problems:
            return
        entrypoints = [entrypoint_of(p) for p in sorted(self._entrypoints)]
        try:
            self._bundle = self._interpreter.build(None, entrypoints)
        except _regopy.RegoError as exc:
            self.problems = _regopy.parse_errors(str(exc), self.pack)
            return
        if not self._bundle.ok():
            self.problems = [SourceProblem("", 0, 0, "the bundle did not build")]

    def decide(self, path: str, input: Mapping[str, Any]) -> dict[str, Any]:
        """Evaluate the decision at ``path``; on any failure a deny with the reason."""
        path = normalize_path(path)
        reason = self.error
        if reason is not None:
            return fail_closed(path, reason)
        try:
            if self._worker is not None and self.timeout_s is not None:
                future = self._worker.submit(lambda: self._evaluate(path, input))
                try:
                    result = future.result(timeout=self.timeout_s)
                except FutureTimeout:
                    self._overrun = future
                    return fail_closed(path, f"timeout after {self.timeout_s:g} s at {path}")
            else:
                result = self._evaluate(path, input)
        except RegoEvaluationError as exc:
            return fail_closed(path, f"evaluation failed at {path}: {exc}")
        except (ValueError, TypeError) as exc:
            return fail_closed(path, f"input is not a JSON document: {exc}")
        except Exception as exc:  # whatever regopy raises, the answer is a deny
            return fail_closed(path, f"{type(exc).__name__} at {path}: {exc}")
        if _regopy.is_undefined(result):
            return fail_closed(path, f"the decision at {path} is undefined")
        problem = check_shape(path, result)
        if problem:
            return fail_closed(path, problem)
        assert isinstance(result, dict)
        return result

    def _evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        with self._lock:
            _regopy.set_input(self._interpreter, input)
            if path in self._entrypoints:
                return _regopy.query_entrypoint(
                    self._interpreter, self._bundle, entrypoint_of(path)
                )
            return _regopy.query(self._interpreter, "data." + path)

    def test(self) -> list[RegoTestResult]:
        """Run the pack's Rego tests (one query per ``test_*`` rule) with regopy."""
        return run_rego_tests(self.pack)


def run_rego_tests(pack: PolicyPack) -> list[RegoTestResult]:
    """Evaluate every ``test_*`` rule of every ``*_test.rego`` module; pass when it is true.

    A module that does not compile fails as ``<compile>`` with its file and line,
    and no test runs (every test would fail for the same reason).
    """
    interpreter = _regopy.new_interpreter()
    problems = _regopy.load_pack(interpreter, pack, with_tests=True)
    if problems:
        return [RegoTestResult("<compile>", p.file, p.line, False, p.message) for p in problems]
    cases = [
        (module, f"{module.package}.{rule}", line)
        for module in pack.tests
        for rule, line in module.tests()
    ]
    if not cases:
        return []
    try:
        bundle = interpreter.build(None, [name.replace(".", "/") for _, name, _ in cases])
    except _regopy.RegoError as exc:
        return [
            RegoTestResult("<compile>", p.file, p.line, False, p.message)
            for p in _regopy.parse_errors(str(exc), pack)
        ]
    interpreter.set_input_term("{}")
    results = []
    for module, name, line in cases:
        try:
            value = _regopy.query_entrypoint(interpreter, bundle, name.replace(".", "/"))
        except RegoEvaluationError as exc:
            results.append(RegoTestResult(name, module.name, line, False, f"error: {exc}"))
            continue
        if value is True:
            results.append(RegoTestResult(name, module.name, line, True))
        elif _regopy.is_undefined(value):
            results.append(
                RegoTestResult(
                    name, module.name, line, False, "undefined: a condition did not hold"
                )
            )
        else:
            results.append(
                RegoTestResult(name, module.name, line, False, f"evaluated to {value!r}")
            )
    return results
