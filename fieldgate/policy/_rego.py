"""The in-process engine: regopy, compiled once into a bundle and queried many times."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fieldgate.errors import RegoEvaluationError
from fieldgate.policy import _regopy
from fieldgate.policy._engine import DECISIONS, RegoTestResult
from fieldgate.policy._inprocess import UNDEFINED, InProcessEngine, entrypoint_of
from fieldgate.policy._pack import PolicyPack, SourceProblem


class RegoEngine(InProcessEngine):
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
        """Compile ``pack`` (default: the shipped pack); see :class:`InProcessEngine`."""
        self._interpreter = _regopy.new_interpreter()
        self._bundle: Any = None
        super().__init__(pack, timeout_s=timeout_s, entrypoints=entrypoints)

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

    def _evaluate(self, path: str, input: Mapping[str, Any]) -> Any:
        with self._lock:
            _regopy.set_input(self._interpreter, input)
            if path in self._entrypoints:
                value = _regopy.query_entrypoint(
                    self._interpreter, self._bundle, entrypoint_of(path)
                )
            else:
                value = _regopy.query(self._interpreter, "data." + path)
        return UNDEFINED if _regopy.is_undefined(value) else value

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
        undefined = _regopy.is_undefined(value)
        results.append(RegoTestResult.of_value(name, module.name, line, value, undefined=undefined))
    return results
