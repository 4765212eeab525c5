"""The thin layer over regopy: load a pack, run one entrypoint, read errors with file and line.

regopy 1.5.2 behaviours handled here (checked by experiment; tests pin them):

- ``Output`` parses the result text as JSON in its constructor, and some errors come
  back as ``ok()`` with a non-JSON error text, so outputs are read at the C level.
- An undefined result is the text ``undefined``; an error result carries
  ``ErrorMessage`` nodes; a module that does not parse raises ``RegoError`` whose
  text locates the error as ``(error N:FILE|OFFSET|LENGTH``.
- The interpreter prints errors to stdout unless its log level is ``NONE``.
- ``regopy.Input`` converts values one ctypes call at a time through wrappers; the
  input is built here with the same C calls, about twice as fast.

Rego that regopy 1.5.2 gets wrong, avoided in the pack (see the comments there):
``with input as …`` (the whole document) aborts or crashes the process;
``sort()`` of a set returns a set; a function argument used inside a comprehension
is treated as a free variable; ``sprintf`` quotes a string made by ``concat``,
``lower`` and a few other built-ins when it formats it beside other values;
``some k, v in …`` inside a comprehension does not parse; ``replace(s, "", "")``
never returns; ``sprintf("%v")`` writes 0.94 as ``0.9399999999999999``;
``object.union`` replaces nested objects instead of merging them; unsafe variables and
unknown functions compile (the first makes a
rule undefined, the second an error at evaluation); partial rules that iterate are
several times slower than comprehensions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from regopy import Interpreter, LogLevel, RegoError
from regopy import rego_shared as _c

from fieldgate.errors import RegoEvaluationError
from fieldgate.policy._pack import PolicyPack, SourceProblem, location_of

_ERROR_AT = re.compile(r"\(error (\d+):")
_ERROR_MESSAGE = re.compile(r"\(errormsg (\d+):")
_OFFSET = re.compile(r"\|(\d+)\|")
_ERROR_MESSAGE_NODE = 1801
_UNDEFINED = object()


def new_interpreter() -> Interpreter:
    """An interpreter that forwards built-in errors and prints nothing."""
    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    interpreter.strict_built_in_errors = True
    return interpreter


def load_pack(
    interpreter: Interpreter, pack: PolicyPack, *, with_tests: bool = False
) -> list[SourceProblem]:
    """Add the pack's modules and data to ``interpreter``; return the problems found.

    Every module is tried so that all broken files are named at once; the pack is
    usable only when the list is empty.
    """
    problems = list(pack.lint())
    for module in pack.modules if with_tests else pack.policies:
        try:
            interpreter.add_module(module.name, module.source)
        except RegoError as exc:
            problems.extend(parse_errors(str(exc), pack, default_file=module.name))
    try:
        interpreter.add_data_json(json.dumps(dict(pack.data)))
    except RegoError as exc:
        problems.append(SourceProblem("data.json", 0, 0, f"data not accepted: {first_line(exc)}"))
    return problems


def parse_errors(text: str, pack: PolicyPack, default_file: str = "") -> list[SourceProblem]:
    """Read the ``(error N:FILE|OFFSET|LEN (errormsg N:MESSAGE) …)`` entries of a regopy error.

    ``N`` is the length of the text after the colon, so names and messages are cut
    by length, not by parsing parentheses.
    """
    problems = []
    for match in _ERROR_AT.finditer(text):
        start = match.end()
        name = text[start : start + int(match[1])] or default_file
        offset = _OFFSET.match(text, start + int(match[1]))
        message_match = _ERROR_MESSAGE.search(text, start)
        message = "error"
        if message_match:
            begin = message_match.end()
            message = text[begin : begin + int(message_match[1])]
        line = column = 0
        try:
            source = pack.module(name).source
        except KeyError:
            source = None
        if source is not None and offset:
            line, column = location_of(source, int(offset[1]))
        problems.append(SourceProblem(name, line, column, message))
    if not problems:
        problems.append(SourceProblem(default_file, 0, 0, first_line(text) or "does not compile"))
    return problems


def first_line(error: object) -> str:
    """The first non-empty line of an error's text."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return ""


def set_input(interpreter: Interpreter, value: Mapping[str, Any]) -> None:
    """Set the input document (raises ValueError for values that are not JSON).

    Builds the input with the C API directly: about twice as fast as ``regopy.Input``,
    whose per-value wrappers dominate the cost of a decision on a compact input.
    """
    handle = _build_input(value)
    try:
        if _c.rego.regoSetInput(interpreter._impl, handle) != 0:
            raise RegoEvaluationError(_c.rego_get_error(interpreter._impl) or "input not accepted")
    finally:
        _c.rego.regoFreeInput(handle)


