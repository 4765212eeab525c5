"""Every exception fieldgate raises on purpose is a kind in fieldgate/errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

import fieldgate.errors as errors
from fieldgate.errors import FieldgateError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("fieldgate", "agents", "graphs", "tools", "evals", "cli")
KINDS = {
    name: value
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def test_no_exception_class_is_defined_outside_errors() -> None:
    strays = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == ROOT / "fieldgate" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
                if bases & KINDS.keys() or any(b.endswith(("Error", "Exception")) for b in bases):
                    strays.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}")
    assert strays == []


def test_every_kind_is_a_documented_fieldgate_error() -> None:
    for name, kind in KINDS.items():
        assert issubclass(kind, FieldgateError), name
        assert kind.__doc__ and kind.__module__ == "fieldgate.errors", name
