"""The policy pack: Rego modules, their tests and the data document, read from one directory.

The default pack is ``policies/`` shipped as the package data ``fieldgate.policies``.
Configuration overrides parts of the data document (limits, the default roster)
with :meth:`PolicyPack.with_data`; a scenario's roster travels in the approvals
input instead (``input.roster`` replaces ``data.fieldgate.roster``).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from fieldgate.contract import canonical_json, read_json, read_text
from fieldgate.errors import InputInvalid, PolicyEngineError

DATA_FILE = "data.json"
"""Name of the data document in a pack directory."""

_PACKAGE = re.compile(r"^package\s+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]+)\s+if\b", re.MULTILINE)


@dataclass(frozen=True)
class SourceProblem:
    """A problem at a place in a policy file."""

    file: str
    """File name inside the pack, e.g. ``rollout.rego``."""
    line: int
    """Line, from 1 (0 when unknown)."""
    column: int
    """Column, from 1 (0 when unknown)."""
    message: str
    """What is wrong."""

    def __str__(self) -> str:
        where = self.file if self.line == 0 else f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class PolicyModule:
    """One Rego file of the pack."""

    name: str
    """File name inside the pack, e.g. ``rollout.rego``."""
    source: str
    """The Rego text."""

    @property
    def package(self) -> str:
        """The Rego package, e.g. ``fieldgate.rollout`` (empty when the file names none)."""
        match = _PACKAGE.search(self.source)
        return match[1] if match else ""

    @property
    def is_test(self) -> bool:
        """Whether this is a ``*_test.rego`` file."""
        return self.name.endswith("_test.rego")

    def tests(self) -> list[tuple[str, int]]:
        """The ``test_*`` rules of this module with their lines, in file order, once each."""
        seen: dict[str, int] = {}
        for match in _TEST_RULE.finditer(self.source):
            seen.setdefault(match[1], line_of(self.source, match.start()))
        return list(seen.items())


@dataclass(frozen=True)
class PolicyRevision:
    """sha256 over the policy modules (not their tests) and the data document."""

    digest: str
    """Hex sha256."""
    files: tuple[str, ...]
    """The files it covers, in hashing order."""

    @classmethod
    def of(cls, modules: tuple[PolicyModule, ...], data: Mapping[str, Any]) -> PolicyRevision:
        """Hash ``modules`` (tests left out: they do not change a decision) and ``data``."""
        digest = hashlib.sha256()
        covered = []
        for module in sorted((m for m in modules if not m.is_test), key=lambda m: m.name):
            digest.update(module.name.encode() + b"\0" + module.source.encode() + b"\0")
            covered.append(module.name)
        digest.update(DATA_FILE.encode() + b"\0" + canonical_json(dict(data)))
        covered.append(DATA_FILE)
        return cls(digest.hexdigest(), tuple(covered))

    @property
    def short(self) -> str:
        """The first 12 hex digits, for people."""
        return self.digest[:12]

    def __str__(self) -> str:
        return self.digest


@dataclass(frozen=True)
class RuleInfo:
    """One rule of the pack as ``policy show`` lists it, from its ``# METADATA`` block."""

    title: str
    """``D5 canary``: rule id and name."""
    description: str
    """One line saying what the rule requires."""
    package: str
    """Rego package."""
    rule: str
    """Rego rule the block annotates."""
    file: str
    """File name inside the pack."""
    line: int
    """Line of the annotated rule."""


@dataclass(frozen=True)
class PolicyPack:
    """Rego modules, their tests and the data document: what every engine loads."""

    modules: tuple[PolicyModule, ...]
    """Every ``*.rego`` file, sorted by name (tests included)."""
    data: Mapping[str, Any]
    """The data document (``data.json``, with overrides applied)."""
    directory: Path | None = None
    """Where the files were read from."""
    revision: PolicyRevision = field(init=False)
    """Hash over the modules and the data."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "revision", PolicyRevision.of(self.modules, self.data))

    @classmethod
    def load(cls, directory: str | Path | None = None) -> PolicyPack:
        """Read ``*.rego`` and ``data.json`` from ``directory`` (default: the shipped pack)."""
        path = Path(directory) if directory is not None else default_policy_dir()
        if not path.is_dir():
            raise PolicyEngineError(f"{path}: policy directory does not exist")
        modules = tuple(
            PolicyModule(file.name, read_text(file)) for file in sorted(path.glob("*.rego"))
        )
        if not modules:
            raise PolicyEngineError(f"{path}: no *.rego policy files")
        data_path = path / DATA_FILE
        data: Any = {}
        if data_path.exists():
            data = read_json(data_path)
            if not isinstance(data, dict):
                problem = ("", "the data document must be a JSON object")
                raise InputInvalid(str(data_path), [problem])
        return cls(modules, data, path)

    def with_data(self, overrides: Mapping[str, Any]) -> PolicyPack:
        """A copy with ``overrides`` merged into the data (objects merge, the rest replaces).

        Example: ``pack.with_data({"fieldgate": {"roster": roster}})`` replaces the default
        roster; ``{"fieldgate": {"config": {"canary_percent": 10}}}`` changes one limit.
        """
        return PolicyPack(self.modules, _merged(self.data, overrides), self.directory)

    @property
    def policies(self) -> tuple[PolicyModule, ...]:
        """The modules that decide (tests left out)."""
        return tuple(m for m in self.modules if not m.is_test)

    @property
    def tests(self) -> tuple[PolicyModule, ...]:
        """The ``*_test.rego`` modules."""
        return tuple(m for m in self.modules if m.is_test)

    def module(self, name: str) -> PolicyModule:
        """The module with this file name."""
        for module in self.modules:
            if module.name == name:
                return module
        raise KeyError(name)

    def rules(self) -> list[RuleInfo]:
        """Every rule carrying a ``# METADATA`` block with a title, in file order."""
        found: list[RuleInfo] = []
        for module in self.policies:
            found.extend(_annotated_rules(module))
        return found

    def lint(self) -> list[SourceProblem]:
        """Rego v0 constructs OPA 1.x rejects, and constructs that crash regopy, in every module."""
        problems: list[SourceProblem] = []
        for module in self.modules:
            problems.extend(check_v1(module.name, module.source))
            problems.extend(check_regopy_hazards(module.name, module.source))
        return problems


