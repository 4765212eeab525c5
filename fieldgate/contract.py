"""What every contract shares: strict pydantic models, versions, canonical JSON, loading.

Contracts are the boundary types of fieldgate (manifests, inventories, plans,
commands, approvals, audit events, scenarios). They refuse unknown keys, are
immutable once built, and load from YAML with errors that name the file, the
field path and the rule that was broken.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from fieldgate.errors import InputInvalid

API_VERSION = "fieldgate/v1"
ApiVersion = Literal["fieldgate/v1"]


class Contract(BaseModel):
    """Base of every contract: unknown keys are errors and instances are immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )


def _check_version(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"version must be a string such as '2.4.1', got {value!r} "
            "(quote it in YAML: 2.10 is read as the number 2.1)"
        )
    try:
        parse_version(value)
    except InvalidVersion:
        raise ValueError(f"{value!r} is not a version (expected e.g. 2.4.1 or 2.0.0-rc1)") from None
    return value


def _check_range(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"version range must be a string such as '>=3.2,<4', got {value!r}")
    try:
        _specifiers(value)
    except InvalidSpecifier:
        raise ValueError(f"{value!r} is not a version range (expected e.g. '>=3.2,<4')") from None
    return value


VersionStr = Annotated[str, BeforeValidator(_check_version)]
"""A version as written (e.g. ``2.4.1`` or ``2.0.0-rc1``), compared with ``packaging``."""

VersionRange = Annotated[str, BeforeValidator(_check_range)]
"""A version range such as ``>=3.2,<4``."""


@lru_cache(maxsize=8192)
def parse_version(text: str) -> Version:
    """Parse a version string already validated by a contract (raises InvalidVersion if not).

    Cached: a fleet has few distinct versions, and every contract check, sort and range
    match parses them again. ``Version`` is immutable, so sharing one is safe.
    """
    return Version(text)


@lru_cache(maxsize=1024)
def _specifiers(spec: str) -> SpecifierSet:
    return SpecifierSet(spec)


@lru_cache(maxsize=8192)
def version_in_range(version: str, spec: str) -> bool:
    """Tell whether ``version`` satisfies the range ``spec`` (prereleases only if named)."""
    specifiers = _specifiers(spec)
    return specifiers.contains(parse_version(version), prereleases=bool(specifiers.prereleases))


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
).encode


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON: sorted keys, no spaces, UTF-8.

    One encoder serves every call: ``json.dumps`` with options builds a new one each
    time, a fifth of the cost for the small documents signed per device report.
    """
    return _CANONICAL(value).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Return the hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def format_loc(loc: tuple[int | str, ...], *, raw: bool = False) -> str:
    """Render a pydantic error location as ``a.b[2].c``, or as pydantic does (``a.b.2.c``)."""
    if raw:
        return ".".join(str(part) for part in loc)
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems_of(error: ValidationError, *, raw: bool = False) -> list[tuple[str, str]]:
    """Turn a pydantic validation error into ``(field path, rule)`` pairs.

    Contract files, which people write, get paths as ``a.b[2].c`` and fieldgate's wording of
    the rule. With ``raw``, paths and rules stay as pydantic writes them (``a.b.2.c: Extra
    inputs are not permitted``): the words a model or an API client wrote its JSON against.
    """
    problems = []
    for item in error.errors():
        loc = tuple(
            p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        message = item["msg"]
        if not raw and item["type"] == "extra_forbidden":
            message = "unknown key (not part of the fieldgate/v1 contract)"
        elif not raw:
            message = message.removeprefix("Value error, ")
        problems.append((format_loc(loc, raw=raw), message))
    return problems


def validation_problems(error: ValidationError) -> str:
    """A validation error in one line, as pydantic words it: ``a.b.0: rule; a.c: rule``.

    For JSON that a model or an API client wrote against a schema; contract files, which
    people write, get :func:`problems_of`'s paths and wording.
    """
    return "; ".join(
        f"{path}: {rule}" if path else rule for path, rule in problems_of(error, raw=True)
    )


M = TypeVar("M", bound=BaseModel)


def read_text(path: str | Path, error: type[InputInvalid] = InputInvalid) -> str:
    """Read a UTF-8 text file; a file that cannot be read or is not UTF-8 raises ``error``."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(source, [("", f"cannot read file: {exc.strerror or exc}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            source, [("", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")]
        ) from None


def _too_deep(source: str, error: type[InputInvalid]) -> InputInvalid:
    return error(source, [("", "nested too deeply to read")])


def read_yaml(path: str | Path, error: type[InputInvalid] = InputInvalid) -> Any:
    """Read one YAML document, naming the file and the line on a syntax error.

    Every way a file can fail to be a YAML document (unreadable, not UTF-8, bad syntax,
    nesting deep enough to exhaust the parser's stack) raises ``error`` naming the file.
    """
    source = str(path)
    text = read_text(path, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(source, [(where, f"invalid YAML: {problem}")]) from None
    except RecursionError:
        raise _too_deep(source, error) from None


def read_json(path: str | Path, error: type[InputInvalid] = InputInvalid) -> Any:
    """Read one JSON document; every way it can fail raises ``error`` naming the file."""
    source = str(path)
    text = read_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            source, [(f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}")]
        ) from None
    except RecursionError:
        raise _too_deep(source, error) from None


def validate_as(
    model: type[M], data: Any, source: str, error: type[InputInvalid] = InputInvalid
) -> M:
    """Validate ``data`` as ``model``; raise ``error`` naming ``source`` and each bad field."""
    if not isinstance(data, dict):
        raise error(
            source, [("", f"expected a mapping at the top level, got {type(data).__name__}")]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(source, problems_of(exc)) from None
    except RecursionError:
        raise _too_deep(source, error) from None


def load_yaml(path: str | Path, model: type[M], error: type[InputInvalid] = InputInvalid) -> M:
    """Load one YAML file as ``model``."""
    return validate_as(model, read_yaml(path, error), str(path), error)