def _build_input(value: Any) -> Any:
    lib = _c.rego
    handle = lib.regoNewInput()
    put_str, put_int, put_float = lib.regoInputString, lib.regoInputInt, lib.regoInputFloat
    put_bool, put_null, put_item = lib.regoInputBoolean, lib.regoInputNull, lib.regoInputObjectItem
    put_object, put_array = lib.regoInputObject, lib.regoInputArray

    def text(item: str) -> int:
        if "\0" in item:
            raise ValueError("strings in the input may not contain NUL characters")
        code: int = put_str(handle, item.encode("utf-8"))
        return code

    def add(item: Any) -> None:
        kind = type(item)
        if kind is str:
            code = text(item)
        elif kind is dict:
            for key, child in item.items():
                if type(key) is not str:
                    raise ValueError(f"object keys must be strings, got {key!r}")
                text(key)
                add(child)
                put_item(handle)
            code = put_object(handle, len(item))
        elif kind is list or kind is tuple:
            for child in item:
                add(child)
            code = put_array(handle, len(item))
        elif kind is bool:
            code = put_bool(handle, item)
        elif kind is int:
            if not -(2**63) <= item < 2**63:
                raise ValueError(f"integer {item} does not fit in 64 bits")
            code = put_int(handle, item)
        elif kind is float:
            code = put_float(handle, item)
        elif item is None:
            code = put_null(handle)
        elif isinstance(item, Mapping):
            add(dict(item))
            return
        else:
            raise ValueError(f"{kind.__name__} is not a JSON value")
        if code != 0:
            raise ValueError(f"regopy refused an input value ({item!r:.60})")

    try:
        add(value)
    except BaseException:
        lib.regoFreeInput(handle)
        raise
    return handle


def query_entrypoint(interpreter: Interpreter, bundle: Any, entrypoint: str) -> Any:
    """Evaluate one entrypoint of a built bundle; the value, or ``UNDEFINED``.

    Raises:
        RegoEvaluationError: the engine reported an error (the messages joined).
    """
    try:
        impl = _c.rego_bundle_query_entrypoint(interpreter._impl, bundle._impl, entrypoint)
    except RegoError as exc:
        raise RegoEvaluationError(first_line(exc) or "query failed") from None
    return _read_output(impl)


def query(interpreter: Interpreter, text: str) -> Any:
    """Compile and evaluate a query such as ``data.a.b``; the value, or ``UNDEFINED``."""
    try:
        impl = _c.rego_query(interpreter._impl, text)
    except RegoError as exc:
        raise RegoEvaluationError(first_line(exc) or "query failed") from None
    return _read_output(impl)


def is_undefined(value: Any) -> bool:
    """Whether a query result is undefined."""
    return value is _UNDEFINED


def _read_output(impl: Any) -> Any:
    try:
        text = _c.rego_output_string(impl)
        if not _c.rego_output_ok(impl):
            raise RegoEvaluationError("; ".join(_error_messages(_c.rego_output_node(impl))) or text)
    finally:
        _c.rego_free_output(impl)
    if text.strip() == "undefined":
        return _UNDEFINED
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise RegoEvaluationError(f"unreadable engine output: {_error_text(text)}") from None
    results = document if isinstance(document, list) else [document]
    if not results:
        return _UNDEFINED
    if len(results) > 1:
        raise RegoEvaluationError(f"the query has {len(results)} results, a decision has one")
    expressions = results[0].get("expressions", []) if isinstance(results[0], dict) else []
    if not expressions:
        return _UNDEFINED
    return expressions[0]


def _error_text(text: str) -> str:
    match = _ERROR_MESSAGE.search(text)
    if match:
        return text[match.end() : match.end() + int(match[1])]
    return " ".join(text.split())[:200]


def _error_messages(node: Any) -> list[str]:
    if not node:
        return []
    messages = []
    if _c.rego_node_type(node) == _ERROR_MESSAGE_NODE:
        messages.append(_c.rego_node_value(node))
    for index in range(_c.rego_node_size(node)):
        messages.extend(_error_messages(_c.rego_node_get(node, index)))
    return messages


UNDEFINED = _UNDEFINED
"""The value :func:`query_entrypoint` returns for an undefined result."""