def default_policy_dir() -> Path:
    """The directory of the policy pack shipped with fieldgate."""
    return Path(str(files("fieldgate.policies")))


def line_of(source: str, offset: int) -> int:
    """Line number (from 1) of a character offset."""
    return source.count("\n", 0, offset) + 1


def location_of(source: str, byte_offset: int) -> tuple[int, int]:
    """Line and column (from 1) of a UTF-8 byte offset."""
    before = source.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    return line, column


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _annotated_rules(module: PolicyModule) -> list[RuleInfo]:
    lines = module.source.splitlines()
    found = []
    index = 0
    while index < len(lines):
        if lines[index].strip() != "# METADATA":
            index += 1
            continue
        block = []
        index += 1
        while index < len(lines) and lines[index].lstrip().startswith("#"):
            block.append(lines[index].lstrip()[1:].removeprefix(" "))
            index += 1
        try:
            meta = yaml.safe_load("\n".join(block)) or {}
        except (yaml.YAMLError, RecursionError):
            meta = {}
        if not isinstance(meta, dict) or "title" not in meta or index >= len(lines):
            continue
        head = lines[index].strip()
        rule = re.split(r"[\s\[(:=]", head, maxsplit=1)[0]
        found.append(
            RuleInfo(
                title=str(meta["title"]),
                description=" ".join(str(meta.get("description", "")).split()),
                package=module.package,
                rule=rule,
                file=module.name,
                line=index + 1,
            )
        )
    return found


# Tokens after which a "{" opens a value (object or set literal), not a rule body.
_VALUE_BEFORE = {":=", "=", "==", "!=", "contains", "in", ",", "(", "[", "|", "&", "{", ":"}
_LAST_TOKEN = re.compile(r"(:=|==|!=|=|[A-Za-z_][A-Za-z0-9_.]*|\S)\s*$")
_PARTIAL_SET_HEAD = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.]*\[[^\]]*\]\s*(if)?\s*$")


def check_v1(name: str, source: str) -> list[SourceProblem]:
    """Find rule bodies without ``if`` and partial set rules without ``contains`` (Rego v0).

    regopy accepts both, OPA 1.x refuses them: this keeps the pack loadable by both
    engines. It reads top-level rule heads only; the Rego tests and a real OPA
    (the ``opa`` test marker) check the rest.
    """
    problems: list[SourceProblem] = []
    depth = 0
    head_start = 0  # where the current top-level head text starts
    line_start = 0  # where the current top-level statement's first line starts
    i = 0
    n = len(source)
    while i < n:
        char = source[i]
        if char == "#":
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        if char == '"':
            i += 1
            while i < n and source[i] != '"':
                i += 2 if source[i] == "\\" else 1
            i += 1
            continue
        if char == "`":
            end = source.find("`", i + 1)
            i = n if end < 0 else end + 1
            continue
        if char == "\n" and depth == 0:
            head_start = line_start = i + 1
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth = max(0, depth - 1)
        elif char == "{":
            if depth == 0:
                problem = _body_problem(source, head_start, line_start, i)
                if problem:
                    line = line_of(source, line_start)
                    problems.append(SourceProblem(name, line, 1, problem))
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
            if depth == 0:
                head_start = i + 1
        i += 1
    return problems


_WITH_WHOLE_INPUT = re.compile(r"\bwith\s+input\s+as\b")


def check_regopy_hazards(name: str, source: str) -> list[SourceProblem]:
    """Find constructs that crash regopy 1.5.2 (the process aborts, so they are refused first).

    ``with input as …`` replacing the whole input document aborts regopy when the
    rules under test depend on other rules; replacing it part by part works.
    """
    problems = []
    for number, line in enumerate(source.splitlines(), start=1):
        code = line.split("#", 1)[0]
        match = _WITH_WHOLE_INPUT.search(code)
        if match:
            problems.append(
                SourceProblem(
                    name,
                    number,
                    match.start() + 1,
                    "'with input as …' crashes regopy 1.5.2: replace the input part by part "
                    "('with input.plan as …')",
                )
            )
    return problems


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _body_problem(source: str, head_start: int, line_start: int, brace: int) -> str | None:
    head = _strip_comments(source[head_start:brace])
    if not head.strip():
        return None
    token = _LAST_TOKEN.search(head)
    last = token[1] if token else ""
    if last in _VALUE_BEFORE:
        return None
    statement = _strip_comments(source[line_start:brace])
    if statement.lstrip().startswith(("package", "import")):
        return None
    if _PARTIAL_SET_HEAD.match(statement):
        return "a partial set rule needs 'contains' (Rego v1): write 'name contains x if { … }'"
    if last == "if":
        return None
    return "a rule body needs 'if' before '{' (Rego v1; OPA 1.x rejects this module)"
