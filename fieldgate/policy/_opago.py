"""OPA's own evaluator in-process: the reference the other engines are held to.

The ``opa-golib-python-bindings`` wheel embeds ``github.com/open-policy-agent/opa/v1/rego``
(OPA 1.20) as a c-shared library behind a stdlib-only ctypes wrapper. Its metadata
asks for Python 3.14, but it loads and evaluates from 3.11, so it is installed with
pip's ``--ignore-requires-python`` into the test extra only (see the README): the
conformance suite, the OPA REST test server and the benchmark use it. Without the
wheel every decision is a deny saying so.

Behaviours handled here: modules are only parsed when added, and compiled when a
query is first prepared, so the engine prepares each decision once at load to find
compile errors; errors come back as ``OpaError(code, message)`` with messages like
``rollout.rego:12: rego_unsafe_var_error: …``; an undefined document raises
``OpaUndefinedError``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

from fieldgate.errors import RegoEvaluationError
from fieldgate.policy._engine import RegoTestResult
from fieldgate.policy._inprocess import UNDEFINED, InProcessEngine
from fieldgate.policy._pack import PolicyPack, SourceProblem

_LOCATED = re.compile(
    r"(?P<file>[\w./-]+\.rego):(?P<line>\d+)(?::(?P<column>\d+))?:\s*(?P<message>.+)"
)
INSTALL = "pip install --ignore-requires-python opa-golib-python-bindings==0.4.4"
"""How the wheel is installed (the ``Makefile``'s setup target does it)."""


def bindings() -> Any:
    """The ``opa_bindings`` module, or None when the wheel is not installed."""
    try:
        return importlib.import_module("opa_bindings")
    except ImportError:
        return None


def problems_of(message: str, default_file: str = "") -> list[SourceProblem]:
    """The ``FILE:LINE[:COL]: MESSAGE`` entries of an OPA error message."""
    found = [
        SourceProblem(m["file"], int(m["line"]), int(m["column"] or 0), m["message"].strip())
        for m in _LOCATED.finditer(message)
    ]
    return found or [SourceProblem(default_file, 0, 0, message.strip() or "does not compile")]


def new_engine(
    pack: PolicyPack, *, with_tests: bool = False, prepare: tuple[str, ...] = ()
) -> tuple[Any, list[SourceProblem]]:
    """An OPA engine holding the pack's modules and data; and the problems found.

    ``prepare`` names documents compiled now (a compile error of any module shows there).
    """
    opa = bindings()
    if opa is None:
        return None, [SourceProblem("", 0, 0, f"OPA's Go engine is not installed ({INSTALL})")]
    engine = opa.OpaEngine()
    engine.print_handler = lambda message, location: None
    problems = list(pack.lint())
    for module in pack.modules if with_tests else pack.policies:
        try:
            engine.add_policy(module.name, module.source)
        except opa.OpaError as exc:
            problems.extend(problems_of(exc.message, module.name))
    try:
        engine.add_data(dict(pack.data))
    except opa.OpaError as exc:
        problems.append(SourceProblem("data.json", 0, 0, f"data not accepted: {exc.message}"))
    for path in prepare if not problems else ():
        try:  # prepares (and caches) the query decide will run
            engine.eval_document(path, {})
        except opa.OpaUndefinedError:
            pass
        except opa.OpaError as exc:
            if exc.code == "prepare_error":
                problems.extend(problems_of(exc.message))
                break
    return engine, problems


def evaluate(engine: Any, path: str, input: Mapping[str, Any]) -> Any:
    """The document at ``data.<path>`` for ``input``, or ``UNDEFINED``.

    Raises:
        RegoEvaluationError: OPA reported an error (its code and message).
    """
    opa = bindings()
    try:
        return engine.eval_document(path, dict(input))
    except opa.OpaUndefinedError:
        return UNDEFINED
    except opa.OpaError as exc:
        if exc.code == "invalid_argument":
            raise ValueError(exc.message) from None
        raise RegoEvaluationError(f"{exc.code}: {exc.message}") from None


class GoOpaEngine(InProcessEngine):
    """Evaluates the pack in-process with OPA's own Go evaluator (the reference).

    Fed JSON (the wrapper serialises the input); see :class:`InProcessEngine` for
    the timeout and the fail-closed rules.
    """

    name = "opa-go"

    def _compile(self) -> None:
        self._engine, self.problems = new_engine(
            self.pack, prepare=tuple(sorted(self._entrypoints))
        )

    def _evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        with self._lock:
            return evaluate(self._engine, path, input)

    def test(self) -> list[RegoTestResult]:
        """Run the pack's Rego tests (one document per ``test_*``) with OPA's evaluator."""
        return run_opa_tests(self.pack)


def run_opa_tests(pack: PolicyPack) -> list[RegoTestResult]:
    """Evaluate every ``test_*`` rule of the pack with OPA; pass when it is true."""
    engine, problems = new_engine(pack, with_tests=True, prepare=("fieldgate",))
    if problems:
        return [RegoTestResult("<compile>", p.file, p.line, False, p.message) for p in problems]
    results = []
    for module in pack.tests:
        # each query OPA prepares compiles every module, so a test package is evaluated
        # as one document; when one of its tests errors, the tests are queried one by one
        try:
            package = evaluate(engine, module.package, {})
        except RegoEvaluationError:
            package = None
        for rule, line in module.tests():
            name = f"{module.package}.{rule}"
            try:
                if isinstance(package, dict):
                    value = package.get(rule, UNDEFINED)
                else:
                    value = evaluate(engine, name, {})
            except RegoEvaluationError as exc:
                results.append(RegoTestResult(name, module.name, line, False, f"error: {exc}"))
                continue
            results.append(
                RegoTestResult.of_value(
                    name, module.name, line, value, undefined=value is UNDEFINED
                )
            )
    return results
