"""What the in-process engines share: one worker thread, a timeout, and every failure a deny."""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from fieldgate.errors import RegoEvaluationError
from fieldgate.policy._engine import DECISIONS, check_shape, fail_closed, normalize_path
from fieldgate.policy._pack import PolicyPack, SourceProblem

UNDEFINED: Any = object()
"""What ``_evaluate`` returns for a decision that is undefined."""

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


class InProcessEngine(ABC):
    """The part of :class:`RegoEngine` and :class:`RegorusEngine` that is not the evaluator.

    A subclass compiles the pack in ``_compile`` (filling ``problems``) and evaluates
    one decision in ``_evaluate`` (returning the value or :data:`UNDEFINED`). Calls
    run on one worker thread so that an overrun can be given up on (``inline``
    engines: on the caller's thread, the timeout checked when the call returns); any
    compile error, evaluation error, timeout, undefined or malformed result is a deny
    carrying the reason. Safe to share between threads.
    """

    name = "in-process"
    inline = False
    """Evaluate on the caller's thread, the timeout checked when the call returns (for an
    evaluator that holds the GIL, which a worker thread could not give up on)."""

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
            entrypoints: decisions prepared when the pack loads; other paths are prepared
                per query.
        """
        self.pack = pack if pack is not None else PolicyPack.load()
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._worker = (
            _Worker(f"fieldgate-{self.name}") if timeout_s is not None and not self.inline else None
        )
        self._overrun: Future[Any] | None = None
        self._entrypoints = {normalize_path(p) for p in entrypoints}
        self.problems: list[SourceProblem] = []
        """Why the pack did not compile (empty when it did)."""
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

    @abstractmethod
    def _compile(self) -> None:
        """Compile the pack into the engine; fill ``problems`` with what does not compile."""

    @abstractmethod
    def _evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        """The value of the decision at ``path`` for ``input``, or :data:`UNDEFINED`."""

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
                started = time.perf_counter()
                result = self._evaluate(path, input)
                took = time.perf_counter() - started
                if self.timeout_s is not None and took > self.timeout_s:
                    return fail_closed(
                        path, f"timeout after {self.timeout_s:g} s at {path} (took {took:.1f} s)"
                    )
        except RegoEvaluationError as exc:
            return fail_closed(path, f"evaluation failed at {path}: {exc}")
        except (ValueError, TypeError) as exc:
            return fail_closed(path, f"input is not a JSON document: {exc}")
        except Exception as exc:  # whatever the engine raises, the answer is a deny
            return fail_closed(path, f"{type(exc).__name__} at {path}: {exc}")
        if result is UNDEFINED:
            return fail_closed(path, f"the decision at {path} is undefined")
        problem = check_shape(path, result)
        if problem:
            return fail_closed(path, problem)
        assert isinstance(result, dict)
        return result
