"""The second in-process engine: regorus (Microsoft's Rego interpreter in Rust), fed JSON.

regorus 0.9 (the ``celine-regorus`` wheel) behaviours handled here (checked by
experiment; tests pin them):

- The input and the results cross as JSON text only (``set_input_json``,
  ``eval_rule_as_json``): ``set_input`` with a Python dict turns ``True`` into ``1``
  (and flips the rollout decision to deny), and ``eval_rule`` returns every number
  as a float.
- Errors are ``RuntimeError`` whose text locates the problem as ``--> FILE:LINE:COL``
  followed by ``error: MESSAGE`` and, unless ``RUST_BACKTRACE=0``, a stack backtrace.
- A path that names no rule raises ``not a valid rule path``; a rule whose
  conditions do not hold comes back from ``eval_rule_as_json`` as the JSON string
  ``"<undefined>"`` (no rule of the pack has that value).

Rego that regorus 0.9 gets wrong, avoided in the pack: iterating ``null`` is an
error (OPA iterates nothing); ``sprintf("%g")`` writes 0.89 as ``8.9e-1``; a
function called through an import alias is not found (the full ``data.`` path is).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from typing import Any

import regorus

from fieldgate.errors import RegoEvaluationError
from fieldgate.policy._engine import RegoTestResult
from fieldgate.policy._inprocess import UNDEFINED, InProcessEngine
from fieldgate.policy._pack import PolicyPack, SourceProblem

_LOCATION = re.compile(r"-->\s*(?P<file>[^\s:]+):(?P<line>\d+):(?P<column>\d+)")
_UNDEFINED_TEXT = "<undefined>"
_MESSAGE = re.compile(r"^error:\s*(?P<message>.+)$", re.MULTILINE)


def error_text(exc: BaseException) -> str:
    """The ``error:`` line of a regorus error (its message without source or backtrace)."""
    text = str(exc).split("Stack backtrace")[0]
    found = _MESSAGE.search(text)
    if found:
        located = _LOCATION.search(text)
        where = f"{located['file']}:{located['line']}: " if located else ""
        return where + found["message"].strip()
    return " ".join(text.split()) or type(exc).__name__


def source_problem(exc: BaseException, default_file: str) -> SourceProblem:
    """The file, line, column and message of a regorus compile error."""
    text = str(exc).split("Stack backtrace")[0]
    located = _LOCATION.search(text)
    found = _MESSAGE.search(text)
    message = found["message"].strip() if found else (" ".join(text.split()) or "error")
    if located:
        return SourceProblem(located["file"], int(located["line"]), int(located["column"]), message)
    return SourceProblem(default_file, 0, 0, message)


def new_engine(pack: PolicyPack, *, with_tests: bool = False) -> tuple[Any, list[SourceProblem]]:
    """A regorus engine holding the pack's modules and data; and the problems found.

    Every module is tried so that all broken files are named at once.
    """
    engine = regorus.Engine()
    problems = list(pack.lint())
    for module in pack.modules if with_tests else pack.policies:
        try:
            engine.add_policy(module.name, module.source)
        except RuntimeError as exc:
            problems.append(source_problem(exc, module.name))
    try:
        engine.add_data_json(json.dumps(dict(pack.data)))
    except RuntimeError as exc:
        problems.append(SourceProblem("data.json", 0, 0, f"data not accepted: {error_text(exc)}"))
    return engine, problems


def evaluate(engine: Any, rule: str) -> Any:
    """The value of ``data.<rule>`` as JSON, or ``UNDEFINED``.

    Raises:
        RegoEvaluationError: regorus reported an error (its message, located).
    """
    try:
        text = engine.eval_rule_as_json("data." + rule)
    except RuntimeError as exc:
        raise RegoEvaluationError(error_text(exc)) from None
    value = json.loads(text)
    return UNDEFINED if value == _UNDEFINED_TEXT else value


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _refuse_keys_that_are_not_strings(value: Any) -> None:
    """Raise ValueError for an object key that is not a string (json.dumps would convert it)."""
    pending = [value]
    scalars = _SCALARS
    while pending:
        item = pending.pop()
        if type(item) is not dict and isinstance(item, Mapping):
            item = dict(item)
        if type(item) is dict:
            for key, child in item.items():
                if type(key) is not str:
                    raise ValueError(f"object keys must be strings, got {key!r}")
                if type(child) not in scalars:
                    pending.append(child)
        elif isinstance(item, (list, tuple)):
            pending.extend(child for child in item if type(child) not in scalars)


class RegorusEngine(InProcessEngine):
    """Evaluates the pack in-process with regorus, always through JSON.

    Each decision serialises the input once (``json.dumps``, NaN and keys that are
    not strings refused, as regopy refuses them) and reads the result back from JSON;
    see :class:`InProcessEngine` for the fail-closed rules. regorus holds the GIL while
    it evaluates, so a worker thread could not give up on an overrunning call: the
    decision runs on the caller's thread and one that took longer than ``timeout_s`` is
    a deny when it returns.
    """

    name = "regorus"
    inline = True

    def _compile(self) -> None:
        # A regorus engine may only be used on the thread that made it (on another it
        # panics), so each thread that decides gets its own.
        self._local = threading.local()
        self._local.engine, self.problems = new_engine(self.pack)

    def _thread_engine(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine, _ = new_engine(self.pack)
            self._local.engine = engine
        return engine

    def _evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        _refuse_keys_that_are_not_strings(input)
        document = json.dumps(input, allow_nan=False, ensure_ascii=False)
        engine = self._thread_engine()
        try:
            try:
                engine.set_input_json(document)
            except RuntimeError as exc:
                raise ValueError(error_text(exc)) from None
            return evaluate(engine, path)
        except BaseException as exc:
            # a Rust panic arrives as pyo3's PanicException, a BaseException
            if type(exc).__name__ == "PanicException":
                raise RegoEvaluationError(f"regorus panicked: {exc}") from None
            raise

    def test(self) -> list[RegoTestResult]:
        """Run the pack's Rego tests (one rule per ``test_*``) with regorus."""
        return run_regorus_tests(self.pack)


def run_regorus_tests(pack: PolicyPack) -> list[RegoTestResult]:
    """Evaluate every ``test_*`` rule of the pack with regorus; pass when it is true."""
    engine, problems = new_engine(pack, with_tests=True)
    if problems:
        return [RegoTestResult("<compile>", p.file, p.line, False, p.message) for p in problems]
    engine.set_input_json("{}")
    results = []
    for module in pack.tests:
        for rule, line in module.tests():
            name = f"{module.package}.{rule}"
            try:
                value = evaluate(engine, name)
            except RegoEvaluationError as exc:
                results.append(RegoTestResult(name, module.name, line, False, f"error: {exc}"))
                continue
            results.append(
                RegoTestResult.of_value(
                    name, module.name, line, value, undefined=value is UNDEFINED
                )
            )
    return results
